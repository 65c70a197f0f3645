"""Temporary working folders that a process killed outright (SIGKILL: a proof timed out, the
OOM killer) leaves behind, removed by the next user of the same parent folder: a proof's
(``verinfer-prove-*`` in the system's temporary folder), and in ``packages/`` a package
build's or removal's (``.tmp-*``) and a ``models tune`` search's (``.tmp-tune-*``, its
candidates' keys), each removed by the next build, removal or search; in ``srs/`` a
development SRS generation's (``.tmp-*``), removed by the next generation.

Each folder holds an flock on a ``.lock`` file beside it for as long as it is in use; the
kernel lets go when the process dies, however it dies. A folder whose lock is free belongs to
a process that is gone."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def remove_dead(parent: Path, prefix: str) -> None:
    """Remove the ``prefix*`` folders under ``parent`` whose lock is free (their process is
    gone). A folder in use holds its lock; a folder with no lock file is left alone."""
    for lock in Path(parent).glob(f"{prefix}*.lock"):
        try:
            with open(lock, "a") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # else it is in use
                shutil.rmtree(lock.with_name(lock.name.removesuffix(".lock")), ignore_errors=True)
                lock.unlink(missing_ok=True)
        except OSError:
            continue


def held_dir(prefix: str, parent: Path) -> tuple[Path, int]:
    """A new folder under ``parent`` and the descriptor holding its lock (close it, and unlink
    the lock, when the folder is gone or handed on). Locked before the folder exists, so no
    other process's :func:`remove_dead` ever sees it unlocked."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".lock", dir=parent)  # a unique name
    lock = Path(name)
    work = lock.with_name(lock.name.removesuffix(".lock"))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        work.mkdir(mode=0o700)
    except BaseException:
        lock.unlink(missing_ok=True)
        os.close(fd)
        raise
    return work, fd


def release(work: Path, fd: int) -> None:
    """Let go of ``work``'s lock (the folder itself is the caller's: removed or renamed)."""
    work.with_name(work.name + ".lock").unlink(missing_ok=True)
    os.close(fd)


@contextlib.contextmanager
def held_tempdir(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """A new temporary folder (under ``parent``, default the system's), locked while in use
    and removed after; first, the folders of dead processes with this prefix are removed."""
    parent = Path(parent or tempfile.gettempdir())
    remove_dead(parent, prefix)
    work, fd = held_dir(prefix, parent)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        release(work, fd)
