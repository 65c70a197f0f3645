"""The binary tensor data extension in the OIP parser (server/inference/oip.py): raw
little-endian tensors after a JSON header, on inputs and outputs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from server.inference.engines import TensorMeta
from server.inference.oip import (
    OutputChoice,
    binary_section,
    outputs_json,
    parse_infer_request,
)
from verifier.errors import InputError

INPUT = TensorMeta("input", "FP32", (-1, 4))
OUTPUTS = ["logits", "label"]
META = (("logits", "FP32"), ("label", "INT64"))


def binary_request(x: np.ndarray, datatype: str = "FP32", extra: dict | None = None,
                   size: int | None = None, tail: bytes = b"") -> tuple[bytes, int]:
    raw = x.astype(x.dtype.newbyteorder("<")).tobytes()
    header = json.dumps({
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw) if size is None else size}}],
        **(extra or {}),
    }).encode()
    return header + raw + tail, len(header)


def test_binary_input_is_the_same_array_as_json():
    x = np.array([[6.1, 2.8, 4.7, 1.2], [-0.0, 1e-45, 3.4e38, 7]], dtype=np.float32)
    body, n = binary_request(x)
    got = parse_infer_request(body, INPUT, OUTPUTS, str(n).encode())
    as_json = json.dumps({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
                                      "data": x.tolist()}]}).encode()
    want = parse_infer_request(as_json, INPUT, OUTPUTS)
    assert got.x.dtype == want.x.dtype and got.x.tobytes() == want.x.tobytes()
    assert got.outputs is None  # no outputs named, no binary_data_output: all as JSON


def test_output_choices():
    x = np.zeros((1, 4), np.float32)
    body, n = binary_request(x, extra={"parameters": {"binary_data_output": True}})
    assert parse_infer_request(body, INPUT, OUTPUTS, n).outputs == OutputChoice(None, frozenset(OUTPUTS))
    outs = [{"name": "label"}, {"name": "logits", "parameters": {"binary_data": False}}]
    body, n = binary_request(x, extra={"outputs": outs, "parameters": {"binary_data_output": True}})
    assert parse_infer_request(body, INPUT, OUTPUTS, n).outputs == OutputChoice(("label", "logits"),
                                                                               frozenset({"label"}))
    outs = [{"name": "logits", "parameters": {"binary_data": True}}]
    body, n = binary_request(x, extra={"outputs": outs})
    assert parse_infer_request(body, INPUT, OUTPUTS, n).outputs == OutputChoice(("logits",),
                                                                               frozenset({"logits"}))


def test_binary_outputs_render_sizes_and_little_endian_bytes():
    outs = {"logits": np.array([[1.5, -2.0, 0.25]], np.float32), "label": np.array([0], np.int64)}
    choice = OutputChoice(("label", "logits"), frozenset({"logits"}))
    rendered = json.loads(outputs_json(META, outs, choice))
    assert rendered == [
        {"name": "label", "datatype": "INT64", "shape": [1], "data": [0]},
        {"name": "logits", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}},
    ]
    assert binary_section(META, outs, choice) == outs["logits"].astype("<f4").tobytes()
    everything = OutputChoice(None, frozenset(OUTPUTS))  # model order: logits, then label
    assert binary_section(META, outs, everything) == (outs["logits"].astype("<f4").tobytes()
                                                      + outs["label"].astype("<i8").tobytes())
    assert binary_section(META, outs, None) == b""


@pytest.mark.parametrize(("case", "message"), [
    ("header past the body", "does not fit the body"),
    ("header not a number", "is not an integer"),
    ("header zero", "does not fit the body"),
    ("size != bytes sent", "binary_data_size is 8 but the body holds 16"),
    ("size != shape", "needs 16"),
    ("bytes left over", "binary_data_size is 16 but the body holds 20"),
    ("data and size", "not both"),
    ("size without header", "needs the Inference-Header-Content-Length header"),
    ("bytes but no size", "no input declares parameters.binary_data_size"),
    ("negative size", "non-negative integer"),
    ("NaN", "NaN or infinity"),
    ("flag not bool", "must be true or false"),
])
def test_malformed_binary_requests_are_input_errors(case, message):
    x = np.ones((1, 4), np.float32)
    header_length: object
    if case == "header past the body":
        body, _ = binary_request(x)
        header_length = len(body) + 1
    elif case == "header not a number":
        body, header_length = binary_request(x)[0], b"12x"
    elif case == "header zero":
        body, header_length = binary_request(x)[0], 0
    elif case == "size != bytes sent":
        body, header_length = binary_request(x, size=8)
    elif case == "size != shape":
        body, header_length = binary_request(np.ones((1, 2), np.float32).reshape(1, 2))
        body = body.replace(b'"shape": [1, 2]', b'"shape": [1, 4]')
        header_length = body.index(b"}]}") + 3
    elif case == "bytes left over":
        body, header_length = binary_request(x, tail=b"\0\0\0\0")
    elif case == "data and size":
        raw = x.tobytes()
        header = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                         "data": [1, 1, 1, 1],
                                         "parameters": {"binary_data_size": 16}}]}).encode()
        body, header_length = header + raw, len(header)
    elif case == "size without header":
        body, _ = binary_request(x)
        body, header_length = body[: body.index(b"}]}") + 3], None
    elif case == "bytes but no size":
        header = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                         "data": [1, 1, 1, 1]}]}).encode()
        body, header_length = header + b"\0" * 4, len(header)
    elif case == "negative size":
        body, header_length = binary_request(x, size=-1)
    elif case == "NaN":
        body, header_length = binary_request(np.array([[1, np.nan, 1, 1]], np.float32))
    else:
        body, header_length = binary_request(x, extra={"parameters": {"binary_data_output": "yes"}})
    with pytest.raises(InputError, match=message):
        parse_infer_request(body, INPUT, OUTPUTS, header_length)


@pytest.mark.parametrize(("body", "message"), [
    (b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[' + b"1" * 5000
     + b',1,1,1]}]}', "malformed JSON"),                                      # a huge integer
    (b"[" * 100000 + b"]" * 100000, "nested more than 64 levels"),            # deep nesting
    (b'{"inputs":' + b"[" * 65 + b"]" * 65 + b"}", "nested more than 64 levels"),
    (b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":["1","2","3","4"]}]}',
     "not a (nested) list of numbers"),                                        # numbers as strings
    (b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[true,false,true,true]}]}',
     "not a (nested) list of numbers"),
    (b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[[1,2],[3]]}]}',
     "not a (nested) list of numbers"),                                        # ragged
    (b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"INT64","data":[' + b"9" * 30
     + b',1,1,1]}]}', "out of range"),
    (b'{"id":"' + b"x" * 257 + b'","inputs":[]}', "at most 256 characters"),
    (b'{"id":"\\ud800","inputs":[]}', "lone surrogate"),
])
def test_hostile_json_is_an_input_error(body, message):
    with pytest.raises(InputError, match=re.escape(message)):
        parse_infer_request(body, INPUT, OUTPUTS)


def test_a_256_character_id_is_fine():
    body = json.dumps({"id": "é" * 256, "inputs": [{"name": "input", "shape": [1, 4],
                                                   "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    assert parse_infer_request(body.encode(), INPUT, OUTPUTS).id == "é" * 256
