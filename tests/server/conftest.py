"""Server tier: start the real server process on a free port (``e2e`` tests); the process
helper itself is :class:`testkit.server_process.ServerProcess`, shared with the proof-job tier."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from testkit.server_process import REPO_ROOT, VERINFER, ServerProcess


def verinfer(home: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the ``verinfer`` CLI in a subprocess with ``VERINFER_HOME=home``."""
    full_env = {**os.environ, "VERINFER_HOME": str(home), **(env or {})}
    return subprocess.run(
        [*VERINFER, *args],
        cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


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
