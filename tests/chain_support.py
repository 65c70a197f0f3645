"""Chains for the tests: a real anvil node from the project's node_modules, and the embedded
py-evm chain. Shared by the contracts and relayer tiers (their conftests import the fixtures).

Dev accounts: anvil's default unlocked accounts are used in tests only.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from contracts.anvil import local_anvil

REPO_ROOT = Path(__file__).resolve().parents[1]
ANVIL = REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


@contextlib.contextmanager
def run_anvil(*extra: str):
    """Start anvil on 127.0.0.1:<free port> (``extra``: more anvil options); yield its URL;
    stop it."""
    if not ANVIL.is_file():  # make test runs the set-up (npm ci) first: never a skip in CI
        pytest.fail(f"anvil not installed at {ANVIL} (run make setup)")
    with local_anvil(ANVIL, "--disable-code-size-limit", *extra) as url:
        yield url


@pytest.fixture(scope="session")
def embedded_chain():
    from contracts.chain import connect

    return connect(None)


@pytest.fixture(params=["embedded", "anvil"])
def chain(request):
    """Each test that takes ``chain`` runs on both chains."""
    return request.getfixturevalue(f"{request.param}_chain")


@contextlib.contextmanager
def jsonrpc_endpoint(answer):
    """An HTTP JSON-RPC endpoint on loopback whose reply to each POSTed request is
    ``answer(request: dict, body: bytes) -> bytes``; yields its URL."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            out = answer(json.loads(body), body)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
