"""Helpers for the prover tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

VERINFER = [sys.executable, "-m", "verifier.cli"]


def run_cli(*args, home: Path, check: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real ``verinfer`` command with VERINFER_HOME=home (plus ``env``)."""
    env = {**os.environ, "VERINFER_HOME": str(home), **(env or {})}
    proc = subprocess.run([*VERINFER, *map(str, args)], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"verinfer {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stderr}")
    return proc


def oip_request(x: np.ndarray, datatype: str = "FP32") -> str:
    return json.dumps({"inputs": [{"name": "input", "shape": list(x.shape),
                                   "datatype": datatype, "data": x.ravel().tolist()}]})


def copy_package(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
