"""verifier.tlog and verifier.receipts_v2: RFC 9162 vectors, signed notes, the v2 tamper corpus."""

from __future__ import annotations

import base64
import os
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.tlog_support import ORIGIN, MemLog, statement
from verifier.errors import (
    ConsistencyInvalid,
    InclusionInvalid,
    InputError,
    KeyUnknown,
    LinkBroken,
    OriginMismatch,
    SignatureInvalid,
)
from verifier.receipts_v2 import ReceiptV2, parse_any_receipt, verify_receipt_v2
from verifier.tlog import (
    MemoryTree,
    NoteVerifier,
    ProvenNodes,
    checkpoint_body,
    key_id,
    leaf_hash,
    node_hash,
    sign_note,
    stored_index,
    verify_checkpoint,
    verify_consistency,
    verify_inclusion,
)

# The Certificate Transparency reference test corpus (RFC 6962/9162 hashing): eight leaves,
# the root of each prefix, and proofs (certificate-transparency's merkle_tree_test).
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
             b"\x50\x51\x52\x53\x54\x55\x56\x57", bytes(range(0x60, 0x70))]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
PATH_0_OF_8 = ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
               "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
               "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]
PATH_0_OF_7 = PATH_0_OF_8[:2] + ["837dbb152e9b079010717e84e865da4ebc0fa198a806d59d31bf15accef22d0e"]
CONSISTENCY = {
    (1, 8): PATH_0_OF_8,
    (6, 8): ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
    (2, 5): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"],
}

# Go's sumdb/note package documentation: a signed note and the keys that made it.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (b"If you think cryptography is the answer to your problem,\n"
           b"then you don't know what your problem is.\n")
GO_NOTE = GO_TEXT + ("\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZS"
                     "NXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n").encode()


def test_ct_roots_and_inclusion_vectors():
    tree = MemoryTree(CT_LEAVES)
    assert [tree.root(n).hex() for n in range(1, 9)] == CT_ROOTS
    assert tree.root(0).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert [h.hex() for h in tree.inclusion(0, 8)] == PATH_0_OF_8
    assert [h.hex() for h in tree.inclusion(0, 7)] == PATH_0_OF_7
    verify_inclusion(0, 8, leaf_hash(b""), [bytes.fromhex(h) for h in PATH_0_OF_8], bytes.fromhex(CT_ROOTS[7]))
    assert node_hash(leaf_hash(b""), leaf_hash(b"\x00")).hex() == CT_ROOTS[1]


def test_ct_consistency_vectors():
    tree = MemoryTree(CT_LEAVES)
    for (old, new), want in CONSISTENCY.items():
        assert [h.hex() for h in tree.consistency(old, new)] == want
        verify_consistency(old, new, bytes.fromhex(CT_ROOTS[old - 1]), bytes.fromhex(CT_ROOTS[new - 1]),
                           [bytes.fromhex(h) for h in want])


def test_every_proof_of_small_trees_verifies_and_tampering_fails():
    for n in range(1, 40):
        tree = MemoryTree([os.urandom(4) for _ in range(n)])
        root = tree.root()
        for m in range(n):
            proof = tree.inclusion(m)
            verify_inclusion(m, n, tree.levels[0][m], proof, root)
            with pytest.raises(InclusionInvalid):
                verify_inclusion(m, n, leaf_hash(b"other"), proof, root)
            if proof:
                with pytest.raises(InclusionInvalid):
                    verify_inclusion(m, n, tree.levels[0][m], proof[:-1], root)
                with pytest.raises(InclusionInvalid):
                    verify_inclusion(m, n, tree.levels[0][m], [*proof, proof[0]], root)
        for old in range(n + 1):
            proof = tree.consistency(old)
            verify_consistency(old, n, tree.root(old), root, proof)
            if 0 < old < n:
                with pytest.raises(ConsistencyInvalid):
                    verify_consistency(old, n, tree.root(old), leaf_hash(b"x"), proof)
                with pytest.raises(ConsistencyInvalid):
                    verify_consistency(old, n, tree.root(old), root, proof[1:])
    with pytest.raises(ConsistencyInvalid):
        verify_consistency(3, 2, b"\0" * 32, b"\0" * 32, [])


