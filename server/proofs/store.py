"""Durable proof jobs: one table in the server's SQLite file (WAL), shared by the
server process and its prover worker processes (each opens its own connection).

A job's life::

    queued --claim (attempts+1, lease)--> running --finish--> done (outcome proven|mismatch)
       ^                                     |
       +---- lease ran out / timeout / error-+--(attempts used up, or a permanent error)--> failed

The idempotency key is (circuit package id, tensor digest of the input as the
circuit sees it): submitting the same pair again returns the same job; a done
one is a cache hit. A failed job submitted again is queued again with fresh
attempts. Every change is one short transaction, so a crash of any process
loses nothing that was acknowledged. Retention (:meth:`JobStore.prune`) forgets
done and failed jobs, leaving a tombstone per handle (410, not 404).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.sqlite import MAX_INTEGER, Schema, connect, transaction

# version 1: the table as it was before stores carried a version, now stamped
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS proof_jobs (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    package_id TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    input_digest TEXT NOT NULL,
    input TEXT NOT NULL,
    receipt_id TEXT,
    status TEXT NOT NULL,
    stage TEXT,
    outcome TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until REAL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    bundle TEXT,
    callback_url TEXT,
    callback_state TEXT,
    UNIQUE (package_id, input_digest)
);
CREATE INDEX IF NOT EXISTS proof_jobs_status ON proof_jobs (status, created);
"""
# version 2: each client's request for a job is its own handle (id, receipt, callback): a second
# client asking for the same proof shares the job, not the first client's receipt or callback
SCHEMA_V2 = """
CREATE TABLE proof_requests (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    client TEXT NOT NULL,
    receipt_id TEXT,
    callback_url TEXT,
    callback_state TEXT,
    created REAL NOT NULL,
    UNIQUE (job_id, client)
);
CREATE INDEX proof_requests_client ON proof_requests (client);
CREATE INDEX proof_requests_callbacks ON proof_requests (callback_state);
INSERT INTO proof_requests SELECT id, id, '', receipt_id, callback_url, callback_state, created FROM proof_jobs;
"""
# version 3: the seconds each stage of a job's successful attempt took (metrics by stage)
SCHEMA_V3 = """
ALTER TABLE proof_jobs ADD COLUMN stage_started REAL;
ALTER TABLE proof_jobs ADD COLUMN stages TEXT;
"""
# version 4: the job table's own callback columns go (unused since version 2 moved callbacks to
# each request; a job read on its own has no callback: its requests have theirs)
SCHEMA_V4 = """
ALTER TABLE proof_jobs DROP COLUMN callback_url;
ALTER TABLE proof_jobs DROP COLUMN callback_state;
"""
# version 5: retention (:meth:`JobStore.prune`): the handles of pruned jobs, so that their clients
# are told the job was pruned (410) rather than that it never was (404); and the figures of
# pruned jobs, so that the metrics' counters (jobs ended, prover and stage seconds) do not go back
SCHEMA_V5 = """
CREATE TABLE proof_pruned (
    id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    pruned REAL NOT NULL
);
CREATE INDEX proof_pruned_when ON proof_pruned (pruned);
CREATE TABLE proof_pruned_totals (
    model TEXT NOT NULL,
    outcome TEXT NOT NULL,
    jobs INTEGER NOT NULL,
    prover_seconds REAL NOT NULL,
    stages TEXT NOT NULL,
    PRIMARY KEY (model, outcome)
);
"""
SCHEMA = Schema("proof job store", slot=1, steps=(SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5))
# A Job's fields, in order. A request's view of its job: the job's columns with the request's
# id, receipt and callback. A job read on its own has no callback: its requests have theirs.
_FIELDS = ("id", "model", "package_id", "model_sha256", "input_digest", "receipt_id", "status", "stage",
           "outcome", "attempts", "worker", "lease_until", "created", "started", "finished", "error",
           "callback_url", "callback_state")
