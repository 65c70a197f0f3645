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
        "surrogate in the origin": "\ud800" + receipt.checkpoint,
        # a size of 5000 digits: int() refuses it (ValueError) before any signature is checked
        "huge size": f"{log.origin}\n{'9' * 5000}\n{root}\n\n\u2014 {log.origin} {sig}\n",
    }
    for what, note in bad.items():
        with pytest.raises(SignatureInvalid, match="UTF-8" if "surrogate" in what else "64 bits"):
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


# --- Ed25519 keys of small order: anyone can sign for them ------------------------------------

IDENTITY = bytes.fromhex("01" + "00" * 31)  # the neutral point: R = it, S = 0 verifies every message


@pytest.mark.parametrize("raw", [
    IDENTITY,
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),  # order 8
    bytes.fromhex("0000000000000000000000000000000000000000000000000000000000000080"),  # order 4, x sign set
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # y = p + 1: the identity again
])
def test_small_order_or_non_canonical_ed25519_keys_are_refused(tmp_path, raw):
    import json

    from verifier.audit import read_keys_file
    from verifier.errors import InputError, KeyUnknown
    from verifier.keys import b64url, jwk_thumbprint, public_key_from_jwk
    from verifier.tlog import ALG_ED25519, key_id

    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    jwk["kid"] = jwk_thumbprint(jwk)
    with pytest.raises(InputError, match="small order|not canonically"):
        public_key_from_jwk(jwk)
    (tmp_path / "k.json").write_text(json.dumps({"keys": [jwk]}))
    with pytest.raises(InputError, match="small order|not canonically"):
        read_keys_file(tmp_path / "k.json")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pem = Ed25519PublicKey.from_public_bytes(raw).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "k.pem").write_bytes(pem)
    with pytest.raises(InputError, match="small order|not canonically"):  # (was accepted, then each receipt an InputError)
        read_keys_file(tmp_path / "k.pem")
    vkey = f"a.test/log+{key_id('a.test/log', raw).hex()}+{base64.b64encode(bytes([ALG_ED25519]) + raw).decode()}"
    with pytest.raises(InputError, match="small order|not canonically"):
        NoteVerifier.parse(vkey)
    if raw != IDENTITY:
        return
    # under such a key a checkpoint nobody signed verified: any statement, any receipt
    log = MemLog()
    receipt = log.add(statement())
    forged_sig = base64.b64encode(key_id(log.origin, raw) + IDENTITY + bytes(32)).decode()
    body = receipt.checkpoint.split("\n\n")[0]
    forged = receipt.model_copy(update={"checkpoint": f"{body}\n\n\u2014 {log.origin} {forged_sig}\n"})
    with pytest.raises(KeyUnknown):  # the key is no key: before, the forgery verified
        verify_receipt_v2(forged, {"keys": [jwk]})


# --- the standalone recipe of docs/formats.md ---------------------------------------------------


def test_recipe_refuses_an_index_the_verifier_refuses():
    """The recipe's RFC 9162 walk on Python ints took index i - 2**k (negative: all high bits
    set) as leaf i: a receipt naming another index passed it; and JSON's true as 1 (the
    verifier wants a JSON integer)."""
    from tests.tlog_support import doc_recipe
    from verifier.errors import InputError
    from verifier.tlog import note_verifier_key

    recipe = doc_recipe()
    log = MemLog(fill=1)
    receipt = log.add(statement(), after=4)  # leaf 1 of 6: a path of 3 hashes
    note_key = note_verifier_key(log.origin, log.key.public_key())
    good = receipt.model_dump(mode="json")
    assert receipt.index == 1 and recipe(good, note_key)
    for index in (1 - 8, 1 - 16, True):
        with pytest.raises(InputError):
            ReceiptV2.parse(dict(good, index=index))
        with pytest.raises(ValueError, match="index outside the tree"):
            recipe(dict(good, index=index), note_key)


def test_recipe_takes_a_revoked_note_key_as_the_verifier_does():
    """The recipe trusted every note key it was given: a revoked key's later checkpoints too
    (docs/formats.md: 'a verifier that reads the note keys and not revoked would trust...')."""
    from tests.tlog_support import doc_recipe
    from verifier.errors import KeyRevoked
    from verifier.tlog import note_verifier_key

    recipe = doc_recipe()
    log = MemLog()
    receipt = log.add(statement())  # time 2026-11-30T20:00:00.000Z
    note_key = note_verifier_key(log.origin, log.key.public_key())
    good = receipt.model_dump(mode="json")
    for revoked_at, passes in (("2026-11-30T20:00:00.001+00:00", True), ("2026-11-30T20:00:00.000+00:00", False),
                               ("2026-11-30T19:00:00.000+00:00", False)):
        jwks = {"keys": [{**log.jwks["keys"][0], "revoked_at": revoked_at}]}
        if passes:
            assert recipe(good, note_key, revoked_at) == verify_receipt_v2(receipt, jwks).model_dump(
                mode="json", by_alias=True)
            continue
        with pytest.raises(KeyRevoked):
            verify_receipt_v2(receipt, jwks)
        with pytest.raises(ValueError, match="revoked"):
            recipe(good, note_key, revoked_at)


