"""Label-only circuit packages (``verinfer models add --public-output label``) on a real anvil
chain with real EZKL proofs: the oracle, the relayer and the offline verifier handle them
next to logits packages; a label-only proof with a tampered label, or sent for another
request's input, is refused on chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prover_support import run_cli
from relay_world import answer, consumer, held_out, onnx_label, quantized, request

from contracts import deploy

pytestmark = [pytest.mark.chain, pytest.mark.ezkl]

IRIS_LABEL = "iris_label"


@pytest.fixture(scope="session")
def iris_label_package(packages_home) -> Path:
    """iris_mlp registered label-only, through the real command."""
    run_cli("models", "add", "iris_mlp", "--name", IRIS_LABEL, "--public-output", "label",
            home=packages_home, check=True)
    return packages_home / "packages" / (packages_home / "names" / IRIS_LABEL).read_text().strip()


def _registered(record: dict, name: str) -> dict:
    return next(m for m in record["models"] if m["name"] == name)


def test_label_only_package_records_its_shape(iris_package, iris_label_package):
    from verifier.packages import read_manifest

    m, logits = read_manifest(iris_label_package), read_manifest(iris_package)
    assert m.public_output == "label" and logits.public_output == "logits"
    assert [o.name for o in m.outputs] == ["label"] and m.label_output == 0
    assert m.model_sha256 != logits.model_sha256  # model.onnx keeps only the label output
    # a logits manifest hashes as before the field existed: the field is not in its bytes
    assert b"public_output" not in (iris_package / "manifest.json").read_bytes()
    assert b'"public_output":"label"' in (iris_label_package / "manifest.json").read_bytes()
    assert deploy.load_package(iris_label_package).num_instances == 4 + 1
    assert deploy.load_package(iris_package).num_instances == 4 + 3 + 1


def test_relayer_fulfils_label_only_and_logits_models(anvil_chain, relay_anvil_url,
                                                      packages_home, iris_package,
                                                      iris_label_package):
    chain = anvil_chain
    record = deploy.deploy_all(chain, [iris_package, iris_label_package], policy="proof")
    oracle = record["oracle"]["address"]
    o = chain.contract(oracle, deploy.oracle_abi())
    asked = []
    for name, offset in (("iris_mlp", 0), (IRIS_LABEL, 2)):
        m = _registered(record, name)
        mid = bytes.fromhex(m["model_id"][2:])
        assert o.functions.models(mid).call()[5] == m["num_instances"]  # numInstances on chain
        cons = consumer(chain, oracle, mid)
        for x in held_out("iris_mlp", offset + 2)[offset:]:
            q = quantized(x, m["input_scale"])
            want = onnx_label(Path(m["package"]) / "model.onnx", q, m["input_scale"], (1, 4))
            asked.append((cons, request(chain, cons, q), want))
    assert _registered(record, IRIS_LABEL)["public_output"] == "label"

    proc = run_cli("relay", "--rpc", relay_anvil_url, "--oracle", oracle, "--fee-margin", "0",
                   "--once", "--json", home=packages_home)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["fulfilled"] == ["0x" + rid.hex() for _, rid, _ in asked]
    assert not out["skipped"] and not out["failed"]
    for cons, rid, want in asked:
        assert answer(cons, rid) == (True, want)


def test_tampered_or_misdirected_label_only_proof_is_refused(anvil_chain, iris_label_package,
                                                             tmp_path):
    from contracts.chain import ContractRevert
    from prover.package import CircuitPackage
    from prover.proving import Prover
    from verifier.bundle import ProofBundle
    from verifier.errors import LinkBroken
    from verifier.onchain import proof_parts
    from verifier.proofs import verify_bundle

    chain = anvil_chain
    record = deploy.deploy_all(chain, [iris_label_package], policy="proof")
    m = _registered(record, IRIS_LABEL)
    o = chain.contract(record["oracle"]["address"], deploy.oracle_abi())
    cons = consumer(chain, o.address, bytes.fromhex(m["model_id"][2:]))
    xa, xb = (x.reshape(1, 4).astype("float32") for x in held_out("iris_mlp", 2))
    bundle = Prover(CircuitPackage.open(iris_label_package, check=[])).prove(xa)
    verify_bundle(bundle, iris_label_package)  # offline: the label is the one public output
    proof, instances = proof_parts(bundle.proof)
    assert len(instances) == 5 and instances[-1] == bundle.outputs.label

    path = bundle.write(tmp_path / "bundle")
    raw = json.loads(path.read_text())
    raw["outputs"]["label"] = (bundle.outputs.label + 1) % 3
    raw["agreement"]["circuit_label"] = raw["outputs"]["label"]
    with pytest.raises(LinkBroken, match="label"):
        verify_bundle(ProofBundle.model_validate(raw), iris_label_package)

    def refused(rid, inst) -> str:
        with pytest.raises(ContractRevert) as info:
            chain.transact(o.functions.fulfillWithProof(rid, proof, inst))
        return info.value.error

    rid_a = request(chain, cons, quantized(xa, m["input_scale"]))
    rid_b = request(chain, cons, quantized(xb, m["input_scale"]))
    other = (instances[-1] + 1) % 3
    assert refused(rid_a, [*instances[:-1], other]) == "ProofRejected"  # tampered label
    assert refused(rid_b, instances) == "InputMismatch"  # another request's input
    assert refused(rid_a, [*instances[:-1], other, instances[-1]]) == "InstanceCountMismatch"
    chain.transact(o.functions.fulfillWithProof(rid_a, proof, instances))
    assert answer(cons, rid_a) == (True, bundle.outputs.label)
    assert answer(cons, rid_b) == (False, 0)


def test_relayer_skips_a_model_registered_with_another_shape(anvil_chain, relay_anvil_url,
                                                             packages_home, iris_label_package):
    """The label-only package's model registered with the logits shape's instance count: the
    relayer skips its requests, with the reason, before proving (the oracle would refuse the
    proof with InstanceCountMismatch)."""
    chain = anvil_chain
    pm = deploy.load_package(iris_label_package)
    oracle, _ = deploy.deploy_oracle(chain, 600)
    verifier, _ = deploy.deploy_verifier(chain, pm.verifier)
    deploy.register_model(chain, oracle, model_id=pm.model_id, verifier=verifier,
                          input_length=pm.input_length, input_scale=pm.input_scale,
                          policy="proof", signer=None, num_instances=pm.num_instances + 3)
    cons = consumer(chain, oracle.address, pm.model_id)
    rid = request(chain, cons, quantized(held_out("iris_mlp", 1)[0], pm.input_scale))

    proc = run_cli("relay", "--rpc", relay_anvil_url, "--oracle", oracle.address,
                   "--fee-margin", "0", "--once", "--json", "--model", IRIS_LABEL,
                   home=packages_home)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["skipped"] == ["0x" + rid.hex()] and not out["fulfilled"] and not out["failed"]
    assert "takes 8 public instances, this package's proofs have 5" in proc.stderr
    assert answer(cons, rid) == (False, 0)
