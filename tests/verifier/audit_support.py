"""Helpers for the verifier/audit tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from golden_corpus import golden

REPO = Path(__file__).resolve().parents[2]
GOLDEN = golden()  # built once per test session (tests/golden_corpus.py)

# Runs the verinfer CLI with the heavy and non-verifier parts of the project made
# unimportable (an auditor's light install) and every network call raising.
OFFLINE_LIGHT = r"""
import socket, sys
BLOCKED = {"torch", "fastapi", "onnxruntime", "onnx", "uvicorn", "starlette", "sklearn",
           "web3", "httpx", "prover", "server", "models", "contracts", "tritonclient"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked in this test: {name}", name=name)
        return None
sys.meta_path.insert(0, Block())
def no_network(*a, **k):
    raise OSError("network is unavailable in this test")
socket.socket.connect = socket.socket.connect_ex = no_network
socket.create_connection = socket.getaddrinfo = no_network
from verifier.cli import main
code = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
sys.exit(code)
"""


def verinfer(*args, home: Path | None = None, light: bool = True,
             prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess; ``light``: torch & co. blocked, network raising."""
    env = {**os.environ}
    if home is not None:
        env["VERINFER_HOME"] = str(home)
    cmd = [sys.executable, "-c", OFFLINE_LIGHT] if light else [sys.executable, "-m",
                                                               "verifier.cli"]
    return subprocess.run([*(prefix or []), *cmd, *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=REPO)


def corpus_args(root: Path) -> list[str]:
    index = json.loads((root / "corpus.json").read_text())
    return ["--keys", root / "jwks.json", "--models", root / "packages",
            "--eth-signer", index["eth_signer"], "--allow-dev-srs"]  # tests' packages: dev SRS


def outcomes(report: dict, root: Path) -> dict[str, str]:
    """item (relative to the corpus root, as in corpus.json) -> error class or "ok"."""
    out = {}
    for it in report["items"]:
        rel = str(Path(it["item"]).relative_to(root)) if it["item"].startswith(str(root)) \
            else it["item"]
        rel = rel.removesuffix("/bundle.json")
        out[rel] = "ok" if it["outcome"] == "ok" else it["error"]
    return out
