"""Chains for the tests: a real anvil node from the project's node_modules, and the embedded
py-evm chain. Shared by the contracts and relayer tiers (their conftests import the fixtures).

Dev accounts: anvil's default unlocked accounts are used in tests only.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import pytest

from testkit.server_process import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
ANVIL = REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


@contextlib.contextmanager
def run_anvil(*extra: str):
    """Start anvil on 127.0.0.1:<free port> (``extra``: more anvil options); yield its URL;
    stop it."""
    if not ANVIL.is_file():
        pytest.skip(f"anvil not installed at {ANVIL} (run make setup)")
    port = free_port()
    proc = subprocess.Popen(
        [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--silent",
         "--disable-code-size-limit", "--gas-limit", "100000000", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"anvil exited: {proc.stderr.read().decode()[:500]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("anvil did not start in 30 s") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


@pytest.fixture(scope="session")
def embedded_chain():
    from contracts.chain import connect

    return connect(None)


@pytest.fixture(params=["embedded", "anvil"])
def chain(request):
    """Each test that takes ``chain`` runs on both chains."""
    return request.getfixturevalue(f"{request.param}_chain")
