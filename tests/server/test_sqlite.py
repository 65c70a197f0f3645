"""The stores' schema versions (server/sqlite.py): a store from before versions migrates and keeps
its rows; one from a newer verinfer, or a file that is not ours, is refused with one line."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing

import pytest

from server.errors import StoreError
from server.proofs.store import JobStore
from server.receipts.store import ReceiptStore
from server.relayer.store import RelayStore
from server.sqlite import APPLICATION_ID, Schema, connect, transaction, version_of

# The schemas as verinfer wrote them before stores carried a version (version 0), copied here
# as they were so that changing a store's schema cannot change the old files this test makes.
RECEIPTS_V0 = """
CREATE TABLE IF NOT EXISTS receipts (id TEXT PRIMARY KEY, model TEXT NOT NULL, created REAL NOT NULL,
    body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS receipt_inputs (id TEXT PRIMARY KEY, datatype TEXT NOT NULL, shape TEXT NOT NULL,
    data BLOB NOT NULL)
"""
JOBS_V0 = """
CREATE TABLE IF NOT EXISTS proof_jobs (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, package_id TEXT NOT NULL, model_sha256 TEXT NOT NULL,
    input_digest TEXT NOT NULL, input TEXT NOT NULL, receipt_id TEXT, status TEXT NOT NULL, stage TEXT,
    outcome TEXT, attempts INTEGER NOT NULL DEFAULT 0, worker TEXT, lease_until REAL, created REAL NOT NULL,
    started REAL, finished REAL, error TEXT, bundle TEXT, callback_url TEXT, callback_state TEXT,
    UNIQUE (package_id, input_digest));
CREATE INDEX IF NOT EXISTS proof_jobs_status ON proof_jobs (status, created);
"""
RELAYER_V0 = """
CREATE TABLE IF NOT EXISTS cursor (chain_id INTEGER NOT NULL, oracle TEXT NOT NULL,
    block INTEGER NOT NULL, log_index INTEGER NOT NULL, PRIMARY KEY (chain_id, oracle));
CREATE TABLE IF NOT EXISTS requests (chain_id INTEGER NOT NULL, oracle TEXT NOT NULL, request_id TEXT NOT NULL,
    model_id TEXT NOT NULL, block INTEGER NOT NULL, log_index INTEGER NOT NULL, state TEXT NOT NULL,
    method TEXT, label INTEGER, tx_hash TEXT, reason TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL, PRIMARY KEY (chain_id, oracle, request_id));
"""
ORACLE = "0x" + "ab" * 20


def _old_file(path, *scripts_and_rows) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    for script, rows in scripts_and_rows:
        db.executescript(script)
        for sql, args in rows:
            db.execute(sql, args)
    db.commit()
    db.close()


def _stamps(path) -> tuple[int, int]:
    db = sqlite3.connect(path)
    try:
        return (db.execute("PRAGMA application_id").fetchone()[0], db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def test_the_servers_file_from_before_versions_migrates_and_keeps_its_rows(tmp_path):
    """Receipts and proof jobs share the server's file; both migrate, each in its own byte."""
    path = tmp_path / "receipts.sqlite3"
    job = ("job_1", "iris_mlp", "pkg", "ab" * 32, "cd" * 32, "{}", "rid", "done", None, "proven", 1, "w", None,
           1.0, 2.0, 3.0, None, '{"b": 1}', "http://127.0.0.1:9/hook", "delivered")
    _old_file(path, (RECEIPTS_V0, [("INSERT INTO receipts VALUES (?,?,?,?)", ("rid", "iris_mlp", 1.0, "BODY")),
                                   ("INSERT INTO receipt_inputs VALUES (?,?,?,?)", ("rid", "FP32", "[1,4]", b"x"))]),
              (JOBS_V0, [(f"INSERT INTO proof_jobs VALUES ({','.join('?' * 20)})", job)]))
    assert _stamps(path) == (0, 0)
    receipts = ReceiptStore(path)
    assert receipts.get("rid") == "BODY" and receipts.get_input("rid") == ("rid", "FP32", "[1,4]", b"x")
    assert _stamps(path) == (APPLICATION_ID, 1)  # receipts v1; the jobs' byte not yet stamped
    jobs = JobStore(path)
    assert jobs.get("job_1").outcome == "proven" and jobs.bundle("job_1") == '{"b": 1}'
    # proof job store v5: each job's first client's request under the job's own id, with its callback (v2),
    # stage times (v3), the job table's own callback columns gone (v4), retention's tables, empty (v5)
    view = jobs.request("job_1")
    assert view.receipt_id == "rid" and jobs.job_of("job_1") == "job_1"
    assert (view.callback_url, view.callback_state) == ("http://127.0.0.1:9/hook", "delivered")
    assert jobs.get("job_1").callback_url is None and not jobs.pruned("job_1")
    with closing(sqlite3.connect(path)) as db:
        assert not {"callback_url", "callback_state"} & {r[1] for r in db.execute("PRAGMA table_info(proof_jobs)")}
    assert _stamps(path) == (APPLICATION_ID, 1 | 5 << 8)
    receipts.put_many([("rid2", "iris_mlp", 4.0, "BODY2")])  # and they still take writes
    assert receipts.count() == 2
    receipts.close()
    jobs.close()
    again = ReceiptStore(path)  # a stamped file opens as it is
    assert again.count() == 2 and _stamps(path) == (APPLICATION_ID, 1 | 5 << 8)
    again.close()


def test_the_relayer_store_from_before_versions_migrates_and_keeps_its_rows(tmp_path):
    path = tmp_path / "relayer.sqlite3"
    _old_file(path, (RELAYER_V0, [("INSERT INTO cursor VALUES (?,?,?,?)", (31337, ORACLE, 12, 3)),
                                  ("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                   (31337, ORACLE, "0x01", "0x02", 12, 3, "fulfilled", "proof", 2, "0xtx", None,
                                    1, 5.0))]))
    store = RelayStore(path, 31337, ORACLE)
    assert store.cursor() == (12, 3)
    assert store.get("0x01").state == "fulfilled" and store.get("0x01").label == 2
    assert store.known_blocks() == []  # version 2's table of block hashes, empty
    assert store.get("0x01").nonce is None  # version 4's column, empty for the old rows
    assert store.rewind(11) == 1  # version 3's mined_block: none recorded, so only block 12's record goes
    assert _stamps(path) == (APPLICATION_ID, 4 << 16)
    store.close()


