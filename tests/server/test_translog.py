"""server.receipts.translog: the log's storage agrees with an in-memory RFC 9162 tree."""

from __future__ import annotations

import os
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.receipts.translog import LogReader, LogWriter
from verifier.errors import InputError, NotFound
from verifier.tlog import MemoryTree, NoteVerifier, leaf_hash, signature_line, verify_checkpoint


@pytest.mark.parametrize("fsync", [False, True])
def test_writer_reader_and_reopen_agree_with_memory_tree(tmp_path, fsync):
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "log.sqlite3"
    writer = LogWriter(path, "t.log/x", lambda n, b: signature_line(n, key, b), fsync=fsync)
    tree, verifier = MemoryTree(), [NoteVerifier.from_key("t.log/x", key.public_key())]
    rng = random.Random(7)
    signed = [0]  # the sizes the log signs: one checkpoint per append
    for _ in range(40):
        leaves = [leaf_hash(os.urandom(6)) for _ in range(rng.choice([1, 2, 3, 7, 8, 16, 33]))]
        first = writer.size
        note, proof = writer.append(leaves)
        for h in leaves:
            tree.append_hash(h)
        cp = verify_checkpoint(note, verifier, "t.log/x")
        assert (cp.size, cp.root) == (tree.size, tree.root())
        signed.append(cp.size)
        for j in range(len(leaves)):
            assert proof(first + j) == tree.inclusion(first + j)
    writer.close()
    again = LogWriter(path, None, lambda n, b: signature_line(n, key, b))
    assert (again.size, again.root(), again.origin) == (tree.size, tree.root(), "t.log/x")
    again.close()
    with pytest.raises(InputError, match="origin"):
        LogWriter(path, "other/origin", lambda n, b: b"", lock_timeout_s=0.1)
    reader = LogReader(path)
    size, note = reader.latest()
    assert size == tree.size and reader.origin() == "t.log/x"
    for i in range(0, size, 13):
        assert reader.inclusion(i, size) == tree.inclusion(i)
    for old in signed[::3]:
        assert reader.consistency(old, size) == tree.consistency(old)
    with pytest.raises(InputError):
        reader.inclusion(0, size + 1)  # a size the log has not signed
    # nor one inside an append: proofs only to trees a checkpoint vouches for
    inside = next(n for n in range(1, size) if n not in signed)
    with pytest.raises(NotFound, match="not a size the log has signed"):
        reader.inclusion(0, inside)
    with pytest.raises(NotFound, match="not a size the log has signed"):
        reader.consistency(inside, size)
    with pytest.raises(NotFound, match="not a size the log has signed"):
        reader.consistency(0, inside)
    assert reader.consistency(0, signed[5]) == []
    with pytest.raises(NotFound):  # past SQLite's integers: still a 404, not a crash
        reader.consistency(25871254, 1704440147880948676210846597120)


def test_one_writer_at_a_time(tmp_path):
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "log.sqlite3"
    first = LogWriter(path, "t.log/x", lambda n, b: signature_line(n, key, b))
    with pytest.raises(InputError, match="another process writes"):
        LogWriter(path, None, lambda n, b: signature_line(n, key, b), lock_timeout_s=0.2)
    first.close()
    LogWriter(path, None, lambda n, b: signature_line(n, key, b), lock_timeout_s=0.2).close()


@pytest.mark.parametrize("origin", ["", "Example Corp receipts", "logs.example/a+b", "line1\nline2"])
def test_an_origin_no_verifier_could_read_is_refused(tmp_path, origin):
    """The origin is the note key's name: with whitespace or a '+' every checkpoint, and so
    every receipt, would be unreadable for good (the origin never changes)."""
    from pydantic import ValidationError

    from server.settings import ServerSettings

    with pytest.raises(InputError, match="not a signed-note key name"):
        LogWriter(tmp_path / "log.sqlite3", origin or " ", lambda n, b: b"")
    if origin:
        with pytest.raises(ValidationError, match="signed-note key name"):
            ServerSettings(home=tmp_path, log_origin=origin)
    assert ServerSettings(home=tmp_path, log_origin="example.com/verinfer/log").log_origin


def test_the_head_is_signed_again_by_a_new_key_at_start(tmp_path):
    """After a key rotation or revocation and a restart, the log's head is signed by the key
    now in use (not left to the old one until the next answer)."""
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    path = tmp_path / "log.sqlite3"
    writer = LogWriter(path, "t.log/x", lambda n, b: signature_line(n, old, b))
    writer.append([leaf_hash(b"a"), leaf_hash(b"b")])
    before = writer.note
    writer.close()
    same = LogWriter(path, None, lambda n, b: signature_line(n, old, b))
    assert same.note == before  # the same key: nothing signed again
    same.close()
    again = LogWriter(path, None, lambda n, b: signature_line(n, new, b))
    cp = verify_checkpoint(again.note, [NoteVerifier.from_key("t.log/x", new.public_key())], "t.log/x")
    assert cp.size == 2 and again.note != before
    again.close()
    assert LogReader(path).latest() == (2, again.note)


def test_a_failed_checkpoint_commit_leaves_the_next_append_fsynced(tmp_path):
    """With fsync on, a checkpoint commit that fails (here: the file locked by another
    connection) must not leave the connection at synchronous=NORMAL for the next append."""
    import sqlite3

    key = Ed25519PrivateKey.generate()
    path = tmp_path / "log.sqlite3"
    writer = LogWriter(path, "t.log/x", lambda n, b: signature_line(n, key, b), lock_timeout_s=0.1,
                       fsync=True)
    other = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    writer._db.execute("PRAGMA busy_timeout=100")
    other.execute("BEGIN IMMEDIATE")  # holds the write lock through the checkpoint's commit
    try:
        with pytest.raises(sqlite3.OperationalError):
            writer._checkpoint(writer.root())
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert writer._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    writer.append([leaf_hash(b"a")])
    with pytest.raises(ValueError, match="nothing to append"):
        writer.append([])
    writer.close()
