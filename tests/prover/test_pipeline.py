"""Real EZKL end to end on iris_mlp: add, show, prove, verify; and every way to get it wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from prover_support import copy_package, dead_and_running, oip_request, run_cli

from models import load_split
from verifier.bundle import ProofBundle
from verifier.errors import DigestMismatch, LinkBroken, ProofInvalid
from verifier.manifest import Manifest
from verifier.proofs import ezkl_verify, verify_bundle

pytestmark = pytest.mark.ezkl
REPO = Path(__file__).resolve().parents[2]


def one_line_error(proc) -> str:
    """The one error line (progress lines may precede it; no traceback)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("verinfer: error:", "FAIL:"))]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


# --- the happy path -----------------------------------------------------------


def test_package_is_complete_and_content_addressed(iris_package):
    manifest = Manifest.load(iris_package / "manifest.json")
    assert iris_package.name == manifest.package_id
    manifest.check_artifacts(iris_package)  # every file hashes as recorded
    assert set(manifest.artifacts) >= {"model.onnx", "settings.json", "model.compiled", "vk.key",
                                       "pk.key", "kzg.srs", "Verifier.sol", "Verifier.json"}
    assert manifest.srs.insecure and manifest.srs.source == "development"
    assert manifest.ezkl_version == "23.0.5"
    assert manifest.solc_version.startswith("0.8.37")
    verifier = json.loads((iris_package / "Verifier.json").read_text())
    assert verifier["bytecode"].startswith("0x60") and verifier["abi"]
    assert manifest.preflight["verifier_fits"]
    # small circuit: one inner column (cheaper on-chain verification, see prover/build.py)
    assert manifest.calibration["num_inner_cols"] == 1 and manifest.preflight["logrows"] <= 12
    # The label must survive quantisation on the whole held-out split.
    agreement = manifest.preflight["agreement"]
    assert agreement["samples"] == 45 and agreement["percent"] == 100.0
    assert not list((iris_package.parent).glob(".tmp-*"))


def test_ezkl_cache_is_in_the_data_dir(prover_home, iris_package):
    """EZKL's own cache goes under VERINFER_HOME (EZKL_REPO_PATH), not ~/.ezkl."""
    assert (prover_home / "ezkl" / "cache").is_dir()
    assert any((prover_home / "ezkl" / "cache").iterdir())


def test_show_prints_preflight(prover_home, iris_package):
    proc = run_cli("models", "show", "iris_mlp", "--json", home=prover_home, check=True)
    shown = json.loads(proc.stdout)
    assert shown["preflight"]["logrows"] >= 10
    assert {o["op"] for o in shown["preflight"]["ops"]} >= {"Gemm", "ArgMax"}
    text = run_cli("models", "show", "iris_mlp", home=prover_home, check=True).stdout
    assert "INSECURE" in text and "agreement   45/45" in text


