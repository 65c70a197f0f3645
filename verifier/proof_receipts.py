"""Proof receipts: the server's signed statement that a proof belongs to a receipt.

When the server finishes a proof job it signs, with the same Ed25519 key and in
the same DSSE form as an answer's receipt, a short in-toto Statement binding

* the SHA-256 of the answer receipt's canonical JSON (``canonical_json`` of the
  receipt object, exactly as the bundle carries it), and
* the SHA-256 of the proof's canonical JSON (``canonical_json`` of EZKL's proof
  object, exactly as the bundle carries it),

to the circuit package (its id is the manifest's digest), the model digest, the
input digest, the proven label, the signed label and the verdict (``proven``
when they agree, ``mismatch`` otherwise)::

    {"format": "verinfer.proof-receipt/v1", "id": <job id>,
     "envelope": {"payloadType": "application/vnd.in-toto+json", "payload": ..., "signatures": [...]}}

:func:`verify_proof_receipt` checks it against a bundle, fail closed.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import Field

from verifier.base import Count, Rfc3339, parse_as
from verifier.base import Frozen as _Frozen
from verifier.digests import canonical_json
from verifier.errors import DigestMismatch, LinkBroken, SignatureInvalid
from verifier.keys import check_not_revoked
from verifier.receipts import (
    PAYLOAD_TYPE,
    STATEMENT_TYPE,
    Envelope,
    Sha256Hex,
    Subject,
    verify_dsse,
)

PROOF_RECEIPT_FORMAT = "verinfer.proof-receipt/v1"
PROOF_PREDICATE_TYPE = "https://verinfer.dev/proof-receipt/v1"


class ProofPredicate(_Frozen):
    jobId: str
    receiptId: str | None  # the answer receipt's id (its requestId), if the proof has one
    receiptSha256: Sha256Hex | None  # sha256(canonical_json(receipt)), if any
    proofSha256: Sha256Hex  # sha256(canonical_json(proof))
    packageId: Sha256Hex  # the circuit package (sha256 of its manifest)
    modelSha256: Sha256Hex
    inputDigest: Sha256Hex  # tensor digest of the proven input
    circuitLabel: Count
    signedLabel: Count | None  # the label in the receipt (the float model's answer)
    status: Literal["proven", "mismatch"]
    time: Rfc3339  # UTC
    keyId: str


class ProofStatement(_Frozen):
    type_: Literal["https://in-toto.io/Statement/v1"] = Field(STATEMENT_TYPE, alias="_type")
    subject: tuple[Subject, ...]
    predicateType: Literal["https://verinfer.dev/proof-receipt/v1"] = PROOF_PREDICATE_TYPE
    predicate: ProofPredicate

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.model_dump(mode="json", by_alias=True))


class ProofReceipt(_Frozen):
    format: Literal["verinfer.proof-receipt/v1"] = PROOF_RECEIPT_FORMAT
    id: str  # the proof job's id
    envelope: Envelope

    @classmethod
    def parse(cls, raw: str | bytes | dict) -> ProofReceipt:
        return parse_as(cls, raw, "invalid proof receipt", "proof receipt")


def sha256_json(obj: Any) -> str:
    """SHA-256 (hex) of an object's canonical JSON: what a proof receipt binds."""
    return hashlib.sha256(canonical_json(obj)).hexdigest()


def proof_subjects(p: ProofPredicate) -> tuple[Subject, ...]:
    subjects = []
    if p.receiptSha256 is not None:
        subjects.append(Subject(name=f"receipt/{p.receiptId}", digest={"sha256": p.receiptSha256}))
    subjects.append(Subject(name=f"proof/{p.packageId}", digest={"sha256": p.proofSha256}))
    return tuple(subjects)


def make_proof_statement(predicate: ProofPredicate) -> ProofStatement:
    return ProofStatement(subject=proof_subjects(predicate), predicate=predicate)


def verify_proof_receipt_envelope(receipt: ProofReceipt, jwks: dict[str, Any]) -> ProofStatement:
    """Signature (against ``jwks``) and shape of a proof receipt; returns its statement."""
    payload, kids = verify_dsse(receipt.envelope, jwks)
    st = parse_as(ProofStatement, payload, "signed payload is not a verinfer proof statement", "statement",
                  SignatureInvalid)
    if st.predicate.keyId not in kids:
        raise LinkBroken("proof receipt's keyId is not the key that signed it")
    check_not_revoked(jwks, st.predicate.keyId, st.predicate.time)
    if tuple(st.subject) != proof_subjects(st.predicate):
        raise DigestMismatch("proof receipt's subjects do not match its predicate")
    if st.predicate.jobId != receipt.id:
        raise LinkBroken("proof receipt's id is not the signed job id")
    return st


def verify_proof_receipt(raw: dict | ProofReceipt, bundle: Any, jwks: dict[str, Any]) -> ProofStatement:
    """Check a proof receipt against a :class:`verifier.bundle.ProofBundle`, fail closed:
    the signature; the receipt and proof digests are the bundle's; package, model, input
    and labels are the bundle's; the verdict is what the labels say."""
    pr = raw if isinstance(raw, ProofReceipt) else ProofReceipt.parse(raw)
    st = verify_proof_receipt_envelope(pr, jwks)
    p = st.predicate
    if p.proofSha256 != sha256_json(bundle.proof):
        raise DigestMismatch("proof receipt signs another proof than the bundle's")
    if bundle.receipt is None:
        if p.receiptSha256 is not None:
            raise LinkBroken("proof receipt names a receipt, the bundle carries none")
    else:
        if p.receiptSha256 != sha256_json(bundle.receipt):
            raise DigestMismatch("proof receipt signs another receipt than the bundle's")
        if p.receiptId != bundle.receipt.get("id"):
            raise LinkBroken("proof receipt's receipt id is not the bundle receipt's id")
    if p.packageId != bundle.model.package_id or p.modelSha256 != bundle.model.model_sha256:
        raise LinkBroken("proof receipt is for another circuit package or model")
    if p.inputDigest != bundle.input.digest:
        raise LinkBroken("proof receipt is for another input")
    if p.circuitLabel != bundle.outputs.label:
        raise LinkBroken("proof receipt's circuit label is not the proven label")
    agree = p.signedLabel is not None and p.signedLabel == p.circuitLabel
    if p.status != ("proven" if agree else "mismatch"):
        raise LinkBroken(f"proof receipt says {p.status!r}, its labels say otherwise")
    if p.signedLabel is not None and p.signedLabel != bundle.agreement.float_label:
        raise LinkBroken("proof receipt's signed label is not the bundle's agreement label")
    return st


__all__ = [
    "PAYLOAD_TYPE",
    "PROOF_PREDICATE_TYPE",
    "PROOF_RECEIPT_FORMAT",
    "ProofPredicate",
    "ProofReceipt",
    "ProofStatement",
    "make_proof_statement",
    "sha256_json",
    "verify_proof_receipt",
]
