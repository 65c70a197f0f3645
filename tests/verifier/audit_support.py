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
             prefix: list[str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess; ``light``: torch & co. blocked, network raising; ``stdin``:
    what is piped in."""
    env = {**os.environ}
    if home is not None:
        env["VERINFER_HOME"] = str(home)
    cmd = [sys.executable, "-c", OFFLINE_LIGHT] if light else [sys.executable, "-m",
                                                               "verifier.cli"]
    return subprocess.run([*(prefix or []), *cmd, *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=REPO, input=stdin)


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


# Runs a command (its argv after the code) with a seccomp filter on: socket(2) of any family
# but AF_UNIX fails with EACCES in that process, its threads and children, native code (EZKL)
# included. For where no network namespace can be made (unprivileged user namespaces off: Ubuntu
# 24.04's AppArmor default, Docker's seccomp profile); needs no privilege (no_new_privs).
NO_INET = r"""
import ctypes, os, platform, struct, sys
AUDIT_ARCH, SOCKET_NR = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}[platform.machine()]
def ins(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)
LD, JEQ, RET = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
prog = b"".join([
    ins(LD, 0, 0, 4), ins(JEQ, 0, 5, AUDIT_ARCH),  # seccomp_data.arch: this one, else allow
    ins(LD, 0, 0, 0), ins(JEQ, 0, 3, SOCKET_NR),   # .nr: socket(2), else allow
    ins(LD, 0, 0, 16), ins(JEQ, 1, 0, 1),          # .args[0]: AF_UNIX is allowed
    ins(RET, 0, 0, 0x00050000 | 13),               # SECCOMP_RET_ERRNO | EACCES
    ins(RET, 0, 0, 0x7FFF0000),                    # SECCOMP_RET_ALLOW
])
filt = ctypes.create_string_buffer(prog)
fprog = ctypes.create_string_buffer(struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(filt)))
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
# PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with SECCOMP_MODE_FILTER
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0):
    sys.exit(f"cannot install the seccomp filter: {os.strerror(ctypes.get_errno())}")
os.execvp(sys.argv[1], sys.argv[1:])
"""


def no_network_prefix() -> tuple[str, list[str]]:
    """How to run a command with no network at all: a fresh network namespace where this
    machine allows one (``unshare -rn``), else the seccomp filter above."""
    import shutil

    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"],
                                                   capture_output=True).returncode == 0:
        return "network namespace", ["unshare", "-rn"]
    return "seccomp", [sys.executable, "-c", NO_INET]
