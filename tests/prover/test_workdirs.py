"""A prover killed mid-proof (SIGKILL: a proof timed out, the OOM killer) left its temporary
folder in /tmp for good (a witness, a proof: one per killed attempt); the next proof removes
such folders (prover/workdirs.py)."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import tempfile

import numpy as np

from prover.workdirs import held_tempdir, remove_dead

KILLED = """
import os, signal, sys
from pathlib import Path
from prover.workdirs import held_tempdir
with held_tempdir("verinfer-prove-", Path(sys.argv[1])) as work:
    (work / "witness.json").write_text("{}")
    print(work, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # dies holding it: nothing cleans up
"""


def _killed_holder(parent) -> str:
    proc = subprocess.run([sys.executable, "-c", KILLED, str(parent)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    return proc.stdout.strip()


def test_a_killed_provers_folder_is_removed_by_the_next_and_a_live_ones_is_kept(tmp_path):
    dead = _killed_holder(tmp_path)
    assert (tmp_path / dead).is_dir() and (tmp_path / f"{dead}.lock").exists()
    other = tmp_path / "verinfer-prove-no-lock"  # not ours (no lock file): left alone
    other.mkdir()
    with held_tempdir("verinfer-prove-", tmp_path) as live:
        assert not (tmp_path / dead).exists() and not (tmp_path / f"{dead}.lock").exists()
        remove_dead(tmp_path, "verinfer-prove-")  # as another prover starting now
        assert live.is_dir()  # in use: its lock is held
        with open(f"{live}.lock") as f:  # another open file: its flock conflicts, as another process's
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                raise AssertionError("the folder in use is not locked")
            except BlockingIOError:
                pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name]  # its own, removed after


def test_the_prover_removes_what_a_killed_prover_left(iris_package, tmp_path, monkeypatch):
    """The real prover (EZKL) with its temporary folders under tmp_path: a killed prover's
    leftovers go at the next proof, and the proof leaves nothing behind."""
    from models import load_split
    from prover.package import CircuitPackage
    from prover.proving import Prover

    dead = _killed_holder(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _, x_test, _, _ = load_split("iris_mlp")
    bundle = Prover(CircuitPackage.open(iris_package)).prove(
        x_test[0].reshape(1, 4).astype(np.float32))
    assert bundle.agreement.agree
    assert list(tmp_path.iterdir()) == [], [p.name for p in tmp_path.iterdir()]
    assert dead
