"""Crash safety and back-pressure with the real server process: kill -9 of the server
(and its workers) while proving, restart, nothing lost; the queue limit gives 429."""

from __future__ import annotations

import os
import signal
import time

import pytest
from jobs_support import iris_input

pytestmark = [pytest.mark.e2e, pytest.mark.ezkl]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_server_kill9_while_proving_then_restart_finishes(new_home, servers):
    home = new_home()
    env = {"VERINFER_PROOF_WORKERS": "1", "VERINFER_PROOF_LEASE_S": "5"}
    s1 = servers(home, env)
    jobs = []
    for i in range(4):  # one running, the rest queued behind it
        status, job = s1.submit(iris_input(30 + i))
        assert status == 202, job
        jobs.append(job)
    running = s1.wait_running(jobs[0]["id"])
    workers = s1.worker_pids()
    receipt = s1.request("GET", f"/v1/receipts/{jobs[0]['receipt_id']}")
    assert receipt[0] == 200
    s1.kill9()  # the server process alone: no orphan prover may keep running
    assert running["status"] in ("running", "done")
    end = time.monotonic() + 10  # the workers die with their server (PR_SET_PDEATHSIG)
    while any(_alive(p) for p in workers) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "a prover worker outlived its server"

    s2 = servers(home, env)
    for job in jobs:
        done = s2.wait_job(job["id"], timeout=120)
        assert done["status"] == "done" and done["outcome"] == "proven", done
        assert s2.request("GET", f"/v1/proofs/{job['id']}/bundle")[0] == 200
        assert s2.request("GET", f"/v1/receipts/{job['receipt_id']}")[0] == 200
    before = s2.job(jobs[0]["id"])
    print("first job before the kill:", running["status"], "attempts after:", before["attempts"])
    if running["status"] == "running":  # it was cut off: that attempt counted, then redone
        assert before["attempts"] == 2
    # resubmitting after the restart finds the same jobs (nothing lost, nothing twice)
    status, again = s2.submit(iris_input(30))
    assert status == 200 and again["id"] == jobs[0]["id"] and again["cached"] is True


def test_a_proof_longer_than_its_lease_is_proven_once(new_home, servers):
    """EZKL holds the GIL for a whole proving step, so a worker's own heartbeat thread is silent
    for longer than a short lease: the supervisor renews the leases of its live workers, and
    the job runs once to done (before: running, failed by its lease, then done by the worker
    that still proved it; with attempts left, proven twice)."""
    home = new_home()
    s = servers(home, {"VERINFER_PROOF_WORKERS": "1", "VERINFER_PROOF_LEASE_S": "0.5",
                       "VERINFER_PROOF_ATTEMPTS": "1"})
    status, job = s.submit(iris_input(50))
    assert status == 202, job
    seen, end = [], time.monotonic() + 120
    while time.monotonic() < end:
        j = s.job(job["id"])
        if not seen or seen[-1] != j["status"]:
            seen.append(j["status"])
        if j["status"] in ("done", "failed"):
            break
        time.sleep(0.05)
    assert j["status"] == "done" and j["attempts"] == 1, (seen, j)
    assert "failed" not in seen, seen


def test_sigterm_to_the_process_group_stops_cleanly_and_loses_nothing(new_home, servers):
    """What systemd's stop does: SIGTERM to every process of the server's group. The server
    answers what it holds, stops its receipt writer and prover workers itself (they are not
    killed under it, so nothing is reported dead or restarted), gives a running job back to the
    queue without counting the attempt, and exits."""
    home = new_home()
    env = {"VERINFER_PROOF_WORKERS": "1"}
    s1 = servers(home, env)  # in its own process group
    status, job = s1.submit(iris_input(40))
    assert status == 202, job
    s1.wait_running(job["id"])
    workers = s1.worker_pids()
    os.killpg(s1.proc.pid, signal.SIGTERM)
    assert s1.proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has stopped
    log = s1.output()
    for noise in ("died", "restarting", "exited", "Traceback", "Error"):
        assert noise not in log, log
    end = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < end:
        time.sleep(0.1)
    assert workers and not any(_alive(p) for p in workers)
    s2 = servers(home, env)
    done = s2.wait_job(job["id"], timeout=120)
    assert done["status"] == "done" and done["attempts"] == 1, done  # the stop did not count