def test_prove_then_verify(prover_home, iris_bundle):
    bundle = ProofBundle.load(iris_bundle)
    _, _x_test, _, y_test = load_split("iris_mlp")
    assert bundle.outputs.label == y_test[0]
    assert bundle.agreement.agree and bundle.agreement.float_label == bundle.outputs.label
    proc = run_cli("verify", iris_bundle.parent, "--allow-dev-srs", home=prover_home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("OK:")


def test_two_proofs_written_into_one_folder_both_finish_whole(iris_bundle, tmp_path, monkeypatch):
    """Two 'verinfer prove --out DIR' into one folder shared one temporary name,
    bundle.json.tmp: one renamed the other's file (half-written, were they in step) and the
    other's rename failed. Here both have written before either renames (a barrier in
    os.replace), the order that broke it; now the last rename wins and nothing is left."""
    import threading

    first = ProofBundle.load(iris_bundle)
    second = first.model_copy(update={"created_at": "2000-01-01T00:00:00+00:00"})
    both_written = threading.Barrier(2, timeout=60)
    real_replace = os.replace

    def replace(src, dst, *args, **kw):
        if Path(dst).name == "bundle.json":
            both_written.wait()
        return real_replace(src, dst, *args, **kw)

    monkeypatch.setattr(os, "replace", replace)
    failed = []

    def write(bundle):
        try:
            bundle.write(tmp_path / "out")
        except Exception as exc:  # noqa: BLE001
            failed.append(exc)

    threads = [threading.Thread(target=write, args=(b,)) for b in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failed == []
    assert ProofBundle.load(tmp_path / "out") in (first, second)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["bundle.json"]
    assert (tmp_path / "out" / "bundle.json").stat().st_mode & 0o777 == 0o644


def test_bundle_verifies_with_ezkl_directly(iris_bundle, iris_package, tmp_path):
    import ezkl

    proof = tmp_path / "proof.json"
    proof.write_text(json.dumps(ProofBundle.load(iris_bundle).proof))
    assert ezkl.verify(str(proof), str(iris_package / "settings.json"),
                       str(iris_package / "vk.key"), str(iris_package / "kzg.srs")) is True


# --- tampered proofs and bundles are rejected ---------------------------------


def _tampered(bundle_path: Path, tmp_path: Path, edit) -> Path:
    raw = json.loads(bundle_path.read_text())
    edit(raw)
    out = tmp_path / "tampered"
    out.mkdir(parents=True)
    (out / "bundle.json").write_text(json.dumps(raw))
    return out


def test_bit_flipped_proof_is_rejected(prover_home, iris_bundle, tmp_path):
    """The same bit flipped in both spellings of the proof (the byte list and hex_proof), so
    that EZKL's verifier is what refuses it (before, hex_proof's flip was one byte off, and
    the bundle failed the check that both spellings hold the same bytes)."""
    def flip(raw):
        hex_proof = raw["proof"]["hex_proof"]
        assert hex_proof.startswith("0x")
        raw["proof"]["proof"][40] ^= 0x01
        at = 2 + 2 * 40  # byte 40 of hex_proof
        raw["proof"]["hex_proof"] = hex_proof[:at] + format(int(hex_proof[at:at + 2], 16) ^ 1, "02x") \
            + hex_proof[at + 2:]
        assert bytes.fromhex(raw["proof"]["hex_proof"][2:]) == bytes(raw["proof"]["proof"])

    proc = run_cli("verify", _tampered(iris_bundle, tmp_path, flip), "--allow-dev-srs",
                   home=prover_home)
    assert proc.returncode == 1
    assert one_line_error(proc).startswith("FAIL: EZKL rejected the proof"), proc.stderr

    def flip_one_spelling(raw):  # the byte list only: the two spellings no longer agree
        raw["proof"]["proof"][40] ^= 0x01

    proc = run_cli("verify", _tampered(iris_bundle, tmp_path / "one", flip_one_spelling),
                   "--allow-dev-srs", home=prover_home)
    assert proc.returncode == 1
    assert one_line_error(proc) == "FAIL: the proof's 'hex_proof' and 'proof' hold different bytes"


def test_flipped_proof_raises_proof_invalid(iris_bundle, iris_package):
    """Both spellings of the proof bytes flipped alike: EZKL refuses the proof (flipping the
    byte list alone raised ProofInvalid for the spellings' mismatch, EZKL never asked)."""
    raw = json.loads(iris_bundle.read_text())
    raw["proof"]["proof"][100] ^= 0x80
    raw["proof"]["hex_proof"] = "0x" + bytes(raw["proof"]["proof"]).hex()
    with pytest.raises(ProofInvalid, match="EZKL rejected the proof"):
        verify_bundle(ProofBundle.model_validate(raw), iris_package)


def test_changed_input_or_label_breaks_the_link(iris_bundle, iris_package):
    raw = json.loads(iris_bundle.read_text())
    raw["input"]["data"][0] += 0.5
    with pytest.raises(LinkBroken, match="public input"):
        verify_bundle(ProofBundle.model_validate(raw), iris_package)
    raw = json.loads(iris_bundle.read_text())
    raw["outputs"]["label"] = (raw["outputs"]["label"] + 1) % 3
    with pytest.raises(LinkBroken, match="label"):
        verify_bundle(ProofBundle.model_validate(raw), iris_package)


def test_proof_against_another_models_vk_is_rejected(prover_home, iris_bundle, other_package):
    bundle = ProofBundle.load(iris_bundle)
    # The bundle names its package: checking it against another is a broken link ...
    with pytest.raises(LinkBroken):
        verify_bundle(bundle, other_package)
    proc = run_cli("verify", iris_bundle.parent, "--package", other_package, "--allow-dev-srs",
                   home=prover_home)
    assert proc.returncode == 1
    # ... and the proof itself does not verify under the other model's vk.
    with pytest.raises(ProofInvalid):
        ezkl_verify(bundle.proof, other_package / "settings.json", other_package / "vk.key",
                    other_package / "kzg.srs")


def test_verify_fails_on_altered_vk(iris_bundle, iris_package, tmp_path):
    pkg = copy_package(iris_package, tmp_path / "pkg")
    vk = bytearray((pkg / "vk.key").read_bytes())
    vk[-10] ^= 0xFF
    (pkg / "vk.key").write_bytes(bytes(vk))
    with pytest.raises(DigestMismatch, match="vk.key"):
        verify_bundle(ProofBundle.load(iris_bundle), pkg)


# --- unusable packages and inputs: one line, exit 2, nothing half-written ------


def _request(tmp_path: Path, x: np.ndarray) -> Path:
    p = tmp_path / "request.json"
    p.write_text(oip_request(x))
    return p


@pytest.mark.parametrize("artifact", ["pk.key", "settings.json"])
def test_altered_artifact_is_refused(prover_home, iris_package, tmp_path, artifact):
    pkg = copy_package(iris_package, tmp_path / "pkg")
    path = pkg / artifact
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    req = _request(tmp_path, np.array([[6.1, 2.8, 4.7, 1.2]]))
    proc = run_cli("prove", pkg, "--input", req, "--out", tmp_path / "out", home=prover_home)
    assert proc.returncode == 1  # a tampered package is a failed check (a missing file: 2)
    assert artifact in one_line_error(proc) and "manifest" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_wrong_version_manifest_is_refused(prover_home, iris_package, tmp_path):
    pkg = copy_package(iris_package, tmp_path / "pkg")
    raw = json.loads((pkg / "manifest.json").read_text())
    raw["ezkl_version"] = "22.0.0"
    (pkg / "manifest.json").write_text(json.dumps(raw))
    req = _request(tmp_path, np.array([[6.1, 2.8, 4.7, 1.2]]))
    proc = run_cli("prove", pkg, "--input", req, "--out", tmp_path / "out", home=prover_home)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "EZKL 22.0.0" in line and "23.0.5" in line


@pytest.mark.parametrize("x", [np.zeros((1, 5)), np.zeros((4,)), np.zeros((2, 4))],
                         ids=["5-features", "no-batch-axis", "batch-of-2"])
def test_wrong_shaped_input_is_refused(prover_home, iris_package, tmp_path, x):
    proc = run_cli("prove", "iris_mlp", "--input", _request(tmp_path, x), "--out",
                   tmp_path / "out", home=prover_home)
    assert proc.returncode == 2
    assert "shape" in one_line_error(proc)


def test_nan_and_malformed_inputs_are_refused(prover_home, iris_package, tmp_path):
    bad = tmp_path / "nan.json"
    bad.write_text(oip_request(np.array([[np.nan, 1, 1, 1]])).replace("NaN", "NaN"))
    proc = run_cli("prove", "iris_mlp", "--input", bad, "--out", tmp_path / "o", home=prover_home)
    assert proc.returncode == 2 and "NaN" in one_line_error(proc)
    bad.write_text('{"inputs": [')
    proc = run_cli("prove", "iris_mlp", "--input", bad, "--out", tmp_path / "o", home=prover_home)
    assert proc.returncode == 2 and "malformed JSON" in one_line_error(proc)


@pytest.mark.parametrize("tensor, why", [
    ({"data": [True, 2, 4, 1]}, "data must be numbers"),
    ({"data": [[6.1, 2.8], [4.7, 1.2]]}, "nested as [2, 2], not as shape [1, 4]"),
    ({"name": "x"}, "unknown input 'x'"),
    ({"datatype": "FP64", "data": [1e300, 2.8, 4.7, 1.2]}, "value out of range for FP32"),
    ({"datatype": "INT8", "data": [300, 2, 4, 1]}, "values out of range for INT8"),
    ({"datatype": "FLOAT"}, "unsupported datatype 'FLOAT'"),
    ({"datatype": "BOOL", "data": [1, 0, 1, 1]}, "datatype BOOL not accepted"),
], ids=["boolean", "nesting", "name", "fp64-overflow", "int8-range", "datatype", "bool-datatype"])
def test_prove_checks_a_request_as_the_server_does(prover_home, iris_package, tmp_path, tensor, why):
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [6.1, 2.8, 4.7, 1.2],
                        **tensor}]}
    (tmp_path / "r.json").write_text(json.dumps(body))
    proc = run_cli("prove", "iris_mlp", "--input", tmp_path / "r.json", "--out", tmp_path / "o", home=prover_home)
    assert proc.returncode == 2 and why in one_line_error(proc), proc.stderr
    assert not (tmp_path / "o").exists()  # refused before anything is made


