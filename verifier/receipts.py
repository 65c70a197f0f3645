"""Signed receipts: a DSSE envelope (Ed25519) around an in-toto Statement v1.

A receipt is what the server returns with every answer (in the OIP v2
response's ``parameters.receipt``, as a JSON string) and stores::

    {"format": "verinfer.receipt/v1", "id": <request id>,
     "envelope": {"payloadType": "application/vnd.in-toto+json",
                  "payload": <base64 of the Statement's canonical JSON>,
                  "signatures": [{"keyid": <RFC 7638 thumbprint>, "sig": <base64 Ed25519>}]},
     "eip712": {domain, message, signer, signature} | null}

The Ed25519 signature is over DSSE's PAE of (payloadType, payload bytes): the
one byte form, made by :func:`pae`, used by signer and verifier alike. The
payload is parsed only after its signature checks (parse, then trust).
See ``docs/formats.md`` for the field list and a test vector.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from cryptography.exceptions import InvalidSignature
from pydantic import Field, StringConstraints

from verifier.base import Bytes32Hex, Count, Rfc3339, parse_as
from verifier.base import Frozen as _Frozen
from verifier.digests import b64decode_canonical, canonical_json
from verifier.eip712 import EIP712Attestation, verify_eip712
from verifier.errors import DigestMismatch, InputError, LinkBroken, SignatureInvalid
from verifier.keys import check_not_revoked, find_key
from verifier.manifest import MAX_SCALE
from verifier.tensors import json_array, tensor_digest

RECEIPT_FORMAT = "verinfer.receipt/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://verinfer.dev/receipt/v1"

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


# --- the signed statement ------------------------------------------------------


class Subject(_Frozen):
    name: str  # "model/<name>", "input/<tensor>", "output/<tensor>"
    digest: dict[str, Sha256Hex]  # {"sha256": ...}


class ModelRef(_Frozen):
    name: str
    version: str
    sha256: Sha256Hex  # of model.onnx: the model digest


class InputRef(_Frozen):
    name: str
    datatype: str
    shape: tuple[Count, ...]
    digest: Sha256Hex  # verifier.tensors.tensor_digest of the input as sent
    scale: Annotated[int, Field(strict=True, ge=-MAX_SCALE, le=MAX_SCALE)]  # of the commitment
    commitment: Bytes32Hex  # keccak256(abi.encode(int256[] quantize(input, scale)))


class OutputTensor(_Frozen):
    name: str
    datatype: str
    shape: tuple[Count, ...]
    digest: Sha256Hex
    data: list[Any]  # flat, row-major, as in the OIP v2 response


class Predicate(_Frozen):
    requestId: Bytes32Hex
    clientRequestId: str | None = None  # the OIP request's "id", if the client sent one
    model: ModelRef
    input: InputRef
    outputs: tuple[OutputTensor, ...]
    label: Count | list[Count]  # int for a one-sample request, else one per sample
    time: Rfc3339  # UTC
    device: str  # where it ran, e.g. "cpu" or "cuda:0 (NVIDIA H200)"
    keyId: str  # kid of the Ed25519 key that signs the envelope


class Statement(_Frozen):
    type_: Literal["https://in-toto.io/Statement/v1"] = Field(STATEMENT_TYPE, alias="_type")
    subject: tuple[Subject, ...]
    predicateType: Literal["https://verinfer.dev/receipt/v1"] = PREDICATE_TYPE
    predicate: Predicate

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.model_dump(mode="json", by_alias=True))


# --- the envelope and the receipt --------------------------------------------------


class Signature(_Frozen):
    keyid: str
    sig: str  # standard base64


class Envelope(_Frozen):
    payloadType: str
    payload: str  # standard base64
    signatures: tuple[Signature, ...]


class Receipt(_Frozen):
    format: Literal["verinfer.receipt/v1"] = RECEIPT_FORMAT
    id: Bytes32Hex
    envelope: Envelope
    eip712: EIP712Attestation | None = None

    @classmethod
    def parse(cls, raw: str | bytes | dict) -> Receipt:
        return parse_as(cls, raw, "invalid receipt", "receipt")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding: the exact bytes Ed25519 signs."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def make_subjects(model: ModelRef, inp: InputRef, outputs: tuple[OutputTensor, ...]) -> tuple:
    return (
        Subject(name=f"model/{model.name}", digest={"sha256": model.sha256}),
        Subject(name=f"input/{inp.name}", digest={"sha256": inp.digest}),
        *(Subject(name=f"output/{o.name}", digest={"sha256": o.digest}) for o in outputs),
    )


def sign_envelope(statement: Statement, kid: str, sign: Any) -> Envelope:
    """Wrap a statement; ``sign(bytes) -> bytes`` is the Ed25519 private key's sign."""
    payload = statement.canonical_bytes()
    sig = sign(pae(PAYLOAD_TYPE, payload))
    return Envelope(
        payloadType=PAYLOAD_TYPE,
        payload=base64.b64encode(payload).decode(),
        signatures=(Signature(keyid=kid, sig=base64.b64encode(sig).decode()),),
    )


# --- verification (fail closed) ------------------------------------------------------


