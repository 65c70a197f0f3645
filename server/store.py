"""Durable receipt store: one SQLite file (WAL) in the data dir by default."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from verifier.errors import NotFound

SCHEMA = """
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

# (receipt id, OIP datatype, shape as JSON, little-endian row-major bytes)
InputRow = tuple[str, str, str, bytes]


class ReceiptStore:
    """Thread-safe; writes a whole batch of receipts in one transaction.

    WAL checkpoints never run inside a commit (``wal_autocheckpoint=0``): a checkpoint
    fsyncs, and an answer waits for its receipt's commit (on a 2-core VM that took a
    receipt's store from ~50 µs to ~25). With ``checkpoints=True`` a background thread
    checkpoints once a second instead: the receipt worker process does that (it has
    CPU to spare; the event loop does not), every other user opens the file with
    ``checkpoints=False``.
    """

    def __init__(self, path: Path, *, checkpoints: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed receipt survives a crash of the server
        # process; only an OS crash/power loss can lose the last transactions.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._closed = threading.Event()
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        if checkpoints:
            threading.Thread(target=self._checkpoints, name="wal-checkpoint", daemon=True).start()

    def _checkpoints(self, every_s: float = 1.0) -> None:
        db = sqlite3.connect(str(self.path), isolation_level=None)
        try:
            while not self._closed.wait(every_s):
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # never blocks the writer
        finally:
            db.close()

    def put_many(self, rows: list[tuple[str, str, float, str]],
                 inputs: list[InputRow] | None = None) -> None:
        """``rows``: (id, model, created unix time, receipt JSON); ``inputs``: the
        input each one-sample answer ran on, kept so a proof can be asked for later."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT INTO receipts VALUES (?, ?, ?, ?)", rows)
                if inputs:
                    self._db.executemany("INSERT INTO receipt_inputs VALUES (?, ?, ?, ?)", inputs)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

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
        self._closed.set()
        with self._lock:
            self._db.close()
