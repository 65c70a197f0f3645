"""Receipts v2: each answer's statement is a leaf of the server's transparency log.

A v2 receipt is self-contained::

    {"format": "verinfer.receipt/v2", "id": <request id>,
     "statement": <base64 of the statement's RFC 8785 (JCS) bytes>,
     "index": <leaf index>, "proof": [<base64 hash>, ...],   # inclusion, leaf side first
     "checkpoint": <the signed C2SP tlog-checkpoint note covering the leaf>,
     "eip712": {domain, message, signer, signature} | null}

The leaf is ``SHA-256(0x00 || statement bytes)`` (RFC 9162); the checkpoint is signed by an
Ed25519 key of the server, the same keys its JWK Set lists, as a note key whose name is the
log's origin (:mod:`verifier.tlog`). One signature covers every answer of a batch.

The statement is an in-toto Statement v1 like v1's, with predicate type
``https://verinfer.dev/receipt/v2``: no ``keyId`` (the checkpoint names its key), and
``eip712``: ``{"signer", "domain"}`` whenever an EIP-712 signature is attached, so that the
logged statement fixes which signer and domain may sign it (nobody can swap them).
Verification (:func:`verify_receipt_v2`) is fail closed: checkpoint signature (trusted keys),
origin, inclusion, then the statement checks of v1. See ``docs/formats.md``.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
import orjson
import rfc8785
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from verifier.base import Bytes32Hex, Count, Rfc3339
from verifier.digests import b64decode_canonical
from verifier.eip712 import AddressHex, Domain, EIP712Attestation, verify_eip712
from verifier.errors import (
    DigestMismatch,
    InclusionInvalid,
    InputError,
    KeyUnknown,
    LinkBroken,
    OriginMismatch,
    SignatureInvalid,
)
from verifier.keys import check_jwk_not_revoked, public_key_from_jwk
from verifier.receipts import (
    STATEMENT_TYPE,
    InputRef,
    ModelRef,
    OutputTensor,
    Subject,
    check_eip712_message,
    check_model_and_input,
)
from verifier.tensors import list_digest
from verifier.tlog import (
    Checkpoint,
    NoteVerifier,
    ProvenNodes,
    leaf_hash,
    parse_checkpoint,
    verify_checkpoint,
    verify_inclusion,
)

RECEIPT_V2_FORMAT = "verinfer.receipt/v2"
PREDICATE_V2_TYPE = "https://verinfer.dev/receipt/v2"

# 32 bytes in standard base64, in its one spelling: the last character's 2 unused bits zero
B64Hash = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class EIP712Ref(_Frozen):
    """Who may attach an EIP-712 signature to this answer, and in which domain."""

    signer: AddressHex
    domain: Domain


class PredicateV2(_Frozen):
    requestId: Bytes32Hex
    clientRequestId: str | None = None
    model: ModelRef
    input: InputRef
    outputs: tuple[OutputTensor, ...]
    label: Count | list[Count]
    time: Rfc3339
    device: str
    eip712: EIP712Ref | None = None


class StatementV2(_Frozen):
    type_: Literal["https://in-toto.io/Statement/v1"] = Field(STATEMENT_TYPE, alias="_type")
    subject: tuple[Subject, ...]
    predicateType: Literal["https://verinfer.dev/receipt/v2"] = PREDICATE_V2_TYPE
    predicate: PredicateV2

    def canonical_bytes(self) -> bytes:
        """RFC 8785 (JCS) bytes: the leaf data."""
        return rfc8785.dumps(self.model_dump(mode="json", by_alias=True))


class ReceiptV2(_Frozen):
    format: Literal["verinfer.receipt/v2"] = RECEIPT_V2_FORMAT
    id: Bytes32Hex
    statement: str  # standard base64 of the statement's JCS bytes
    index: int = Field(ge=0, strict=True)  # a JSON integer, not "8" or 8.0
    proof: tuple[B64Hash, ...]
    checkpoint: str
    eip712: EIP712Attestation | None = None

    @classmethod
    def parse(cls, raw: str | bytes | dict) -> ReceiptV2:
        try:
            if isinstance(raw, dict):
                return cls.model_validate(raw)
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "receipt"
            raise InputError(f"invalid receipt: {where}: {first['msg']}") from None

    def statement_bytes(self) -> bytes:
        try:
            # strict and canonical, without b64decode's Python regex pass over the text (a
            # fifth of an audit's time per receipt)
            return b64decode_canonical(self.statement)
        except ValueError:
            raise InclusionInvalid("receipt statement is not valid base64") from None


class OriginKeys(dict):
    """Trusted keys for several receipt logs, each bound to its origin.

    The dict itself is the union JWK Set (``{"keys": [...]}``), what v1 receipts, proof
    receipts and bundles are checked against (DSSE signatures name no log). A checkpoint of
    origin O is checked only with ``by_origin[O]`` (O's own JWK Set), so that one server's key
    cannot vouch for another server's log; an origin not listed falls back to ``any_origin``
    (keys given with no origin), else it is unknown (:class:`KeyUnknown`)."""

    def __init__(self, by_origin: dict[str, dict[str, Any]], any_origin: dict[str, Any] | None = None) -> None:
        keys: list[dict] = []
        for jwks in [*by_origin.values(), *([any_origin] if any_origin else [])]:
            keys.extend(k for k in jwks["keys"] if k not in keys)
        super().__init__(keys=keys)
        self.by_origin = by_origin
        self.any_origin = any_origin

    def for_origin(self, origin: str) -> dict[str, Any]:
        jwks = self.by_origin.get(origin, self.any_origin)
        if jwks is None:
            known = ", ".join(repr(o) for o in sorted(self.by_origin))
            raise KeyUnknown(f"checkpoint of log {origin!r}: no trusted key for that origin "
                             f"(the keys given are for {known})")
        return jwks

    def __reduce__(self):  # pickled into audit workers with its origins
        return OriginKeys, (self.by_origin, self.any_origin)


TrustedLogKeys = dict[str, Any] | Sequence[NoteVerifier]
# Trees whose proven nodes an audit keeps at once (a batch's receipts are audited together)
MAX_PROVEN_TREES = 64


def note_verifiers(trusted: TrustedLogKeys, origin: str) -> list[NoteVerifier]:
    """Note verifiers for a checkpoint of ``origin``: given as such, or every Ed25519 key
    of a JWK Set under the name ``origin`` (the server signs checkpoints with its JWKS keys);
    for :class:`OriginKeys`, only the keys of that origin."""
    if isinstance(trusted, OriginKeys):
        trusted = trusted.for_origin(origin)
    if isinstance(trusted, dict):
        out = []
        for jwk in trusted.get("keys", []):
            try:
                out.append(NoteVerifier.from_key(origin, public_key_from_jwk(jwk)))
            except InputError:
                continue
            except UnicodeError:  # an origin no UTF-8 spells: the checkpoint's parse refuses it
                return []
        return out
    return list(trusted)


def checked_checkpoint(note: str, trusted: TrustedLogKeys, origin: str | None,
                       cache: dict[str, Checkpoint] | None = None) -> Checkpoint:
    """:func:`verifier.tlog.verify_checkpoint` with the keys of ``trusted``; ``cache`` keeps
    checkpoints already checked (receipts of one batch share one: one signature check)."""
    if cache is not None and note in cache:
        cp = cache[note]
    else:
        first_line = note.split("\n", 1)[0]
        cp = verify_checkpoint(note, note_verifiers(trusted, first_line))
        if cache is not None:
            cache[note] = cp
    if origin is not None and cp.origin != origin:
        raise OriginMismatch(f"checkpoint is for log {cp.origin!r}, not {origin!r}")
    return cp


def _check_not_revoked(note: str, trusted: TrustedLogKeys, signed_at: str) -> None:
    """:class:`KeyRevoked` when a JWK that signed the checkpoint was revoked at or before the
    statement's time (as v1 receipts are checked; ``verinfer keys revoke``)."""
    if not isinstance(trusted, dict) or not any("revoked_at" in k for k in trusted.get("keys", [])):
        return
    cp, _text, sigs = parse_checkpoint(note)
    signed_by = {(name, kid) for name, kid, _sig in sigs}
    for jwk in trusted["keys"]:
        if "revoked_at" not in jwk:
            continue
        try:
            v = NoteVerifier.from_key(cp.origin, public_key_from_jwk(jwk))
        except InputError:
            continue
        if (v.name, v.key_id) in signed_by:
            check_jwk_not_revoked(jwk, signed_at)


# orjson writes a double otherwise than RFC 8785 in three cases only: an integral one with ".0"
# ("2.0", "-0.0": JCS "2", "0"), and exponents -6 and +16 to +20 ("1.5e-6", "1e+16": JCS
# "0.0000015", "10000000000000000"); test_the_canonical_fast_path_takes_only_rfc8785_bytes
# runs every binary exponent and 20,000 FP32 bit patterns through this
_INTEGRAL_DOUBLE = re.compile(rb"\.0[,\]}]")
_EXPONENT_MINUS_6 = re.compile(rb"e-6(?![0-9])")
_EXPONENT_PLUS = re.compile(rb"e\+(?:1[6-9]|20)(?![0-9])")
# keys: JCS sorts by UTF-16 code units, orjson by code points; they differ between U+E000-U+FFFF
# (UTF-8 lead bytes EE, EF) and U+10000 on (F0-F4)
_BMP_TOP = re.compile(rb"[\xee\xef]")
_ASTRAL = re.compile(rb"[\xf0-\xf4]")


def _jcs_as_orjson_writes(data: bytes) -> bool:
    """Whether ``data``, the sorted compact form orjson writes of its value, is also its RFC
    8785 form: none of the spellings above, read as bytes (a string holding ".0," or "e+16"
    only takes the slower check). Two regular expressions with a literal prefix (faster than
    ``in`` here) and a search for one byte; the cost is in docs/performance.md."""
    if _INTEGRAL_DOUBLE.search(data) or _EXPONENT_MINUS_6.search(data) \
            or b"+" in data and _EXPONENT_PLUS.search(data):
        return False
    return data.isascii() or not (_BMP_TOP.search(data) and _ASTRAL.search(data))


def _big_ints_as_doubles(value: Any) -> Any:
    """``value`` with each integer past 2^53 as the double a JSON number reads as in RFC 8785
    (orjson reads one up to 2^64 as a Python int; past it, as a double)."""
    if type(value) is int:
        return value if -2**53 < value < 2**53 else float(value)
    if type(value) is list:
        return [_big_ints_as_doubles(v) for v in value]
    if type(value) is dict:
        return {k: _big_ints_as_doubles(v) for k, v in value.items()}
    return value


def canonical_value(data: bytes) -> Any:
    """The JSON value of a logged statement, which must be its own canonical form (RFC 8785),
    so that every parser reads the one value a verifier checked: no duplicate key (parsers
    differ on which one wins), no second spelling; else :class:`SignatureInvalid`. Fast path:
    the bytes are the sorted compact form orjson writes of their value and hold none of the
    spellings where orjson's and RFC 8785's differ; else they must be ``rfc8785``'s bytes."""
    try:
        value = orjson.loads(data)
        try:
            fast = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER)
        except TypeError:  # an integer past 2^53: RFC 8785 (and JavaScript) reads every number
            # as a double, and writes one from 2^53 to 1e21 in digits (an FP32 output of 3e16 is
            # 30000000817692670): canonical when they are the digits of the double it reads
            value, fast = _big_ints_as_doubles(value), None
        if fast == data and _jcs_as_orjson_writes(data) or rfc8785.dumps(value) == data:
            return value
    except (ValueError, TypeError):  # not JSON, or values JCS has no form for
        pass
    raise SignatureInvalid("logged statement is not canonical JSON (RFC 8785): duplicate keys, "
                           "whitespace, key order or a number's spelling")


