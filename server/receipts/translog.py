"""The receipt log's storage: an append-only Merkle tree (RFC 9162) in one SQLite file (WAL).

Tables: ``nodes`` holds every complete subtree hash, keyed by Go ``sumdb/tlog``'s stored hash
index (a leaf's hash, then the subtrees it completes: appends only ever add rows at the
end); ``checkpoints`` every signed checkpoint handed out; ``meta`` the origin and size.

One :class:`LogWriter` (the receipt worker process) appends a batch's leaf hashes in one
committed transaction (with ``fsync``: ``synchronous=FULL``, on disk when the commit returns;
else WAL ``NORMAL``: safe from a crash of the process, not from power loss), and only then
signs the checkpoint of the new size (:mod:`verifier.tlog`'s format) and stores
it. A crash between the two leaves leaves that no checkpoint covers and no client has seen;
the next batch's checkpoint covers them: the tree is never rewritten. :class:`LogReader`
(the HTTP process) serves checkpoints and proofs for checkpointed sizes.

Proofs for a batch's own leaves need only the batch's new subtrees and, per level, the last
complete subtree of the tree before it (the "edge", kept in memory): no reads on that path.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from server.sqlite import transaction
from verifier.errors import InputError, NotFound
from verifier.tlog import (
    checkpoint_body,
    consistency_proof,
    inclusion_proof,
    node_hash,
    root_hash,
    stored_index,
    valid_note_name,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (i INTEGER PRIMARY KEY, h BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL, created REAL NOT NULL)
"""


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


