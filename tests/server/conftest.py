"""Server tier: start the real server process on a free port (``e2e`` tests)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def verinfer(home: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the ``verinfer`` CLI in a subprocess with ``VERINFER_HOME=home``."""
    full_env = {**os.environ, "VERINFER_HOME": str(home), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "verifier.cli", *args],
        cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


class ServerProcess:
    """``verinfer serve`` on 127.0.0.1:<free port>, stopped by :meth:`stop`."""

    def __init__(self, home: Path, *args: str, env: dict | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.base = f"http://{self.url}"
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / f"server-{self.port}.log"
        full_env = {**os.environ, "VERINFER_HOME": str(home), **(env or {})}
        self._log_file = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "verifier.cli", "serve", "--port", str(self.port), *args],
            cwd=REPO_ROOT, env=full_env, stdout=self._log_file, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120) -> "ServerProcess":
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
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


@pytest.fixture
def start_server():
    """Factory: ``start_server(home, *args, env=...)`` -> a ready :class:`ServerProcess`."""
    started: list[ServerProcess] = []

    def start(home: Path, *args: str, env: dict | None = None) -> ServerProcess:
        s = ServerProcess(home, *args, env=env)
        started.append(s)
        return s.wait_ready()

    yield start
    for s in started:
        s.stop()


MAX_BODY = 65536


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for a test module: both reference models, 64 KiB body limit, batching on."""
    home = tmp_path_factory.mktemp("server-home")
    s = ServerProcess(
        home,
        "--max-batch-size", "16", "--max-queue-delay-ms", "5",
        env={"VERINFER_MAX_BODY_BYTES": str(MAX_BODY), "VERINFER_CHAIN_ID": "31337"},
    )
    try:
        yield s.wait_ready()
    finally:
        s.stop()


@pytest.fixture
def cli():
    """``cli(home, *args)``: run the verinfer CLI in a subprocess."""
    return verinfer