def _check_subjects_fast(st: StatementV2, value: dict[str, Any]) -> None:
    """v1's subject checks (:func:`verifier.receipts._check_subjects`) on the validated
    statement's JSON value (``value``): the subjects name the predicate's digests, in order, and
    each output's data hashes to its digest."""
    p = value["predicate"]
    model, inp = p["model"], p["input"]
    want = [{"digest": {"sha256": model["sha256"]}, "name": "model/" + model["name"]},
            {"digest": {"sha256": inp["digest"]}, "name": "input/" + inp["name"]}]
    want += [{"digest": {"sha256": o["digest"]}, "name": "output/" + o["name"]} for o in p["outputs"]]
    if value["subject"] != want:  # (a digest dict with another entry differs too)
        raise DigestMismatch("statement subjects do not match the predicate's digests")
    for out in st.predicate.outputs:
        try:
            digest = list_digest(out.data, out.shape, out.datatype)
        except (ValueError, TypeError, InputError):
            raise DigestMismatch(f"output {out.name}: data does not fit its shape/datatype") from None
        if digest != out.digest:
            raise DigestMismatch(f"output {out.name}: data does not hash to its digest")


def _proof_hashes(proof: Sequence[str]) -> list[bytes]:
    return list(map(binascii.a2b_base64, proof))  # the B64Hash pattern checked each one's shape


