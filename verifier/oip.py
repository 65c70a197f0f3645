"""Open Inference Protocol v2 request tensors, parsed and checked against a spec.

Used wherever an OIP v2 request body comes in from a file (``verinfer prove
--input``, audits). ``data`` may be flat or nested; its element count must
match ``shape``, ``shape`` must match the model's, values must be finite.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from verifier.base import first_error
from verifier.errors import InputError
from verifier.manifest import TensorSpec
from verifier.tensors import numpy_dtype


class RequestTensor(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    id: str | None = None
    inputs: list[RequestTensor]
    parameters: dict[str, Any] | None = None


def parse_request(raw: bytes | str | dict, where: str = "request") -> InferRequest:
    try:
        body = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
    except ValueError as exc:
        raise InputError(f"{where}: malformed JSON: {exc}") from None
    try:
        return InferRequest.model_validate(body)
    except ValidationError as exc:
        raise InputError(f"{where}: {first_error(exc, 'body')}") from None


_NUMBER_TYPES = frozenset((int, float))


def only_numbers(data: list) -> bool:
    """Whether a (nested) JSON list holds only numbers: ``true``/``false`` are not 1 and 0 (numpy
    would take them so among numbers). One C-level pass over each list's types."""
    types = set(map(type, data))
    if types <= _NUMBER_TYPES:
        return True
    return types <= _NUMBER_TYPES | {list} and all(only_numbers(d) for d in data if type(d) is list)


def tensor_array(t: RequestTensor, spec: TensorSpec) -> np.ndarray:
    """The request tensor as an array of the model's input dtype, checked against ``spec``
    as the server checks it (``server.inference.oip``): the input's name, any OIP numeric
    datatype whose values it can hold, flat or nested as ``shape``, finite in the model's
    dtype."""
    if t.name != spec.name:
        raise InputError(f"unknown input {t.name!r}: the model's input is {spec.name!r}")
    dt = numpy_dtype(t.datatype)
    if dt.kind == "b":  # as the server: numbers only
        raise InputError(f"input {t.name!r}: datatype {t.datatype} not accepted (the model takes {spec.datatype})")
    want = list(spec.shape)
    if list(t.shape) != want:
        raise InputError(f"input {t.name!r}: shape {t.shape}, the model takes {want}")
    if not only_numbers(t.data):
        raise InputError(f"input {t.name!r}: data must be numbers")
    try:
        arr = np.asarray(t.data, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"input {t.name!r}: data must be numbers, flat or nested as its shape") from None
    if arr.ndim > 1 and list(arr.shape) != want:
        raise InputError(f"input {t.name!r}: data is nested as {list(arr.shape)}, not as shape {want}")
    if arr.size != int(np.prod(want)):
        raise InputError(f"input {t.name!r}: {arr.size} values for shape {want}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"input {t.name!r}: NaN or infinity in data")
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if np.any(arr != np.floor(arr)) or arr.min() < info.min or arr.max() > info.max:
            raise InputError(f"input {t.name!r}: values out of range for {t.datatype}")
    with np.errstate(over="ignore"):
        x = arr.reshape(want).astype(numpy_dtype(spec.datatype))
    if not np.all(np.isfinite(x)):
        raise InputError(f"input {t.name!r}: value out of range for {spec.datatype}")
    return x


def single_input(req: InferRequest, spec: TensorSpec) -> np.ndarray:
    if len(req.inputs) != 1:
        raise InputError(f"expected 1 input tensor, got {len(req.inputs)}")
    return tensor_array(req.inputs[0], spec)


def load_request_file(path: Path) -> InferRequest:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such input file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_request(raw, str(path))