def _b64(text: str, what: str) -> bytes:
    try:
        return b64decode_canonical(text)  # DSSE signs the bytes: their spelling must be one
    except ValueError:
        raise SignatureInvalid(f"{what} is not valid base64") from None


def verify_dsse(envelope: Envelope, jwks: dict[str, Any]) -> tuple[bytes, list[str]]:
    """The DSSE layer alone: payloadType, and every signature by a JWKS key and valid.
    Returns the payload bytes (not yet parsed) and the signers' kids."""
    if envelope.payloadType != PAYLOAD_TYPE:
        raise SignatureInvalid(f"unexpected payloadType {envelope.payloadType!r}")
    if not envelope.signatures:
        raise SignatureInvalid("envelope has no signatures")
    if len({s.keyid for s in envelope.signatures}) != len(envelope.signatures):
        raise SignatureInvalid("envelope has two signatures by one key")
    payload = _b64(envelope.payload, "payload")
    message = pae(envelope.payloadType, payload)
    # every signature must be by a known key and valid
    kids = []
    for s in envelope.signatures:
        key = find_key(jwks, s.keyid)  # KeyUnknown
        try:
            key.verify(_b64(s.sig, "signature"), message)
        except InvalidSignature:
            raise SignatureInvalid(f"Ed25519 signature by {s.keyid} does not verify") from None
        kids.append(s.keyid)
    return payload, kids


def verify_envelope(envelope: Envelope, jwks: dict[str, Any]) -> Statement:
    """Check the envelope's signature against a JWK Set; return the signed statement.

    Raises :class:`KeyUnknown` if no signature is by a listed key,
    :class:`SignatureInvalid` if a signature or the payload is bad, and
    :class:`DigestMismatch` if the statement's subjects contradict its predicate.
    """
    payload, kids = verify_dsse(envelope, jwks)
    statement = parse_as(Statement, payload, "signed payload is not a verinfer statement", "statement",
                         SignatureInvalid)
    if statement.predicate.keyId not in kids:
        raise LinkBroken("predicate keyId is not the key that signed the envelope")
    check_not_revoked(jwks, statement.predicate.keyId, statement.predicate.time)
    _check_subjects(statement)
    return statement


def _check_subjects(st: Statement) -> None:
    p = st.predicate
    want = make_subjects(p.model, p.input, p.outputs)
    if tuple(st.subject) != want:
        raise DigestMismatch("statement subjects do not match the predicate's digests")
    for out in p.outputs:
        try:
            got = tensor_digest(json_array(out.data, out.shape, out.datatype), out.datatype)
        except (ValueError, TypeError, InputError):
            raise DigestMismatch(f"output {out.name}: data does not fit its shape/datatype") from None
        if got != out.digest:
            raise DigestMismatch(f"output {out.name}: data does not hash to its digest")


def verify_receipt(
    receipt: Receipt | Envelope,
    jwks: dict[str, Any],
    *,
    trusted_eth_signers: set[str] | None = None,
    input_array: np.ndarray | None = None,
    model_sha256: str | None = None,
) -> Statement:
    """Fail-closed check of a receipt (or a bare envelope); returns the statement.

    Also checks, when given: the EIP-712 part (signature recovers to its signer,
    a trusted one if ``trusted_eth_signers``; and it signs the same model, input
    commitment, label and request id as the statement), the input tensor
    (``input_array`` hashes to the signed input digest) and the model digest.
    """
    envelope = receipt.envelope if isinstance(receipt, Receipt) else receipt
    st = verify_envelope(envelope, jwks)
    p = st.predicate
    if isinstance(receipt, Receipt):
        if receipt.id != p.requestId:
            raise LinkBroken("receipt id is not the signed request id")
        if receipt.eip712 is not None:
            verify_eip712(receipt.eip712, trusted_eth_signers)
            check_eip712_message(receipt.eip712.message, p)
        elif trusted_eth_signers is not None:
            raise SignatureInvalid("receipt has no EIP-712 signature")
    check_model_and_input(p, model_sha256, input_array, "signed")
    return st


def check_eip712_message(m: Any, p: Any) -> None:
    """An EIP-712 message (already verified) signs the statement's model, input, request and
    label (``p``: its predicate, v1 or v2); else :class:`LinkBroken`."""
    if m.modelId[2:] != p.model.sha256 or m.inputCommitment != p.input.commitment:
        raise LinkBroken("EIP-712 message signs another model or input than the statement")
    if m.requestId != p.requestId or p.label != m.label:
        raise LinkBroken("EIP-712 message signs another request or label than the statement")


def check_model_and_input(p: Any, model_sha256: str | None, input_array: Any, how: str) -> None:
    """The statement (``p``: its predicate) is for this model file and this input, where given
    (:class:`DigestMismatch`); ``how``: "signed" (v1) or "logged" (v2), for the message."""
    if model_sha256 is not None and model_sha256 != p.model.sha256:
        raise DigestMismatch(f"receipt is for model {p.model.sha256}, not {model_sha256}")
    if input_array is not None and tensor_digest(input_array, p.input.datatype) != p.input.digest:
        raise DigestMismatch(f"input does not hash to the {how} input digest")
