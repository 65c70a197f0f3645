"""A model whose graph lists its label before its logits (outputs ``label, logits``, as
classifiers exported with a label and probabilities are): the oracle reads the label from a
proof's last public instance, which for such a circuit is the last logit. ``chain deploy``
refuses it, the relayer does not prove for it, and the same model registered with
``--public-output label`` is deployed and answered with its label (real EZKL, anvil, the
real ``verinfer`` command)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prover_support import run_cli
from relay_world import answer, consumer, quantized, request

from contracts import deploy

pytestmark = [pytest.mark.chain, pytest.mark.ezkl]

# logits = the first three inputs; this input's label is 0 and its last logit 0.25
X = np.array([[2.0, 0.5, 0.25, 0.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def label_first(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A data dir with the model registered as built (label_first: public outputs label,
    logits) and label-only (label_first_label); their package folders."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path_factory.mktemp("label-first")
    w = np.eye(4, 3, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W", "b"], ["logits"]),
         helper.make_node("ArgMax", ["logits"], ["label"], axis=-1, keepdims=0)],
        "label_first", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(3, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    cal = np.random.default_rng(0).uniform(-2, 2, size=(20, 4)).astype(np.float32)
    (folder / "cal.json").write_text(json.dumps({"inputs": [
        {"name": "input", "shape": [20, 4], "datatype": "FP32", "data": cal.ravel().tolist()}]}))
    home = folder / "home"
    for name, extra in (("label_first", ()), ("label_first_label", ("--public-output", "label"))):
        run_cli("models", "add", folder / "model.onnx", "--name", name, "--calibration-data",
                folder / "cal.json", *extra, home=home, check=True)
    pkg = [home / "packages" / (home / "names" / n).read_text().strip()
           for n in ("label_first", "label_first_label")]
    return home, pkg[0], pkg[1]


def test_deploy_refuses_a_circuit_whose_label_is_not_its_last_instance(
        label_first, anvil_chain, relay_anvil_url, tmp_path):
    from verifier.packages import read_manifest

    home, pkg, label_pkg = label_first
    m = read_manifest(pkg)
    assert [o.name for o in m.outputs] == ["label", "logits"] and m.label_output == 0
    assert not m.label_is_last_instance and read_manifest(label_pkg).label_is_last_instance
    nonce = anvil_chain.w3.eth.get_transaction_count(anvil_chain.sender)
    out = tmp_path / "dep.json"
    proc = run_cli("chain", "deploy", "--rpc", relay_anvil_url, "--package", pkg,
                   "--out", out, home=home)
    assert proc.returncode == 2, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("verinfer: error:")]
    assert "reads the label from a proof's last public instance" in line
    assert "'--public-output label'" in line and "Traceback" not in proc.stderr
    assert anvil_chain.w3.eth.get_transaction_count(anvil_chain.sender) == nonce
    assert not out.exists()

    # no --package: the registered models; label_first is left out, its label-only twin is not
    proc = run_cli("chain", "deploy", "--rpc", relay_anvil_url, "--out", out, home=home)
    assert proc.returncode == 0, proc.stderr
    assert "note: label_first left out: the oracle reads the label" in proc.stderr
    (rec,) = json.loads(out.read_text())["models"]
    assert rec["name"] == "label_first_label" and rec["num_instances"] == 4 + 1
    mid = bytes.fromhex(rec["model_id"][2:])
    cons = consumer(anvil_chain, json.loads(out.read_text())["oracle"]["address"], mid)
    rid = request(anvil_chain, cons, quantized(X, rec["input_scale"]))
    proc = run_cli("relay", "--rpc", relay_anvil_url, "--oracle", cons.functions.oracle().call(),
                   "--fee-margin", "0", "--once", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["fulfilled"] == ["0x" + rid.hex()]
    assert answer(cons, rid) == (True, 0)


def test_relayer_does_not_prove_for_a_circuit_whose_label_is_not_its_last_instance(
        label_first, anvil_chain, relay_anvil_url):
    """The model registered by hand (registerModel, not chain deploy) with its circuit's
    instance count: the relayer skips its request before proving. Before, it sent the proof,
    and the consumer was called back with the last logit (0.25 at the output scale) as the
    "proven" label of an input whose label is 0."""
    from verifier.packages import read_manifest

    home, pkg, _ = label_first
    m = read_manifest(pkg)
    v = json.loads((pkg / "Verifier.json").read_text())
    chain = anvil_chain
    oracle, _ = deploy.deploy_oracle(chain, 600)
    verifier, _ = deploy.deploy_verifier(chain, deploy.VerifierArtifact(
        v["abi"], v["bytecode"], v["deployed_bytecode"]))
    deploy.register_model(chain, oracle, model_id=bytes.fromhex(m.model_sha256),
                          verifier=verifier, input_length=4, input_scale=m.input.scale,
                          policy="proof", signer=None, num_instances=m.num_instances)
    cons = consumer(chain, oracle.address, bytes.fromhex(m.model_sha256))
    rid = request(chain, cons, quantized(X, m.input.scale))

    proc = run_cli("relay", "--rpc", relay_anvil_url, "--oracle", oracle.address,
                   "--fee-margin", "0", "--once", "--json", "--model", "label_first", home=home)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["skipped"] == ["0x" + rid.hex()] and not out["fulfilled"], proc.stderr
    assert "reads the label from a proof's last public instance" in proc.stderr
    assert answer(cons, rid) == (False, 0)
