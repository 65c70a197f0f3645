"""``verinfer serve --workers 2`` with the real processes (server/supervisor.py): two server
processes on one port feeding one receipt log writer; a killed server process or writer is
replaced while the rest keeps answering."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit.server_process import REPO_ROOT, VERINFER, ServerProcess
from tests.tlog_support import check_history
from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2

pytestmark = pytest.mark.e2e

DIGITS = [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.25] * 64}]


def _post(base: str, k: int, key: str | None = None) -> tuple[int, dict, str]:
    """One infer request on a new connection (with API ``key``): (status, body, Verinfer-Worker)."""
    body = json.dumps({"id": f"c{k}", "inputs": DIGITS}).encode()
    req = urllib.request.Request(base + "/v2/models/digits_cnn/infer", data=body, method="POST",
                                 headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), r.headers["Verinfer-Worker"]
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers["Verinfer-Worker"]


def _concurrently(base: str, n: int, key: str | None = None) -> list[tuple[int, dict, str]]:
    """``n`` requests at once, each on its own connection."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda k: _post(base, k, key), range(n), timeout=90))


def _until_both(base: str, results: list, rounds: int = 50) -> dict[str, set[str]]:
    """Concurrent requests until both server processes have answered; ``{index: {pids}}``."""
    by_index: dict[str, set[str]] = {}
    for _ in range(rounds):
        for status, body, worker in _concurrently(base, 16):
            results.append((status, body, worker))
            index, pid = worker.split(".")
            by_index.setdefault(index, set()).add(pid)
        if len(by_index) == 2:
            break
    return by_index


def _writer_pid(s: ServerProcess) -> int:
    (pid,) = s.children(b"--shared")
    return pid


def _serving(s: ServerProcess) -> ServerProcess:
    end = time.monotonic() + 120
    while "with 2 server processes" not in s.output():  # the supervisor says so once both serve
        assert time.monotonic() < end and s.proc.poll() is None, s.output()
        time.sleep(0.1)
    return s


@pytest.fixture
def two(tmp_path):
    s = ServerProcess(tmp_path / "home", "--workers", "2", "--max-batch-size", "8")
    try:  # stopped also when it never serves (else its processes outlive the test)
        yield _serving(s.wait_ready())
    finally:
        s.stop()


def test_two_processes_serve_one_consistent_log(two):
    s = two
    results: list = []
    by_index = _until_both(s.base, results)
    assert set(by_index) == {"0", "1"}, by_index
    jwks = s.get("/.well-known/jwks.json")
    receipts = {w.split(".")[0]: [] for _, _, w in results}
    for status, body, worker in results:
        assert status == 200, body
        receipts[worker.split(".")[0]].append(body["parameters"]["receipt"])
        verify_receipt_v2(ReceiptV2.parse(body["parameters"]["receipt"]), jwks)
    assert receipts["0"] and receipts["1"]
    every = receipts["0"] + receipts["1"]
    # one log: distinct leaves, and every checkpoint either process handed out is consistent
    # with the latest (consistency proofs from the log API)
    indexes = [ReceiptV2.parse(t).index for t in every]
    assert len(set(indexes)) == len(indexes)
    assert check_history(s.fetch, jwks, every) > 1
    # each process's receipts are stored where the other one reads them: GETs on new
    # connections until both processes have answered each (before: 8 GETs that could all land
    # on one process, so the other's read was not checked)
    for text in (receipts["0"][0], receipts["1"][0]):
        r = ReceiptV2.parse(text)
        read_by: set[str] = set()
        for _ in range(100):
            with urllib.request.urlopen(s.base + f"/v1/receipts/{r.id}", timeout=30) as got:
                assert ReceiptV2.parse(json.loads(got.read())) == r
                read_by.add(got.headers["Verinfer-Worker"].split(".")[0])
            if read_by == {"0", "1"}:
                break
        assert read_by == {"0", "1"}, read_by