_PER_REQUEST = ("id", "receipt_id", "callback_url", "callback_state")
_VIEW = ", ".join(f"r.{c}" if c in _PER_REQUEST else f"j.{c}" for c in _FIELDS)
_JOB = ", ".join("NULL" if c.startswith("callback_") else c for c in _FIELDS)
_JOINED = "proof_requests r JOIN proof_jobs j ON j.id = r.job_id"

ACTIVE = ("queued", "running")
# Tombstones of pruned handles kept at least (with no age limit, the newest this many; see prune)
PRUNED_KEPT = 100_000
# Jobs one transaction of prune forgets (docs/server.md, "Retention": how long the store is held)
PRUNE_BATCH = 500
# Batches of jobs one read of prune finds (20,000 ids: ~2 MB)
PRUNE_PASS = 40
# When a job was last of use: it ended, or a client asked for it since (a cache hit)
_TOUCHED = ("MAX(COALESCE(j.finished, j.created), "
            "COALESCE((SELECT MAX(r.created) FROM proof_requests r WHERE r.job_id = j.id), 0))")


def new_job_id() -> str:
    return "job_" + os.urandom(12).hex()


@dataclass(frozen=True)
class Job:
    id: str
    model: str
    package_id: str
    model_sha256: str
    input_digest: str
    receipt_id: str | None
    status: str
    stage: str | None
    outcome: str | None
    attempts: int
    worker: str | None
    lease_until: float | None
    created: float
    started: float | None
    finished: float | None
    error: str | None
    callback_url: str | None
    callback_state: str | None

    def public(self, now: float | None = None) -> dict[str, Any]:
        """The job as ``GET /v1/proofs/{id}`` shows it."""
        now = now or time.time()
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "model": self.model,
            "package_id": self.package_id,
            "model_sha256": self.model_sha256,
            "input_digest": self.input_digest,
            "receipt_id": self.receipt_id,
            "attempts": self.attempts,
            "created": self.created,
        }
        if self.status == "running":
            out["stage"] = self.stage
            out["elapsed_s"] = round(now - (self.started or now), 3)
            out["worker"] = self.worker
        if self.status == "done":
            out["outcome"] = self.outcome
            out["proof_s"] = round((self.finished or 0) - (self.started or 0), 3)
            out["bundle_url"] = f"/v1/proofs/{self.id}/bundle"
        if self.status == "failed":
            out["reason"] = self.error
        if self.status in ("done", "failed"):
            out["finished"] = self.finished
        if self.callback_url:
            out["callback"] = {"url": self.callback_url, "state": self.callback_state}
        return out


def _stages_with(row: tuple, now: float) -> dict[str, float]:
    """This attempt's stage seconds (a claim starts them afresh) with its current stage ended at
    ``now`` (``row``: stage, stage_started, stages JSON)."""
    stage, started, text = row
    stages = json.loads(text) if text else {}
    if stage is not None and started is not None:
        stages[stage] = round(stages.get(stage, 0.0) + max(0.0, now - started), 6)
    return stages


def _job(row: sqlite3.Row | tuple) -> Job:
    return Job(*row)


