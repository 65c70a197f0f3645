"""``chain deploy`` deploys only what the package's manifest binds, and a development-SRS
verifier only to a local development chain unless told (real anvil, real circuit package)."""

from __future__ import annotations

import json
import shutil

import pytest
from chain_support import run_anvil

from contracts import deploy
from verifier.cli import main
from verifier.errors import InputError, PackageError

pytestmark = [pytest.mark.chain, pytest.mark.ezkl]


@pytest.fixture(scope="module")
def public_chain_url():
    """anvil posing as a non-development chain (chain id 5)."""
    with run_anvil("--chain-id", "5") as url:
        yield url


def test_dev_srs_verifier_is_refused_on_a_non_dev_chain(public_chain_url, iris_package,
                                                         tmp_path, capsys):
    from contracts.chain import connect

    chain = connect(public_chain_url)
    assert chain.chain_id == 5
    assert deploy.load_package(iris_package).dev_srs
    nonce = chain.w3.eth.get_transaction_count(chain.sender)
    with pytest.raises(InputError, match="development SRS"):
        deploy.deploy_all(chain, [iris_package])
    assert chain.w3.eth.get_transaction_count(chain.sender) == nonce  # nothing was sent
    out = tmp_path / "dep.json"
    argv = ["chain", "deploy", "--rpc", public_chain_url, "--package", str(iris_package),
            "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--allow-dev-srs" in err and len(err.strip().splitlines()) == 2  # "deploying to", why
    assert main([*argv, "--allow-dev-srs"]) == 0, capsys.readouterr().err
    (m,) = json.loads(out.read_text())["models"]
    assert chain.w3.eth.get_code(m["verifier"]) != b""


def test_verifier_json_that_is_not_the_manifests_is_refused(iris_package, tmp_path,
                                                            embedded_chain):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for name in ("manifest.json", "Verifier.json", "settings.json"):
        shutil.copyfile(iris_package / name, pkg / name)
    deploy.load_package(pkg)  # the copy is intact
    v = json.loads((pkg / "Verifier.json").read_text())
    v["bytecode"] = v["bytecode"][:-2] + ("00" if v["bytecode"][-2:] != "00" else "01")
    (pkg / "Verifier.json").write_text(json.dumps(v))
    with pytest.raises(PackageError, match="Verifier.json does not match"):
        deploy.load_package(pkg)
    with pytest.raises(PackageError):
        deploy.deploy_all(embedded_chain, [pkg])


def test_registered_input_bound_refuses_an_unprovable_input_at_request_time(anvil_chain,
                                                                           iris_package):
    """The issue's input: [2^36, 0, 0, 0] for iris_mlp cannot be witnessed by EZKL (range checks
    of 4 legs of 2^9); the oracle refuses it when requested, so no fee is locked for it."""
    from relay_world import consumer

    from contracts.chain import ContractRevert

    record = deploy.deploy_all(anvil_chain, [iris_package], min_fee=10)
    (m,) = record["models"]
    settings = json.loads((iris_package / "settings.json").read_text())["run_args"]
    assert (settings["decomp_base"], settings["decomp_legs"]) == (512, 4)
    assert m["max_abs_input"] == 2**35 - 1 and m["num_instances"] == 4 + 3 + 1
    cons = consumer(anvil_chain, record["oracle"]["address"], bytes.fromhex(m["model_id"][2:]))
    with pytest.raises(ContractRevert) as info:
        anvil_chain.transact(cons.functions.classify([2**36, 0, 0, 0]), value=10)
    assert info.value.error == "InputOutOfRange" and info.value.error_args == (0, 2**36)
    with pytest.raises(ContractRevert) as info:
        anvil_chain.transact(cons.functions.classify([1, 0, 0, 0]), value=9)
    assert info.value.error == "FeeTooLow" and info.value.error_args == (9, 10)
    anvil_chain.transact(cons.functions.classify([1, 0, 0, 0]), value=10)


def test_a_deployment_that_fails_midway_names_what_it_deployed(iris_package, tmp_path, capsys):
    """anvil refusing the verifier (a code size limit above the oracle's, below the
    verifier's): `chain deploy` exits 2 with one line that names the oracle it deployed and
    paid for before, so the operator can find it. Before, the line said only why the verifier
    failed: the oracle's address was nowhere (no deployment file is written)."""
    from chain_support import ANVIL

    from contracts.anvil import local_anvil
    from contracts.chain import connect
    from contracts.solc import compiled

    oracle_size = compiled()["VerinferOracle"].runtime_size
    verifier_size = deploy.load_package(iris_package).verifier.runtime_size
    assert oracle_size < 14_000 < verifier_size
    out = tmp_path / "dep.json"
    with local_anvil(ANVIL, "--code-size-limit", "14000") as url:
        code = main(["chain", "deploy", "--rpc", url, "--package", str(iris_package),
                     "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, err
        (line,) = [ln for ln in err.splitlines() if ln.startswith("verinfer: error:")]
        assert "iris_mlp: " in line and "deployed before that, in no deployment file" in line
        oracle = line.split("oracle ")[1].split()[0].rstrip(",")
        chain = connect(url)
        assert chain.w3.eth.get_code(oracle) != b""  # the oracle it names is there
        o = chain.contract(oracle, deploy.oracle_abi())
        assert o.functions.owner().call() == chain.sender
        assert not out.exists() and "Traceback" not in err