def test_a_stop_answers_the_requests_waiting_for_their_proofs_at_once(new_home, servers):
    """A stop while an infer request waits for its proof (``proof: "sync"``) that nothing is
    proving: it is answered after ``sync_proof_stop_wait_s``, 200 with its receipt and its job's
    id and status, as at its timeout, and the server exits; the job stays queued and the next
    start proves it. Before, the graceful stop waited for that request up to
    ``sync_proof_timeout_s`` (here 600 s; systemd's SIGKILL comes at 90)."""
    import threading

    home = new_home()
    s1 = servers(home, {"VERINFER_PROOF_WORKERS": "0", "VERINFER_SYNC_PROOF_TIMEOUT_S": "600",
                        "VERINFER_SYNC_PROOF_STOP_WAIT_S": "1"})
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": iris_input(7)}],
            "parameters": {"proof": "sync"}}
    answer: list = []
    asking = threading.Thread(target=lambda: answer.append(
        s1.request("POST", "/v2/models/iris_mlp/infer", body, timeout=300)))
    asking.start()
    end = time.monotonic() + 60
    while not s1.get("/v1/proofs")["jobs"] and time.monotonic() < end:
        time.sleep(0.1)
    assert s1.get("/v1/proofs")["jobs"], "the sync request queued no job"
    s1.proc.terminate()
    asking.join(120)  # a liveness bound, not a timing: without the change it waits 600 s
    assert not asking.is_alive(), "the stop did not answer the request waiting for its proof"
    status, resp, _ = answer[0]
    params = resp["parameters"]
    assert status == 200 and params["proof_status"] == "queued" and params["receipt"], resp
    assert s1.proc.wait(60) in (0, -signal.SIGTERM)
    s2 = servers(home, {"VERINFER_PROOF_WORKERS": "1"})
    done = s2.wait_job(params["proof_job_id"], timeout=120)
    assert done["status"] == "done" and done["outcome"] == "proven", done


def test_systemds_stop_signals_the_prover_workers_too_and_costs_no_attempt(new_home, servers):
    """systemd's stop (KillMode=control-group, its default) sends SIGTERM to every process of
    the unit, the prover workers too, though they run in their own session. A worker that
    exited on it was seen dead by the server, still answering what it held (here a request
    waiting for its proof): the attempt counted, and with one allowed the job failed ("prover
    worker died (exit code 0)"). The workers leave it to the server: the proof is made and
    the waiting request gets it."""
    import threading

    s1 = servers(new_home(), {"VERINFER_PROOF_WORKERS": "1", "VERINFER_PROOF_ATTEMPTS": "1",
                              # the proof running ends during the stop, however loaded the machine
                              "VERINFER_SYNC_PROOF_STOP_WAIT_S": "120"})
    answer = {}

    def sync() -> None:
        answer["r"] = s1.request("POST", "/v2/models/iris_mlp/infer", {
            "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": iris_input(44)}],
            "parameters": {"proof": "sync"}})

    waiter = threading.Thread(target=sync)
    waiter.start()
    end = time.monotonic() + 60
    while not s1.request("GET", "/v1/proofs")[1]["jobs"].get("running"):
        assert time.monotonic() < end, s1.output()
        time.sleep(0.02)
    workers = s1.worker_pids()
    os.killpg(s1.proc.pid, signal.SIGTERM)  # the server's group, and each worker (its own session)
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    waiter.join(120)
    assert s1.proc.wait(60) in (0, -signal.SIGTERM)
    status, body, _ = answer["r"]
    assert status == 200 and body["parameters"]["proof_status"] == "done", (body["parameters"], s1.output())
    assert "died" not in s1.output(), s1.output()