class JobStore:
    """Thin, process-local access to the job table; safe from several threads."""

    def __init__(self, path: Path, timeout_s: float = 30.0) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = connect(path, SCHEMA, ("journal_mode=WAL", "synchronous=NORMAL"), timeout_s)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, fn):
        """Run ``fn(db)`` in one IMMEDIATE transaction (writers queue on SQLite's lock)."""
        with transaction(self._db, self._lock, "IMMEDIATE") as db:
            return fn(db)

    def _one(self, sql: str, args: tuple) -> Job | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_JOB} FROM proof_jobs {sql}", args).fetchone()
        return _job(row) if row else None

    # --- server side ----------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        return self._one("WHERE id = ?", (job_id,))

    def bundle(self, job_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT bundle FROM proof_jobs WHERE id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def submit(self, *, model: str, package_id: str, model_sha256: str, input_digest: str,
               input_json: str, receipt_id: str | None, callback_url: str | None,
               max_active: int, client: str = "", client_max_active: int | None = None) -> tuple[Job | None, str]:
        """``client``'s request for the job of (package, input): ``(view, how)``, the view being
        the job as this client sees it (its request's id, receipt and callback), how one of
        ``cached`` (done), ``existing`` (queued or running), ``requeued`` (had failed), ``new``.
        None for the view when the queue holds ``max_active`` active jobs (``full``), or the
        client has ``client_max_active`` active requests (``quota``). The first client's
        request id is the job's id; the same client asking again gets its request back."""

        def run(db: sqlite3.Connection):
            job, mine = self._job_and_request(db, package_id, input_digest, client)
            refused = self._refused(db, job, mine, client, max_active, client_max_active)
            if refused is not None:
                return None, refused
            now = time.time()
            if job is not None and job.status in ("done", *ACTIVE):
                if mine is None:
                    mine = (new_job_id(),)
                    db.execute("INSERT INTO proof_requests VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (mine[0], job.id, client, receipt_id, callback_url,
                                "pending" if callback_url else None, now))
                elif callback_url and job.status != "done":  # a callback added while it waits
                    db.execute("UPDATE proof_requests SET callback_url = ?, callback_state = 'pending' "
                               "WHERE id = ? AND callback_url IS NULL", (callback_url, mine[0]))
                elif job.status == "done":  # asked for again: retention counts its age from now
                    db.execute("UPDATE proof_requests SET created = ? WHERE id = ?", (now, mine[0]))
                return self._view(db, mine[0]), "cached" if job.status == "done" else "existing"
            if job is not None:  # failed before: queue it again, fresh attempts, linked to the
                # receipt just signed (the first one may be gone: retention prunes receipts)
                db.execute(
                    "UPDATE proof_jobs SET status = 'queued', stage = NULL, attempts = 0, "
                    "error = NULL, worker = NULL, lease_until = NULL, started = NULL, "
                    "finished = NULL, created = ?, receipt_id = COALESCE(?, receipt_id) WHERE id = ?",
                    (now, receipt_id, job.id))
                job_id, how = job.id, "requeued"
            else:
                job_id, how = new_job_id(), "new"
                db.execute(
                    "INSERT INTO proof_jobs (id, model, package_id, model_sha256, input_digest, "
                    "input, receipt_id, status, attempts, created) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?)",
                    (job_id, model, package_id, model_sha256, input_digest, input_json, receipt_id, now),
                )
            if mine is None:
                mine = (job_id if how == "new" else new_job_id(),)
                db.execute("INSERT INTO proof_requests VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (mine[0], job_id, client, receipt_id, callback_url,
                            "pending" if callback_url else None, now))
            else:  # this client's request of the failed job: its new callback, if any, is due again
                db.execute("UPDATE proof_requests SET callback_url = COALESCE(?, callback_url), "
                           "callback_state = CASE WHEN COALESCE(?, callback_url) IS NULL THEN NULL "
                           "ELSE 'pending' END, receipt_id = COALESCE(?, receipt_id) WHERE id = ?",
                           (callback_url, callback_url, receipt_id, mine[0]))
            return self._view(db, mine[0]), how

        return self._tx(run)

    def refusal(self, *, package_id: str, input_digest: str, max_active: int, client: str = "",
                client_max_active: int | None = None) -> str | None:
        """What :meth:`submit` would answer now for this job if it refused it: ``full``,
        ``quota``; ``done`` if the job is done; else None (it would take it, or has it queued or
        running). Read before an answer is signed, so that a refused proof request costs no
        receipt."""

        def run(db: sqlite3.Connection):
            job, mine = self._job_and_request(db, package_id, input_digest, client)
            if job is not None and job.status == "done":
                return "done"
            return self._refused(db, job, mine, client, max_active, client_max_active)

        return self._tx(run)

    @staticmethod
    def _job_and_request(db: sqlite3.Connection, package_id: str, input_digest: str,
                         client: str) -> tuple[Job | None, tuple | None]:
        """The job of (package, input), and ``client``'s request of it (``(id,)``), if any."""
        row = db.execute(f"SELECT {_JOB} FROM proof_jobs WHERE package_id = ? AND input_digest = ?",
                         (package_id, input_digest)).fetchone()
        job = _job(row) if row is not None else None
        mine = None if job is None else db.execute(
            "SELECT id FROM proof_requests WHERE job_id = ? AND client = ?", (job.id, client)).fetchone()
        return job, mine

    def _refused(self, db: sqlite3.Connection, job: Job | None, mine: tuple | None, client: str,
                 max_active: int, client_max_active: int | None) -> str | None:
        """``full`` or ``quota`` when a request for ``job`` is refused, else None: joining a
        done job is free, joining an active one counts in the client's quota only, and a new
        (or failed) one needs a place in the queue too."""
        if job is not None and job.status in ("done", *ACTIVE):
            over = mine is None and job.status != "done" and self._over_quota(db, client, client_max_active)
            return "quota" if over else None
        active = db.execute("SELECT COUNT(*) FROM proof_jobs WHERE status IN ('queued', "
                            "'running')").fetchone()[0]
        if active >= max_active:
            return "full"
        return "quota" if self._over_quota(db, client, client_max_active) else None

    @staticmethod
    def _over_quota(db: sqlite3.Connection, client: str, limit: int | None) -> bool:
        if limit is None:
            return False
        n = db.execute(f"SELECT COUNT(*) FROM {_JOINED} WHERE r.client = ? AND j.status IN ('queued', 'running')",
                       (client,)).fetchone()[0]
        return n >= limit

    @staticmethod
    def _view(db: sqlite3.Connection, request_id: str, client: str | None = None) -> Job | None:
        row = db.execute(f"SELECT {_VIEW} FROM {_JOINED} WHERE r.id = ?1 AND (?2 IS NULL OR r.client = ?2)",
                         (request_id, client)).fetchone()
        return _job(row) if row else None

    def request(self, request_id: str, client: str | None = None) -> Job | None:
        """A client's handle (a request id; the first client's is the job id) as that client
        sees the job; with ``client``, only that client's own (None for another's)."""
        with self._lock:
            return self._view(self._db, request_id, client)

    def request_for(self, package_id: str, input_digest: str, client: str) -> Job | None:
        """``client``'s request for the job of (package, input), as it sees it (None: no such
        job, or this client has not asked for it)."""
        with self._lock:
            row = self._db.execute(f"SELECT {_VIEW} FROM {_JOINED} WHERE j.package_id = ? AND "
                                   "j.input_digest = ? AND r.client = ?", (package_id, input_digest, client)).fetchone()
        return _job(row) if row else None

    def last_finished(self) -> float:
        """When the newest ended job ended (0 if none): waiters compare it with what they saw."""
        with self._lock:
            row = self._db.execute("SELECT MAX(finished) FROM proof_jobs").fetchone()
        return row[0] or 0.0

    def pruned(self, request_id: str, client: str | None = None) -> bool:
        """Whether ``request_id`` is the handle of a job that :meth:`prune` forgot (with
        ``client``: that client's own handle), as long as its tombstone is kept."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM proof_pruned WHERE id = ?1 AND (?2 IS NULL OR client = ?2)",
                                   (request_id, client)).fetchone()
        return row is not None

    def prune(self, before: float | None = None, keep: int | None = None, batch: int = PRUNE_BATCH,
              stop: Callable[[], bool] | None = None) -> int:
        """Forget ended jobs (done or failed) last of use before ``before`` (Unix time: when the
        job ended, or a client last asked for it, whichever is later) and all but the newest
        ``keep`` of them, with their inputs, bundles and requests; how many jobs went. Never a
        queued or running job, nor one with a callback still to send.

        The oldest first, ``batch`` jobs per transaction (the store's writers wait for each:
        submits, claims, leases), so a kill leaves each job whole or gone (the bundle is a column of its row: no
        file to leave behind). Each forgotten request leaves a tombstone (its id and client) so
        that its client is told the job was pruned (410), not that it never was; a tombstone goes
        when a later call's ``before`` is past the time it was made, or when it is not among the
        newest ``max(keep, PRUNED_KEPT)``. The figures of forgotten jobs are added to
        ``proof_pruned_totals``, so the metrics' counters do not go back. ``stop()`` true after
        a batch: the prune ends there (a server's stop)."""
        if before is None and keep is None:
            return 0
        keep = None if keep is None else min(keep, MAX_INTEGER)  # (more than any store holds)

        def tombstones(db: sqlite3.Connection) -> None:  # earlier calls' (this one's stay till the next)
            if before is not None:
                db.execute("DELETE FROM proof_pruned WHERE pruned < ?", (before,))
            db.execute("DELETE FROM proof_pruned WHERE id IN (SELECT id FROM proof_pruned "
                       "ORDER BY pruned DESC, id DESC LIMIT -1 OFFSET ?)", (max(keep or 0, PRUNED_KEPT),))

        self._tx(tombstones)
        which, args = [], []
        if before is not None:
            which.append("touched < ?")
            args.append(before)
        if keep is not None:
            which.append("id IN (SELECT id FROM ended ORDER BY touched DESC, id DESC LIMIT -1 OFFSET ?)")
            args.append(keep)
        select = (f"WITH ended AS (SELECT j.id, {_TOUCHED} AS touched FROM proof_jobs j WHERE j.status IN "
                  f"('done', 'failed')) SELECT id, touched FROM ended WHERE ({' OR '.join(which)}) AND id NOT "
                  "IN (SELECT job_id FROM proof_requests WHERE callback_state = 'pending') ORDER BY touched, id LIMIT ?")
        # Which jobs go is read outside the write transactions (a scan of every ended job: read
        # for each batch, a prune of N jobs scanned N^2/500 rows with the store's write lock held),
        # PRUNE_PASS batches at a time; each batch takes the jobs of its share that are still as
        # they were read (ended, no callback due, not asked for since: not newer than any kept)
        # on a read-only connection of its own: not under self._lock, which the server's event
        # loop takes for every submit and status read (a scan of 100,000 jobs: ~0.1 s)
        reader = sqlite3.connect(f"{Path(self.path).resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        total = 0
        try:
            while True:
                found = reader.execute(select, (*args, batch * PRUNE_PASS)).fetchall()
                for i in range(0, len(found), batch):
                    share = found[i:i + batch]
                    total += self._tx(lambda db, share=share: self._forget(db, self._unchanged(db, share)))
                    if stop is not None and stop():
                        return total
                if len(found) < batch * PRUNE_PASS:
                    return total
        finally:
            reader.close()

    @staticmethod
    def _unchanged(db: sqlite3.Connection, found: list[tuple[str, float]]) -> list[tuple[str]]:
        """The jobs of ``found`` (id, last of use) still ended, as last of use, and with no
        callback due."""
        still = (f"SELECT {_TOUCHED} FROM proof_jobs j WHERE j.id = ? AND j.status IN ('done', 'failed') "
                 "AND NOT EXISTS (SELECT 1 FROM proof_requests WHERE job_id = j.id AND callback_state = 'pending')")
        out = []
        for job_id, touched in found:
            row = db.execute(still, (job_id,)).fetchone()
            if row is not None and row[0] == touched:
                out.append((job_id,))
        return out

    @staticmethod
    def _forget(db: sqlite3.Connection, ids: list[tuple[str]]) -> int:
        """Forget the jobs ``ids`` (one transaction of :meth:`prune`); how many."""
        now = time.time()
        db.execute("CREATE TEMP TABLE IF NOT EXISTS pruning (id TEXT PRIMARY KEY)")
        db.execute("DELETE FROM temp.pruning")
        db.executemany("INSERT INTO temp.pruning VALUES (?)", ids)
        totals: dict[tuple[str, str], list] = {}
        for model, status, outcome, seconds, stages in db.execute(
                "SELECT model, status, outcome, finished - started, stages FROM proof_jobs "
                "WHERE id IN (SELECT id FROM temp.pruning)").fetchall():
            done = status == "done"
            t = totals.setdefault((model, outcome if done else "failed"), [0, 0.0, {}])
            t[0] += 1
            if done:
                t[1] += seconds or 0.0
                for stage, sec in (json.loads(stages) if stages else {}).items():
                    t[2][stage] = t[2].get(stage, 0.0) + sec
        for (model, outcome), (n, seconds, stages) in totals.items():
            row = db.execute("SELECT jobs, prover_seconds, stages FROM proof_pruned_totals WHERE "
                             "model = ? AND outcome = ?", (model, outcome)).fetchone()
            if row is not None:
                n, seconds = n + row[0], seconds + row[1]
                for stage, sec in json.loads(row[2]).items():
                    stages[stage] = stages.get(stage, 0.0) + sec
            db.execute("INSERT OR REPLACE INTO proof_pruned_totals VALUES (?, ?, ?, ?, ?)",
                       (model, outcome, n, seconds, json.dumps(stages)))
        db.execute("INSERT OR REPLACE INTO proof_pruned SELECT id, client, ? FROM proof_requests "
                   "WHERE job_id IN (SELECT id FROM temp.pruning)", (now,))
        db.execute("DELETE FROM proof_requests WHERE job_id IN (SELECT id FROM temp.pruning)")
        db.execute("DELETE FROM proof_jobs WHERE id IN (SELECT id FROM temp.pruning)")
        db.execute("DELETE FROM temp.pruning")
        return len(ids)

    def job_of(self, request_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT job_id FROM proof_requests WHERE id = ?", (request_id,)).fetchone()
        return row[0] if row else None

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM proof_jobs GROUP BY status").fetchall()
        return {s: n for s, n in rows}

    def metrics_summary(self) -> dict:
        """Jobs by status; ended jobs by (model, outcome), failed ones as outcome "failed";
        prover wall seconds of finished jobs by model (for ``GET /metrics``)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT model, status, outcome, COUNT(*), SUM(CASE WHEN status = 'done' "
                "THEN finished - started END) FROM proof_jobs GROUP BY model, status, outcome"
            ).fetchall()
        by_status: dict[str, int] = {}
        by_outcome: dict[tuple[str, str], int] = {}
        seconds: dict[str, float] = {}
        for model, status, outcome, n, s in rows:
            by_status[status] = by_status.get(status, 0) + n
            if status in ("done", "failed"):
                key = (model, outcome if status == "done" else "failed")
                by_outcome[key] = by_outcome.get(key, 0) + n
            if s is not None:
                seconds[model] = seconds.get(model, 0.0) + s
        with self._lock:
            staged = self._db.execute("SELECT model, stages FROM proof_jobs WHERE status = 'done' "
                                      "AND stages IS NOT NULL").fetchall()
        by_stage: dict[tuple[str, str], float] = {}
        for model, text in staged:
            for stage, s in json.loads(text).items():
                by_stage[(model, stage)] = by_stage.get((model, stage), 0.0) + s
        with self._lock:  # what pruned jobs had added (the counters never go back)
            totals = self._db.execute("SELECT model, outcome, jobs, prover_seconds, stages "
                                      "FROM proof_pruned_totals").fetchall()
        for model, outcome, n, s, text in totals:
            by_outcome[(model, outcome)] = by_outcome.get((model, outcome), 0) + n
            if outcome != "failed":
                seconds[model] = seconds.get(model, 0.0) + s
            for stage, t in json.loads(text).items():
                by_stage[(model, stage)] = by_stage.get((model, stage), 0.0) + t
        return {"by_status": by_status, "by_outcome": by_outcome, "prover_seconds": seconds,
                "stage_seconds": by_stage}

    def running(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_JOB} FROM proof_jobs WHERE status = 'running'").fetchall()
        return [_job(r) for r in rows]

    def retry_or_fail(self, job_id: str, reason: str, max_attempts: int,
                      expect_worker: str | None = None) -> str | None:
        """A running attempt ended badly: queue the job again, or fail it when its attempts
        are used up. Returns the new status (None if the job was not in that state)."""

        def run(db):
            row = db.execute("SELECT status, attempts, worker FROM proof_jobs WHERE id = ?",
                             (job_id,)).fetchone()
            if row is None or row[0] != "running" or (expect_worker and row[2] != expect_worker):
                return None
            if row[1] >= max_attempts:
                db.execute("UPDATE proof_jobs SET status = 'failed', finished = ?, error = ?, "
                           "worker = NULL, lease_until = NULL WHERE id = ?",
                           (time.time(), f"{reason} (attempt {row[1]} of {max_attempts})", job_id))
                return "failed"
            db.execute("UPDATE proof_jobs SET status = 'queued', stage = NULL, worker = NULL, "
                       "lease_until = NULL, error = ? WHERE id = ?", (reason, job_id))
            return "queued"

        return self._tx(run)

    def release(self, job_id: str, worker: str) -> bool:
        """Give a running job back to the queue without counting the attempt (the server
        is stopping on purpose)."""
        return self._tx(lambda db: db.execute(
            "UPDATE proof_jobs SET status = 'queued', stage = NULL, worker = NULL, "
            "lease_until = NULL, attempts = MAX(attempts - 1, 0) WHERE id = ? AND worker = ? "
            "AND status = 'running'", (job_id, worker)).rowcount == 1)

    def retry_jobs_of(self, held: Callable[[str], bool], reason: str, max_attempts: int) -> int:
        """The workers that ``held`` names ended badly (died, exited): :meth:`retry_or_fail`
        each running job one of them held. How many were taken back."""
        return sum(self.retry_or_fail(job.id, reason, max_attempts, expect_worker=job.worker) is not None
                   for job in self.running() if job.worker and held(job.worker))

    def release_jobs_of(self, held: Callable[[str], bool]) -> int:
        """The workers that ``held`` names were stopped on purpose: :meth:`release` each
        running job one of them held (the attempt not counted). How many were released."""
        return sum(self.release(job.id, job.worker) for job in self.running() if job.worker and held(job.worker))

    def expired(self, now: float) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_JOB} FROM proof_jobs WHERE status = 'running' "
                "AND lease_until < ?", (now,)).fetchall()
        return [_job(r) for r in rows]

    def callbacks_due(self) -> list[tuple[Job, str]]:
        """Requests whose job ended and whose callback is not sent yet, each as its client sees
        it, with the client."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_VIEW}, r.client FROM {_JOINED} WHERE r.callback_state = 'pending' "
                "AND j.status IN ('done', 'failed')").fetchall()
        return [(_job(r[:-1]), r[-1]) for r in rows]

    def set_callback_state(self, request_id: str, state: str, finished: float | None) -> None:
        """The callback of the job's end at ``finished`` sent (or given up on). Not if the job
        was queued again since (its callback is due again, for the next end)."""
        self._tx(lambda db: db.execute(
            "UPDATE proof_requests SET callback_state = ? WHERE id = ? AND callback_state = 'pending' "
            "AND (SELECT finished FROM proof_jobs WHERE proof_jobs.id = proof_requests.job_id) IS ?",
            (state, request_id, finished)))

    # --- worker side ----------------------------------------------------------------

    def claim(self, worker: str, lease_s: float) -> tuple[Job, dict] | None:
        """Atomically take the oldest queued job: running, attempts+1, leased to ``worker``."""

        def run(db):
            now = time.time()
            row = db.execute(
                "UPDATE proof_jobs SET status = 'running', stage = 'starting', worker = ?, "
                "lease_until = ?, attempts = attempts + 1, started = ?, stage_started = ?, "
                "stages = NULL WHERE id = (SELECT id "
                "FROM proof_jobs WHERE status = 'queued' ORDER BY created LIMIT 1) "
                f"RETURNING {_JOB}, input",
                (worker, now + lease_s, now, now),
            ).fetchone()
            return row

        row = self._tx(run)
        if row is None:
            return None
        return _job(row[:-1]), json.loads(row[-1])

    def heartbeat(self, job_id: str, worker: str, lease_s: float, stage: str | None = None) -> bool:
        """Renew the lease (and set the stage); False if the job is no longer ours."""

        def run(db):
            if stage is None:
                cur = db.execute("UPDATE proof_jobs SET lease_until = ? WHERE id = ? AND "
                                 "worker = ? AND status = 'running'",
                                 (time.time() + lease_s, job_id, worker))
            else:  # a new stage: the one before it ends now
                now = time.time()
                row = db.execute("SELECT stage, stage_started, stages FROM proof_jobs WHERE id = ? AND "
                                 "worker = ? AND status = 'running'", (job_id, worker)).fetchone()
                if row is None:
                    return False
                stages = _stages_with(row, now)
                cur = db.execute("UPDATE proof_jobs SET lease_until = ?, stage = ?, stage_started = ?, "
                                 "stages = ? WHERE id = ? AND worker = ? AND status = 'running'",
                                 (now + lease_s, stage, now, json.dumps(stages), job_id, worker))
            return cur.rowcount == 1

        return self._tx(run)

    def finish(self, job_id: str, outcome: str, bundle_json: str, worker: str | None = None) -> bool:
        """Store a verified bundle and mark the job done. With ``worker`` (what every prover
        says): only if the job is still running under it, so that a result that comes back
        after its attempt was given up on (lease or timeout; the job queued again, proven
        elsewhere or failed) is dropped: a job never ends with two bundles, nor goes from
        failed to done. Without: unless it is done already."""

        def run(db):
            now = time.time()
            row = db.execute("SELECT stage, stage_started, stages FROM proof_jobs WHERE id = ?", (job_id,)).fetchone()
            stages = json.dumps(_stages_with(row, now)) if row is not None else None
            ours = "status != 'done'" if worker is None else "status = 'running' AND worker = ?"
            cur = db.execute(
                "UPDATE proof_jobs SET status = 'done', stage = NULL, outcome = ?, bundle = ?, "
                f"finished = ?, error = NULL, lease_until = NULL, stages = ? WHERE id = ? AND {ours}",
                (outcome, bundle_json, now, stages, job_id, *([] if worker is None else [worker])))
            return cur.rowcount == 1

        return self._tx(run)

    def fail_now(self, job_id: str, reason: str, worker: str | None = None) -> None:
        """A permanent error (bad input for this circuit): no retry. With ``worker``: only
        while the job runs under it."""
        self._tx(lambda db: db.execute(
            "UPDATE proof_jobs SET status = 'failed', error = ?, finished = ?, lease_until = NULL "
            "WHERE id = ? AND status = 'running' AND (? IS NULL OR worker = ?)",
            (reason, time.time(), job_id, worker, worker)))

    # --- remote executors (server/proofs/ray_executor.py) -------------------------------

    def reassign(self, job_id: str, worker: str, new_worker: str) -> bool:
        """Name the place a running job went to (a Ray node's actor); False if not ours."""
        return self._tx(lambda db: db.execute(
            "UPDATE proof_jobs SET worker = ? WHERE id = ? AND worker = ? AND status = 'running'",
            (new_worker, job_id, worker)).rowcount == 1)

