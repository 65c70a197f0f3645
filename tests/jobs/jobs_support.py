"""Helpers of the proof-job tier: a real server process (own process group, so a test can kill -9 it
with its workers), real EZKL, iris_mlp registered once per session with the real
``verinfer models add``; each server gets a copy of that home."""

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

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
VERINFER = [sys.executable, "-m", "verifier.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iris_input(i: int) -> list[float]:
    """A distinct, valid iris sample per ``i`` (held-out sample, nudged)."""
    from models import load_split

    _, x_test, _, _ = load_split("iris_mlp")
    x = x_test[i % len(x_test)].astype(np.float32) + np.float32(0.01 * (i // len(x_test)))
    return [float(v) for v in x]


def tensor(values: list[float]) -> list[dict]:
    return [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": values}]


class Server:
    """``verinfer serve`` on a free port in its own session (process group)."""

    def __init__(self, home: Path, env: dict | None = None) -> None:
        self.home = home
        self.env = env or {}
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = home / f"server-{self.port}.log"
        self._log = open(self.log, "ab")
        full = {**os.environ, "VERINFER_HOME": str(home), **self.env}
        self.proc = subprocess.Popen([*VERINFER, "serve", "--port", str(self.port)], cwd=REPO_ROOT,
                                     env=full, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> "Server":
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                if self.request("GET", "/v2/health/ready")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready:\n{self.output()}")

    def output(self) -> str:
        self._log.flush()
        text = self.log.read_text(errors="replace")
        wlog = self.home / "logs" / "prove-workers.log"
        if wlog.exists():
            text += "\n--- workers ---\n" + wlog.read_text(errors="replace")[-4000:]
        return text

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 120):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read()), r.headers
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null"), exc.headers

    def submit(self, values: list[float], **extra) -> tuple[int, dict]:
        status, body, _ = self.request("POST", "/v1/proofs",
                                       {"model": "iris_mlp", "inputs": tensor(values), **extra})
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

    def kill9(self, group: bool = False) -> None:
        """kill -9 the server process (its workers must notice and exit on their own),
        or its whole process group."""
        try:
            if group:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not self._log.closed:
            self._log.close()


def package_dir(home: Path, name: str = "iris_mlp") -> Path:
    return home / "packages" / (home / "names" / name).read_text().strip()
