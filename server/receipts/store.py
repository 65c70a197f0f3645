"""Durable receipt store: one SQLite file (WAL) in the data dir by default."""

from __future__ import annotations

import threading
from pathlib import Path

from server.sqlite import MAX_INTEGER, Schema, connect, transaction
from verifier.errors import NotFound

# version 1: the tables as they were before stores carried a version, now stamped
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS receipts (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    created REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipt_inputs (
    id TEXT PRIMARY KEY,
    datatype TEXT NOT NULL,
    shape TEXT NOT NULL,
    data BLOB NOT NULL
)
"""
SCHEMA = Schema("receipt store", slot=0, steps=(SCHEMA_V1,))

# (receipt id, OIP datatype, shape as JSON, little-endian row-major bytes)
InputRow = tuple[str, str, str, bytes]


# Receipts this connection commits between two checkpoints: ~9 KB of WAL each. The writer
# copies the WAL back while answers wait for it, so this sets that stall: 512 (~4.6 MB) held
# the writer 12-14 ms and set the p99 under light open-loop load; 128 (~1.2 MB) holds it ~4 ms
# for ~3 % more checkpoint work (docs/performance.md, "checkpoint stalls").
CHECKPOINT_EVERY = 128
# After a checkpoint, the WAL file is cut back to this size when it restarts.
WAL_SIZE_LIMIT = 16 << 20


class ReceiptStore:
    """Thread-safe; writes a whole batch of receipts in one transaction.

    Checkpoints: never inside a commit that an answer waits for (``wal_autocheckpoint=0``).
    The writer runs :meth:`checkpoint` itself, after its answers are out, once
    :attr:`checkpoint_due` says so (the receipt worker after a reply, the event loop after a
    batch it signed itself). It must be the writer: another connection's checkpoints never
    catch up with a writer that keeps writing, and the WAL grows without end (docs/performance.md).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = connect(path, SCHEMA, pragmas=(
            # 8 KiB pages hold three ~2.6 KB receipts where 4 KiB pages held one (3.3 instead of
            # 4.7 KB per receipt on disk); only a new database takes it
            "page_size=8192",
            "journal_mode=WAL",
            # NORMAL in WAL mode: a committed receipt survives a crash of the server
            # process; only an OS crash/power loss can lose the last transactions.
            "synchronous=NORMAL",
            "wal_autocheckpoint=0",  # the writer checkpoints (class docstring)
            f"journal_size_limit={WAL_SIZE_LIMIT}",
        ))
        self._written = 0  # receipts committed since the last checkpoint

    @property
    def checkpoint_due(self) -> bool:
        return self._written >= CHECKPOINT_EVERY

    def checkpoint(self) -> None:
        """Copy the WAL back into the database (PASSIVE: never waits for other connections)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._written = 0

    def put_many(self, rows: list[tuple[str, str, float, str]],
                 inputs: list[InputRow] | None = None) -> None:
        """``rows``: (id, model, created unix time, receipt JSON); ``inputs``: the
        input each one-sample answer ran on, kept so a proof can be asked for later."""
        with transaction(self._db, self._lock) as db:
            db.executemany("INSERT INTO receipts VALUES (?, ?, ?, ?)", rows)
            if inputs:
                db.executemany("INSERT INTO receipt_inputs VALUES (?, ?, ?, ?)", inputs)
            self._written += len(rows)

    def prune(self, before: float | None = None, keep: int | None = None) -> int:
        """Forget receipts made before ``before`` (Unix time) and all but the newest ``keep``,
        with their stored inputs; how many went. What the log holds stays (its tree and
        checkpoints), so a receipt a client kept still verifies by its inclusion proof; it is
        only no longer served by id, and can no longer be named for a proof."""
        with transaction(self._db, self._lock) as db:
            gone = 0
            if before is not None:
                gone += db.execute("DELETE FROM receipts WHERE created < ?", (before,)).rowcount
            if keep is not None:
                gone += db.execute("DELETE FROM receipts WHERE id IN (SELECT id FROM receipts "
                                   "ORDER BY created DESC, id DESC LIMIT -1 OFFSET ?)",
                                   (min(keep, MAX_INTEGER),)).rowcount
            if gone:
                db.execute("DELETE FROM receipt_inputs WHERE id NOT IN (SELECT id FROM receipts)")
        return gone

    def get(self, receipt_id: str) -> str:
        with self._lock:
            row = self._db.execute("SELECT body FROM receipts WHERE id = ?", (receipt_id,)).fetchone()
        if row is None:
            raise NotFound(f"no receipt with id {receipt_id!r}")
        return row[0]

    def get_input(self, receipt_id: str) -> InputRow | None:
        """The stored input of a one-sample answer, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, datatype, shape, data FROM receipt_inputs WHERE id = ?", (receipt_id,)
            ).fetchone()
        return tuple(row) if row is not None else None

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
