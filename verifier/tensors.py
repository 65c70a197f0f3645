"""Open Inference Protocol v2 datatypes and the canonical tensor digest.

Canonical byte form of a tensor (version 1), hashed with SHA-256::

    b"verinfer.tensor.v1\\x00"
    datatype as ASCII (an OIP v2 name, e.g. b"FP32") + b"\\x00"
    ndim as uint32 little-endian
    each dim as uint64 little-endian
    the elements, row-major (C order), each in little-endian byte order

Floats are hashed as their IEEE-754 bytes, never as a JSON rendering.
Test vectors: ``docs/formats.md`` (checked by ``tests/test_formats.py``).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from verifier.errors import InputError

TENSOR_DIGEST_DOMAIN = b"verinfer.tensor.v1\x00"

# OIP v2 datatype name -> little-endian numpy dtype. BYTES and FP16/BF16 are
# not accepted: no reference model takes them and they have no exact JSON form.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_BY_DTYPE = {v: k for k, v in DATATYPES.items()}


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return DATATYPES[datatype]
    except KeyError:
        known = ", ".join(DATATYPES)
        raise InputError(f"unsupported datatype {datatype!r} (supported: {known})") from None


def datatype_of(array: np.ndarray) -> str:
    try:
        return _BY_DTYPE[array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype]
    except KeyError:
        raise InputError(f"no OIP v2 datatype for numpy dtype {array.dtype}") from None


@lru_cache(maxsize=256)
def _header(datatype: str, shape: tuple[int, ...]) -> bytes:
    header = TENSOR_DIGEST_DOMAIN + datatype.encode("ascii") + b"\x00"
    return header + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)


def _canonical(array: np.ndarray, datatype: str | None) -> tuple[bytes, np.ndarray]:
    datatype = datatype or datatype_of(array)
    # (not np.ascontiguousarray, which makes a 0-dimensional tensor 1-dimensional: shape [] was
    # hashed as [1] here and as [] by list_digest's struct path)
    arr = np.asarray(array, dtype=numpy_dtype(datatype), order="C")
    return _header(datatype, arr.shape), arr


def canonical_tensor_bytes(array: np.ndarray, datatype: str | None = None) -> bytes:
    """The one byte form a tensor digest is computed over (see module doc)."""
    header, arr = _canonical(array, datatype)
    return header + arr.tobytes(order="C")


def tensor_digest(array: np.ndarray, datatype: str | None = None) -> str:
    """Hex SHA-256 of :func:`canonical_tensor_bytes` (hashed without building it: on every
    answer's path, three times)."""
    header, arr = _canonical(array, datatype)
    h = hashlib.sha256(header)
    h.update(arr.reshape(-1).view(np.uint8))  # C-contiguous: the same bytes as tobytes()
    return h.hexdigest()


# struct codes of the datatypes a digest of a JSON list can pack without numpy
_PACK = {"FP32": "f", "FP64": "d", "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q",
         "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q"}
_EXACT = 2**53  # an int up to this converts to a double exactly (then to FP32 with one rounding)

_FLOAT_OR_INT = frozenset((float, int))
_INT = frozenset((int,))


@lru_cache(maxsize=256)
def _packer(code: str, n: int) -> Callable[..., bytes]:
    return struct.Struct(f"<{n}{code}").pack


def list_digest(data: list, shape: tuple[int, ...], datatype: str) -> str:
    """``tensor_digest(np.asarray(data).reshape(shape), datatype)`` of a flat JSON list (an
    answer's output, in an audit), packed with ``struct`` where that gives the same bytes:
    plain floats and ints for float types, ints for int types; else through numpy. Raises
    ``ValueError``/``TypeError`` (or :class:`InputError`) where the data does not fit."""
    code = _PACK.get(datatype)
    n = math.prod(shape)
    if code is not None and len(data) == n:
        types = {*map(type, data)}  # (a set of the types: a third of the cost of a check per item)
        if code in "fd":
            plain = types <= _FLOAT_OR_INT and (int not in types or all(
                -_EXACT <= v <= _EXACT for v in data if type(v) is int))
        else:
            plain = types == _INT
        if plain:
            try:
                body = _packer(code, n)(*data)
            except (struct.error, OverflowError):  # out of the type's range: numpy decides
                pass
            else:
                return hashlib.sha256(_header(datatype, tuple(shape)) + body).hexdigest()
    return tensor_digest(json_array(data, shape, datatype), datatype)


def json_array(data: list, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    """A JSON tensor's data (numbers, booleans, nulls, as flat or nested lists) as the array
    its digest is taken of, before the cast to ``datatype``; ``ValueError`` for an element that
    is no number (numpy would read ``"1.5"`` as 1.5: a second spelling of one tensor) or a
    double outside an integer datatype, whose cast numpy leaves to the CPU (another digest on
    another machine; one inside it is truncated toward zero)."""
    array = np.asarray(data).reshape(shape)
    kind = array.dtype.kind
    if kind not in "biuf" and (kind != "O" or not {*map(type, array.flat)} <= _JSON_NUMBER):
        raise ValueError("an element of this tensor is not a number")
    if datatype in _INT_RANGES and kind in "fO":
        lo, hi = _INT_RANGES[datatype]
        floats = array if kind == "f" else np.asarray([v for v in array.flat if type(v) is float])
        if not np.all((floats > lo - 1) & (floats < hi + 1)):
            raise ValueError(f"a value of this {datatype} tensor is out of its range")
    if datatype in _INT_RANGES and kind == "O":
        # an int that fits no 64-bit integer (numpy holds it as an object): numpy's cast raises
        # OverflowError, which no caller takes for a tensor that does not fit its datatype
        lo, hi = _INT_RANGES[datatype]
        if any(not lo <= v <= hi for v in array.flat if type(v) is int):
            raise ValueError(f"a value of this {datatype} tensor is out of its range")
    return array


_JSON_NUMBER = frozenset((float, int, bool, type(None)))
_INT_RANGES = {name: (int(np.iinfo(dt).min), int(np.iinfo(dt).max))
               for name, dt in DATATYPES.items() if dt.kind in "iu"}


def tensor_digests(array: np.ndarray, datatype: str, rows: list[int]) -> list[str]:
    """:func:`tensor_digest` of each of a batch's answers: ``array`` holds them one after
    another on axis 0, ``rows[i]`` rows for answer i (one conversion for the whole batch)."""
    _, arr = _canonical(array, datatype)
    tail = arr.shape[1:]
    per = arr[:1].nbytes
    data = arr.reshape(-1).view(np.uint8).data
    out, start = [], 0
    for n in rows:
        h = hashlib.sha256(_header(datatype, (n, *tail)))
        h.update(data[start * per : (start + n) * per])
        out.append(h.hexdigest())
        start += n
    return out
