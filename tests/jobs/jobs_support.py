"""Helpers of the proof-job tier: a real server process (:class:`testkit.server_process.ServerProcess`
in its own process group, so a test can kill -9 it with its workers), real EZKL, iris_mlp
registered once per session with the real ``verinfer models add``; each server gets a copy of
that home."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from testkit.server_process import REPO_ROOT, VERINFER, ServerProcess  # noqa: F401  (re-exported)


def iris_input(i: int) -> list[float]:
    """A distinct, valid iris sample per ``i`` (held-out sample, nudged)."""
    from models import load_split

    _, x_test, _, _ = load_split("iris_mlp")
    x = x_test[i % len(x_test)].astype(np.float32) + np.float32(0.01 * (i // len(x_test)))
    return [float(v) for v in x]


def tensor(values: list[float]) -> list[dict]:
    return [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": values}]


def Server(home: Path, env: dict | None = None) -> ServerProcess:
    """The proof-job tier's server (not yet ready: call ``wait_ready()``): its own session
    (process group), so a test can kill -9 it with its workers (``kill9(group=True)``)."""
    return ServerProcess(home, env=env, new_session=True)


def run_audit(bundle_dir: Path, keys: Path, packages: Path, home: Path):
    """``verinfer audit BUNDLE_DIR --keys KEYS --models PACKAGES --allow-dev-srs`` (the project
    CLI, in a fresh process; ``home`` its data dir) -> the completed process."""
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "verifier.cli", "audit", str(bundle_dir),
                           "--keys", str(keys), "--models", str(packages), "--allow-dev-srs"],
                          capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "VERINFER_HOME": str(home)})


def package_dir(home: Path, name: str = "iris_mlp") -> Path:
    return home / "packages" / (home / "names" / name).read_text().strip()


def submit_job(store, digest: str, **kw):
    """A job for a made-up model straight into the job table (``JobStore.submit``), no server."""
    args = dict(model="m", package_id="p" * 64, model_sha256="a" * 64, input_digest=digest,
                input_json="{}", receipt_id=None, callback_url=None, max_active=3)
    args.update(kw)
    return store.submit(**args)
