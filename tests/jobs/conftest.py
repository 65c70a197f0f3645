"""Proof-job tier fixtures: iris_mlp registered once per session with the real
``verinfer models add``; each server gets a copy of that home (see jobs_support)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # jobs_support

from jobs_support import REPO_ROOT, VERINFER, Server

from testkit.server_process import ServerProcess


@pytest.fixture(scope="session")
def iris_home(tmp_path_factory) -> Path:
    """A home with iris_mlp registered by the real ``verinfer models add iris_mlp``."""
    home = tmp_path_factory.mktemp("jobs-package-home")
    env = {**os.environ, "VERINFER_HOME": str(home)}
    proc = subprocess.run([*VERINFER, "models", "add", "iris_mlp"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return home


@pytest.fixture
def new_home(iris_home, tmp_path_factory):
    """``new_home()``: a fresh server home holding a copy of the iris_mlp package."""

    def make() -> Path:
        home = tmp_path_factory.mktemp("jobs-home")
        for part in ("packages", "names", "srs"):
            if (iris_home / part).exists():
                shutil.copytree(iris_home / part, home / part, dirs_exist_ok=True)
        return home

    return make


@pytest.fixture
def servers():
    """``servers(home, env)`` -> a ready :class:`ServerProcess` in its own process group;
    all stopped at the end."""
    started: list[ServerProcess] = []

    def start(home: Path, env: dict | None = None) -> ServerProcess:
        s = Server(home, env)
        started.append(s)
        return s.wait_ready()

    yield start
    for s in started:
        s.stop()


