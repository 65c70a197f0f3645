"""The package's public output shape (``models add --public-output logits|label``): recorded in
the manifest without changing the id of a manifest that predates the field; the label-only
graph keeps the ArgMax label as its one output. No EZKL here: the real label-only package is
built, proven, verified offline and on chain in ``tests/relayer/test_label_only.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prover_support import run_cli

from verifier.digests import canonical_json, sha256_bytes
from verifier.manifest import Artifact, Manifest, SRSInfo, TensorSpec

REPO = Path(__file__).resolve().parents[2]
IRIS_ONNX = REPO / "models" / "artifacts" / "iris_mlp" / "model.onnx"


def _manifest(**kw) -> Manifest:
    return Manifest(
        name="iris", model_sha256="ab" * 32, ezkl_version="23.0.5", solc_version="0.8.37",
        input_visibility="public",
        input=TensorSpec(name="input", datatype="FP32", shape=(1, 4), scale=13),
        outputs=(TensorSpec(name="label", datatype="INT64", shape=(1,), scale=0),),
        label_output=0, srs=SRSInfo(logrows=12, sha256="00" * 32, source="development",
                                    insecure=True),
        artifacts={"model.onnx": Artifact(sha256="cd" * 32, bytes=1)},
        calibration={}, preflight={}, **kw)


def test_a_manifest_without_the_field_loads_and_hashes_as_before(tmp_path):
    old = _manifest().model_dump(mode="json")
    del old["tuning"], old["public_output"]  # what a manifest written before them holds
    path = tmp_path / "manifest.json"
    path.write_bytes(canonical_json(old))
    m = Manifest.load(path)
    assert m.public_output == "logits"
    assert m.canonical_bytes() == path.read_bytes()
    assert m.package_id == sha256_bytes(canonical_json(old))


def test_label_only_is_recorded_and_changes_the_id():
    label = _manifest(public_output="label")
    assert json.loads(label.canonical_bytes())["public_output"] == "label"
    assert label.package_id != _manifest().package_id
    assert label.num_instances == 4 + 1  # the inputs, the label
    assert label.model_copy(update={"input_visibility": "hashed"}).num_instances == 1 + 1


def test_a_label_only_manifest_with_logits_is_refused(tmp_path):
    from verifier.errors import PackageError

    raw = json.loads(_manifest(public_output="label").canonical_bytes())
    raw["outputs"].insert(0, {"name": "logits", "datatype": "FP32", "shape": [1, 3], "scale": 13})
    raw["label_output"] = 1
    (tmp_path / "manifest.json").write_bytes(canonical_json(raw))
    with pytest.raises(PackageError, match="label-only"):
        Manifest.load(tmp_path / "manifest.json")


def test_label_only_graph_has_the_label_as_its_one_output():
    from prover import onnx_model

    model = onnx_model.load(IRIS_ONNX)
    added = onnx_model.ensure_label_output(model)
    before = onnx_model.describe(model, added)
    assert [o.name for o in before.outputs] == ["logits", "label"]
    onnx_model.keep_label_only(model)
    info = onnx_model.describe(model, added)
    assert [o.name for o in info.outputs] == ["label"] and info.label_output == 0
    assert info.outputs[0].datatype == "INT64"


@pytest.mark.parametrize("args, says", [
    (["--public-output", "probs"], "invalid choice"),
    (["--inner-cols", "1", "--tune"], "--inner-cols does not go with --tune"),
    (["--max-ops", "range-checks", "--tune"], "--max-ops does not go with --tune"),
    (["--max-ops", "sorted"], "invalid choice"),
    # the server answers iris_mlp from the reference file, which a rewritten graph is not
    (["--max-ops", "range-checks"], "register it under another --name"),
    (["--inner-cols", "3"], "invalid choice"),
])
def test_bad_public_output_flags_exit_2_in_one_line(tmp_path, args, says):
    proc = run_cli("models", "add", "iris_mlp", *args, home=tmp_path)
    assert proc.returncode == 2 and says in proc.stderr
    assert not (tmp_path / "packages").exists() or not any((tmp_path / "packages").iterdir())