def test_prove_refuses_what_the_circuit_cannot_compute_and_a_bad_out_in_one_line(prover_home, iris_package, tmp_path):
    big = tmp_path / "big.json"
    big.write_text(oip_request(np.array([[1e10, 2.8, 4.7, 1.2]], dtype=np.float32)))
    proc = run_cli("prove", "iris_mlp", "--input", big, "--out", tmp_path / "o", home=prover_home)
    assert proc.returncode == 2, proc.stderr
    assert "the circuit cannot compute this input" in one_line_error(proc)
    # EZKL's own print is folded into that line, not printed besides it
    assert [ln for ln in proc.stderr.splitlines() if "decomposition error" in ln] == [one_line_error(proc)]
    # an INT8 request is cast as the server casts it, and proved
    (tmp_path / "int8.json").write_text(oip_request(np.array([[6, 3, 5, 1]]), datatype="INT8"))
    ok = run_cli("prove", "iris_mlp", "--input", tmp_path / "int8.json", "--out", tmp_path / "int8", home=prover_home)
    assert ok.returncode == 0, ok.stderr
    # --out that cannot be a folder: refused before proving, not after
    (tmp_path / "a-file").write_text("x")
    for out, why in ((tmp_path / "a-file", "not a folder"), (tmp_path / "a-file" / "sub", "cannot make the folder")):
        proc = run_cli("prove", "iris_mlp", "--input", tmp_path / "int8.json", "--out", out, home=prover_home)
        assert proc.returncode == 2 and why in one_line_error(proc), proc.stderr
        assert "Proving" not in proc.stderr