class _Nodes:
    """Reads stored hashes (for proofs at any checkpointed size)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db, self._lock = db, lock

    def get(self, level: int, n: int) -> bytes:
        row = self._db.execute("SELECT h FROM nodes WHERE i = ?", (stored_index(level, n),)).fetchone()
        if row is None:
            raise NotFound(f"log has no node ({level}, {n})")
        return row[0]


class LogReader:
    """Checkpoints and proofs, for the HTTP API (any process; WAL readers never block the writer)."""

    def __init__(self, path: Path) -> None:
        self._db = _connect(path)
        self._lock = threading.Lock()
        self._nodes = _Nodes(self._db, self._lock)

    def origin(self) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT v FROM meta WHERE k = 'origin'").fetchone()
        return row[0] if row else None

    def latest(self) -> tuple[int, str]:
        """(size, signed note) of the newest checkpoint."""
        with self._lock:
            row = self._db.execute("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        if row is None:
            raise NotFound("the log has no checkpoint yet")
        return row[0], row[1]

    def stats(self) -> tuple[int, int]:
        """(size of the latest checkpoint, checkpoints signed), for metrics."""
        with self._lock:
            size = self._db.execute("SELECT MAX(size) FROM checkpoints").fetchone()[0] or 0
            row = self._db.execute("SELECT v FROM meta WHERE k = 'checkpoints'").fetchone()
        return size, int(row[0]) if row else 0

    def checkpoint(self, size: int) -> str:
        with self._lock:
            row = self._db.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        if row is None:
            raise NotFound(f"no checkpoint of size {size}")
        return row[0]

    def _checked_size(self, size: int, what: str) -> None:
        """A size the log has signed a checkpoint of (proofs to any other tree, e.g. inside one
        group's append, would be to a root no checkpoint vouches for); else NotFound."""
        if size < 0:
            raise InputError(f"{what} must not be negative")
        latest, _ = self.latest()
        if size > latest:  # (first: SQLite takes no integer past 2^63)
            raise NotFound(f"{what} {size} is not a size the log has signed (latest: {latest})")
        with self._lock:
            signed = self._db.execute("SELECT 1 FROM checkpoints WHERE size = ?", (size,)).fetchone()
        if signed is None:
            raise NotFound(f"{what} {size} is not a size the log has signed (latest: {latest})")

    def inclusion(self, index: int, size: int) -> list[bytes]:
        self._checked_size(size, "size")
        if index < 0:
            raise InputError("index must not be negative")
        if index >= size:
            raise NotFound(f"index {index} is not in a tree of size {size}")
        with self._lock:
            return inclusion_proof(index, size, self._nodes.get)

    def consistency(self, old: int, new: int) -> list[bytes]:
        self._checked_size(new, "to")
        if old < 0:
            raise InputError("from must not be negative")
        if 0 < old <= new:  # (from 0: the empty tree, consistent with any)
            self._checked_size(old, "from")
        if old > new:  # 404 as for any proof the log has none of: the request is schema-valid
            # (OpenAPI cannot say from <= to), and a 400 to it fails schemathesis' ST202 check
            raise NotFound(f"no consistency proof from size {old} to the smaller size {new}")
        with self._lock:
            return consistency_proof(old, new, self._nodes.get)

    def root(self, size: int) -> bytes:
        with self._lock:
            return root_hash(size, self._nodes.get)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class LogWriter:
    """The one writer. ``sign(text) -> signature line`` signs a checkpoint note (the key's name
    is the log's origin). Not thread-safe: one process, one thread appends."""

    def __init__(self, path: Path, origin: str | None, sign_line: Callable[[str, bytes], bytes],
                 lock_timeout_s: float = 30.0, fsync: bool = False) -> None:
        self._lock_file = writer_lock(path, lock_timeout_s)
        self._db = _connect(path)
        self._write_lock = threading.Lock()  # one thread writes; transaction() wants a lock
        # NORMAL (WAL): a committed append survives the process (kill -9), not an OS crash or
        # power loss; FULL fsyncs each append before its checkpoint is signed (docs/server.md)
        self._fsync = fsync
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self._sign_line = sign_line
        row = self._db.execute("SELECT v FROM meta WHERE k = 'origin'").fetchone()
        if row is None and origin is not None and not valid_note_name(origin):
            self.close()
            raise InputError(f"receipt log origin {origin!r} is not a signed-note key name (not "
                             "empty, no whitespace, no '+'): no verifier could read its checkpoints")
        if row is None:
            origin = origin or f"verinfer.local/log/{os.urandom(8).hex()}"
            self._db.execute("INSERT INTO meta VALUES ('origin', ?), ('size', '0')", (origin,))
        elif origin is not None and origin != row[0]:
            self.close()
            raise InputError(f"the receipt log at {path} has origin {row[0]!r}, not {origin!r}"
                             " (a log's origin never changes; use another file for another log)")
        self.origin = row[0] if row is not None else origin
        self.size = int(self._db.execute("SELECT v FROM meta WHERE k = 'size'").fetchone()[0])
        nodes = _Nodes(self._db, threading.Lock())
        # per level: the hash of the last complete subtree (None where there is none)
        self._edge = [nodes.get(lvl, (self.size >> lvl) - 1) if self.size >> lvl else None
                      for lvl in range(64)]
        if self._db.execute("SELECT 1 FROM meta WHERE k = 'checkpoints'").fetchone() is None:  # a log from before
            self._db.execute("INSERT INTO meta VALUES ('checkpoints', (SELECT COUNT(*) FROM checkpoints))")
        latest = self._db.execute("SELECT MAX(size) FROM checkpoints").fetchone()[0]
        self.note = None
        if latest != self.size:  # first start, or a crash after an append: sign the tree as it is
            self.note = self._checkpoint(self.root())
        else:
            self.note = self._db.execute("SELECT note FROM checkpoints WHERE size = ?", (latest,)).fetchone()[0]
            self.sign_head()

    def sign_head(self) -> None:
        """Sign the head again (the same size and root) if another key signed it, rotated or
        revoked since, so that whoever trusts only the active key can read the log's head."""
        head = self._signed_note(self.root())
        if head != self.note:  # (Ed25519 is deterministic: the same key signs it alike)
            self._store_checkpoint(head)

    def root(self) -> bytes:
        size, edge = self.size, self._edge
        return root_hash(size, lambda lvl, n: edge[lvl] if n == (size >> lvl) - 1 else _missing(lvl, n))

    def append(self, leaves: list[bytes]) -> tuple[str, Callable[[int], list[bytes]]]:
        """Append leaf hashes durably, then sign the new tree's checkpoint. Returns the signed
        note and ``proof(index)``: the inclusion proof of one of these leaves in that tree."""
        if not leaves:
            raise ValueError("nothing to append")
        old, size, edge = self.size, self.size + len(leaves), self._edge
        levels, rows = _levels(old, size, leaves, edge)
        with transaction(self._db, self._write_lock) as db:
            db.executemany("INSERT INTO nodes VALUES (?, ?)", rows)
            db.execute("UPDATE meta SET v = ? WHERE k = 'size'", (str(size),))
        self.size = size
        self._edge = [levels[lvl][(size >> lvl) - 1] if size >> lvl else None for lvl in range(64)]
        note = self._checkpoint(levels[-1][0])

        def proof(index: int) -> list[bytes]:
            """The siblings on the way up, leaf side first (RFC 9162's PATH: a level's last
            node without a sibling moves up unchanged and adds nothing)."""
            path, count = [], size
            for level in levels[:-1]:
                sibling = index ^ 1
                if sibling < count:
                    path.append(level[sibling])
                index >>= 1
                count = (count + 1) >> 1
            return path

        return note, proof

    def _signed_note(self, root: bytes) -> str:
        body = checkpoint_body(self.origin, self.size, root)
        return (body + b"\n" + self._sign_line(self.origin, body)).decode()

    def _checkpoint(self, root: bytes) -> str:
        return self._store_checkpoint(self._signed_note(root))

    def _store_checkpoint(self, note: str) -> str:
        if self._fsync:  # the leaves are synced; the checkpoint can be re-signed after a crash
            self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with transaction(self._db, self._write_lock) as db:  # the note and its count: one commit
                db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)", (self.size, note, time.time()))
                db.execute("UPDATE meta SET v = v + 1 WHERE k = 'checkpoints'")
        finally:  # also when that commit failed: the next append's leaves are fsynced again
            if self._fsync:
                self._db.execute("PRAGMA synchronous=FULL")
        self.note = note
        return note

    def close(self) -> None:
        self._db.close()
        self._lock_file.close()  # releases the writer lock


