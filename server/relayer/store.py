"""The relayer's durable record: its cursor and every request it saw (SQLite, WAL)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import StoreError
from server.sqlite import Schema, connect

# Request states in the store. Terminal: every one but "pending" and "sending".
TERMINAL = {"fulfilled", "answered_elsewhere", "cancelled", "skipped", "failed"}


def default_store_path(home: Path) -> Path:
    return Path(home) / "relayer.sqlite3"


# -- the durable record ----------------------------------------------------------------

# version 1: the tables as they were before stores carried a version, now stamped
_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS cursor (
    chain_id INTEGER NOT NULL, oracle TEXT NOT NULL,
    block INTEGER NOT NULL, log_index INTEGER NOT NULL,
    PRIMARY KEY (chain_id, oracle));
CREATE TABLE IF NOT EXISTS requests (
    chain_id INTEGER NOT NULL, oracle TEXT NOT NULL, request_id TEXT NOT NULL,
    model_id TEXT NOT NULL, block INTEGER NOT NULL, log_index INTEGER NOT NULL,
    state TEXT NOT NULL, method TEXT, label INTEGER, tx_hash TEXT, reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL,
    PRIMARY KEY (chain_id, oracle, request_id));
"""
SCHEMA = Schema("relayer store", slot=2, steps=(_SCHEMA_V1,))


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    model_id: str
    block: int
    log_index: int
    state: str
    method: str | None
    label: int | None
    tx_hash: str | None
    reason: str | None
    attempts: int


class RelayStore:
    """SQLite record of the cursor and of every request seen (``<home>/relayer.sqlite3``).
    Writes are committed at once (WAL, synchronous=FULL): a state is on disk before the next
    step that depends on it."""

    def __init__(self, path: Path, chain_id: int, oracle: str) -> None:
        path = Path(path)
        self.path = path
        self.chain_id, self.oracle = chain_id, oracle.lower()
        self._db = connect(path, SCHEMA, ("journal_mode=WAL", "synchronous=FULL"), timeout=30)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def cursor(self) -> tuple[int, int] | None:
        row = self._db.execute("SELECT block, log_index FROM cursor WHERE chain_id=? AND oracle=?",
                               (self.chain_id, self.oracle)).fetchone()
        return (row[0], row[1]) if row else None

    def set_cursor(self, block: int, log_index: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO cursor VALUES (?,?,?,?) ON CONFLICT(chain_id, oracle) DO UPDATE "
                "SET block=excluded.block, log_index=excluded.log_index",
                (self.chain_id, self.oracle, block, log_index))

    def get(self, request_id: str) -> RequestRecord | None:
        row = self._db.execute(
            "SELECT request_id, model_id, block, log_index, state, method, label, tx_hash, reason,"
            " attempts FROM requests WHERE chain_id=? AND oracle=? AND request_id=?",
            (self.chain_id, self.oracle, request_id)).fetchone()
        return RequestRecord(*row) if row else None

    def upsert(self, request_id: str, model_id: str, block: int, log_index: int, state: str,
               **fields: Any) -> None:
        cols = ("method", "label", "tx_hash", "reason")
        unknown = set(fields) - set(cols) - {"attempts"}
        if unknown:
            raise StoreError(f"relayer store: unknown fields {unknown}")
        with self._lock:
            self._db.execute(
                "INSERT INTO requests (chain_id, oracle, request_id, model_id, block, log_index,"
                " state, updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(chain_id, oracle,"
                " request_id) DO UPDATE SET state=excluded.state, updated_at=excluded.updated_at",
                (self.chain_id, self.oracle, request_id, model_id, block, log_index, state,
                 time.time()))
            for k, v in fields.items():
                self._db.execute(f"UPDATE requests SET {k}=? WHERE chain_id=? AND oracle=? AND "
                                 "request_id=?", (v, self.chain_id, self.oracle, request_id))

    def records(self) -> list[RequestRecord]:
        rows = self._db.execute(
            "SELECT request_id, model_id, block, log_index, state, method, label, tx_hash, reason,"
            " attempts FROM requests WHERE chain_id=? AND oracle=? ORDER BY block, log_index",
            (self.chain_id, self.oracle)).fetchall()
        return [RequestRecord(*r) for r in rows]
