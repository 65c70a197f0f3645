"""Proof job retention: finished jobs (done or failed) and their bundles and inputs are pruned
by age or count, by the server (``proof_retention_s`` / ``proof_retention_max``) and by
``verinfer proofs prune``; never a queued or running job, nor one whose callback is still to be
sent. A pruned job's handle answers 410 with {"error"}, the metrics' counters do not go back,
and a prune killed in the middle leaves every job whole."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest

from server.proofs import store as store_module
from server.proofs.store import JobStore
from tests.server.conftest import verinfer


def _job(store: JobStore, n: int, *, outcome: str | None = "proven", client: str = "",
         callback: str | None = None) -> str:
    """A job for input ``n``: done with ``outcome`` (failed for None), or left queued (``"queued"``)."""
    job, how = store.submit(model="m", package_id="p" * 64, model_sha256="a" * 64, input_digest=f"{n:064x}",
                            input_json='{"x": 1}', receipt_id=None, callback_url=callback, max_active=100,
                            client=client)
    assert how == "new"
    if outcome == "queued":
        return job.id
    claimed, _ = store.claim("w", lease_s=30)
    assert claimed.id == job.id
    if outcome is None:
        store.fail_now(job.id, "witness: the circuit cannot compute this input", worker="w")
    else:
        assert store.finish(job.id, outcome, json.dumps({"bundle": n}), worker="w")
    return job.id


def _age(store: JobStore, job_id: str, finished: float) -> None:
    """Make a job look ended at ``finished`` (and asked for then)."""
    with store._lock:
        store._db.execute("UPDATE proof_jobs SET created = ?, started = ?, finished = ? WHERE id = ?",
                          (finished - 2, finished - 1, finished, job_id))
        store._db.execute("UPDATE proof_requests SET created = ? WHERE job_id = ?", (finished - 2, job_id))


def test_prune_by_age_and_count_never_takes_an_active_job(tmp_path):
    store = JobStore(tmp_path / "r.sqlite3")
    ended = [_job(store, i, outcome="proven" if i % 2 else None) for i in range(6)]
    for i, job_id in enumerate(ended):
        _age(store, job_id, 1000.0 + i)
    running = _job(store, 101, outcome="queued")
    store.claim("w2", lease_s=30)
    _age(store, running, 11.0)  # older than any ended job, but running
    queued = _job(store, 100, outcome="queued")
    _age(store, queued, 10.0)  # the oldest of all, but queued
    assert store.prune(before=1002.0) == 2  # jobs 0 and 1
    assert [store.get(j) is None for j in ended] == [True, True, False, False, False, False]
    assert store.prune(keep=2, batch=1) == 2  # the newest two ended jobs stay (one per transaction)
    assert [store.get(j) is None for j in ended] == [True] * 4 + [False] * 2
    assert store.bundle(ended[5]) == json.dumps({"bundle": 5})
    assert store.prune(before=time.time() + 10, keep=0) == 2
    assert store.get(queued).status == "queued" and store.get(running).status == "running"
    assert store.counts() == {"queued": 1, "running": 1}
    assert store.prune() == 0
    store.close()


def test_a_job_asked_for_again_lives_from_then(tmp_path):
    """Age is time since the job ended or a client last asked for it: a cache hit handed out now
    is not pruned at the next tick because the proof is old."""
    store = JobStore(tmp_path / "r.sqlite3")
    old, hit = _job(store, 1), _job(store, 2)
    _age(store, old, 1000.0)
    _age(store, hit, 1000.0)
    _, how = store.submit(model="m", package_id="p" * 64, model_sha256="a" * 64, input_digest=f"{2:064x}",
                          input_json="{}", receipt_id=None, callback_url=None, max_active=100, client="bob")
    assert how == "cached"
    assert store.prune(before=time.time() - 60) == 1 and store.get(old) is None and store.get(hit) is not None
    store.close()


def test_a_job_asked_for_again_by_its_own_client_lives_from_then(tmp_path):
    """The same client asking again for a done job (a cache hit on its own request, which adds
    no request row) counts as asking too: its handle was pruned at the next tick, so the bundle
    URL it was just handed answered 410."""
    store = JobStore(tmp_path / "r.sqlite3")
    old, hit = _job(store, 1, client="alice"), _job(store, 2, client="alice")
    _age(store, old, 1000.0)
    _age(store, hit, 1000.0)
    view, how = store.submit(model="m", package_id="p" * 64, model_sha256="a" * 64, input_digest=f"{2:064x}",
                             input_json="{}", receipt_id=None, callback_url=None, max_active=100, client="alice")
    assert how == "cached" and view.id == hit
    assert store.prune(before=time.time() - 60) == 1 and store.get(old) is None
    assert store.request(hit, "alice") is not None and store.bundle(hit) == json.dumps({"bundle": 2})
    store.close()


def test_a_job_whose_callback_is_due_is_kept_until_it_is_sent(tmp_path):
    store = JobStore(tmp_path / "r.sqlite3")
    job_id = _job(store, 1, callback="https://hooks.example.org/p")
    assert [j.id for j, _ in store.callbacks_due()] == [job_id]
    assert store.prune(keep=0) == 0
    store.set_callback_state(job_id, "delivered", store.get(job_id).finished)
    assert store.prune(keep=0) == 1 and store.callbacks_due() == []
    store.close()


def test_pruned_handles_are_told_apart_and_their_tombstones_go_too(tmp_path, monkeypatch):
    store = JobStore(tmp_path / "r.sqlite3")
    job_id = _job(store, 1, client="alice")
    shared, _ = store.submit(model="m", package_id="p" * 64, model_sha256="a" * 64, input_digest=f"{1:064x}",
                             input_json="{}", receipt_id=None, callback_url=None, max_active=100, client="bob")
    assert store.prune(keep=0) == 1
    assert store.request(job_id, "alice") is None and store.request(shared.id, "bob") is None
    assert store.pruned(job_id, "alice") and store.pruned(shared.id, "bob")
    assert not store.pruned(job_id, "bob")  # another client's handle: as if it never was
    assert not store.pruned("job_" + "0" * 24)
    # a count limit of jobs leaves them (their own cap is PRUNED_KEPT, or `keep` if larger)
    assert store.prune(keep=0) == 0 and store.pruned(job_id, "alice") and store.pruned(shared.id, "bob")
    monkeypatch.setattr(store_module, "PRUNED_KEPT", 1)
    assert store.prune(keep=0) == 0
    assert [store.pruned(job_id, "alice"), store.pruned(shared.id, "bob")].count(True) == 1
    # an age limit takes those made before it
    assert store.prune(before=time.time() + 10) == 0
    assert not store.pruned(job_id) and not store.pruned(shared.id)
    store.close()


def test_the_metrics_counters_do_not_go_back(tmp_path):
    store = JobStore(tmp_path / "r.sqlite3")
    for i in range(3):
        _job(store, i, outcome="proven" if i else "mismatch")  # stage seconds: "starting"
    _job(store, 9, outcome=None)
    before = store.metrics_summary()
    assert before["by_outcome"] == {("m", "proven"): 2, ("m", "mismatch"): 1, ("m", "failed"): 1}
    assert store.prune(keep=1) == 3
    after = store.metrics_summary()
    assert after["by_outcome"] == before["by_outcome"]
    assert after["prover_seconds"] == pytest.approx(before["prover_seconds"])
    assert after["stage_seconds"].keys() == before["stage_seconds"].keys()
    assert all(after["stage_seconds"][k] == pytest.approx(v) for k, v in before["stage_seconds"].items())
    assert after["by_status"] == {"done": 1} or after["by_status"] == {"failed": 1}  # a gauge: now
    store.close()


KILLED_PRUNE = textwrap.dedent("""\
    import os, signal, sys
    from server.proofs.store import JobStore
    store = JobStore(sys.argv[1])
    seen = []
    def trace(sql):  # killed as the second job's row is about to go (its tombstone, totals written)
        if sql.startswith("DELETE FROM proof_jobs"):
            seen.append(sql)
            if len(seen) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
    store._db.set_trace_callback(trace)
    store.prune(keep=0, batch=1)