def verify_receipt_v2(
    receipt: ReceiptV2,
    trusted: TrustedLogKeys,
    *,
    origin: str | None = None,
    trusted_eth_signers: set[str] | None = None,
    input_array: np.ndarray | None = None,
    model_sha256: str | None = None,
    checkpoints: dict[str, Checkpoint] | None = None,
    proven: dict[str, ProvenNodes] | None = None,
) -> StatementV2:
    """Fail-closed check of a v2 receipt; returns its statement.

    ``trusted``: a JWK Set (its Ed25519 keys, named by the checkpoint's origin) or note
    verifiers. Raises :class:`KeyUnknown` (checkpoint by no trusted key),
    :class:`SignatureInvalid`, :class:`OriginMismatch` (``origin`` given and another log's),
    :class:`InclusionInvalid` (statement, index or proof not in the signed tree), then the
    statement checks of v1 (:class:`DigestMismatch`, :class:`LinkBroken`). ``checkpoints`` and
    ``proven``: caches kept across calls (an audit) of checked checkpoints and proven nodes."""
    cp = checked_checkpoint(receipt.checkpoint, trusted, origin, checkpoints)
    data = receipt.statement_bytes()
    if proven is None:
        verify_inclusion(receipt.index, cp.size, leaf_hash(data), _proof_hashes(receipt.proof), cp.root)
    else:  # many receipts of one checkpoint: hash each proof only up to a node already proven,
        # compare the rest as text
        nodes = proven.get(receipt.checkpoint)
        if nodes is None:
            if len(proven) >= MAX_PROVEN_TREES:
                proven.clear()
            nodes = proven[receipt.checkpoint] = ProvenNodes(cp.size, cp.root)
        nodes.verify(receipt.index, leaf_hash(data), receipt.proof)
    value = canonical_value(data)
    try:
        st = StatementV2.model_validate(value)
    except ValidationError as exc:
        raise SignatureInvalid(f"logged statement is not a verinfer v2 statement: {exc.errors()[0]['msg']}") from None
    p = st.predicate
    if receipt.id != p.requestId:
        raise LinkBroken("receipt id is not the logged request id")
    _check_not_revoked(receipt.checkpoint, trusted, p.time)
    _check_subjects_fast(st, value)
    if receipt.eip712 is not None:
        if p.eip712 is None:
            raise LinkBroken("receipt carries an EIP-712 signature its statement does not name")
        att = receipt.eip712
        if att.signer.lower() != p.eip712.signer.lower() or att.domain != p.eip712.domain:
            raise LinkBroken("EIP-712 signature is by another signer or domain than the statement names")
        verify_eip712(att, trusted_eth_signers)
        check_eip712_message(att.message, p)
    elif trusted_eth_signers is not None:
        raise SignatureInvalid("receipt has no EIP-712 signature")
    check_model_and_input(p, model_sha256, input_array, "logged")
    return st