def test_a_revoked_jwk_without_kid_revokes_a_v2_receipt():
    """A v2 receipt needs no kid (the checkpoint names its key by note key id): a JWK Set of
    kid-less keys verifies it, and one of them marked revoked_at raised KeyError('kid')."""
    from verifier.errors import KeyRevoked

    log = MemLog()
    receipt = log.add(statement())  # time 2026-11-30T20:00:00.000Z
    jwk = {k: v for k, v in log.jwks["keys"][0].items() if k != "kid"}
    assert verify_receipt_v2(receipt, {"keys": [jwk]})
    assert verify_receipt_v2(receipt, {"keys": [{**jwk, "revoked_at": "2026-12-01T00:00:00Z"}]})
    with pytest.raises(KeyRevoked):
        verify_receipt_v2(receipt, {"keys": [{**jwk, "revoked_at": "2026-11-30T00:00:00Z"}]})


def test_two_signature_lines_of_one_unknown_key_are_ignored():
    """C2SP signed-note: 'Verifiers MUST ignore signatures from unknown keys' (Go's note.Open
    keeps both); two lines of one unknown key (e.g. a witness's cosignatures of two times) made
    the whole checkpoint SignatureInvalid. Two by a trusted key are still refused."""
    log = MemLog()
    receipt = log.add(statement())
    witness = Ed25519PrivateKey.generate()
    body = receipt.checkpoint.split("\n\n")[0] + "\n"
    from verifier.tlog import key_id

    kid = key_id("witness.test", witness.public_key().public_bytes_raw())
    lines = "".join(f"\u2014 witness.test {base64.b64encode(kid + witness.sign(body.encode() + t)).decode()}\n"
                    for t in (b"1", b"2"))
    cosigned = receipt.model_copy(update={"checkpoint": receipt.checkpoint + lines})
    assert verify_receipt_v2(cosigned, log.jwks) == verify_receipt_v2(receipt, log.jwks)
    own = receipt.checkpoint.split("\n\n")[1]
    with pytest.raises(SignatureInvalid, match="two signatures by one key"):
        verify_receipt_v2(receipt.model_copy(update={"checkpoint": receipt.checkpoint + own}), log.jwks)


# --- verinfer audit: the log history check ------------------------------------------------------


def test_a_fork_carried_by_a_receipt_that_fails_is_still_a_fork(tmp_path, capsys):
    """The history check took the checkpoints of passing receipts only: a receipt failing for
    its statement (here its id) hid the second history its well-signed checkpoint shows."""
    import json

    from verifier.cli import main

    key = Ed25519PrivateKey.generate()
    ours, theirs = MemLog(key=key), MemLog(key=key)  # one origin and key, two histories
    good, other = ours.add(statement()), theirs.add(statement())
    assert good.checkpoint.split("\n")[1] == other.checkpoint.split("\n")[1]  # one size
    bad_id = other.model_copy(update={"id": "0x" + "11" * 32}).model_dump(mode="json")
    (tmp_path / "jwks.json").write_text(json.dumps(ours.jwks))
    (tmp_path / "r.jsonl").write_text(json.dumps(good.model_dump(mode="json")) + "\n" + json.dumps(bad_id) + "\n")
    rc = main(["audit", str(tmp_path / "r.jsonl"), "--keys", str(tmp_path / "jwks.json"), "-j", "1", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert [i.get("error") for i in report["items"]] == [None, "LinkBroken", "ConsistencyInvalid"]
    assert "same size and different roots" in report["items"][2]["reason"]
    # a checkpoint that is not the log's adds nothing: its receipt's own failure says so
    unsigned = dict(bad_id, checkpoint=other.checkpoint.replace(other.checkpoint.split("\n")[2], good.checkpoint.split("\n")[2]))
    (tmp_path / "r.jsonl").write_text(json.dumps(good.model_dump(mode="json")) + "\n" + json.dumps(unsigned) + "\n")
    rc = main(["audit", str(tmp_path / "r.jsonl"), "--keys", str(tmp_path / "jwks.json"), "-j", "1", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1 and [i.get("error") for i in report["items"]] == [None, "SignatureInvalid"]