""")


def test_a_prune_killed_in_the_middle_leaves_every_job_whole_or_gone(tmp_path):
    path = tmp_path / "r.sqlite3"
    store = JobStore(path)
    jobs = [_job(store, i) for i in range(3)]
    for i, job_id in enumerate(jobs):
        _age(store, job_id, 1000.0 + i)  # the prune takes the oldest first
    store.close()
    done = subprocess.run([sys.executable, "-c", KILLED_PRUNE, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -9, done.stderr
    store = JobStore(path)
    gone = [job_id for job_id in jobs if store.get(job_id) is None]
    assert len(gone) == 1 and store.pruned(gone[0], "")  # the first batch, with its tombstone
    for i, job_id in enumerate(jobs):  # the others: each with its handle and bundle, no tombstone
        if job_id not in gone:
            assert store.request(job_id, "").status == "done" and not store.pruned(job_id)
            assert store.bundle(job_id) == json.dumps({"bundle": i})
    assert store.metrics_summary()["by_outcome"] == {("m", "proven"): 3}  # each counted once
    assert store.prune(keep=0) == 2 and store.counts() == {}
    assert store.metrics_summary()["by_outcome"] == {("m", "proven"): 3}
    store.close()


def _get(base: str, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(base + path, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.e2e
def test_the_server_prunes_and_a_pruned_job_answers_410(tmp_path, start_server):
    store = JobStore(tmp_path / "receipts.sqlite3")
    done, failed, queued = _job(store, 1), _job(store, 2, outcome=None), _job(store, 3, outcome="queued")
    store.close()
    server = start_server(tmp_path, env={"VERINFER_MODELS": '["iris_mlp"]', "VERINFER_PROOF_WORKERS": "0",
                                         "VERINFER_PROOF_RETENTION_MAX": "0",
                                         "VERINFER_PROOF_PRUNE_INTERVAL_S": "0"})
    end = time.monotonic() + 60
    while (codes := [_get(server.base, f"/v1/proofs/{j}")[0] for j in (done, failed)]) != [410, 410]:
        assert time.monotonic() < end, codes
        time.sleep(0.1)
    for path in (f"/v1/proofs/{done}", f"/v1/proofs/{done}/bundle", f"/v1/proofs/{failed}"):
        code, body = _get(server.base, path)
        assert code == 410 and "was pruned" in body["error"], (path, code, body)
    code, body = _get(server.base, "/v1/proofs/job_" + "0" * 24)
    assert code == 404 and "no proof job" in body["error"]
    code, body = _get(server.base, f"/v1/proofs/{queued}")
    assert code == 200 and body["status"] == "queued"
    with urllib.request.urlopen(server.base + "/metrics", timeout=30) as r:
        metrics = r.read().decode()
    assert 'verinfer_proofs_total{model="m",outcome="proven"} 1.0' in metrics
    assert 'verinfer_proofs_total{model="m",outcome="failed"} 1.0' in metrics
    server.stop()
    # by hand, the server stopped: the queued job stays
    store = JobStore(tmp_path / "receipts.sqlite3")
    finished = _job(store, 4, outcome="queued")
    assert store.finish(finished, "proven", "{}")  # (the queued job is older: claim would take it)
    store.close()
    out = verinfer(tmp_path, "proofs", "prune", "--older-than", "0")
    assert out.returncode == 0 and "1 finished proof jobs pruned, 0 kept (1 queued or running)" in out.stderr, \
        out.stderr
    store = JobStore(tmp_path / "receipts.sqlite3")
    assert store.get(finished) is None and store.pruned(finished) and store.get(queued).status == "queued"
    store.close()
    for bad in ((), ("--keep", "-1")):
        out = verinfer(tmp_path, "proofs", "prune", *bad)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr


def test_a_stop_ends_the_servers_prune_after_its_batch_under_way(home, caplog):
    """The server's prune ran on the proof supervisor's thread to its end: a first prune of a
    big store (minutes) held the supervisor (no lease renewed, no worker started, no waiter
    woken), and a stop waited 10 s for it, then closed the store under it (tracebacks, and the
    prune went on batch after batch meanwhile). It runs on a thread of its own now, and a stop
    ends it after the batch under way."""
    import logging
    import threading

    from server.proofs.jobs import ProofJobs
    from server.settings import ServerSettings

    settings = ServerSettings(home=home, models=("iris_mlp",), proof_workers=0, proof_retention_max=0,
                              proof_prune_interval_s=3600)
    jobs = ProofJobs(settings, service=None, receipts=None)
    for n in range(4):
        _job(jobs.store, n)
    prune, forget = jobs.store.prune, jobs.store._forget
    second, go, batches = threading.Event(), threading.Event(), []

    def one_batch(db, ids):
        batches.append(ids)
        if len(batches) == 2:  # the stop comes while the second batch is under way
            second.set()
            assert go.wait(60)
        return forget(db, ids)

    jobs.store.prune = lambda *a, **kw: prune(*a, **{**kw, "batch": 1})
    jobs.store._forget = one_batch
    caplog.set_level(logging.INFO, logger="verinfer.server")
    jobs.start()
    stopper = threading.Thread(target=jobs.stop)
    try:
        assert second.wait(60), "the server did not prune"
        stopper.start()
        for _ in range(600):  # a bound for the test, not a measurement
            if jobs._stop.is_set():
                break
            time.sleep(0.05)
    finally:
        go.set()
        stopper.join(60)
    assert not stopper.is_alive()
    store = JobStore(settings.receipts_path)
    assert store.counts() == {"done": 2} and len(batches) == 2
    store.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_count_past_sqlites_integers_keeps_everything(tmp_path):
    """`proofs prune --keep 99999999999999999999` (and `receipts prune`, and the settings
    proof_retention_max / receipt_retention_max) ended in an OverflowError traceback: SQLite
    binds no integer past 2^63 - 1. Keeping that many keeps every one."""
    from server.receipts.store import ReceiptStore

    store = JobStore(tmp_path / "receipts.sqlite3")
    _job(store, 1)
    assert store.prune(keep=10**20) == 0 and store.prune(before=time.time() + 10, keep=10**20) == 1
    store.close()
    receipts = ReceiptStore(tmp_path / "receipts.sqlite3")
    assert receipts.prune(keep=10**20) == 0
    receipts.close()
    for what in ("proofs", "receipts"):
        out = verinfer(tmp_path, what, "prune", "--keep", str(10**20))
        assert out.returncode == 0 and out.stderr.startswith("OK: 0 "), out.stderr


def test_a_prune_scans_the_ended_jobs_outside_its_write_transactions(tmp_path):
    """Each batch read which jobs go (a scan of every ended job) with the store's write lock
    held: a prune of N jobs scanned N^2/500 rows under it (100,000 jobs: 26 s, batches of 0.3 s;
    a million: each batch seconds). The scan is a read now, 40 batches' worth at a time, and a
    batch takes only the jobs still as they were read: one asked for since is kept."""
    store = JobStore(tmp_path / "r.sqlite3")
    jobs = [_job(store, i) for i in range(5)]
    for i, job_id in enumerate(jobs):
        _age(store, job_id, 1000.0 + i)
    statements, in_tx = [], [False]

    def trace(sql: str) -> None:
        if sql.startswith("BEGIN"):
            in_tx[0] = True
        elif sql.startswith(("COMMIT", "ROLLBACK")):
            in_tx[0] = False
        statements.append((in_tx[0], sql.lstrip().split()[0]))

    store._db.set_trace_callback(trace)
    other = JobStore(tmp_path / "r.sqlite3")
    tx = store._tx

    def first_batch_after_an_ask(fn):  # jobs[3] is asked for again between the read and its batch
        calls.append(fn)
        if len(calls) == 2:  # (the first: the tombstones')
            asked.append(other.submit(model="m", package_id="p" * 64, model_sha256="a" * 64,
                                      input_digest=f"{3:064x}", input_json="{}", receipt_id=None,
                                      callback_url=None, max_active=100, client="bob")[1])
        return tx(fn)

    asked: list[str] = []
    calls: list = []
    store._tx = first_batch_after_an_ask
    assert store.prune(before=1004.5, batch=2) == 4 and asked == ["cached"]
    assert [store.get(j) is None for j in jobs] == [True, True, True, False, True]
    # the scans ran outside every write transaction, and not on the store's connection, whose
    # lock the server's event loop takes for every submit and status read
    assert not [first for _inside, first in statements if first == "WITH"], statements
    other.close()
    store.close()


def test_a_bundle_pruned_as_it_is_read_is_gone_not_an_empty_200(home):
    """GET /v1/proofs/{id}/bundle read the job as done, then its bundle: a prune in between
    (the server's retention runs on its own thread) made the bundle None, answered as a 200 with
    an empty body (and `proof_bundle: null` in a sync infer answer). It is a 410 now, as the
    next read would say."""
    from server.errors import Gone
    from server.proofs.jobs import ProofJobs
    from server.settings import ServerSettings

    jobs = ProofJobs(ServerSettings(home=home, models=("iris_mlp",), proof_workers=0), service=None,
                     receipts=None)
    job_id = _job(jobs.store, 1)
    assert jobs.bundle(job_id, "") == json.dumps({"bundle": 1})
    job_of = jobs.store.job_of

    def pruned_first(request_id):
        assert jobs.store.prune(keep=0) == 1
        return job_of(request_id)

    jobs.store.job_of = pruned_first
    with pytest.raises(Gone, match="was pruned"):
        jobs.bundle(job_id, "")
    jobs.store.close()