@pytest.mark.parametrize("log_format", ["%(asctime)s [worker 3] %(levelname)s %(message)s", "json"])
def test_the_witness_failure_reason_is_ezkls_message_whatever_the_log_format(prover_home, iris_package, log_format):
    """EZKL says why a witness failed in a log record, which reached the EZKL log through the
    process's log handler: a prover worker's format ("time worker N message") or the server's
    JSON. The reason was cut out of that line at its first "[", so a prefix holding one kept the
    worker's words, and a JSON line its closing quote and brace; now the records are written
    there bare (prover.progress.captured_output) and the reason is EZKL's line as it said it."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import logging
        from pathlib import Path
        import numpy as np
        from prover.ezkl_backend import use_ezkl_dir
        from prover.package import CircuitPackage
        from prover.proving import Prover
        from server.logs import configure
        from verifier.config import Settings

        if {log_format!r} == "json":
            configure("json", "warning")
        else:
            logging.basicConfig(level=logging.WARNING, format={log_format!r})
        use_ezkl_dir(Settings(home=Path({str(prover_home)!r})))
        prover = Prover(CircuitPackage.open(Path({str(iris_package)!r})))
        try:
            prover.prove(np.array([[1e10, 2.8, 4.7, 1.2]], np.float32))
        except Exception as exc:
            print(exc)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    why = proc.stdout.strip()
    assert why.startswith("the circuit cannot compute this input: [tensor] decomposition error: integer "), why
    assert why.endswith(" and n 4 (a value is beyond the range the circuit was calibrated for)"), why


def test_bad_onnx_is_refused_and_leaves_nothing(home, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    np.save(tmp_path / "cal.npy", np.zeros((4, 4), dtype=np.float32))
    proc = run_cli("models", "add", bad, "--calibration-data", tmp_path / "cal.npy", home=home)
    assert proc.returncode == 2
    assert "not a valid ONNX model" in one_line_error(proc)
    assert not (home / "names").exists()
    assert not list((home / "packages").glob("*")) if (home / "packages").exists() else True


def _graph(tmp_path, name, nodes, inputs, outputs, initializers=()):
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
              tmp_path / f"{name}.onnx")
    return tmp_path / f"{name}.onnx"


@pytest.mark.parametrize("shape, says", [(None, "has no outputs"), ([], "is a scalar")],
                         ids=["no-output", "scalar-output"])
def test_a_model_with_no_class_axis_is_refused_in_one_line(home, tmp_path, shape, says):
    # ensure_label_output took output[0] and its first axis: an IndexError traceback, exit 1
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    outputs = [] if shape is None else [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    model = _graph(tmp_path, "odd", [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)],
                   [x], outputs)
    np.save(tmp_path / "cal.npy", np.ones((3, 1, 4), dtype=np.float32))
    proc = run_cli("models", "add", model, "--calibration-data", tmp_path / "cal.npy", home=home)
    assert proc.returncode == 2
    assert says in one_line_error(proc)
    assert not (home / "names").exists()


def test_a_model_with_external_weights_is_refused_in_one_line(home, tmp_path):
    # the package kept the .onnx file alone, without its weights (nor them in the model's
    # hash), and EZKL failed with "Translating proto model to model"
    import onnx

    model = onnx.load(REPO / "models" / "artifacts" / "iris_mlp" / "model.onnx")
    onnx.save_model(model, tmp_path / "ext.onnx", save_as_external_data=True,
                    location="ext.data", size_threshold=0)
    np.save(tmp_path / "cal.npy", load_split("iris_mlp")[0][:20])
    proc = run_cli("models", "add", tmp_path / "ext.onnx", "--calibration-data",
                   tmp_path / "cal.npy", home=home)
    assert proc.returncode == 2
    assert "external data" in one_line_error(proc)
    assert not (home / "names").exists()


def test_the_label_added_to_logits_named_label_is_another_tensor(tmp_path):
    # a model whose logits are named "label": the ArgMax verinfer adds wrote "label" too, a
    # graph that feeds itself ("EZKL cannot turn this model into a circuit: Loop detected")
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from prover import onnx_model

    w = np.array([[1, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 1]], dtype=np.float32)
    path = _graph(tmp_path, "clash", [helper.make_node("MatMul", ["x", "W"], ["label"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                  [helper.make_tensor_value_info("label", TensorProto.FLOAT, [1, 3])],
                  [numpy_helper.from_array(w, "W")])
    model = onnx_model.load(path)
    assert onnx_model.ensure_label_output(model)
    info = onnx_model.describe(model, True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, label = sess.run([o.name for o in info.outputs],
                             {"x": np.array([[0.0, 0.0, 1.0, 0.0]], dtype=np.float32)})
    assert info.outputs[0].name == "label" and logits.tolist() == [[0.0, 0.0, 3.0]]
    assert info.outputs[info.label_output].name != "label" and label.tolist() == [2]


def test_a_dead_builds_folder_is_removed_by_the_next_build_a_running_ones_is_not(home):
    # a 'models add' killed (SIGKILL, the OOM killer, SIGTERM) ran no clean-up: its folder
    # under packages/, with a proving key of up to GBs, stayed there for good

    from prover.build import build_package, reference_source
    from verifier.config import Settings
    from verifier.errors import UnsupportedModel

    class Refuses:
        version = "test"

        def calibrate(self, *a, **k):
            raise UnsupportedModel("not this one")

    packages = home / "packages"
    with dead_and_running(packages, ".tmp-"):
        with pytest.raises(UnsupportedModel):
            build_package(Settings(), reference_source("iris_mlp"), backend=Refuses())
        assert sorted(p.name for p in packages.iterdir()) == [".tmp-running", ".tmp-running.lock"]


def test_op_ezkl_cannot_prove_is_refused_and_leaves_nothing(home, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "det", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "det.onnx")
    np.save(tmp_path / "cal.npy", np.ones((3, 1, 2, 2), dtype=np.float32))
    proc = run_cli("models", "add", tmp_path / "det.onnx", "--calibration-data",
                   tmp_path / "cal.npy", home=home)
    assert proc.returncode == 2
    assert "Det" in one_line_error(proc)
    assert list((home / "packages").iterdir()) == []
    assert not (home / "names").exists()


def test_demo_runs_end_to_end(prover_home, iris_package, tmp_path):
    """The demo keeps its bundle in a new temporary folder for the user to look at: here in the
    test's own (TMPDIR), where it is checked; before, every run left one in /tmp for good."""
    proc = run_cli("demo", home=prover_home, env={"TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "the proof verifies, the float model agrees: True" in proc.stderr
    (kept,) = tmp_path.glob("verinfer-demo-*/bundle.json")
    assert f"{kept}, kept for you to look at" in proc.stderr
    bundle = ProofBundle.load(kept.parent)
    assert f"says class {bundle.outputs.label} for held-out sample 0" in proc.stderr


def test_a_circuit_past_the_largest_built_is_refused_before_any_srs(home, tmp_path):
    """A 4 -> 3 Linear whose output is cast to INT64: EZKL lays it out in 170 rows but asks for
    a 2^26-row range check, logrows 26. The build went on to generate a 2^26 development SRS
    (hours, gigabytes); it now stops after calibration, in one line naming the biggest part."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.INT64, [1, 3])
    model = _graph(tmp_path, "cast", [helper.make_node("MatMul", ["input", "w"], ["mm"]),
                                      helper.make_node("Cast", ["mm"], ["logits"], to=TensorProto.INT64)],
                   [x], [y], [w])
    np.save(tmp_path / "cal.npy", rng.uniform(-2, 2, (8, 1, 4)).astype(np.float32))
    proc = run_cli("models", "add", model, "--calibration-data", tmp_path / "cal.npy", home=home)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    assert "needs 2^26 rows, more than the 2^24" in line and "range-check table" in line, line
    assert not list((home / "srs").glob("*k26*")) if (home / "srs").exists() else True
    assert not (home / "names").exists()
