"""Open Inference Protocol v2 tensors: parse a request, render a response.

Tensors come as JSON numbers or, with the binary data extension (Triton/KServe), as raw
little-endian bytes after a JSON header whose length the ``Inference-Header-Content-Length``
HTTP header gives (``parameters.binary_data_size`` on an input; ``binary_data`` on an
output, ``binary_data_output`` on the request). Either way the model and the receipt see the
same numpy array, so digests do not depend on the encoding.

Core logic, no web framework: takes the raw body bytes, returns numpy arrays,
raises :class:`verifier.errors.InputError` naming the problem.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from server.inference.engines import TensorMeta
from verifier.digests import compact_text, numbers_json, shape_json
from verifier.errors import InputError
from verifier.oip import only_numbers
from verifier.tensors import DATATYPES, numpy_dtype

NUMERIC = {k for k in DATATYPES if k != "BOOL"}
# OIP v2 tensor datatypes this server takes no input in (refused as "not accepted", not "unknown")
OTHER_OIP = {"FP16", "BF16", "BYTES"}
MAX_ID_CHARS = 256  # a client's request id, echoed in the answer and signed in the receipt


@dataclass(frozen=True)
class OutputChoice:
    """Which outputs a request asked for, and which of them go back as binary data."""

    names: tuple[str, ...] | None  # in the order asked for; None: all, in the model's order
    binary: frozenset[str] = frozenset()


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    x: np.ndarray  # as sent, in the sent datatype
    datatype: str  # the sent OIP datatype
    outputs: OutputChoice | None  # None: all outputs, as JSON
    parameters: dict  # the request's parameters object ({} when absent)
    eip712: bool = False  # parameters.eip712: attach an EIP-712 signature to the receipt


def _field(obj: dict, key: str, kind: type | tuple, where: str) -> Any:
    if key not in obj:
        raise InputError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InputError(f"{where}: field {key!r} must be a {name}")
    return value


def _tensor(data: list, shape: tuple[int, ...], datatype: str, where: str, maybe_bool: bool = True) -> np.ndarray:
    dt = numpy_dtype(datatype)
    try:
        parsed = np.asarray(data)  # numbers as strings, booleans, ragged lists: refused below
        if parsed.dtype.kind == "O":  # integers past int64 (their range is checked below)
            if not all(type(v) in (int, float) for v in parsed.ravel()):
                raise TypeError("found values that are not numbers")
        elif parsed.dtype.kind not in "iuf" and parsed.size or maybe_bool and not only_numbers(data):
            raise TypeError("found values that are not numbers")
        f64 = parsed.astype(np.float64)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"{where}: data is not a (nested) list of numbers ({exc})") from None
    if parsed.ndim > 1 and parsed.shape != tuple(shape):  # nested: its nesting is a shape too
        raise InputError(f"{where}: data is nested as {list(parsed.shape)}, not as shape {list(shape)}")
    n = math.prod(shape)
    if f64.size != n:
        raise InputError(f"{where}: data has {f64.size} values but shape {list(shape)} needs {n}")
    if not np.all(np.isfinite(f64)):
        raise InputError(f"{where}: data contains NaN or infinity")
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if np.any(f64 != np.floor(f64)):
            raise InputError(f"{where}: {datatype} data must be integers")
        if f64.size and (f64.min() < info.min or f64.max() > info.max):
            raise InputError(f"{where}: value out of range for {datatype}")
        try:
            x = np.array(data, dtype=dt)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InputError(f"{where}: bad {datatype} data ({exc})") from None
    else:
        with np.errstate(over="ignore"):
            x = f64.astype(dt)
        if not np.all(np.isfinite(x)):
            raise InputError(f"{where}: value out of range for {datatype}")
    return x.reshape(shape)


def split_body(body: bytes, header_length: bytes | str | int | None) -> tuple[bytes, bytes]:
    """(JSON header, binary section) of a request body; ``header_length``: the
    ``Inference-Header-Content-Length`` header, None when the whole body is JSON."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise InputError("Inference-Header-Content-Length is not an integer") from None
    if not 0 < n <= len(body):
        raise InputError(f"Inference-Header-Content-Length {n} does not fit the body of "
                         f"{len(body)} bytes")
    return body[:n], body[n:]


MAX_DEPTH = 64  # JSON nesting a request may have (a tensor's data nests once per axis)


