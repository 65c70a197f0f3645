"""Proof jobs on a real local Ray cluster (a head and one worker node, 1 CPU each) through the
real server process and real EZKL: proven end to end; a worker node killed -9 mid-proof and
its job is dispatched again and done on the other node, with one bundle."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from jobs_support import iris_input, package_dir
from ray_support import RayCluster
from test_proof_jobs_e2e import ezkl_verify_directly

pytestmark = [pytest.mark.e2e, pytest.mark.ezkl, pytest.mark.timeout(600)]


@pytest.fixture
def cluster():
    c = RayCluster(head_cpus=1)
    try:
        c.wait_nodes(1)  # a node started before its head is up times out
        c.add_node("node2", cpus=1)
        c.wait_nodes(2)
        yield c
    finally:
        c.stop()


def test_ray_proves_and_survives_a_killed_node(cluster, new_home, servers):
    home = new_home()
    s = servers(home, {"VERINFER_PROVER_EXECUTOR": "ray", "VERINFER_RAY_ADDRESS": cluster.address,
                       "VERINFER_PROOF_LEASE_S": "5", "VERINFER_PROOF_ATTEMPTS": "3"})
    jobs = []
    # each node has room for one prover actor, and actors start one at a time: with two jobs
    # the first actor could prove both before the second was placed (an iris proof takes
    # seconds, a new actor as long on a loaded machine), and no job reached node2. With four,
    # the second actor, on the node the first does not hold, is placed while jobs still wait
    for i in range(4):
        status, job = s.submit(iris_input(60 + i))
        assert status == 202, job
        jobs.append(job)
    # wait until a job is proving on node2, then kill that node at once
    victim = None
    end = time.monotonic() + 240
    while victim is None and time.monotonic() < end:
        for job in jobs:
            now = s.job(job["id"])
            if now["status"] == "running" and str(now.get("worker", "")).endswith("@node2"):
                cluster.kill9("node2")
                victim = now
                break
            assert now["status"] != "failed", now
        time.sleep(0.02)
    assert victim is not None, f"no job reached node2: {[s.job(j['id']) for j in jobs]}\n" \
                               f"{s.output()}\n{cluster.logs()}"
    pkg = package_dir(home)
    for job in jobs:
        done = s.wait_job(job["id"], timeout=300)
        assert done["status"] == "done" and done["outcome"] == "proven", (done, s.output())
        status, bundle, _ = s.request("GET", f"/v1/proofs/{job['id']}/bundle")
        assert status == 200
        assert ezkl_verify_directly(bundle, pkg)
        assert bundle["proof_receipt"]["id"] == job["id"]
        assert bundle["receipt"]["id"] == job["receipt_id"]
        assert bundle["agreement"]["agree"] is True
        if job["id"] == victim["id"]:
            # the attempt on node2 was lost with it and counted; a later one proved it (the
            # retry can land on node2 too while Ray has not yet declared it dead, ~3 s:
            # then the third, the last VERINFER_PROOF_ATTEMPTS allows)
            assert done["attempts"] in (2, 3), done
            assert victim["attempts"] == 1
    # one job per input, one bundle per job: submitting again is a cache hit on the same job
    for i, job in enumerate(jobs):
        status, again = s.submit(iris_input(60 + i))
        assert status == 200 and again["id"] == job["id"] and again["cached"] is True
    assert s.request("GET", "/v1/proofs")[1]["jobs"] == {"done": len(jobs)}
    # the bundles were signed by the server (its JWKS), not by a node
    jwks = s.request("GET", "/.well-known/jwks.json")[1]
    kid = json.loads(json.dumps(bundle))["proof_receipt"]["envelope"]["signatures"][0]["keyid"]
    assert kid in {k["kid"] for k in jwks["keys"]}
    # Ray's C++ core must not take SIGTERM over from the server (it prints "SIGTERM received"
    # and dies at once, with no graceful stop that gives running jobs back to the queue)
    s.stop()
    assert "SIGTERM received" not in s.output()


def test_a_ray_head_that_goes_down_does_not_take_the_server_with_it(new_home, servers):
    """Ray exits a driver that lost its cluster's GCS (60 s by default, 3 s here): the dispatcher
    runs in a child process of the server (server/proofs/ray_process.py), so the server answers
    on, counts the attempt of the job the dispatcher held, and starts another dispatcher. Before,
    the dispatcher was a thread of the server, and the server itself exited."""
    cluster = RayCluster(head_cpus=1)
    try:
        cluster.wait_nodes(1)
        s = servers(new_home(), {"VERINFER_PROVER_EXECUTOR": "ray", "VERINFER_RAY_ADDRESS": cluster.address,
                                 "VERINFER_PROOF_ATTEMPTS": "3",
                                 "RAY_gcs_rpc_server_reconnect_timeout_s": "3"})
        status, job = s.submit(iris_input(70))
        assert status == 202, job
        s.wait_job(job["id"], timeout=240, until=("running", "done"))
        cluster.kill9("head")
        end = time.monotonic() + 120
        while (exited := re.search(r"the Ray dispatcher \(pid (\d+)\) exited", s.output())) is None:
            assert s.proc.poll() is None, f"the server exited with its Ray cluster:\n{s.output()}"
            assert time.monotonic() < end, s.output()
            time.sleep(0.5)
        dispatcher = int(exited.group(1))
        assert s.proc.poll() is None, s.output()
        status, answer, _ = s.request("POST", "/v2/models/iris_mlp/infer", {"inputs": [
            {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": iris_input(70)}]})
        assert status == 200 and "receipt" in answer["parameters"], answer
        assert s.get("/v2/health/ready")["ready"] is True
        now = s.job(job["id"])
        if now["status"] != "done":  # proven before the head went down, or its attempt counted
            assert now["status"] == "queued" and now["attempts"] == 1, now
        end = time.monotonic() + 60  # another dispatcher is started (it waits for the cluster)
        while not [p for p in s.children(b"server.proofs.ray_process") if p != dispatcher]:
            assert time.monotonic() < end, s.output()
            time.sleep(0.5)
    finally:
        cluster.stop()


def _descendants(root: int) -> list[int]:
    from testkit.server_process import parent_pids

    parents = parent_pids()
    out, todo = [], [root]
    while todo:
        here = todo.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == here]
        out += kids
        todo += kids
    return out


def _cmd(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def test_a_private_ray_instance_ends_with_the_server(new_home, servers, tmp_path):
    """``--prover-executor ray`` with no address starts Ray on this machine; SIGTERM to the
    server ends all of it (before the fix the raylet's DashboardAgent and RuntimeEnvAgent were
    left running, orphaned). HOME: Ray writes ~/.ray/auth_token, kept out of the real home."""
    s = servers(new_home(), {"VERINFER_PROVER_EXECUTOR": "ray", "HOME": str(tmp_path)})
    end = time.monotonic() + 120
    while "proving on Ray" not in s.output() and time.monotonic() < end:
        time.sleep(0.5)
    assert "proving on Ray" in s.output(), s.output()
    end = time.monotonic() + 30  # the agents start a little after the raylet
    while time.monotonic() < end:
        tree = _descendants(s.proc.pid)
        names = {_cmd(p).split(b"\0")[0] for p in tree if _running(p)}
        if {b"ray::DashboardAgent", b"ray::RuntimeEnvAgent"} <= names:
            break
        time.sleep(0.5)
    assert {b"ray::DashboardAgent", b"ray::RuntimeEnvAgent"} <= names, names
    s.proc.terminate()
    s.proc.wait(timeout=60)
    end = time.monotonic() + 10
    while any(_running(p) for p in tree) and time.monotonic() < end:
        time.sleep(0.2)
    left = [_cmd(p)[:80] for p in tree if _running(p)]
    assert not left, left


@pytest.fixture
def ray_tmp():
    """A short RAY_TMPDIR of the test's own (Ray's Unix socket paths must fit in 108 bytes)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="vrt-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_private_ray_instance_ends_with_a_killed_server(servers, tmp_path, ray_tmp):
    """kill -9 of the server (the OOM killer; under ``serve --workers`` a killed process 0 is
    started again, with a new instance each time): its private Ray instance ends too. Before,
    the raylet's DashboardAgent and RuntimeEnvAgent stayed running, orphaned (they ignore
    SIGTERM), for good; then the reaper noted the instance's processes every 2 s, and those
    started less than that before the kill were still left (this test slept 3 s first). The
    server is killed the moment both agents run. No circuit package is needed: Ray starts with
    the server."""
    s = servers(tmp_path / "home", {"VERINFER_PROVER_EXECUTOR": "ray", "HOME": str(tmp_path),
                                    "RAY_TMPDIR": str(ray_tmp),
                                    "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    end = time.monotonic() + 120
    names: set[bytes] = set()
    while time.monotonic() < end:  # the agents start a little after the raylet
        tree = _descendants(s.proc.pid)
        names = {_cmd(p).split(b"\0")[0] for p in tree if _running(p)}
        if {b"ray::DashboardAgent", b"ray::RuntimeEnvAgent"} <= names:
            break
        time.sleep(0.02)
    assert {b"ray::DashboardAgent", b"ray::RuntimeEnvAgent"} <= names, (names, s.output())
    assert list(ray_tmp.glob("vr-*/session_*"))  # the instance's own Ray temp dir
    s.kill9()  # the server process alone, not its group
    end = time.monotonic() + 30
    while any(_running(p) for p in tree) and time.monotonic() < end:
        time.sleep(0.2)
    left = [_cmd(p)[:80] for p in tree if _running(p)]
    assert not left, left
    end = time.monotonic() + 30
    while list(ray_tmp.glob("vr-*")) and time.monotonic() < end:  # the reaper's last step
        time.sleep(0.2)
    assert not list(ray_tmp.glob("vr-*"))


def test_a_private_instances_gcs_that_dies_does_not_take_the_server_with_it(new_home, servers, tmp_path, ray_tmp):
    """The private instance's GCS killed (a crash, the OOM killer): Ray exits the driver that lost
    it (60 s by default, 3 s here). The dispatcher and its instance live in a child process of
    the server, so the server answers on, and a new dispatcher proves on a new instance; the
    dead one's processes and temp dir are cleaned up by its reaper. Before, the dispatcher was a
    thread of the server, and the server itself exited."""
    s = servers(new_home(), {"VERINFER_PROVER_EXECUTOR": "ray", "HOME": str(tmp_path),
                             "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled",
                             "RAY_USAGE_STATS_ENABLED": "0", "RAY_gcs_rpc_server_reconnect_timeout_s": "3"})
    end = time.monotonic() + 120
    gcs: list[int] = []
    while not gcs:
        assert time.monotonic() < end, s.output()
        gcs = [p for p in _descendants(s.proc.pid) if b"gcs_server" in _cmd(p).split(b"\0")[0]]
        time.sleep(0.2)
    first = list(ray_tmp.glob("vr-*"))
    assert len(first) == 1, first
    os.kill(gcs[0], signal.SIGKILL)
    end = time.monotonic() + 120
    while (exited := re.search(r"the Ray dispatcher \(pid (\d+)\) exited", s.output())) is None:
        assert s.proc.poll() is None, f"the server exited with its Ray instance:\n{s.output()}"
        assert time.monotonic() < end, s.output()
        time.sleep(0.5)
    status, answer, _ = s.request("POST", "/v2/models/iris_mlp/infer", {"inputs": [
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": iris_input(71)}]})
    assert status == 200 and "receipt" in answer["parameters"], answer
    status, job = s.submit(iris_input(71))  # proven on the next dispatcher's new instance
    assert status == 202, job
    done = s.wait_job(job["id"], timeout=300)
    assert done["status"] == "done" and done["outcome"] == "proven", (done, s.output())
    assert [p for p in s.children(b"server.proofs.ray_process") if p != int(exited.group(1))], s.output()
    end = time.monotonic() + 30
    while first[0].exists():  # the dead instance's reaper ended what was left, and removed it
        assert time.monotonic() < end, (list(ray_tmp.iterdir()), s.output())
        time.sleep(0.2)
    assert s.proc.poll() is None, s.output()


def test_systemds_stop_while_proving_on_a_private_instance_costs_no_attempt(new_home, servers, tmp_path):
    """systemd's stop (KillMode=control-group) sends SIGTERM to every process of the unit: the
    server and its private Ray instance's processes, the actor proving a job among them. When
    the actor's death reached the dispatcher before the graceful stop gave the job back (here
    surely: a request still being sent holds the stop), the attempt counted, as a crash, and
    with one allowed the job failed ("ActorDiedError: The actor died unexpectedly"). The server
    now learns of the stop in its signal handler and gives the job back to the queue without
    counting the attempt, as with local prover workers."""
    import socket
    import sqlite3

    home = new_home()
    s = servers(home, {"VERINFER_PROVER_EXECUTOR": "ray", "HOME": str(tmp_path),
                       "VERINFER_PROOF_ATTEMPTS": "1", "RAY_AUTH_MODE": "disabled",
                       "RAY_USAGE_STATS_ENABLED": "0"})
    status, job = s.submit(iris_input(40))
    assert status == 202, job

    def row():
        with contextlib.closing(sqlite3.connect(home / "receipts.sqlite3")) as db:
            return db.execute("SELECT status, attempts, error FROM proof_jobs WHERE id = ?",
                              (job["id"],)).fetchone()

    end = time.monotonic() + 120
    while not any(_cmd(p).startswith(b"ray::PackageProver") for p in _descendants(s.proc.pid)):
        assert time.monotonic() < end, s.output()  # the actor that proves it has started
        time.sleep(0.02)
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                   "data": iris_input(41)}]}).encode()
    with socket.create_connection(("127.0.0.1", s.port), timeout=120) as conn:
        conn.sendall(b"POST /v2/models/iris_mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
        time.sleep(0.5)  # the request has begun: the graceful stop waits for it
        for pid in [s.proc.pid, *_descendants(s.proc.pid)]:  # the unit's every process, at once
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + 60
        while (got := row())[0] == "running":  # the dispatcher sees the actor die
            assert time.monotonic() < end, s.output()
            time.sleep(0.05)
        conn.sendall(body[10:])
        answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    s.proc.wait(90)
    assert got == ("queued", 0, None) and row() == got, (got, row(), s.output())