def test_go_sumdb_note_vector():
    """Our key id, verifier key and signature line are Go's, byte for byte (Ed25519 is deterministic)."""
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])[1:]
    key = Ed25519PrivateKey.from_private_bytes(seed)
    v = NoteVerifier.from_key("PeterNeumann", key.public_key())
    assert v.encode() == GO_VKEY
    assert NoteVerifier.parse(GO_VKEY).key_id.hex() == "c74f20a3"
    assert sign_note(GO_TEXT, "PeterNeumann", key) == GO_NOTE
    with pytest.raises(SignatureInvalid):  # parsed as a checkpoint it has no size line
        verify_checkpoint(GO_NOTE, [v])
    with pytest.raises(InputError):
        NoteVerifier.parse(GO_VKEY.replace("c74f20a3", "c74f20a4"))


def test_checkpoint_signature_and_origin():
    log = MemLog()
    note = log.checkpoint()
    v = NoteVerifier.from_key(ORIGIN, log.key.public_key())
    cp = verify_checkpoint(note, [v], ORIGIN)
    assert (cp.origin, cp.size, cp.root) == (ORIGIN, log.tree.size, log.tree.root())
    assert note.startswith(checkpoint_body(ORIGIN, cp.size, cp.root).decode() + "\n\u2014 " + ORIGIN + " ")
    assert base64.b64decode(note.rsplit(" ", 1)[1])[:4] == key_id(ORIGIN, v.key.public_bytes_raw())
    with pytest.raises(KeyUnknown):
        verify_checkpoint(note, [NoteVerifier.from_key(ORIGIN, Ed25519PrivateKey.generate().public_key())])
    with pytest.raises(OriginMismatch):
        verify_checkpoint(note, [v], "another.log/x")
    body_changed = note.replace(f"\n{cp.size}\n", f"\n{cp.size + 1}\n")
    with pytest.raises(SignatureInvalid):
        verify_checkpoint(body_changed, [v])
    # a second signature by an unknown key is ignored; the trusted one still counts
    other = Ed25519PrivateKey.generate()
    cosigned = note + sign_note(note.split("\n\n")[0].encode() + b"\n", "witness.example", other).decode().split("\n\n")[1]
    verify_checkpoint(cosigned, [v])


# --- the v2 receipt tamper corpus ---------------------------------------------------------------


@pytest.fixture
def v2():
    log = MemLog()
    st = statement()
    receipt = log.add(st)
    return log, st, receipt


def _with(receipt: ReceiptV2, **update) -> ReceiptV2:
    return ReceiptV2.model_validate({**receipt.model_dump(), **update})


def test_v2_receipt_verifies_with_jwks_and_note_key(v2):
    log, st, receipt = v2
    assert verify_receipt_v2(receipt, log.jwks, origin=ORIGIN) == st
    assert verify_receipt_v2(receipt, [NoteVerifier.from_key(ORIGIN, log.key.public_key())]) == st
    assert parse_any_receipt(receipt.model_dump_json()) == receipt
    # the statement bytes are RFC 8785: what rfc8785 writes for the parsed JSON
    import json

    import rfc8785

    data = receipt.statement_bytes()
    assert rfc8785.dumps(json.loads(data)) == data