def _levels(old: int, size: int, leaves: list[bytes], edge: list[bytes | None]
            ) -> tuple[list[dict[int, bytes]], list[tuple[int, bytes]]]:
    """The nodes an append of ``leaves`` to a tree of ``old`` leaves makes, level by level up to
    the root: per level, the nodes over any new leaf, the one to their left (the edge: a
    complete subtree of the old tree; every proof's left siblings outside the batch are
    edges) and, on the right, a last node over fewer than ``2**level`` leaves, which is its
    left child when it has one child (RFC 9162's split: the same hashes as its recursion).
    Also the new complete subtrees, as ``(stored index, hash)`` rows to store."""
    levels: list[dict[int, bytes]] = []
    nodes = {old + j: h for j, h in enumerate(leaves)}
    rows = [(stored_index(0, i), h) for i, h in nodes.items()]
    count, level = size, 0
    while True:
        first = old >> level
        if first:
            nodes[first - 1] = edge[level]
        levels.append(nodes)
        if count == 1:
            return levels, rows
        up, level, count = {}, level + 1, (count + 1) >> 1
        for k in range(old >> level, count):
            left, right = nodes[2 * k], nodes.get(2 * k + 1)
            up[k] = h = left if right is None else node_hash(left, right)
            if (k + 1) << level <= size:  # complete: a stored subtree
                rows.append((stored_index(level, k), h))
        nodes = up


def writer_lock(path: Path, timeout_s: float):
    """An exclusive ``flock`` on ``<log>.writer``, held while the writer lives (the kernel drops
    it when the process dies): a restarted server's writer waits for a dying one to finish its
    last append, so two writers never hold the tree at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path.with_name(path.name + ".writer"), "a+b")  # noqa: SIM115 - held until close()
    end = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() > end:
                f.close()
                raise InputError(f"another process writes the receipt log {path}") from None
            time.sleep(0.05)


def _missing(level: int, n: int) -> bytes:
    raise AssertionError(f"subtree ({level}, {n}) is neither new nor on the edge")
