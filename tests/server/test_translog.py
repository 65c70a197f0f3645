"""server.receipts.translog: the log's storage agrees with an in-memory RFC 9162 tree."""

from __future__ import annotations

import os
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.receipts.translog import LogReader, LogWriter
from verifier.errors import InputError
from verifier.tlog import MemoryTree, NoteVerifier, leaf_hash, signature_line, verify_checkpoint


@pytest.mark.parametrize("fsync", [False, True])
def test_writer_reader_and_reopen_agree_with_memory_tree(tmp_path, fsync):
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "log.sqlite3"
    writer = LogWriter(path, "t.log/x", lambda n, b: signature_line(n, key, b), fsync=fsync)
    tree, verifier = MemoryTree(), [NoteVerifier.from_key("t.log/x", key.public_key())]
    rng = random.Random(7)
    for _ in range(40):
        leaves = [leaf_hash(os.urandom(6)) for _ in range(rng.choice([1, 2, 3, 7, 8, 16, 33]))]
        first = writer.size
        note, proof = writer.append(leaves)
        for h in leaves:
            tree.append_hash(h)
        cp = verify_checkpoint(note, verifier, "t.log/x")
        assert (cp.size, cp.root) == (tree.size, tree.root())
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
    for old in range(0, size, 11):
        assert reader.consistency(old, size) == tree.consistency(old)
    with pytest.raises(InputError):
        reader.inclusion(0, size + 1)  # a size the log has not signed


def test_one_writer_at_a_time(tmp_path):
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "log.sqlite3"
    first = LogWriter(path, "t.log/x", lambda n, b: signature_line(n, key, b))
    with pytest.raises(InputError, match="another process writes"):
        LogWriter(path, None, lambda n, b: signature_line(n, key, b), lock_timeout_s=0.2)
    first.close()
    LogWriter(path, None, lambda n, b: signature_line(n, key, b), lock_timeout_s=0.2).close()