def test_v2_flipped_statement_byte(v2):
    log, _, receipt = v2
    data = bytearray(receipt.statement_bytes())
    data[len(data) // 2] ^= 0x01
    with pytest.raises(InclusionInvalid):
        verify_receipt_v2(_with(receipt, statement=base64.b64encode(bytes(data)).decode()), log.jwks)


def test_v2_wrong_leaf_index(v2):
    log, _, receipt = v2
    for index in (receipt.index - 1, receipt.index + 1, log.tree.size + 5):
        with pytest.raises(InclusionInvalid):
            verify_receipt_v2(_with(receipt, index=index), log.jwks)


def test_v2_proof_for_another_tree_size(v2):
    log, _, receipt = v2
    smaller = log.tree.inclusion(receipt.index, receipt.index + 1)
    with pytest.raises(InclusionInvalid):
        verify_receipt_v2(_with(receipt, proof=[base64.b64encode(h).decode() for h in smaller]), log.jwks)
    # and the right proof with a checkpoint for another size
    log.tree.append(b"later")
    with pytest.raises(InclusionInvalid):
        verify_receipt_v2(_with(receipt, checkpoint=log.checkpoint()), log.jwks)


def test_v2_truncated_proof(v2):
    log, _, receipt = v2
    with pytest.raises(InclusionInvalid):
        verify_receipt_v2(_with(receipt, proof=receipt.proof[:-1]), log.jwks)


def test_v2_checkpoint_signed_by_unknown_key(v2):
    log, _, receipt = v2
    impostor = MemLog(key=Ed25519PrivateKey.generate())
    impostor.tree = log.tree
    with pytest.raises(KeyUnknown):
        verify_receipt_v2(_with(receipt, checkpoint=impostor.checkpoint()), log.jwks)


def test_v2_another_origin(v2):
    log, _, receipt = v2
    other = MemLog(origin="evil.example/log", key=log.key)
    other.tree = log.tree
    with pytest.raises(OriginMismatch):
        verify_receipt_v2(_with(receipt, checkpoint=other.checkpoint()), log.jwks, origin=ORIGIN)
    assert issubclass(OriginMismatch, LinkBroken)


def test_v2_statement_checks_still_apply(v2):
    log, _, _ = v2
    st = statement()
    bad = st.model_copy(update={"predicate": st.predicate.model_copy(
        update={"outputs": (st.predicate.outputs[0].model_copy(update={"data": [9.0, 9.0, 9.0]}),)})})
    receipt = log.add(bad)
    from verifier.errors import DigestMismatch

    with pytest.raises(DigestMismatch):
        verify_receipt_v2(receipt, log.jwks)
    good = log.add(statement())
    with pytest.raises(LinkBroken):
        verify_receipt_v2(_with(good, id="0x" + "00" * 32), log.jwks)


def test_v2_receipt_by_a_revoked_key(v2):
    """A checkpoint key revoked before the statement's time fails with KeyRevoked; revoked
    after it, the receipt still verifies (``verinfer keys revoke``, as for v1 receipts)."""
    from datetime import datetime, timedelta

    from verifier.errors import KeyRevoked

    log, st, receipt = v2
    signed_at = datetime.fromisoformat(st.predicate.time.replace("Z", "+00:00"))

    def revoked(at: datetime) -> dict:
        return {"keys": [{**k, "revoked_at": at.isoformat()} for k in log.jwks["keys"]]}

    assert verify_receipt_v2(receipt, revoked(signed_at + timedelta(seconds=1))) == st
    with pytest.raises(KeyRevoked):
        verify_receipt_v2(receipt, revoked(signed_at - timedelta(seconds=1)))


def test_stored_index_is_go_sumdb_order():
    """Go's ``tlog.StoredHashIndex`` (a loop) and the closed form agree; the first few by hand."""
    def go(level: int, n: int) -> int:
        for _ in range(level):
            n = 2 * n + 1
        i = 0
        while n > 0:
            i += n
            n >>= 1
        return i + level

    assert [stored_index(0, 0), stored_index(0, 1), stored_index(1, 0), stored_index(0, 2),
            stored_index(0, 3), stored_index(1, 1), stored_index(2, 0)] == list(range(7))
    for level in range(40):
        for n in [*range(70), 2**40 + 5, 2**50 - 1]:
            assert stored_index(level, n) == go(level, n)


def _tampered(proof: list[bytes], rng: random.Random) -> list[list[bytes]]:
    """Every way a proof is broken in the corpus: each hash flipped, cut short, made longer."""
    out = []
    for j in range(len(proof)):
        bad = list(proof)
        bad[j] = bytes([bad[j][0] ^ (1 << rng.randrange(8))]) + bad[j][1:]
        out.append(bad)
    if proof:
        out += [proof[:-1], proof[1:]]
    out.append([*proof, proof[0] if proof else b"\1" * 32])
    return out


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _text(proof: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in proof]


def _respelled(text: str) -> str:
    """The same 32 bytes in another base64 spelling: an unused low bit of the last digit set."""
    return text[:42] + B64[B64.index(text[42]) ^ 1] + "="


@pytest.mark.parametrize("max_nodes", [ProvenNodes.max_nodes, 12])
def test_proven_nodes_give_verify_inclusions_verdicts(max_nodes, monkeypatch):
    """ProvenNodes (an audit's many receipts of one checkpoint) accepts exactly what
    verify_inclusion accepts, whatever came before: tampered proofs interleaved with good
    ones, in any order, never pass and never spoil later checks. Its proofs are base64 text,
    most of it compared as text: a hash in another spelling of the same bytes, or not 32
    bytes, is refused wherever it sits in the proof. Also once it keeps no more nodes
    (``max_nodes``: the bound on its memory)."""
    monkeypatch.setattr(ProvenNodes, "max_nodes", max_nodes)
    rng = random.Random(11)
    for n in [*range(1, 34), 64, 65, 100]:
        tree = MemoryTree([os.urandom(4) for _ in range(n)])
        root, proven = tree.root(), ProvenNodes(n, tree.root())
        order = list(range(n)) * 2
        rng.shuffle(order)
        for m in order:
            leaf, proof = tree.levels[0][m], tree.inclusion(m)
            text = _text(proof)
            for bad in _tampered(proof, rng):
                with pytest.raises(InclusionInvalid):
                    verify_inclusion(m, n, leaf, bad, root)
                with pytest.raises(InclusionInvalid):
                    proven.verify(m, leaf, _text(bad))
            for j in range(len(text)):
                for bad_hash in (_respelled(text[j]), text[j][:40] + "==", text[j][:43] + "!", "", 44 * "="):
                    with pytest.raises(InclusionInvalid):
                        proven.verify(m, leaf, [*text[:j], bad_hash, *text[j + 1:]])
            with pytest.raises(InclusionInvalid):
                proven.verify(m, leaf_hash(b"other"), text)
            if n > 1:
                with pytest.raises(InclusionInvalid):
                    proven.verify((m + 1) % n, leaf, text)  # another leaf index
            with pytest.raises(InclusionInvalid):
                proven.verify(n, leaf, text)
            proven.verify(m, leaf, text)
        other = MemoryTree([os.urandom(4) for _ in range(n)])  # another tree of this size
        with pytest.raises(InclusionInvalid):
            proven.verify(0, other.levels[0][0], _text(other.inclusion(0)))
        assert len(proven._known) <= max(max_nodes, 1) + 2 * n.bit_length() + 2  # one proof's nodes past the bound


def test_v2_statement_that_is_not_strict_base64(v2):
    """Only the alphabet with final padding: a newline, a space, a URL-safe character or
    padding inside the text is refused before any hashing (the audit decodes strictly)."""
    log, _, receipt = v2
    text = receipt.statement
    for bad in (text[:8] + "\n" + text[8:], text[:8] + " " + text[8:], "-" + text[1:],
                text[:8] + "==" + text[8:], text[:-1], text + "=A"):
        with pytest.raises(InclusionInvalid, match="not valid base64"):
            verify_receipt_v2(_with(receipt, statement=bad), log.jwks)


def test_v2_subject_with_a_second_digest_is_refused(v2):
    """A subject naming the right SHA-256 and one more algorithm is not the predicate's subject."""
    from verifier.errors import DigestMismatch

    log, st, _ = v2
    subject = [s.model_copy(update={"digest": {**s.digest, "sha3-256": "00" * 32}}) if i == 1 else s
               for i, s in enumerate(st.subject)]
    receipt = log.add(st.model_copy(update={"subject": tuple(subject)}))
    with pytest.raises(DigestMismatch, match="subjects"):
        verify_receipt_v2(receipt, log.jwks)
