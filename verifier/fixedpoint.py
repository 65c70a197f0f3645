"""Fixed-point form of a model input, and the on-chain input commitment.

A circuit sees its input as integers ``round(x * 2**scale)``, with ``round``
going half away from zero (EZKL's ``quantize_float`` uses Rust's ``f64::round``;
numpy's ``round`` goes half to even and would disagree on ties). The value is
taken as float64 of the model's input dtype (float32 for the reference models).

The input commitment that contracts, EIP-712 signatures and proofs all check is
``keccak256(abi.encode(int256[] q))`` of those integers, flattened row-major.
"""

from __future__ import annotations

import numpy as np

from verifier.digests import keccak
from verifier.errors import InputError

# A quantized value's magnitude stays below 2**MAX_BITS (int64, with headroom).
MAX_BITS = 62
# Field modulus of BN254's scalar field: EZKL's public instances live in it.
BN254_R = 21888242871839275222246405745257275088548364400416034343698204186575808495617


def quantize(values: np.ndarray, scale: int) -> list[int]:
    """Row-major integers ``round_half_away(x * 2**scale)`` (exact, via float64)."""
    return quantize_array(values, scale).tolist()


def quantize_array(values: np.ndarray, scale: int) -> np.ndarray:
    """:func:`quantize` as a flat int64 array (what the commitment is computed from)."""
    x = np.asarray(values, dtype=np.float64).ravel(order="C")
    scaled = x * float(2**scale)
    q = np.floor(np.abs(scaled) + 0.5)
    if not q.max(initial=0.0) < 2**MAX_BITS:  # also false for NaN: one check on the hot path
        if not np.isfinite(x).all():
            raise InputError("input contains NaN or infinity")
        raise InputError(f"input value too large for fixed point at scale {scale}")
    return np.copysign(q, scaled).astype(np.int64)


def check_range(values: np.ndarray, scale: int) -> None:
    """Raise :class:`InputError` unless every (finite) value fits the fixed point at ``scale``,
    as :func:`quantize_array` needs: ``|x| * 2**scale < 2**MAX_BITS``. Cheap (one reduction),
    so a server can refuse such an input alone, before it is batched with others."""
    limit = 2.0 ** (MAX_BITS - scale)
    if values.size and not float(np.abs(values).max()) < limit:
        raise InputError(f"input value too large for the fixed-point commitment at scale {scale}"
                         f" (|x| must be below {limit:.6g})")


def _int256_words(q: np.ndarray) -> np.ndarray:
    """int64 values as int256 words: 4 big-endian 64-bit limbs each, sign-extended."""
    words = np.empty((len(q), 4), dtype=">i8")
    words[:, :3] = (q >> 63)[:, None]  # sign extension: all 0 or all 1 bits
    words[:, 3] = q
    return words


def _abi_head(n: int) -> bytes:
    return (32).to_bytes(32, "big") + n.to_bytes(32, "big")


def abi_encode_int256_array(values: list[int] | np.ndarray) -> bytes:
    """Solidity's ``abi.encode(int256[])``: head offset 0x20, length, then each value
    as a 32-byte big-endian two's complement word. Written out (not ``eth_abi``)
    because it is on every answer's path and eth_abi is ~10x slower; the tests
    check it against eth_abi and against Solidity on chain."""
    if isinstance(values, np.ndarray) and values.dtype == np.int64 or all(-(2**63) <= v < 2**63 for v in values):
        q = np.asarray(values, dtype=np.int64).ravel()  # quantized inputs: vectorised
        return _abi_head(len(q)) + _int256_words(q).tobytes()
    return _abi_head(len(values)) + b"".join(int(v).to_bytes(32, "big", signed=True) for v in values)


def input_commitment(quantized: list[int] | np.ndarray) -> bytes:
    """``keccak256(abi.encode(int256[]))`` of the quantized input (32 bytes)."""
    if not isinstance(quantized, np.ndarray):
        quantized = list(quantized)
    return keccak(abi_encode_int256_array(quantized))


def input_commitments(x: np.ndarray, scale: int, rows: list[int]) -> list[bytes]:
    """The :func:`input_commitment` of each of a batch's answers at once: ``x`` holds them
    one after another on axis 0, ``rows[i]`` rows for answer i. The server's hot path:
    one quantization and one word conversion per batch instead of one per answer."""
    q = quantize_array(x, scale)
    per_row = q.size // max(1, sum(rows))
    words = _int256_words(q).reshape(-1)  # 4 limbs per value
    out, start = [], 0
    for n in rows:
        count = n * per_row
        out.append(keccak(_abi_head(count) + words[start * 4 : (start + count) * 4].tobytes()))
        start += count
    return out


def felt_to_int(felt: int) -> int:
    """A BN254 field element as a signed integer (values above r/2 are negative)."""
    felt %= BN254_R
    return felt - BN254_R if felt > BN254_R // 2 else felt


def int_to_felt(value: int) -> int:
    return value % BN254_R