_V2_PREFIX = f'{{"format":"{RECEIPT_V2_FORMAT}"'


def parse_any_receipt(raw: str | bytes | dict):
    """A v1 :class:`verifier.receipts.Receipt` or a :class:`ReceiptV2`, by its ``format``."""
    from verifier.receipts import Receipt

    if isinstance(raw, dict):
        fmt = raw.get("format")
    elif raw.startswith(_V2_PREFIX if isinstance(raw, str) else _V2_PREFIX.encode()):
        # as the server writes them (format first): validated as it is parsed, no second pass
        return ReceiptV2.parse(raw)
    else:
        import json

        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise InputError(f"invalid receipt: not JSON: {exc}") from None
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raw = doc
    return ReceiptV2.parse(raw) if fmt == RECEIPT_V2_FORMAT else Receipt.parse(raw)


def verify_any_receipt(receipt, jwks: dict[str, Any], *, origin: str | None = None,
                       trusted_eth_signers: set[str] | None = None,
                       checkpoints: dict[str, Checkpoint] | None = None,
                       proven: dict[str, ProvenNodes] | None = None, **kw):
    """v1 (DSSE against ``jwks``) or v2 (checkpoint by a ``jwks`` key); the statement."""
    if isinstance(receipt, ReceiptV2):
        return verify_receipt_v2(receipt, jwks, origin=origin, trusted_eth_signers=trusted_eth_signers,
                                 checkpoints=checkpoints, proven=proven, **kw)
    from verifier.receipts import verify_receipt

    return verify_receipt(receipt, jwks, trusted_eth_signers=trusted_eth_signers, **kw)