def _replaced(s: ServerProcess, victim: str, results: list) -> None:
    """Until a new process 1 (not ``victim``) answers; the answers added to ``results``."""
    end = time.monotonic() + 120
    back: dict[str, set[str]] = {}
    while time.monotonic() < end:  # a new process 1 comes up (another pid)
        back = _until_both(s.base, results, rounds=1)
        if back.get("1", set()) - {victim}:
            return
        time.sleep(0.5)
    raise AssertionError((back, s.output()))


def test_a_killed_server_process_is_replaced_and_the_other_keeps_answering(two):
    s = two
    by_index = _until_both(s.base, [])
    assert set(by_index) == {"0", "1"}, by_index
    (victim,) = by_index["1"]
    os.kill(int(victim), signal.SIGKILL)
    jwks = s.get("/.well-known/jwks.json")
    answered = []
    for k in range(20):  # answered throughout (by the other, until the new one is up)
        status, body, _ = _post(s.base, k)
        assert status == 200, body
        answered.append(body["parameters"]["receipt"])
    _replaced(s, victim, [])
    assert "server process 1" in s.output() and "signal 9" in s.output()
    assert check_history(s.fetch, jwks, answered) >= 1


def test_a_killed_writer_fails_only_what_it_held_and_comes_back(two):
    s = two
    jwks = s.get("/.well-known/jwks.json")
    before: list = []
    _until_both(s.base, before)
    writer = _writer_pid(s)
    os.kill(writer, signal.SIGKILL)
    after = _concurrently(s.base, 16)  # they wait for the new writer (or fail cleanly: 503)
    for status, body, _ in after:
        assert status == 200 or (status == 503 and "receipt signer" in body["error"]), (status, body)
    end = time.monotonic() + 90
    while True:
        status, body, _ = _post(s.base, 999)
        if status == 200 or time.monotonic() > end:
            break
        time.sleep(0.2)
    assert status == 200, (body, s.output())
    again = _until_both(s.base, after)
    assert set(again) == {"0", "1"}
    assert _writer_pid(s) != writer
    texts = [b["parameters"]["receipt"] for st, b, _ in before + after if st == 200]
    for t in texts:
        verify_receipt_v2(ReceiptV2.parse(t), jwks)
    assert check_history(s.fetch, jwks, texts) > 1


def _get_from_each(s: ServerProcess, path: str, tries: int = 200) -> dict[str, bytes]:
    """GET ``path`` on new connections until both processes answered: ``{index: body}``."""
    bodies: dict[str, bytes] = {}

    def one(_: int) -> tuple[str, bytes]:
        with urllib.request.urlopen(s.base + path, timeout=30) as r:
            return r.headers["Verinfer-Worker"].split(".")[0], r.read()

    with ThreadPoolExecutor(8) as pool:
        for _ in range(tries // 8):
            bodies.update(pool.map(one, range(8)))
            if len(bodies) == 2:
                break
    return bodies


def test_every_get_answers_the_same_from_either_process(two):
    s = two
    status, body, _ = _post(s.base, 1)
    assert status == 200, body
    rid = body["parameters"]["receipt_id"]
    for path in ("/v2/health/ready", "/v2", "/v2/models/digits_cnn", "/.well-known/jwks.json",
                 "/.well-known/verinfer-log.json", "/v1/keys", "/v1/log/checkpoint",
                 f"/v1/receipts/{rid}", "/v1/log/proof/consistency?from=1"):
        bodies = _get_from_each(s, path)
        assert set(bodies) == {"0", "1"}, path
        assert bodies["0"] == bodies["1"], path


def test_bad_worker_counts_and_a_busy_port_exit_2(tmp_path):
    def verinfer(home, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*VERINFER, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "VERINFER_HOME": str(home)})

    r = verinfer(tmp_path / "home", "serve", "--workers", "0")
    assert r.returncode == 2 and "workers" in r.stderr, r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = verinfer(tmp_path / "home", "serve", "--workers", "2", "--port", str(busy.getsockname()[1]))
    assert r.returncode == 2 and "cannot listen" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_settings_a_server_process_refuses_exit_2_in_one_line(tmp_path):
    """What a server process refuses at start (an ONNX model whose file is missing) is said
    once by the supervisor, exit 2, as ``serve`` without ``--workers`` says it: not one
    traceback per process and exit 1."""
    env = {**os.environ, "VERINFER_HOME": str(tmp_path / "home"),
           "VERINFER_ONNX_MODELS": json.dumps({"extra": str(tmp_path / "missing.onnx")})}
    r = subprocess.run([*VERINFER, "serve", "--workers", "2", "--port", "0"], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "no ONNX file" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_second_server_on_the_same_home_exits_2_and_the_first_keeps_serving(two):
    """A second ``serve --workers`` on the home of one already serving would wipe its shared
    state (rate buckets, metrics files) under ``run/``: it is refused."""
    before = len(_concurrently(two.base, 4))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    r = subprocess.run([*VERINFER, "serve", "--workers", "2", "--port", str(port)], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "VERINFER_HOME": str(two.home)})
    assert r.returncode == 2 and "another verinfer server runs on" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert any((two.home / "run" / "prometheus").iterdir())  # its state was left alone
    results = _concurrently(two.base, 8)
    assert before == 4 and [s for s, _, _ in results] == [200] * 8
    _check_counted(two, 12)  # no count was lost to a wiped metrics folder


