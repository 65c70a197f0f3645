"""``models add --calibration-data FILE``: the same samples as an OIP v2 request body (the
input format of every other command), EZKL's ``{"input_data": ...}``, a ``.npy`` file or a
plain JSON list; a bad file is refused with one line and exit 2 before any circuit work."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from prover_support import oip_request, run_cli

from prover.build import load_samples
from verifier.errors import InputError

SAMPLES = np.array([[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]],
                   dtype=np.float32)


def test_the_three_formats_give_the_same_samples(tmp_path):
    (tmp_path / "oip.json").write_text(oip_request(SAMPLES))
    (tmp_path / "ezkl.json").write_text(json.dumps({"input_data": [SAMPLES.ravel().tolist()]}))
    np.save(tmp_path / "samples.npy", SAMPLES)
    (tmp_path / "list.json").write_text(json.dumps(SAMPLES.tolist()))
    oip = load_samples(tmp_path / "oip.json")
    assert oip.shape == (3, 4) and oip.dtype == np.float32
    np.testing.assert_array_equal(oip, SAMPLES)
    np.testing.assert_array_equal(load_samples(tmp_path / "samples.npy"), SAMPLES)
    np.testing.assert_array_equal(load_samples(tmp_path / "list.json"), SAMPLES)
    # EZKL's form is flat: build_package reshapes it by the model's input
    np.testing.assert_array_equal(load_samples(tmp_path / "ezkl.json"), SAMPLES.ravel())


def _oip(**tensor) -> str:
    t = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4], **tensor}
    return json.dumps({"inputs": [t]})


BAD = {
    "malformed.json": ("{not json", "cannot read calibration data"),
    "object.json": ('{"samples": [1, 2]}', "neither an OIP v2 request body"),
    "two-inputs.json": (json.dumps({"inputs": [json.loads(_oip())["inputs"][0]] * 2}),
                        "one input tensor"),
    "count.json": (_oip(shape=[2, 4]), "4 values for shape [2, 4]"),
    "no-shape.json": ('{"inputs": [{"name": "input", "datatype": "FP32", "data": [1]}]}',
                      "shape"),
    "words.json": (_oip(data=["a", "b", "c", "d"]), "cannot read calibration data"),
    "nan.json": (_oip(data=[1, 2, "NaN", 4]), "NaN"),
    "ezkl-bad.json": ('{"input_data": 5}', "input_data must hold one input"),
    "ragged.json": ("[[1, 2], [3]]", "cannot read calibration data"),
    "empty.json": ("[]", "empty"),
    "garbage.npy": ("not a numpy file", "cannot read calibration data"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_calibration_files_are_refused(tmp_path, name):
    text, why = BAD[name]
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=re.escape(why)):
        load_samples(tmp_path / name)


def test_nan_in_a_npy_file_is_refused(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan, 2.0, 3.0]]))
    with pytest.raises(InputError, match="NaN"):
        load_samples(tmp_path / "nan.npy")


@pytest.mark.parametrize("name", ["object.json", "garbage.npy", "missing.json"])
def test_models_add_with_a_bad_file_exits_2_with_one_line(home, tmp_path, name):
    if name in BAD:
        (tmp_path / name).write_text(BAD[name][0])
    proc = run_cli("models", "add", "iris_mlp", "--calibration-data", tmp_path / name,
                   home=home)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("verinfer: error:"), proc.stderr
    assert str(tmp_path / name) in lines[0]
    assert not (home / "packages").exists()  # refused before any circuit work


def test_samples_must_each_hold_the_models_input():
    """The first axis counts the samples; each must hold the model's input. Only the total
    was checked: [40, 3] for iris_mlp's input of 4 was cut into 30 samples mixing the features
    of two, and a package was built from them."""
    from prover.build import samples_for

    for ok in (SAMPLES, SAMPLES.ravel(), SAMPLES.reshape(3, 1, 4)):
        np.testing.assert_array_equal(samples_for(ok, (1, 4)), SAMPLES)
    for bad, shape in ((SAMPLES.reshape(4, 3), [3]), (SAMPLES.ravel()[:10], [])):
        with pytest.raises(InputError, match=re.escape(f"calibration samples of shape {shape}")):
            samples_for(bad, (1, 4))


def test_models_add_refuses_samples_of_another_shape_in_one_line(home, tmp_path):
    from models.registry import get_reference_model

    (tmp_path / "cal.json").write_text(oip_request(SAMPLES.reshape(4, 3)))
    proc = run_cli("models", "add", get_reference_model("iris_mlp").onnx_path, "--calibration-data",
                   tmp_path / "cal.json", "--name", "mine", home=home)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == ("verinfer: error: calibration samples of shape [3] (after the first axis, "
                         "which counts the samples) do not fit the model's input shape [1, 4]"), lines
    assert not (home / "packages").exists()  # refused before any circuit work
