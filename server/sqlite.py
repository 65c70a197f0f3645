"""How verinfer's SQLite stores open: connection, PRAGMAs, transactions, schema versions.

Each store (receipts, proof jobs, relayer) declares a :class:`Schema`: the SQL steps from
version 0 (its tables as they were before stores carried a version) to the current one.
:func:`connect` runs the steps a file lacks in one IMMEDIATE transaction, so processes that
open one file at once migrate it once, and refuses with one line (:class:`StoreError`) a file
made by a newer verinfer or one that is not a verinfer store.

The receipts and the proof jobs share one file, so ``PRAGMA user_version`` holds one byte per
store kind (``Schema.slot``); ``PRAGMA application_id`` marks the file as verinfer's.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from server.errors import StoreError

APPLICATION_ID = 0x76657269  # "veri"
# SQLite's largest integer: a count past it (keep the newest 10**20) binds as OverflowError
MAX_INTEGER = 2**63 - 1


@dataclass(frozen=True)
class Schema:
    name: str  # for messages: "receipt store"
    slot: int  # which byte of user_version holds this store's version (0..3)
    steps: tuple[str, ...]  # steps[v] takes version v to v + 1; version 0 is "no version stamped"

    @property
    def version(self) -> int:
        return len(self.steps)


def version_of(db: sqlite3.Connection, schema: Schema) -> int:
    """The version of ``schema``'s tables stamped in the open file (0: none stamped)."""
    return (db.execute("PRAGMA user_version").fetchone()[0] >> (8 * schema.slot)) & 0xFF


def connect(path: Path, schema: Schema, pragmas: tuple[str, ...] = ("journal_mode=WAL",),
            timeout: float = 5.0) -> sqlite3.Connection:
    """Open (creating) the store at ``path``: ``pragmas`` first (in order: ``page_size`` must come
    before the file's first table, ``journal_mode`` outside a transaction), then migrated to
    ``schema.version``. Autocommit mode: writes go through :func:`transaction`. The file is the
    owner's alone (0600; SQLite gives its -wal and -shm files the same mode): stores hold
    clients' inputs, API key digests, request records."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    except IsADirectoryError:
        raise StoreError(f"{path}: a folder, not a store") from None
    with suppress(PermissionError):  # a file made by an older verinfer too (if it is ours)
        os.chmod(path, 0o600)
    db = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False, isolation_level=None)
    try:
        end = time.monotonic() + timeout
        for pragma in pragmas:
            _retry_locked(lambda p=pragma: db.execute(f"PRAGMA {p}"), end)
        _retry_locked(lambda: _migrate(db, schema, path), end)
    except sqlite3.DatabaseError as exc:
        db.close()
        if isinstance(exc, sqlite3.OperationalError):  # locked, disk full, ...: not the file's kind
            raise
        raise StoreError(f"{path}: not an SQLite database ({exc})") from None
    except BaseException:
        db.close()
        raise
    return db


def _retry_locked(fn, end: float):
    """``fn()``, again while SQLite says the file is locked (until ``end``, monotonic time): some
    lock waits skip the busy timeout, e.g. switching a brand-new file to WAL while other processes
    open it too, or a reader that would have to upgrade while another connection migrates."""
    delay = 0.005
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= end:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _check(db: sqlite3.Connection, schema: Schema, path: Path) -> int:
    # both stamps in one statement, so from one snapshot: read one by one, a migration another
    # process committed in between showed a new user_version with the old application_id 0
    app, stamped = db.execute("SELECT a.application_id, u.user_version "
                              "FROM pragma_application_id() a, pragma_user_version() u").fetchone()
    if app not in (0, APPLICATION_ID) or (app == 0 and stamped != 0):
        raise StoreError(f"{path}: not a verinfer store (application_id {app:#x}, user_version {stamped})")
    have = (stamped >> (8 * schema.slot)) & 0xFF  # version_of, from the same snapshot
    if have > schema.version:
        raise StoreError(f"{path}: {schema.name} schema version {have} is newer than this verinfer's "
                         f"({schema.version}); open it with the verinfer that wrote it")
    return have


def _migrate(db: sqlite3.Connection, schema: Schema, path: Path) -> None:
    if _check(db, schema, path) == schema.version:
        return
    db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then find it done
    try:
        have = _check(db, schema, path)
        for step in schema.steps[have:]:
            for statement in _statements(step):
                db.execute(statement)
        others = db.execute("PRAGMA user_version").fetchone()[0] & ~(0xFF << (8 * schema.slot))
        db.execute(f"PRAGMA user_version = {others | schema.version << (8 * schema.slot)}")
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _statements(script: str) -> Iterator[str]:
    """``script``'s statements one by one (``executescript`` would commit the open transaction)."""
    pending = ""
    for part in script.split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n\t;"):
                yield pending
            pending = ""
    if pending.strip(" \n\t;"):
        yield pending


@contextmanager
def transaction(db: sqlite3.Connection, lock: threading.Lock, kind: str = "DEFERRED") -> Iterator[sqlite3.Connection]:
    """``with transaction(db, lock):`` one transaction (``kind``: DEFERRED or IMMEDIATE, where
    writers should queue on SQLite's lock from the start), committed, or rolled back on error."""
    with lock:
        db.execute(f"BEGIN {kind}")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def vacuum(path: Path, timeout: float = 5.0) -> tuple[int, int]:
    """Rewrite the store at ``path`` without its free pages (``VACUUM``) and truncate its WAL,
    giving the space a prune freed back to the file system (SQLite otherwise keeps it, for reuse).
    Its bytes on disk (with the WAL) before and after. Another connection writing meanwhile makes
    it wait, then fail (``sqlite3.OperationalError``): run it with the server stopped."""
    path = Path(path)

    def size() -> int:
        return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())

    before = size()
    db = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
    try:
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return before, size()
