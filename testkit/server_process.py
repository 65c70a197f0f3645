"""The one helper that starts a real ``verinfer serve`` process on a free loopback port and
waits until ``/v2/health/ready`` answers.

The server and proof-job test tiers and ``bench/proof_jobs.py`` import it from here, so how a
server is started, logged, polled and stopped is written once. ``new_session=True`` starts it in its own session (process group), for the
kill -9 durability tests that kill the server together with its prover workers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VERINFER = [sys.executable, "-m", "verifier.cli"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``verinfer serve --port <free port> *args`` with ``VERINFER_HOME=home`` (plus ``env``),
    output appended to ``home/server-<port>.log``; call :meth:`wait_ready`, then :meth:`stop`
    (or :meth:`kill9`). ``new_session=True``: its own session / process group. ``command`` and
    ``cwd``: another ``verinfer`` (e.g. an installed one) and working folder than this
    checkout's."""

    def __init__(self, home: Path, *args: str, env: dict | None = None,
                 new_session: bool = False, command: list[str] | None = None,
                 cwd: Path | None = None) -> None:
        self.home = home
        self.env = env or {}
        self.new_session = new_session
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.base = f"http://{self.url}"
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / f"server-{self.port}.log"
        self._log = open(self.log, "ab")  # noqa: SIM115 - the server's, until stop()
        full_env = {**os.environ, "VERINFER_HOME": str(home), **self.env}
        self.proc = subprocess.Popen(
            [*(command or VERINFER), "serve", "--port", str(self.port), *args],
            cwd=cwd or REPO_ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    def wait_ready(self, timeout: float = 120) -> ServerProcess:
        """Poll ``/v2/health/ready`` until 200; raise (with the log) if it exits or times out."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.base + "/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.output()}")

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL (the whole group if ``new_session``) after 30 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                if self.new_session:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                else:
                    self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()

    def kill9(self, group: bool = False) -> None:
        """kill -9 the server process (its workers must notice and exit on their own),
        or its whole process group (needs ``new_session=True``)."""
        if group and not self.new_session:
            raise ValueError("kill9(group=True) needs a server started with new_session=True")
        try:
            if group:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        if not self._log.closed:
            self._log.close()

    def children(self, marker: bytes) -> list[int]:
        """The server process's children whose command line contains ``marker`` (from /proc)."""
        pids = []
        for pid, ppid in parent_pids().items():
            if ppid != self.proc.pid:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if marker in cmd:
                pids.append(pid)
        return pids

    def output(self) -> str:
        """The server's log so far, plus the tail of the prover workers' log if there is one."""
        if not self._log.closed:
            self._log.flush()
        text = self.log.read_text(errors="replace")
        wlog = self.home / "logs" / "prove-workers.log"
        if wlog.exists():
            text += "\n--- workers ---\n" + wlog.read_text(errors="replace")[-4000:]
        return text

    # --- HTTP --------------------------------------------------------------------------------

    def get(self, path: str) -> dict:
        """GET ``path`` and return its JSON body (raises on a non-2xx answer)."""
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return json.loads(r.read())

    def fetch(self, path: str) -> dict | str:
        """GET ``path``: its JSON body, or its text when the answer is ``text/plain`` (a checkpoint)."""
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            body = r.read().decode()
            return body if r.headers.get_content_type() == "text/plain" else json.loads(body)

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 120):
        """``(status, json body, headers)``; an HTTP error status is returned, not raised."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read()), r.headers
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null"), exc.headers

    # --- proof jobs (/v1/proofs) -------------------------------------------------------------

    def submit(self, values: list[float], model: str = "iris_mlp", **extra) -> tuple[int, dict]:
        """POST /v1/proofs for one FP32 row ``values`` -> ``(status, body)``."""
        inputs = [{"name": "input", "shape": [1, len(values)], "datatype": "FP32", "data": values}]
        status, body, _ = self.request("POST", "/v1/proofs",
                                       {"model": model, "inputs": inputs, **extra})
        return status, body

    def job(self, job_id: str) -> dict:
        status, body, _ = self.request("GET", f"/v1/proofs/{job_id}")
        assert status == 200, body
        return body

    def wait_job(self, job_id: str, timeout: float = 90, until=("done", "failed")) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            job = self.job(job_id)
            if job["status"] in until:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} not {until} in {timeout}s: {job}\n{self.output()}")

    def wait_running(self, job_id: str, timeout: float = 60) -> dict:
        return self.wait_job(job_id, timeout, until=("running", "done", "failed"))

    def worker_pids(self) -> list[int]:
        return self.request("GET", "/v1/proofs")[1]["worker_pids"]


def parent_pids() -> dict[int, int]:
    """pid -> parent pid of every live process (from /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                out[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return out
