"""Review 2026-12-02 of receipt and log verification: each test failed before its fix."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.tlog_support import MemLog, statement
from verifier.errors import SignatureInvalid
from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2
from verifier.tlog import NoteVerifier, sign_note, verify_checkpoint

# --- checkpoints: what no signer is needed for must fail cleanly, and C2SP's body rules ---------


def _with_checkpoint(receipt: ReceiptV2, note: str) -> ReceiptV2:
    # (no validation: a str from json.loads may hold a lone surrogate, which pydantic's JSON parser refuses)
    return receipt.model_copy(update={"checkpoint": note})


def test_a_checkpoint_no_key_signed_fails_cleanly_never_crashes():
    log = MemLog()
    receipt = log.add(statement())
    root = base64.b64encode(log.tree.root()).decode()
    sig = base64.b64encode(bytes(68)).decode()
    bad = {
        # a lone surrogate (json.loads reads "\ud800" so): UnicodeEncodeError before
        "surrogate": receipt.checkpoint + "\ud800",
        # a size of 5000 digits: int() refuses it (ValueError) before any signature is checked
        "huge size": f"{log.origin}\n{'9' * 5000}\n{root}\n\n\u2014 {log.origin} {sig}\n",
    }
    for what, note in bad.items():
        with pytest.raises(SignatureInvalid, match="UTF-8" if what == "surrogate" else "64 bits"):
            verify_receipt_v2(_with_checkpoint(receipt, note), log.jwks)
        with pytest.raises(SignatureInvalid):
            verify_checkpoint(note, [NoteVerifier.from_key(log.origin, log.key.public_key())])


def test_checkpoint_body_rules_of_c2sp_tlog_checkpoint():
    key = Ed25519PrivateKey.generate()
    trusted = [NoteVerifier.from_key("a.test/log", key.public_key())]
    root = base64.b64encode(os.urandom(32)).decode()

    def note(body: str) -> str:
        return sign_note(body.encode(), "a.test/log", key).decode()

    assert verify_checkpoint(note(f"a.test/log\n3\n{root}\n"), trusted).size == 3
    assert verify_checkpoint(note(f"a.test/log\n3\n{root}\nextension\n"), trusted).size == 3
    assert verify_checkpoint(note(f"a.test/log\n{(1 << 64) - 1}\n{root}\n"), trusted).size == (1 << 64) - 1
    # "Extension lines, if any, MUST be non-empty" (the note's last blank line ends the text)
    for body in (f"a.test/log\n3\n{root}\n\nextension\n", f"a.test/log\n3\n{root}\n\n"):
        with pytest.raises(SignatureInvalid, match="empty extension line"):
            verify_checkpoint(note(body), trusted)
    # a tree size is a uint64 to every other reader (Go's strconv.ParseUint(s, 10, 64))
    with pytest.raises(SignatureInvalid, match="64 bits"):
        verify_checkpoint(note(f"a.test/log\n{1 << 64}\n{root}\n"), trusted)
