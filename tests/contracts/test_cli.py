"""``verinfer chain deploy`` on the embedded chain and on anvil; the deployment file it writes;
the eth_call verify client against the verifier it deployed."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import pytest

from verifier.cli import main
from verifier.manifest import Artifact, SRSInfo, TensorSpec

pytestmark = pytest.mark.chain


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_deploy_embedded_writes_record(home, capsys, tmp_path):
    out = tmp_path / "dep.json"
    code, stdout, err = _run(capsys, "chain", "deploy", "--out", str(out), "--json")
    assert code == 0, err
    record = json.loads(out.read_text())
    assert json.loads(stdout) == record
    assert record["format"] == "verinfer.deployment/v1" and record["embedded"] is True
    assert record["oracle"]["address"].startswith("0x") and record["models"] == []
    assert record["solc"]["evm_version"] == "cancun"
    assert re.fullmatch(r"0x[0-9a-f]{64}", record["oracle"]["tx"])  # as the relayer writes them
    assert "OK: oracle" in err
    assert "no models are registered" in err and "deploying the oracle only" in err
    assert "0x" + "ab" * 32 not in err  # nothing key-like printed (no keys exist here anyway)


def test_deploy_default_path_is_under_home(home, capsys):
    code, _, err = _run(capsys, "chain", "deploy")
    assert code == 0, err
    assert len(list((home / "deployments").glob("*.json"))) == 1


def test_a_second_deploy_keeps_the_first_deployment_record(home, capsys, anvil_chain, anvil_url):
    """Two oracles deployed to one chain: `<chain id>.json` names the newest, and the first's
    record is kept beside it under its oracle's address (before, the second deploy rewrote the
    file and the first oracle's address, with the requests and fees it holds, was nowhere)."""
    folder = home / "deployments"
    code, _, err = _run(capsys, "chain", "deploy", "--rpc", anvil_url)
    assert code == 0, err
    first = json.loads((folder / "31337.json").read_text())
    code, _, err = _run(capsys, "chain", "deploy", "--rpc", anvil_url)
    assert code == 0, err
    second = json.loads((folder / "31337.json").read_text())
    assert first["oracle"]["address"] != second["oracle"]["address"]
    kept = folder / f"31337-{first['oracle']['address']}.json"
    assert json.loads(kept.read_text()) == first and f"kept the earlier deployment record as {kept}" in err
    for record in (first, second):  # both oracles are on chain, as their records say
        assert anvil_chain.w3.eth.get_code(record["oracle"]["address"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(["31337.json", kept.name])


def test_deploy_refuses_an_existing_out_file_before_sending_anything(home, capsys, tmp_path,
                                                                     anvil_chain, anvil_url):
    """`--out FILE` that exists (maybe the only record of an earlier oracle) is refused in one
    line, exit 2, before any transaction; the file is unchanged."""
    out = tmp_path / "dep.json"
    out.write_text('{"oracle": {"address": "0xearlier"}}\n')
    nonce = anvil_chain.w3.eth.get_transaction_count(anvil_chain.sender)
    code, stdout, err = _run(capsys, "chain", "deploy", "--rpc", anvil_url, "--out", str(out))
    assert code == 2 and "exists; a deployment record is never overwritten" in err, err
    assert len(err.strip().splitlines()) == 1 and stdout == ""
    assert out.read_text() == '{"oracle": {"address": "0xearlier"}}\n'
    assert anvil_chain.w3.eth.get_transaction_count(anvil_chain.sender) == nonce


@pytest.mark.parametrize("argv, message", [
    (["--package", "/nonexistent"], "no circuit package"),
    (["--policy", "either"], "needs --signer"),
    (["--signer", "0x1234"], "not an address"),
    (["--rpc", "http://127.0.0.1:9"], "cannot reach"),
])
def test_deploy_usage_errors_exit_2(home, capsys, argv, message):
    code, _, err = _run(capsys, "chain", "deploy", *argv)
    assert code == 2 and message in err, err


@pytest.fixture(scope="session")
def iris_package(iris_proofs, tmp_path_factory):
    """A folder shaped like the prover's circuit package, holding what `chain deploy` reads
    (manifest.json and Verifier.json) for the session's iris circuit."""
    from verifier.manifest import Manifest

    c = iris_proofs.circuit
    folder = tmp_path_factory.mktemp("pkg")
    onnx = (c.workdir / "model.onnx").read_bytes()
    manifest = Manifest(
        name="iris_mlp", model_sha256=hashlib.sha256(onnx).hexdigest(), ezkl_version="23.0.5",
        solc_version="0.8.37", input_visibility="public",
        input=TensorSpec(name="input", datatype="FP32", shape=(1, 4), scale=c.input_scale),
        outputs=(TensorSpec(name="logits", datatype="FP32", shape=(1, 3), scale=c.input_scale),
                 TensorSpec(name="label", datatype="INT64", shape=(1,), scale=0)),
        label_output=1, srs=SRSInfo(logrows=c.logrows, sha256="00" * 32, source="development",
                                    insecure=True),
        artifacts={}, calibration={}, preflight={})
    v = c.verifier
    vj = folder / "Verifier.json"
    vj.write_text(json.dumps(
        {"abi": v.abi, "bytecode": v.bytecode, "deployed_bytecode": v.deployed_bytecode}))
    (folder / "settings.json").write_bytes((c.workdir / "settings.json").read_bytes())
    manifest = manifest.model_copy(update={"artifacts": {n: Artifact(
        sha256=hashlib.sha256((folder / n).read_bytes()).hexdigest(),
        bytes=(folder / n).stat().st_size) for n in ("Verifier.json", "settings.json")}})
    (folder / "manifest.json").write_bytes(manifest.canonical_bytes())
    return folder


@pytest.mark.ezkl
def test_deploy_with_no_package_deploys_the_registered_models(home, capsys, tmp_path,
                                                              iris_package):
    """No --package: every registered model whose circuit takes a public input is deployed
    and registered; a hashed-input one is left out with a note."""
    from verifier.config import Settings
    from verifier.manifest import Manifest
    from verifier.packages import package_dir, point_name

    settings = Settings()
    manifest = Manifest.load(iris_package / "manifest.json")
    shutil.copytree(iris_package, package_dir(settings, manifest.package_id))
    point_name(settings, "iris_mlp", manifest.package_id)
    hashed = manifest.model_copy(update={"name": "iris_hashed", "input_visibility": "hashed"})
    package_dir(settings, hashed.package_id).mkdir()
    (package_dir(settings, hashed.package_id) / "manifest.json").write_bytes(
        hashed.canonical_bytes())
    point_name(settings, "iris_hashed", hashed.package_id)

    out = tmp_path / "dep.json"
    code, _, err = _run(capsys, "chain", "deploy", "--out", str(out))
    assert code == 0, err
    (m,) = json.loads(out.read_text())["models"]
    assert m["name"] == "iris_mlp" and m["model_id"] == "0x" + manifest.model_sha256
    assert m["package"] == str(package_dir(settings, manifest.package_id))
    assert re.fullmatch(r"0x[0-9a-f]{64}", m["register_tx"])
    assert "note: iris_hashed left out: its circuit hashes its input" in err


def test_deploy_refuses_a_named_package_whose_circuit_hashes_its_input(home, capsys, tmp_path,
                                                                      iris_package):
    """docs/contracts.md: the oracle binds a request to the proof's input instances, so a
    circuit that hashes its input must never be registered. Named with --package (not left out
    with a note, as without it), the package is refused before anything is deployed; its
    verifier and settings are intact, so the input's visibility is the one reason."""
    from verifier.manifest import Manifest

    folder = tmp_path / "hashed"
    shutil.copytree(iris_package, folder)
    manifest = Manifest.load(folder / "manifest.json")
    (folder / "manifest.json").write_bytes(
        manifest.model_copy(update={"input_visibility": "hashed"}).canonical_bytes())
    out = tmp_path / "dep.json"
    code, _, err = _run(capsys, "chain", "deploy", "--package", str(folder), "--out", str(out))
    assert code == 2 and "the oracle needs a circuit with public input" in err, (code, err)
    (line,) = [ln for ln in err.splitlines() if ln.startswith("verinfer: error:")]
    assert "(this one is 'hashed')" in line and "Traceback" not in err, err
    assert not out.exists() and "OK: oracle" not in err  # nothing deployed
    # the same folder with its input public again deploys: the refusal was for the visibility
    (folder / "manifest.json").write_bytes(manifest.canonical_bytes())
    code, _, err = _run(capsys, "chain", "deploy", "--package", str(folder), "--out", str(out))
    assert code == 0 and out.exists(), err


@pytest.mark.ezkl
def test_deploy_on_anvil_with_package(home, capsys, tmp_path, anvil_url, iris_package,
                                      iris_proofs):
    from contracts.chain import connect
    from contracts.deploy import oracle_abi
    from verifier.onchain import verify_onchain

    out = tmp_path / "dep.json"
    signer = "0x" + "12" * 20
    code, _, err = _run(capsys, "chain", "deploy", "--rpc", anvil_url, "--package",
                        str(iris_package), "--policy", "either", "--signer", signer,
                        "--out", str(out))
    assert code == 0, err
    record = json.loads(out.read_text())
    assert record["chain_id"] == 31337 and record["embedded"] is False
    (m,) = record["models"]
    assert m["input_length"] == 4 and m["input_scale"] == iris_proofs.circuit.input_scale
    chain = connect(anvil_url)
    oracle = chain.contract(record["oracle"]["address"], oracle_abi())
    signer_, length, scale, policy, verifier, n_inst, min_fee, max_abs, payee, accrued = \
        oracle.functions.models(bytes.fromhex(m["model_id"][2:])).call()
    assert payee == chain.sender == m["payee"] and accrued == 0  # the deployer, by default
    assert (signer_.lower(), length, scale, policy, verifier) == (signer, 4, m["input_scale"],
                                                                 3, m["verifier"])
    # 4 inputs, 3 logits, the label; EZKL's default range checks: 2 legs of 2^14
    ra = iris_proofs.circuit.settings["run_args"]
    assert (n_inst, min_fee) == (8, 0) == (m["num_instances"], m["min_fee"])
    assert max_abs == ra["decomp_base"] ** ra["decomp_legs"] // 2 - 1 == m["max_abs_input"]
    p = iris_proofs.a
    verify_onchain(anvil_url, m["verifier"], p.proof, p.instances)


def test_withdraw_fees_pays_the_payee_on_anvil(home, capsys, anvil_chain, anvil_url):
    """`chain withdraw-fees`: the accrued fees of a model go to its payee (not the sender of
    the command); nothing accrued is a note, not an error; bad input (another contract than
    the oracle included) exits 2 before sending."""
    from world import M_EITHER, M_SIG, make_world

    w = make_world(anvil_chain)
    payee = w.w3.eth.accounts[5]
    w.chain.transact(w.oracle.functions.setPayee(M_EITHER, payee))
    rid, _ = w.request(fee=7000)
    w.fulfil_sig(rid, 1, *w.sign(rid, 1))
    before, sender0 = w.w3.eth.get_balance(payee), w.w3.eth.get_balance(w.chain.sender)
    either, sig = "0x" + M_EITHER.hex(), "0x" + M_SIG.hex()
    base = ("chain", "withdraw-fees", "--rpc", anvil_url, "--oracle", w.oracle.address)
    code, _, err = _run(capsys, *base, either, sig)
    assert code == 0, err
    assert f"OK: {either}: paid 7000 wei to {payee}" in err
    assert f"note: {sig}: no fees accrued" in err
    assert w.w3.eth.get_balance(payee) == before + 7000
    assert w.w3.eth.get_balance(w.chain.sender) < sender0  # the sender paid gas, got no fee
    code, _, err = _run(capsys, *base, either)
    assert code == 0 and "no fees accrued" in err
    for argv, message in [((*base, "0x" + "09" * 32), "not registered"),
                          ((*base[:-1], "0x1234", either), "--oracle is not an address"),
                          ((*base[:-1], w.w3.eth.accounts[6], either), "no contract at"),
                          # another contract (a traceback: web3's ContractLogicError, exit 1)
                          ((*base[:-1], w.mock.address, either), "is not a VerinferOracle"),
                          ((*base[:-1], w.consumer().address, either), "is not a VerinferOracle")]:
        code, _, err = _run(capsys, *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_deploy_key_file_must_be_the_owners_alone_and_is_never_echoed(home, capsys, tmp_path,
                                                                     anvil_chain, anvil_url):
    """docs/contracts.md: `--key-file` (0600 enforced; the key is never printed). A key file
    group or others can read or write is refused before any transaction, so is one that holds
    no key (without echoing it); the owner's own file deploys from that account."""
    import os

    from eth_account import Account

    acct = Account.create()
    key_hex = acct.key.hex().removeprefix("0x")
    path = tmp_path / "deployer.key"
    path.write_text(key_hex + "\n")
    out = tmp_path / "dep.json"
    args = ("chain", "deploy", "--rpc", anvil_url, "--key-file", str(path), "--out", str(out))
    nonce = anvil_chain.w3.eth.get_transaction_count(acct.address)
    for mode in (0o644, 0o640, 0o620, 0o602):
        os.chmod(path, mode)
        code, stdout, err = _run(capsys, *args)
        assert code == 2 and "key file is readable by others; chmod 600 it" in err, (mode, err)
        assert key_hex not in err + stdout and not out.exists()
    os.chmod(path, 0o600)
    path.write_text("not a key but a secret-looking " + "ab" * 31 + "\n")
    code, stdout, err = _run(capsys, *args)
    assert code == 2 and "not a hex private key" in err and "ab" * 31 not in err + stdout, err
    assert anvil_chain.w3.eth.get_transaction_count(acct.address) == nonce  # nothing was sent
    # the owner's own key file, of an account with no ether: the node refuses the deployment,
    # one line, exit 2 (before: the node's Web3RPCError escaped as a traceback, exit 1)
    path.write_text(key_hex + "\n")
    code, stdout, err = _run(capsys, *args)
    (line,) = [ln for ln in err.splitlines() if ln.startswith("verinfer: error:")]
    assert code == 2 and "Insufficient funds" in line and "Traceback" not in err, err
    assert key_hex not in err + stdout and not out.exists()
    # funded: the oracle is deployed from that account
    tx = anvil_chain.w3.eth.send_transaction({"from": anvil_chain.w3.eth.accounts[0],
                                              "to": acct.address, "value": 10**18})
    anvil_chain.w3.eth.wait_for_transaction_receipt(tx)
    code, stdout, err = _run(capsys, *args, "--json")
    assert code == 0, err
    assert json.loads(out.read_text())["deployer"] == acct.address
    assert key_hex not in err + stdout
