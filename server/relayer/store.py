"""The relayer's durable record: its cursor, the hashes of the blocks it read, and every
request it saw (SQLite, WAL)."""

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
CURSOR_END = 2**31 - 1  # a cursor (block, CURSOR_END): every event of that block was seen


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
# version 2: the hashes of the blocks the relayer read, to see a reorg (and rewind)
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS blocks (
    chain_id INTEGER NOT NULL, oracle TEXT NOT NULL, number INTEGER NOT NULL,
    hash TEXT NOT NULL, PRIMARY KEY (chain_id, oracle, number));
"""
# version 3: the block our own transaction for a request was mined in, so that a reorg that
# drops it (and not the request) sends that request again
_SCHEMA_V3 = "ALTER TABLE requests ADD COLUMN mined_block INTEGER;"
# version 4: the nonce a transaction from the node's unlocked account was sent at (its hash is
# known only once sent): a restart in between waits for that nonce instead of sending again
_SCHEMA_V4 = "ALTER TABLE requests ADD COLUMN nonce INTEGER;"
SCHEMA = Schema("relayer store", slot=2, steps=(_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_V4))
KEEP_BLOCKS = 512  # block hashes kept: a reorg deeper than this rewinds to the start


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
    nonce: int | None = None  # an unlocked account's transaction, recorded before it is sent


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

    def _all(self, sql: str, args: tuple) -> list:
        with self._lock:  # one connection, shared by the relayer's worker threads
            return self._db.execute(sql, args).fetchall()

    def cursor(self) -> tuple[int, int] | None:
        rows = self._all("SELECT block, log_index FROM cursor WHERE chain_id=? AND oracle=?",
                         (self.chain_id, self.oracle))
        return (rows[0][0], rows[0][1]) if rows else None

    def set_cursor(self, block: int, log_index: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO cursor VALUES (?,?,?,?) ON CONFLICT(chain_id, oracle) DO UPDATE "
                "SET block=excluded.block, log_index=excluded.log_index",
                (self.chain_id, self.oracle, block, log_index))

    def remember_blocks(self, hashes: dict[int, str]) -> None:
        """Record the hashes of blocks read (number -> 0x hash); keep the newest KEEP_BLOCKS."""
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO blocks VALUES (?,?,?,?)",
                [(self.chain_id, self.oracle, n, h) for n, h in hashes.items()])
            self._db.execute(
                "DELETE FROM blocks WHERE chain_id=? AND oracle=? AND number <= (SELECT "
                "MAX(number) FROM blocks WHERE chain_id=? AND oracle=?) - ?",
                (self.chain_id, self.oracle, self.chain_id, self.oracle, KEEP_BLOCKS))

    def known_blocks(self) -> list[tuple[int, str]]:
        """The recorded (number, hash) pairs, newest first."""
        return [tuple(r) for r in self._all(
            "SELECT number, hash FROM blocks WHERE chain_id=? AND oracle=? ORDER BY number DESC",
            (self.chain_id, self.oracle))]

    def rewind(self, block: int | None) -> int:
        """Forget everything after ``block`` (a reorg replaced the blocks after it; ``None``:
        forget all): the cursor goes back to its end, the block hashes and the records of
        requests made after it go; records with a transaction in flight ("sending") stay, so
        a restart still finds that transaction. A request made before ``block`` whose own
        transaction was mined after it is "sending" again (that transaction may be gone with
        its block: it is looked up, and sent again if the node does not know it) and is read
        again. Returns how many records went or were reopened."""
        last = -1 if block is None else block
        where = (self.chain_id, self.oracle, last)
        with self._lock:
            self._db.execute("DELETE FROM blocks WHERE chain_id=? AND oracle=? AND number > ?",
                             where)
            n = self._db.execute(
                "DELETE FROM requests WHERE chain_id=? AND oracle=? AND block > ? AND "
                "state != 'sending'", where).rowcount
            reopened = self._db.execute(
                "SELECT block, log_index FROM requests WHERE chain_id=? AND oracle=? AND "
                "mined_block > ? ORDER BY block, log_index LIMIT 1", where).fetchall()
            n += self._db.execute(
                "UPDATE requests SET state='sending', mined_block=NULL WHERE chain_id=? AND "
                "oracle=? AND mined_block > ?", where).rowcount
            if block is None:
                self._db.execute("DELETE FROM cursor WHERE chain_id=? AND oracle=?",
                                 (self.chain_id, self.oracle))
                return n
            back = (block, CURSOR_END)
            if reopened:  # the first reopened request is read again
                back = min(back, (reopened[0][0], reopened[0][1] - 1))
            self._db.execute("UPDATE cursor SET block=?, log_index=? WHERE chain_id=? AND "
                             "oracle=? AND (block > ? OR (block = ? AND log_index > ?))",
                             (*back, self.chain_id, self.oracle, back[0], back[0], back[1]))
        return n

    def get(self, request_id: str) -> RequestRecord | None:
        rows = self._all(
            "SELECT request_id, model_id, block, log_index, state, method, label, tx_hash, reason,"
            " attempts, nonce FROM requests WHERE chain_id=? AND oracle=? AND request_id=?",
            (self.chain_id, self.oracle, request_id))
        return RequestRecord(*rows[0]) if rows else None

    def upsert(self, request_id: str, model_id: str, block: int, log_index: int, state: str,
               **fields: Any) -> None:
        cols = ("method", "label", "tx_hash", "reason", "mined_block", "nonce")
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
        rows = self._all(
            "SELECT request_id, model_id, block, log_index, state, method, label, tx_hash, reason,"
            " attempts, nonce FROM requests WHERE chain_id=? AND oracle=? ORDER BY block, log_index",
            (self.chain_id, self.oracle))
        return [RequestRecord(*r) for r in rows]
