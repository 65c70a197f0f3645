"""File and JSON digests used across formats."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pybase64

CHUNK = 1 << 20

try:  # safe-pysha3 (the `serve` extra): C, ~1 µs for a short input
    from sha3 import keccak_256 as _keccak_256

    def keccak(data: bytes) -> bytes:
        """Ethereum's Keccak-256 (not NIST SHA3-256)."""
        return _keccak_256(data).digest()
except ImportError:  # the light install: eth-hash's pycryptodome backend, ~5-10x slower
    from eth_utils import keccak  # noqa: F401


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The project's JSON forms, each written by one encoder made once (``json.dumps`` with
# arguments builds a new encoder per call).
# canonical: sorted keys, no whitespace, non-ASCII as is; what is hashed and signed
canonical_text = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
# compact: keys in their order, no whitespace, non-ASCII as is; parts of an answer written by hand
compact_text = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_compact_ascii = json.JSONEncoder(separators=(",", ":")).encode
_compact_ascii_sorted = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the one byte form a JSON object is hashed in."""
    return canonical_text(obj).encode()


def compact_json(obj: Any, *, sort_keys: bool = False) -> bytes:
    """No whitespace, non-ASCII escaped (``\\uXXXX``, so any str encodes): HTTP bodies, callbacks."""
    return (_compact_ascii_sorted if sort_keys else _compact_ascii)(obj).encode()


def numbers_json(array: np.ndarray) -> str:
    """``array.ravel().tolist()`` as compact JSON, the same text :func:`canonical_json` writes
    for it, ~5x faster for int and float arrays (on every answer's path, for each output
    in the receipt and in the response). ``json`` writes a finite float as its ``repr``
    and an int as its ``repr``; anything else (NaN, infinity, booleans) goes through it."""
    values = array.ravel().tolist()
    kind = array.dtype.kind
    if kind == "f":
        text = ",".join(map(float.__repr__, values))
        if "n" not in text:  # repr gives "nan" / "inf" where JSON wants NaN / Infinity
            return f"[{text}]"
    elif kind in "iu":
        return f"[{','.join(map(int.__repr__, values))}]"
    return compact_text(values)


def shape_json(shape: tuple[int, ...]) -> str:
    """A shape as compact JSON, e.g. ``[1,4]``."""
    return "[" + ",".join(map(str, shape)) + "]"


_B64_VALUE = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def b64decode_canonical(text: str) -> bytes:
    """Standard base64 in its one spelling: the alphabet, padding to a multiple of four, nothing
    after it, and the unused low bits of the last character zero. Otherwise several texts
    decode to the same bytes (``QQ==`` and ``QR==`` are both ``A``): a receipt's signed bytes
    could be re-spelled and still pass. Raises ``ValueError`` (``binascii.Error`` is one).
    (pybase64's ``validate=True`` is as strict as ``binascii``'s ``strict_mode``, and SIMD.)"""
    data = pybase64.b64decode(text, validate=True)
    if text.endswith("=="):
        unused, last = 0xF, text[-3]
    elif text.endswith("="):
        unused, last = 0x3, text[-2]
    else:
        return data
    if _B64_VALUE[last] & unused:
        raise ValueError("base64 is not canonical: the last character's unused bits are set")
    return data
