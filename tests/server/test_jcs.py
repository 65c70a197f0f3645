"""server.receipts.jcs writes the bytes rfc8785 (the verifiers' reference) writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rfc8785

from server.receipts.jcs import jcs_float, jcs_numbers, jcs_string

F32 = np.finfo(np.float32)
EDGES = [0.0, -0.0, 1.0, -1.0, 2.0, 1e16, 1e20, 1e21, 1e22, 1e-6, 1e-7, 1.5e-7, 123456789.0, 0.1, -0.3,
         float(F32.max), float(-F32.max), float(F32.tiny), float(F32.smallest_subnormal),
         float(np.float32(1e-40)), float(np.float32(3.4e38)), float(np.float32(0.1)), float(np.float32(1 / 3)),
         2.0**53, 2.0**60, 5e-324, 1.7976931348623157e308, 9007199254740993.0, 0.000123456789012345,
         1234567890123456789012.0, 100.0, 1e-5, 123e-20]


def test_floats_match_rfc8785_on_edge_values():
    for v in EDGES:
        assert jcs_float(v).encode() == rfc8785.dumps(v), v
    arr = np.asarray(EDGES, dtype=np.float64)
    assert jcs_numbers(arr).encode() == rfc8785.dumps(arr.tolist())
    f32 = np.asarray([v for v in EDGES if abs(v) <= float(F32.max)], dtype=np.float32)
    assert jcs_numbers(f32).encode() == rfc8785.dumps([float(v) for v in f32])


def test_negative_zeros_side_by_side_are_all_zero():
    for values in ([-0.0, -0.0], [-0.0, -0.0, -0.0, 1.0, -0.0], [-0.5, -0.0, -0.0, -0.25], [-0.0]):
        for dtype in (np.float32, np.float64):
            a = np.asarray(values, dtype=dtype)
            assert jcs_numbers(a).encode() == rfc8785.dumps(a.tolist()), values


def test_random_fp32_outputs_match_rfc8785():
    rng = np.random.default_rng(13)
    for scale in (1e-42, 1e-30, 1e-8, 1e-3, 1.0, 1e3, 1e8, 1e20, 1e30):
        for _ in range(20):
            a = (rng.standard_normal(37) * scale).astype(np.float32)
            a[rng.integers(0, 37, 3)] = np.round(a[:3])  # some integral values, -0 among them
            assert jcs_numbers(a).encode() == rfc8785.dumps([float(v) for v in a])
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    bits = bits[np.isfinite(bits)]  # every kind of float32: subnormals, huge, tiny
    for chunk in np.array_split(bits, 40):
        assert jcs_numbers(chunk).encode() == rfc8785.dumps([float(v) for v in chunk])


def test_ints_strings_and_refusals():
    a = np.asarray([0, -5, 2**53 - 1, 7], dtype=np.int64)
    assert jcs_numbers(a).encode() == rfc8785.dumps(a.tolist())
    for s in ["plain", 'quo"te', "back\\slash", "tab\tnl\ncr\r\x01\x1f\x7f", "ünïcødé ☃ 𝄞", "\u2028"]:
        assert jcs_string(s).encode() == rfc8785.dumps(s), s
    assert json.loads(jcs_numbers(np.asarray([True, False]))) == [True, False]
    with pytest.raises(ValueError):
        jcs_numbers(np.asarray([1.0, float("nan")], dtype=np.float32))
    with pytest.raises(ValueError):
        jcs_numbers(np.asarray([2**60], dtype=np.int64))


def test_batch_rows_match_one_answer_at_a_time():
    """jcs_number_rows and tensor_digests cut a batch as jcs_numbers / tensor_digest see each answer."""
    from server.receipts.jcs import jcs_number_rows
    from verifier.tensors import tensor_digest, tensor_digests

    rng = np.random.default_rng(5)
    for dtype, datatype in ((np.float32, "FP32"), (np.float64, "FP64"), (np.int64, "INT64")):
        for rows in ([1], [3], [1, 1, 1, 1], [2, 1, 3], [1, 4, 1, 2]):
            a = (rng.standard_normal((sum(rows), 3, 2)) * 1e3).astype(dtype)
            if dtype is np.float32:
                a.flat[::7] = [1e-7, -0.0, 1e21, 2.0][: len(a.flat[::7])] + [0.5] * max(0, len(a.flat[::7]) - 4)
            starts = np.cumsum([0, *rows])
            parts = [a[s:e] for s, e in zip(starts, starts[1:])]
            assert jcs_number_rows(a, rows) == [jcs_numbers(p) for p in parts]
            b = np.where(a == a.max(), a, np.zeros_like(a) * -1)  # -0 side by side, at row ends too
            assert jcs_number_rows(b, rows) == [rfc8785.dumps(p.ravel().tolist()).decode() for p in np.split(b, starts[1:-1])]
            assert tensor_digests(a, datatype, rows) == [tensor_digest(p, datatype) for p in parts]
