"""Canonical tensor digest and input commitment: pinned test vectors (docs/formats.md)."""

import math

import numpy as np
import pytest

from verifier.errors import InputError
from verifier.fixedpoint import input_commitment, quantize
from verifier.tensors import canonical_tensor_bytes, tensor_digest

VECTOR_INPUT = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)


def test_tensor_digest_vector():
    assert canonical_tensor_bytes(VECTOR_INPUT).hex() == (
        "766572696e6665722e74656e736f722e763100" "4650333200" "02000000"
        "0100000000000000" "0400000000000000"
        "3333a340" "00006040" "3333b33f" "cdcc4c3e"
    )
    assert tensor_digest(VECTOR_INPUT) == (
        "c92973e5efe6a73212f3e477a91de7b98120a23e247d8a942d4c48b94f145e48"
    )


def test_digest_depends_on_dtype_and_shape():
    flat = VECTOR_INPUT.reshape(4)
    assert tensor_digest(flat) != tensor_digest(VECTOR_INPUT)
    assert tensor_digest(VECTOR_INPUT.astype(np.float64)) != tensor_digest(VECTOR_INPUT)


def test_quantize_rounds_half_away_from_zero_like_ezkl():
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5]) / 2**13
    assert quantize(x, 13) == [1, 2, 3, -1, -3]


def test_commitment_vector():
    q = quantize(VECTOR_INPUT, 13)
    assert q == [41779, 28672, 11469, 1638]
    assert input_commitment(q).hex() == (
        "9761e28b7edf3bf5ab22077058d7bbdb3f7dfbbd2a3037b7bd08adc745236c3c"
    )


def test_quantize_rejects_nan():
    with pytest.raises(InputError):
        quantize(np.array([np.nan]), 13)


def test_hand_written_abi_encoding_equals_eth_abi():
    from eth_abi import encode

    from verifier.fixedpoint import abi_encode_int256_array

    for values in ([], [0], [1, -1, 2**200, -(2**255), 2**255 - 1], list(range(-40, 40, 3)),
                   [-(2**63), 2**63 - 1, -1, 0, 41779, -64717]):
        assert abi_encode_int256_array(values) == encode(["int256[]"], [values])


def test_batch_commitments_equal_one_by_one():
    """The server's per-batch fast path gives each answer's own commitment, also for
    answers of several rows and negative values."""
    from verifier.fixedpoint import input_commitments

    x = np.random.default_rng(3).normal(scale=4, size=(6, 1, 2, 3)).astype(np.float32)
    rows = [1, 3, 1, 1]
    got, start = input_commitments(x, 13, rows), 0
    for n, commitment in zip(rows, got, strict=True):
        assert commitment == input_commitment(quantize(x[start : start + n], 13))
        start += n
    assert input_commitments(VECTOR_INPUT, 13, [1])[0].hex().startswith("9761e28b")


def test_check_range_matches_quantize():
    from verifier.fixedpoint import check_range

    limit = 2.0 ** (62 - 13)
    ok = np.array([limit * 0.999, -limit * 0.999, 0.0])
    check_range(ok, 13)
    quantize(ok, 13)
    for bad in (np.array([1.0, limit]), np.array([-1e30])):
        with pytest.raises(InputError, match="too large for the fixed-point"):
            check_range(bad, 13)
        with pytest.raises(InputError):
            quantize(bad, 13)


@pytest.mark.parametrize("array", [
    np.random.default_rng(4).normal(size=(3, 10)).astype(np.float32),
    np.array([1e-5, 1e16, -0.0, 0.1, 123456789.0], dtype=np.float64),
    np.array([[1, -2], [3, 2**40]], dtype=np.int64),
    np.array([0, 255], dtype=np.uint8),
    np.array([np.nan, np.inf, -np.inf, 1.0]),
    np.array([True, False]),
    np.zeros((0,), dtype=np.float32),
])
def test_numbers_json_is_canonical_json(array):
    from verifier.digests import canonical_json, numbers_json

    assert numbers_json(array) == canonical_json(array.ravel().tolist()).decode()


# --- receipt v2 and the receipt log (docs/formats.md) -----------------------------------------

DOC_ORIGIN = "example.com/verinfer/log"
DOC_NOTE_KEY = "example.com/verinfer/log+58a0695e+AUBKwP9djnvpI1WkzSnZ1cQWeHTGZhgm8HDhrOmKqUo1"


def test_doc_checkpoint_vector():
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.tlog_support import doc_block
    from verifier.tlog import (
        MemoryTree,
        NoteVerifier,
        checkpoint_body,
        note_verifier_key,
        sign_note,
        verify_checkpoint,
    )

    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"verinfer test vector key").digest())
    assert note_verifier_key(DOC_ORIGIN, key.public_key()) == DOC_NOTE_KEY
    leaves = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                         "606162636465666768696a6b6c6d6e6f")]
    note = sign_note(checkpoint_body(DOC_ORIGIN, 8, MemoryTree(leaves).root()), DOC_ORIGIN, key).decode()
    text = (__import__("pathlib").Path(__file__).resolve().parents[1] / "docs" / "formats.md").read_text()
    assert "```\n" + note + "```" in text
    verify_checkpoint(note, [NoteVerifier.parse(DOC_NOTE_KEY)], DOC_ORIGIN)
    assert doc_block("v2-receipt-vector")  # present


