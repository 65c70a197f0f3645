"""A private Ray instance's processes (``prover_executor = "ray"`` with no ``ray_address``):
found, ended at the dispatcher's stop, and reaped when its process is killed (docs/ray.md).

Ray's own shutdown leaves the raylet's agents (DashboardAgent, RuntimeEnvAgent) running,
orphaned; a dispatcher killed with ``kill -9`` ends nothing. :func:`start_reaper` starts a small
process that outlives it and ends every process of the instance.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def ray_processes(ray, root: int | None = None) -> list[int]:
    """Pids of Ray's processes under ``root`` (default: this one; Linux ``/proc``; none
    elsewhere): named ``ray::…`` or run from Ray's own package folder (``ray``: the module,
    or that folder). Not the receipt writer or other children."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return []
    ray_dir = (ray if isinstance(ray, str) else os.path.dirname(ray.__file__)).rstrip(os.sep) + os.sep
    children: dict[int, list[int]] = {}
    for d in proc.iterdir():
        if d.name.isdigit() and (stat := _stat(int(d.name))) is not None:
            children.setdefault(int(stat[1]), []).append(int(d.name))
    out, todo = [], [os.getpid() if root is None else root]
    while todo:
        for pid in children.get(todo.pop(), []):
            todo.append(pid)
            if _is_ray(pid, ray_dir):
                out.append(pid)
    return out


def _is_ray(pid: int, ray_dir: str) -> bool:
    """``pid`` is named ``ray::…`` or runs from Ray's package folder ``ray_dir`` (its program,
    or a script after at most one interpreter option, as ``python -u …/monitor.py``)."""
    try:
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[:3]
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in argv]
    return bool(args) and (args[0].startswith("ray::") or any(a.startswith(ray_dir) for a in args))


def _stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name: [state, ppid, ...]; None if gone or odd."""
    try:  # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 1 and fields[1].isdigit() else None


def end_processes(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM each of ``pids`` still alive, SIGKILL what is left after ``grace_s``."""
    import signal

    def alive(pid: int) -> bool:  # a zombie (exited, not yet reaped by its new parent) is not
        stat = _stat(pid)
        return stat is not None and stat[0] != "Z"

    left = [p for p in pids if alive(p)]
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def start_reaper(temp_dir: str, ray_dir: str) -> subprocess.Popen:
    """A private Ray instance's processes end with the dispatcher's process (and so with the
    server) even when it is killed (kill -9, the OOM killer), when ``RayExecutor.stop`` does not
    run: the raylet and GCS die with the dispatcher thread (``PR_SET_PDEATHSIG``), but the
    raylet's agents were left running, orphaned, for good (they ignore SIGTERM). A small process
    in its own session (a signal to the server's group is the server's) waits for the end of a
    pipe from this one (it exited, or stops Ray itself), then ends every Ray process (``ray_dir``: Ray's package
    folder) of this user that holds a file under ``temp_dir``, the instance's Ray temp dir (each
    of its processes, agents and workers too, writes its logs there from its start; not, say,
    an operator's ``tail -f`` of one), and removes that folder. Which processes are the
    instance's is read when the server is gone, not noted while it lived: one started just
    before the server was killed is found too, whoever its parent is by then."""
    return subprocess.Popen([sys.executable, "-m", "server.proofs.ray_instance",
                             str(os.getpid()), temp_dir, ray_dir], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, start_new_session=True)


def _holding(folder: str, skip: set[int], ray_dir: str) -> list[int]:
    """Pids of this user's Ray processes (but ``skip``) with a file under ``folder`` open."""
    prefix, uid, out = folder.rstrip(os.sep) + os.sep, os.getuid(), []
    ray_dir = ray_dir.rstrip(os.sep) + os.sep
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in skip or not _is_ray(int(d.name), ray_dir):
            continue
        try:
            if d.stat().st_uid != uid:
                continue
            fds = list((d / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith(prefix):
                    out.append(int(d.name))
                    break
    return out


def _reap(server: int, temp_dir: str, ray_dir: str) -> None:
    """``python -m server.proofs.ray_instance SERVER_PID TEMP_DIR RAY_DIR`` (see
    :func:`_start_reaper`)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    while os.read(sys.stdin.fileno(), 4096):  # until the server is gone (or stops Ray itself)
        pass
    skip = {os.getpid(), server}
    for _ in range(10):  # an orphaned raylet not yet dead may start one more worker meanwhile
        left = _holding(temp_dir, skip, ray_dir)
        if not left:
            break
        end_processes(left)
    shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    _reap(int(sys.argv[1]), sys.argv[2], sys.argv[3])
