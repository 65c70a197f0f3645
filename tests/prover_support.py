"""Helpers for the prover tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
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


@contextlib.contextmanager
def dead_and_running(parent: Path, prefix: str) -> Iterator[None]:
    """Two working folders under ``parent`` as prover/workdirs.py holds them: ``{prefix}dead``
    (its lock file free: its process is gone) and ``{prefix}running`` (locked while inside)."""
    for which in ("dead", "running"):
        (parent / f"{prefix}{which}").mkdir(parents=True)
        (parent / f"{prefix}{which}" / "pk.key").write_bytes(b"\0" * 1000)
        (parent / f"{prefix}{which}.lock").touch()
    with open(parent / f"{prefix}running.lock", "a") as running:
        fcntl.flock(running.fileno(), fcntl.LOCK_EX)
        yield


def oip_request(x: np.ndarray, datatype: str = "FP32") -> str:
    return json.dumps({"inputs": [{"name": "input", "shape": list(x.shape),
                                   "datatype": datatype, "data": x.ravel().tolist()}]})


def copy_package(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def model_with_nothing_to_rewrite(tmp_path: Path) -> tuple[Path, Path]:
    """A linear classifier at opset 12 (its ArgMax label, added by verinfer, is not covered:
    the rewrite's Unsqueeze and ReduceSum take their axes as inputs from opset 13) and real
    samples of its input."""
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3],
                           np.random.default_rng(5).standard_normal(12).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], initializer=[w])
    path = tmp_path / "linear.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)]), path)
    cal = tmp_path / "cal.npy"
    np.save(cal, np.random.default_rng(6).standard_normal((8, 1, 4)).astype(np.float32))
    return path, cal