@pytest.mark.parametrize("open_store", [
    lambda p: ReceiptStore(p), lambda p: JobStore(p), lambda p: RelayStore(p, 1, ORACLE)],
    ids=["receipts", "jobs", "relayer"])
def test_a_store_from_a_newer_verinfer_is_refused_in_one_line(tmp_path, open_store):
    path = tmp_path / "s.sqlite3"
    open_store(path).close()
    _, stamped = _stamps(path)
    shift = (stamped & -stamped).bit_length() - 1
    shift -= shift % 8  # this store's byte
    have = stamped >> shift
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {(have + 1) << shift}")  # this store's byte says: one version newer
    db.close()
    with pytest.raises(StoreError, match=rf"schema version {have + 1} is newer than this verinfer's \({have}\)") as info:
        open_store(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_files_that_are_not_verinfer_stores_are_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_bytes(b"not a database, but long enough to have a header " * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        ReceiptStore(text)
    for pragma in ("application_id = 1234", "user_version = 7"):  # another program's database
        other = tmp_path / f"other-{pragma[:3]}.db"
        db = sqlite3.connect(other)
        db.execute(f"PRAGMA {pragma}")
        db.execute("CREATE TABLE t (x)")
        db.close()
        with pytest.raises(StoreError, match="not a verinfer store"):
            JobStore(other)


# --- the helper on its own: a real migration step, concurrent opens ----------------------------

TOY = Schema("toy store", slot=3, steps=(
    "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
    "ALTER TABLE t ADD COLUMN note TEXT NOT NULL DEFAULT 'n/a'; CREATE INDEX t_note ON t (note);",
))


def test_each_step_runs_once_and_a_failed_step_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "toy.db"
    v1 = Schema(TOY.name, TOY.slot, TOY.steps[:1])
    db = connect(path, v1)
    db.execute("INSERT INTO t (name) VALUES ('kept')")
    assert version_of(db, v1) == 1
    db.close()
    broken = Schema(TOY.name, TOY.slot, (*TOY.steps, "CREATE TABLE u (x); SELECT no_such_function();"))
    with pytest.raises(sqlite3.OperationalError):
        connect(path, broken)
    db = sqlite3.connect(path)  # all of it rolled back: no step 2 half-done, no table u
    assert [r[1] for r in db.execute("PRAGMA table_info(t)")] == ["id", "name"]
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'u'").fetchone() is None
    db.close()
    db = connect(path, TOY)
    assert db.execute("SELECT name, note FROM t").fetchall() == [("kept", "n/a")]
    assert version_of(db, TOY) == 2 and _stamps(path) == (APPLICATION_ID, 2 << 24)
    db.close()


def test_processes_opening_a_new_file_at_once_migrate_it_once(tmp_path):
    path, errors, opened = tmp_path / "shared.db", [], []

    def open_it():
        try:
            opened.append(connect(path, TOY, timeout=30))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(opened) == 8
    assert all(version_of(db, TOY) == 2 for db in opened)
    lock = threading.Lock()
    with transaction(opened[0], lock) as db:
        db.execute("INSERT INTO t (name) VALUES ('x')")
    with pytest.raises(RuntimeError), transaction(opened[0], lock) as db:
        db.execute("INSERT INTO t (name) VALUES ('rolled back')")
        raise RuntimeError
    assert opened[1].execute("SELECT name FROM t").fetchall() == [("x",)]
    for db in opened:
        db.close()


def test_serve_refuses_a_newer_store_with_exit_2_and_one_line(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    db = sqlite3.connect(home / "receipts.sqlite3")
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 9")  # receipt store version 9
    db.close()
    proc = subprocess.run([sys.executable, "-m", "verifier.cli", "serve", "--port", "1"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "VERINFER_HOME": str(home)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "receipt store schema version 9 is newer" in lines[0], proc.stderr


def test_the_stores_are_the_owners_alone(tmp_path):
    """Receipts hold clients' inputs (and proof jobs), the relayer its requests: 0600, and the
    WAL files SQLite makes next to them too; a file an older verinfer made 0644 is fixed."""
    import stat

    old = tmp_path / "old.sqlite3"
    sqlite3.connect(old).close()
    old.chmod(0o644)
    stores = [ReceiptStore(tmp_path / "receipts.sqlite3"), JobStore(tmp_path / "receipts.sqlite3"),
              RelayStore(tmp_path / "relayer.sqlite3", 1, ORACLE), ReceiptStore(old)]
    stores[0].put_many([("rid", "iris_mlp", 1.0, "BODY")])
    for path in (tmp_path / "receipts.sqlite3", tmp_path / "receipts.sqlite3-wal", tmp_path / "relayer.sqlite3", old):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for s in stores:
        s.close()