def test_queue_limit_gives_429(new_home, servers):
    home = new_home()
    s = servers(home, {"VERINFER_PROOF_WORKERS": "0", "VERINFER_MAX_QUEUED_PROOFS": "2",
                       "VERINFER_PROOF_RETRY_AFTER_S": "7"})
    a = s.submit(iris_input(40))
    b = s.submit(iris_input(41))
    assert a[0] == 202 and b[0] == 202
    status, body, headers = s.request("POST", "/v1/proofs", {"model": "iris_mlp", "inputs": [
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": iris_input(42)}]})
    assert status == 429 and "queue is full" in body["error"]
    assert headers["Retry-After"] == "7"
    # the same input again is the same job, not a new one: no 429
    again = s.submit(iris_input(40))
    assert again[0] == 202 and again[1]["id"] == a[1]["id"]
    status, body, headers = s.request("POST", "/v2/models/iris_mlp/infer", {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": iris_input(43)}],
        "parameters": {"proof": "async"}})
    assert status == 429 and headers["Retry-After"] == "7"
    assert s.request("GET", "/v1/proofs")[1]["jobs"] == {"queued": 2}
    # docs/server.md: a job's bundle is a 409 until the job is done (queued here for good)
    status, body, _ = s.request("GET", f"/v1/proofs/{a[1]['id']}/bundle")
    assert status == 409 and body == {"error": f"proof job {a[1]['id']} is queued; no bundle"}


def test_job_timeout_kills_worker_and_fails_with_reason(new_home, servers):
    # a 0.3 s limit no iris proof meets: each attempt's worker is killed; two attempts, failed
    s = servers(new_home(), {"VERINFER_PROOF_WORKERS": "1", "VERINFER_PROOF_TIMEOUT_S": "0.3",
                             "VERINFER_PROOF_ATTEMPTS": "2"})
    status, job = s.submit(iris_input(50))
    assert status == 202
    done = s.wait_job(job["id"], timeout=120)
    assert done["status"] == "failed" and done["attempts"] == 2, done
    assert "timed out after 0.3s" in done["reason"] and "attempt 2 of 2" in done["reason"]
    status, body, _ = s.request("GET", f"/v1/proofs/{job['id']}/bundle")
    assert status == 409 and "failed" in body["error"]


def _address_space_limit(pid: int) -> tuple[str, str]:
    """(soft, hard) "Max address space" of a live process, from /proc (bytes, or "unlimited")."""
    with open(f"/proc/{pid}/limits") as f:
        (line,) = [ln for ln in f if ln.startswith("Max address space")]
    return tuple(line.split()[3:5])


def test_proof_memory_mb_caps_each_workers_address_space(new_home, servers):
    """docs/server.md: ``proof_memory_mb`` caps each prover worker's address space (RLIMIT_AS).
    Read from the worker's own /proc/PID/limits; the cap (8 GiB) leaves room to prove, and the
    job is proven under it. Without the setting a worker keeps the limit it inherits."""
    import resource

    mb = 8192
    s = servers(new_home(), {"VERINFER_PROOF_WORKERS": "1", "VERINFER_PROOF_MEMORY_MB": str(mb)})
    status, job = s.submit(iris_input(50))
    assert status == 202, job
    s.wait_running(job["id"])
    (worker,) = s.worker_pids()
    assert _address_space_limit(worker) == (str(mb * 1024 * 1024),) * 2, s.output()
    done = s.wait_job(job["id"])
    assert done["status"] == "done" and done["outcome"] == "proven", (done, s.output())

    plain = servers(new_home(), {"VERINFER_PROOF_WORKERS": "1"})
    status, job = plain.submit(iris_input(51))
    assert status == 202, job
    plain.wait_running(job["id"])
    (worker,) = plain.worker_pids()
    inherited = tuple("unlimited" if v == resource.RLIM_INFINITY else str(v)
                      for v in resource.getrlimit(resource.RLIMIT_AS))
    assert _address_space_limit(worker) == inherited
