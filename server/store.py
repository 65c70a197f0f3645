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
)
"""


class ReceiptStore:
    """Thread-safe; writes a whole batch of receipts in one transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed receipt survives a crash of the server
        # process; only an OS crash/power loss can lose the last transactions.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)

    def put_many(self, rows: list[tuple[str, str, float, str]]) -> None:
        """``rows``: (id, model, created unix time, receipt JSON)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT INTO receipts VALUES (?, ?, ?, ?)", rows)
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

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