def test_doc_receipt_vector_verifies_with_verifier_and_recipe():
    import json

    from tests.tlog_support import doc_block, doc_recipe
    from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2
    from verifier.tlog import NoteVerifier

    receipt = json.loads(doc_block("v2-receipt-vector"))
    st = verify_receipt_v2(ReceiptV2.parse(receipt), [NoteVerifier.parse(DOC_NOTE_KEY)], origin=DOC_ORIGIN)
    assert doc_recipe()(receipt, DOC_NOTE_KEY) == st.model_dump(mode="json", by_alias=True)
    tampered = dict(receipt, index=receipt["index"] - 1)
    with pytest.raises(ValueError):
        doc_recipe()(tampered, DOC_NOTE_KEY)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy casting out-of-range values
def test_list_digest_is_the_numpy_digest_of_the_list():
    """verifier.tensors.list_digest (an audit's output digests, packed with struct) hashes the
    bytes tensor_digest(np.asarray(data).reshape(shape)) hashes, for every datatype and the
    values where struct and numpy could part: large ints in float outputs, -0, subnormals,
    out-of-range values, bools, floats in int outputs; except a double outside an integer
    datatype, which numpy casts as the CPU does (another digest on another machine): refused."""
    import numpy as np

    from verifier.tensors import DATATYPES, list_digest, tensor_digest

    def undefined_cast(data, datatype):
        a = np.asarray(data)
        if a.dtype.kind != "f" or DATATYPES[datatype].kind not in "iu":
            return False
        info = np.iinfo(DATATYPES[datatype])
        return not np.all((a > info.min - 1) & (a < info.max + 1))

    rng = np.random.default_rng(3)
    f32 = np.finfo(np.float32)
    lists = [
        [0.0, -0.0, 1.0, -2.5, 1e-45, float(f32.max), 3.4e38, 1e39, -1e39, 2.0**60, 0.1],
        [0, 1, -1, 2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, 2**31, 255, -129],
        [True, False, True, 0, 1, 0, 1, 1, 0, 1, 0],
        [float(v) for v in rng.standard_normal(11) * 1e5],
        [int(v) for v in rng.integers(-(2**40), 2**40, 11)],
        [0.5, 2**53 + 1, -3, 1e-40, 7, -0.0, 2**24 + 1, 0.1, 3, 1.0, 2],  # floats and ints, one too big
        [0.5, 3, -(2**52), 2**53, 1e-40, 7, 16777217, 0.25, -1, 1.0, 2],
    ]
    for data in lists:
        for datatype in DATATYPES:
            for shape in ((len(data),), (1, len(data)), (len(data) + 1,)):
                if undefined_cast(data, datatype) and len(data) == math.prod(shape):
                    with pytest.raises(ValueError, match="out of its range"):
                        list_digest(data, shape, datatype)
                    continue
                try:
                    want = tensor_digest(np.asarray(data).reshape(shape), datatype)
                except Exception as exc:  # noqa: BLE001 - the list digest must refuse it too
                    with pytest.raises(type(exc)):
                        list_digest(data, shape, datatype)
                    continue
                assert list_digest(data, shape, datatype) == want, (data, shape, datatype)


def test_a_tensor_of_shape_nothing_has_one_digest():
    """A 0-dimensional tensor (shape []) is hashed with no dimensions, by list_digest's struct
    path, its numpy path and tensor_digest alike; numpy's path hashed it as shape [1]
    (np.ascontiguousarray's array has one dimension at least), so one output had two digests."""
    import numpy as np

    from verifier.tensors import canonical_tensor_bytes, list_digest, tensor_digest

    struct_path = list_digest([1.0], (), "FP32")
    assert list_digest([True], (), "FP32") == struct_path  # (a bool: numpy's path)
    assert tensor_digest(np.float32(1.0)) == tensor_digest(np.asarray([1.0]).reshape(()), "FP32") == struct_path
    assert canonical_tensor_bytes(np.float32(1.0))[len(b"verinfer.tensor.v1\x00FP32\x00"):][:4] == bytes(4)  # ndim 0


def test_a_tensor_element_that_is_no_number_is_refused():
    """numpy reads "1.5" as 1.5, so a tensor whose JSON data spelt a number as a string hashed as
    the number: a second spelling of one output that the Python verifier took and the status
    page (and any typed verifier) refused. Numbers, booleans and nulls (NaN) only, now."""
    from verifier.tensors import list_digest

    assert list_digest([None, 1.0], (2,), "FP32")  # a null: NaN, as the server writes it
    for data in (["1.5", 1.0], [{"a": 1}, 1.0], [1.0, "2"]):
        with pytest.raises(ValueError, match="not a number"):
            list_digest(data, (2,), "FP32")


def test_an_integer_past_its_datatype_and_2_53_is_refused_not_a_traceback():
    """An INT64 output holding 2**70 (a v1 statement's JSON int) made numpy's cast raise
    OverflowError, which no verifier caught (`verinfer verify` ended in a traceback, not exit 1).
    An integer no 64-bit type holds is refused as out of range now; one numpy holds still wraps
    as its cast does."""
    from verifier.tensors import json_array, list_digest

    for data, datatype in (([2**70], "INT64"), ([2**70, 1.5], "INT64"), ([2**64], "UINT64"),
                           ([-(2**63) - 1], "INT64"), ([2**64], "UINT8"), ([-(2**63) - 1, 2], "INT32")):
        with pytest.raises(ValueError, match="out of its range"):
            list_digest(data, (len(data),), datatype)
        with pytest.raises(ValueError, match="out of its range"):
            json_array(data, (len(data),), datatype)
    assert list_digest([-1], (1,), "UINT8") == list_digest([255], (1,), "UINT8")  # numpy's wrap, kept
    assert list_digest([2**63 - 1], (1,), "INT64") and list_digest([2**64 - 1], (1,), "UINT64")
    assert list_digest([2**70], (1,), "FP64")
