"""A throwaway local anvil node (from the project's ``node_modules``) for measurements.

``verinfer models tune`` measures ``verifyProof`` gas on it: anvil runs the pairing
precompile natively in ~1 s, the embedded py-evm chain in pure Python in ~45 s per call.
Loopback only; the node and its state end with the ``with`` block.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def anvil_path() -> Path | None:
    """``$VERINFER_ANVIL``, else the npm package's binary in the checkout; None if absent."""
    env = os.environ.get("VERINFER_ANVIL")
    path = Path(env) if env else (REPO_ROOT / "node_modules" / "@foundry-rs" /
                                  "anvil-linux-amd64" / "bin" / "anvil")
    return path if path.is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_anvil(binary: Path, *extra: str) -> Iterator[str]:
    """Start anvil on 127.0.0.1 at a free port (``extra``: more anvil options); yield its URL;
    stop it."""
    port = _free_port()
    proc = subprocess.Popen(
        [str(binary), "--host", "127.0.0.1", "--port", str(port), "--silent",
         "--gas-limit", "100000000", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"anvil exited: {proc.stderr.read().decode()[:300]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("anvil did not start in 30 s") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