def _gone(pids: list[int], timeout: float = 60) -> bool:
    """Whether every pid has exited (waiting up to ``timeout``: a hang guard)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        alive = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        alive.append(pid)
            except OSError:
                pass
        if not alive:
            return True
        time.sleep(0.1)
    return False


def test_a_stop_while_the_server_processes_start_is_a_clean_stop(tmp_path):
    """systemd's stop (SIGTERM to every process of the unit) while the server processes still
    load: they die of it before they serve. That is the stop asked for, exit 0; before, the
    supervisor took it for a failed start: exit 1, "exited while starting (code -15)"
    (systemd then marks the unit failed)."""
    s = ServerProcess(tmp_path / "home", "--workers", "2", new_session=True)
    try:
        end = time.monotonic() + 60
        while len(s.children(b"server.supervisor")) < 2:
            assert time.monotonic() < end and s.proc.poll() is None, s.output()
            time.sleep(0.02)
        children = s.children(b"server.")
        os.killpg(s.proc.pid, signal.SIGTERM)
        assert s.proc.wait(60) == 0, s.output()
        assert "exited while starting" not in s.output(), s.output()
        assert _gone(children), s.output()
    finally:
        s.stop()


def test_sigterm_stops_all_and_a_killed_supervisor_leaves_no_orphans(tmp_path):
    for how in ("sigterm", "kill9"):
        s = ServerProcess(tmp_path / how, "--workers", "2")
        try:
            s.wait_ready()
            end = time.monotonic() + 120
            while "with 2 server processes" not in s.output():
                assert time.monotonic() < end and s.proc.poll() is None, s.output()
                time.sleep(0.1)
            children = s.children(b"server.")
            assert len(children) == 3, children  # two server processes and the writer
            if how == "sigterm":
                s.stop()
                assert s.proc.returncode == 0, s.output()
            else:
                s.kill9()  # the children see their socket pair close and stop on their own
            assert _gone(children), (how, s.output())
        finally:
            s.stop()


def test_a_request_in_flight_when_the_supervisor_is_killed_gets_its_signed_answer(tmp_path):
    """kill -9 of the supervisor: its server processes stop on their own, finishing the
    requests they are serving, which need the shared writer. The writer ended with its control
    pipe, so such a request waited for a writer that never came back and got a 503 (after a
    minute); the writer now answers its connected server processes until they hang up."""
    s = ServerProcess(tmp_path / "home", "--workers", "2")
    try:
        _serving(s.wait_ready())
        jwks = s.get("/.well-known/jwks.json")
        body = json.dumps({"inputs": DIGITS}).encode()
        with socket.create_connection(("127.0.0.1", s.port), timeout=150) as conn:
            conn.sendall(b"POST /v2/models/digits_cnn/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
            time.sleep(0.5)  # the request has begun: a stopping server process finishes it
            s.kill9()
            time.sleep(1.0)  # the writer and the server processes have seen the supervisor go
            conn.sendall(body[10:])
            raw = b""
            while chunk := conn.recv(65536):
                raw += chunk
        head, _, payload = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), raw[:300]
        receipt = json.loads(payload)["parameters"]["receipt"]
        assert verify_receipt_v2(ReceiptV2.parse(receipt), jwks)  # signed, in the log
    finally:
        s.stop()


def _figures(text: str) -> dict[tuple[str, tuple], float]:
    return {(m.name, tuple(sorted(m.labels.items()))): m.value
            for family in text_string_to_metric_families(text) for m in family.samples}


def _check_counted(s: ServerProcess, answered: int) -> None:
    """``/metrics`` and ``/v1/status`` of either process count the requests of both."""
    for index, text in _get_from_each(s, "/metrics").items():
        f = _figures(text.decode())
        model = (("model", "digits_cnn"),)
        assert f[("verinfer_requests_total", (*model, ("status", "200")))] == answered, index
        assert f[("verinfer_request_duration_seconds_count", model)] == answered, index
        assert f[("verinfer_rows_total", model)] == answered, index
        assert f[("verinfer_server_processes", ())] == 2, index  # live ones: not the dead one
    for index, body in _get_from_each(s, "/v1/status").items():
        assert json.loads(body)["metrics"]["requests_by_status"] == {"200": answered}, index


def test_metrics_count_every_process_and_a_restarted_one(two):
    s = two
    results: list = []
    by_index = _until_both(s.base, results)
    assert set(by_index) == {"0", "1"}, by_index
    assert all(status == 200 for status, _, _ in results)
    _check_counted(s, len(results))
    (victim,) = by_index["1"]
    os.kill(int(victim), signal.SIGKILL)  # its counts stay in the totals; its gauge leaves
    _replaced(s, victim, results)
    assert all(status == 200 for status, _, _ in results)
    _check_counted(s, len(results))


def test_a_keys_rate_limit_holds_for_the_whole_server(tmp_path):
    home, rate, burst = tmp_path / "home", 0.1, 4
    env = {"VERINFER_AUTH": "on", "VERINFER_TIERS": json.dumps({"small": {"rate_per_s": rate, "burst": burst}})}
    made = subprocess.run([*VERINFER, "apikeys", "create", "--tier", "small", "--json"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "VERINFER_HOME": str(home), **env})
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["key"]
    s = ServerProcess(home, "--workers", "2", env=env)
    try:
        _serving(s.wait_ready())
        start, answers, asked = time.monotonic(), [], dict.fromkeys("01", 0)
        for _ in range(20):  # until each process was asked more than the burst
            for status, body, worker in _concurrently(s.base, 16, key):
                assert status in (200, 429), (status, body)
                answers.append(status)
                asked[worker.split(".")[0]] += 1
            if min(asked.values()) > burst:
                break
        elapsed = time.monotonic() - start
        assert min(asked.values()) > burst, asked
        # one bucket for the server: per-process buckets would pass at least 2 x burst
        assert burst <= answers.count(200) <= burst + rate * elapsed, (answers.count(200), elapsed)
    finally:
        s.stop()


def test_a_revoked_key_is_refused_at_once_by_every_process(tmp_path):
    """``apikeys revoke`` while ``serve --workers 2`` runs: from its return, every request with
    the key is a 403, whichever process answers (each reads the key store per request)."""
    home, env = tmp_path / "home", {"VERINFER_AUTH": "on"}

    def apikeys(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*VERINFER, "apikeys", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "VERINFER_HOME": str(home), **env})

    made = apikeys("create", "--tier", "unlimited", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    s = ServerProcess(home, "--workers", "2", env=env)
    try:
        _serving(s.wait_ready())
        for expected in (200, 403):
            if expected == 403:
                assert apikeys("revoke", key["id"]).returncode == 0
            seen: set[str] = set()
            for _ in range(50):  # until both processes answered
                for status, body, worker in _concurrently(s.base, 16, key["key"]):
                    assert status == expected, (status, body, worker)
                    seen.add(worker.split(".")[0])
                if len(seen) == 2:
                    break
            assert seen == {"0", "1"}, seen
    finally:
        s.stop()


def test_json_log_format_holds_for_the_supervisors_own_lines(tmp_path):
    """``VERINFER_LOG_FORMAT=json`` with ``--workers``: every line the server writes is a JSON
    log record, the supervisor's own too (serving, a process that exited and is started again);
    before, those were plain text among the JSON lines of its children."""
    s = ServerProcess(tmp_path / "home", "--workers", "2", "--log-level", "info",
                      env={"VERINFER_LOG_FORMAT": "json", "VERINFER_MODELS": '["iris_mlp"]'})
    try:
        _serving(s.wait_ready())
        victim = s.children(b"server.supervisor")[-1]
        os.kill(victim, signal.SIGKILL)
        end = time.monotonic() + 120
        while f"(pid {victim}) exited" not in s.output():
            assert time.monotonic() < end and s.proc.poll() is None, s.output()
            time.sleep(0.1)
    finally:
        s.stop()
    assert s.proc.returncode == 0, s.output()
    lines = [ln for ln in s.log.read_text().splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # each line one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records), lines
    said = [(r["level"], r["message"]) for r in records if r["logger"] == "verinfer.supervisor"]
    assert any(level == "info" and m.startswith("serving on") for level, m in said), said
    assert any(level == "error" and f"(pid {victim}) exited (signal 9)" in m for level, m in said), said


def _ready(base: str) -> tuple[int, dict, str]:
    """GET /v2/health/ready on a new connection: (status, body, Verinfer-Worker)."""
    try:
        with urllib.request.urlopen(base + "/v2/health/ready", timeout=60) as r:
            return r.status, json.loads(r.read()), r.headers["Verinfer-Worker"]
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers["Verinfer-Worker"]


def _log_size(s: ServerProcess) -> int:
    return int(s.fetch("/v1/log/checkpoint").splitlines()[1])


def test_a_stopped_writer_fails_answers_in_time_and_readiness_until_it_answers_again(tmp_path):
    """The shared writer stopped (SIGSTOP; a hung writer): an answer waits
    ``receipt_writer_timeout_s``, then a 503 with {"error"}, neither signed nor logged (the
    writer, continued, refuses the job its client gave up on), and readiness is 503 until the
    writer answers again (SIGCONT). Before, such a request waited forever and readiness was 200."""
    s = ServerProcess(tmp_path / "home", "--workers", "2",
                      env={"VERINFER_RECEIPT_WRITER_TIMEOUT_S": "2"})
    try:
        _serving(s.wait_ready())
        assert _post(s.base, 0)[0] == 200
        size = _log_size(s)
        writer = _writer_pid(s)
        os.kill(writer, signal.SIGSTOP)
        try:
            status, body, _ = _post(s.base, 1)
            assert status == 503 and set(body) == {"error"}, body
            assert "receipt writer did not answer in 2 s" in body["error"], body
            end = time.monotonic() + 60
            while (got := _ready(s.base))[0] != 503:  # each process notices with its own probe
                assert time.monotonic() < end, got
                time.sleep(0.1)
            assert got[1] == {"ready": False}
        finally:
            os.kill(writer, signal.SIGCONT)
        ready_in: set[str] = set()
        end = time.monotonic() + 60
        while ready_in != {"0", "1"}:  # a reply after the stall: that process's queue was read
            status, body, worker = _ready(s.base)
            if status == 200:
                ready_in.add(worker.split(".")[0])
            assert time.monotonic() < end, (ready_in, s.output())
            time.sleep(0.1)
        jwks = s.get("/.well-known/jwks.json")
        answers = _concurrently(s.base, 8)
        for status, body, _ in answers:
            assert status == 200, body
            assert verify_receipt_v2(ReceiptV2.parse(body["parameters"]["receipt"]), jwks)
        assert _log_size(s) == size + len(answers)  # the 503's job was not logged
        assert _writer_pid(s) == writer  # the same writer, continued
    finally:
        s.stop()