def _too_deep(body: bytes) -> bool:
    """Whether brackets nest past MAX_DEPTH (brackets inside strings count too: that can only
    refuse, never let through). The C JSON parser recurses per level: a body nested 100,000 deep
    can overflow the C stack and kill the process instead of raising."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return False
    b = np.frombuffer(body, np.uint8)
    step = ((b == 0x5B) | (b == 0x7B)).astype(np.int32) - ((b == 0x5D) | (b == 0x7D))
    return int(np.cumsum(step).max()) > MAX_DEPTH


def load_header(header: bytes) -> dict:
    """The request's JSON object (the whole body, or its JSON header)."""
    if _too_deep(header):
        raise InputError(f"malformed JSON: nested more than {MAX_DEPTH} levels deep")
    try:
        req = json.loads(header)
    except (ValueError, UnicodeDecodeError) as exc:  # incl. integers past int's digit limit
        raise InputError(f"malformed JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise InputError("malformed JSON: nested too deeply") from None
    if not isinstance(req, dict):
        raise InputError("request body must be a JSON object")
    return req


def _binary_tensor(raw: bytes, shape: tuple[int, ...], datatype: str, where: str) -> np.ndarray:
    dt = numpy_dtype(datatype)  # little-endian, as the extension sends
    n = math.prod(shape)
    if len(raw) != n * dt.itemsize:
        raise InputError(f"{where}: binary_data_size is {len(raw)} bytes but shape {list(shape)} "
                         f"of {datatype} needs {n * dt.itemsize}")
    x = np.frombuffer(raw, dtype=dt).reshape(shape)
    if dt.kind == "f" and not np.all(np.isfinite(x)):
        raise InputError(f"{where}: data contains NaN or infinity")
    return x


def _flag(params: dict, key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise InputError(f"{where}: parameters.{key} must be true or false")
    return value


def parse_infer_request(body: bytes, model_input: TensorMeta, output_names: list[str],
                        header_length: bytes | str | int | None = None) -> InferRequest:
    header, binary = split_body(body, header_length)
    req = load_header(header)
    params = req.get("parameters", {})
    if not isinstance(params, dict):
        raise InputError("field 'parameters' must be an object")
    rid = req.get("id")
    if rid is not None:
        if not isinstance(rid, str) or len(rid) > MAX_ID_CHARS:
            raise InputError(f"field 'id' must be a string of at most {MAX_ID_CHARS} characters")
        try:
            rid.encode()
        except UnicodeEncodeError:
            raise InputError("field 'id' is not valid Unicode (a lone surrogate)") from None
    inputs = _field(req, "inputs", list, "request")
    if len(inputs) != 1:
        raise InputError(f"expected exactly 1 input ({model_input.name!r}), got {len(inputs)}")
    inp = inputs[0]
    if not isinstance(inp, dict):
        raise InputError("inputs[0] must be an object")
    name = _field(inp, "name", str, "inputs[0]")
    where = f"input {name!r}"
    if name != model_input.name:
        raise InputError(f"unknown input {name!r}; the model's input is {model_input.name!r}")
    shape = _field(inp, "shape", list, where)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InputError(f"{where}: shape must be a list of non-negative integers")
    datatype = _field(inp, "datatype", str, where)
    if datatype not in DATATYPES and datatype not in OTHER_OIP:
        raise InputError(f"{where}: unknown datatype {datatype!r}")
    if datatype not in NUMERIC:
        raise InputError(f"{where}: datatype {datatype} not accepted (model expects {model_input.datatype})")
    want = model_input.shape
    if len(shape) != len(want) or any(w != -1 and w != s for w, s in zip(want, shape)):
        shown = ["N" if w == -1 else w for w in want]
        raise InputError(f"{where}: shape {shape} does not match the model's {shown}")
    if shape and shape[0] < 1:
        raise InputError(f"{where}: batch size must be at least 1")
    in_params = inp.get("parameters", {})
    if not isinstance(in_params, dict):
        raise InputError(f"{where}: field 'parameters' must be an object")
    size = in_params.get("binary_data_size")
    if size is None:
        if binary:
            raise InputError(f"{where}: the body has {len(binary)} bytes of binary data but no "
                             f"input declares parameters.binary_data_size")
        # a body without "true" or "false" anywhere holds no boolean (memchr, not a walk)
        x = _tensor(_field(inp, "data", list, where), tuple(shape), datatype, where,
                    maybe_bool=b"true" in header or b"false" in header)
    else:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InputError(f"{where}: parameters.binary_data_size must be a non-negative integer")
        if "data" in inp:
            raise InputError(f"{where}: send either data or parameters.binary_data_size, not both")
        if header_length is None:
            raise InputError(f"{where}: binary data needs the Inference-Header-Content-Length header")
        if size != len(binary):
            raise InputError(f"{where}: binary_data_size is {size} but the body holds "
                             f"{len(binary)} bytes after the JSON header")
        x = _binary_tensor(binary, tuple(shape), datatype, where)
    eip712 = params.get("eip712", False)
    if not isinstance(eip712, bool):
        raise InputError("parameters.eip712 must be true or false")
    return InferRequest(rid, x, datatype, _output_choice(req, params, output_names), params, eip712)


def _output_choice(req: dict, params: dict, output_names: list[str]) -> OutputChoice | None:
    all_binary = _flag(params, "binary_data_output", "request") or False
    if "outputs" not in req:
        return OutputChoice(None, frozenset(output_names)) if all_binary else None
    outs = req["outputs"]
    if not isinstance(outs, list) or not all(isinstance(o, dict) for o in outs):
        raise InputError("field 'outputs' must be a list of objects")
    names, binary = [], set()
    for i, o in enumerate(outs):
        where = f"outputs[{i}]"
        name = _field(o, "name", str, where)
        if name not in output_names:
            raise InputError(f"unknown output {name!r}; the model's outputs are {output_names}")
        if name in names:  # each copy would be written again: one small request, a huge answer
            raise InputError(f"{where}: output {name!r} is asked for twice")
        o_params = o.get("parameters", {})
        if not isinstance(o_params, dict):
            raise InputError(f"{where}: field 'parameters' must be an object")
        flag = _flag(o_params, "binary_data", where)
        if flag or (flag is None and all_binary):
            binary.add(name)
        names.append(name)
    return OutputChoice(tuple(names), frozenset(binary))


def _names(meta: tuple[tuple[str, str], ...], wanted: OutputChoice | None) -> tuple[str, ...]:
    if wanted is None or wanted.names is None:
        return tuple(name for name, _ in meta)
    return wanted.names


def outputs_json(meta: tuple[tuple[str, str], ...], outputs: dict[str, np.ndarray],
                 wanted: OutputChoice | None, data_json: dict[str, str] | None = None) -> str:
    """A response's ``outputs`` as JSON text (``meta``: the model's (name, datatype) pairs):
    those asked for, in the order asked, else all; a binary one with its
    ``binary_data_size`` instead of data. ``data_json``: each output's data already written as
    JSON (by the receipt signer), else written here."""
    datatypes = _datatypes(meta)
    binary = wanted.binary if wanted is not None else frozenset()
    parts = []
    for name in _names(meta, wanted):
        head = _output_head(name, datatypes[name], outputs[name].shape)
        if name in binary:
            parts.append(f'{head}"parameters":{{"binary_data_size":{outputs[name].nbytes}}}}}')
        else:
            parts.append(f'{head}"data":{data_json[name] if data_json is not None else numbers_json(outputs[name])}}}')
    return "[" + ",".join(parts) + "]"


@functools.lru_cache(maxsize=64)
def _datatypes(meta: tuple[tuple[str, str], ...]) -> Mapping[str, str]:
    return MappingProxyType(dict(meta))  # cached and shared: read-only


@functools.lru_cache(maxsize=1024)
def _output_head(name: str, datatype: str, shape: tuple[int, ...]) -> str:
    """An output's JSON up to its data (the same few per model: cached, on every answer's path)."""
    return f'{{"name":{_encode(name)},"datatype":"{datatype}","shape":{shape_json(shape)},'


def binary_section(meta: tuple[tuple[str, str], ...], outputs: dict[str, np.ndarray],
                   wanted: OutputChoice | None) -> bytes:
    """The bytes that follow the JSON header of a response: each binary output's data,
    little-endian, in the order :func:`outputs_json` lists them."""
    if wanted is None or not wanted.binary:
        return b""
    return b"".join(
        np.ascontiguousarray(outputs[name], outputs[name].dtype.newbyteorder("<")).tobytes()
        for name in _names(meta, wanted) if name in wanted.binary
    )


_encode = compact_text


def json_text_literal(text: str) -> str:
    """A JSON text (the receipt) as a JSON string literal. Valid JSON holds no raw control
    characters, so only backslashes and quotes need escaping: two ``replace`` calls, ~3x
    faster than the encoder on every answer's path."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    return '"' + text.replace('"', '\\"') + '"'


def response_body(model_name: str, model_version: str, outputs: str, client_id: str | None,
                  label: int | None, receipt_id: str | None = None, receipt_literal: str | None = None) -> bytes:
    """An infer response, encoded; ``outputs``: :func:`outputs_json`'s text; ``receipt_literal``:
    the receipt JSON text as a JSON string literal (:func:`json_text_literal`), sent as
    ``parameters.receipt``."""
    text = f'{{"model_name":{_encode(model_name)},"model_version":{_encode(model_version)},"outputs":{outputs}'
    if client_id is not None:
        text += f',"id":{_encode(client_id)}'
    params = "" if label is None else f'"label":{label}'
    if receipt_literal is not None:
        params += f'{"," if params else ""}"receipt_id":"{receipt_id}","receipt":{receipt_literal}'
    return (f'{text},"parameters":{{{params}}}}}' if params else text + "}").encode()
