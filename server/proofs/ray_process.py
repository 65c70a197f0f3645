"""The Ray dispatcher in a process of its own, a child of the server proving on Ray.

A Ray driver exits its whole process when it loses the GCS for
``gcs_rpc_server_reconnect_timeout_s`` (60 s): ``Failed to connect to GCS ... The program will
terminate``, from Ray's C++ core, past any Python handler. With the dispatcher
(:class:`server.proofs.ray_executor.RayExecutor`) inside the server, a Ray head that went down
for a minute (a cluster's, or a private instance's GCS that died) took the inference server
down with it, though no answer needs Ray. So the dispatcher runs here, a child of the
supervising server process (:class:`RayDispatcherProcess`): when Ray ends it, the server counts
the attempts of the jobs it held (as when a prover worker dies) and starts another, which joins
the cluster once it is back (retrying every 5 s), or starts a new private instance (no
``ray_address``: the instance is this process's and ends with it), and answers inference
meanwhile (docs/ray.md).

The child: ``python -m server.proofs.ray_process --parent-pid PID``; on its standard input the
server's settings (4-byte length, pickle), then one byte per command: ``w`` new jobs are
queued, ``s`` the server got its stop signal; the end of the input: stop (the jobs it holds go
back to the queue, the attempts not counted), then exit. It dies with the server (SIGKILL).
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time

from server.proofs.restarts import RestartBackoff

log = logging.getLogger("verinfer.server")

# A child that exits within this of its start is started again after a backoff (2, 4, ... 60
# s): with the cluster down each new one waits for the GCS as long as Ray lets it, then exits
QUICK_EXIT_S = 120.0
STOP_WAIT_S = 20.0  # for the child to give its jobs back and leave Ray, at the server's stop


class RayDispatcherProcess:
    """The server's side: start, wake, stop and watch the child (the interface of
    :class:`server.proofs.ray_executor.RayExecutor`, plus :meth:`tick` from the proof supervisor)."""

    def __init__(self, settings, store) -> None:
        self.settings = settings
        self.store = store
        self.proc: subprocess.Popen | None = None
        self._restarts = RestartBackoff(quick_s=QUICK_EXIT_S, cap_s=60.0)
        self._stopping = False
        self._wanted = False  # start() was called: tick() keeps a child running from then on
        self._lock = threading.Lock()  # start() (the server's thread) and tick() (the supervisor's)

    def start(self) -> None:
        with self._lock:
            self._wanted = True
            if self.proc is None:
                self._spawn()

    def _spawn(self) -> None:
        cmd = [sys.executable, "-m", "server.proofs.ray_process", "--parent-pid", str(os.getpid())]
        # its own session: Ctrl-C to the server's process group is the server's to handle; it
        # ignores SIGTERM (systemd's stop signals every process of the unit) and dies with the server
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, start_new_session=True,
                                     env={**os.environ, "VERINFER_HOME": str(self.settings.home)})
        data = pickle.dumps(self.settings, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(struct.pack("!i", len(data)) + data)
        self.proc.stdin.flush()
        os.set_blocking(self.proc.stdin.fileno(), False)
        self._restarts.started_at(time.monotonic())
        log.info("Ray dispatcher started (pid %d)", self.proc.pid)

    def _send(self, command: bytes) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            os.write(p.stdin.fileno(), command)
        except (BlockingIOError, BrokenPipeError, OSError):
            pass  # busy (its pipe full: it looks for work anyway) or dying (tick sees it)

    def wake(self) -> None:
        self._send(b"w")

    def signal_stop(self) -> None:
        self._stopping = True
        self._send(b"s")

    def tick(self) -> None:
        """From the proof supervisor's loop: a child that exited has its jobs' attempts counted
        and is started again (after a backoff when it died soon after its start)."""
        with self._lock:
            self._tick()

    def _tick(self) -> None:
        p, now = self.proc, time.monotonic()
        if p is not None and p.poll() is not None:
            code = p.returncode
            why = f"signal {-code}" if code < 0 else f"exit code {code}"
            log.error("the Ray dispatcher (pid %d) exited (%s): its jobs are queued again; starting "
                      "another", p.pid, why)
            self.store.retry_jobs_of(_held_by(p.pid), f"the Ray dispatcher exited ({why})",
                                     self.settings.proof_attempts)
            self._restarts.exited_at(now)
            self.proc = None
        if self.proc is None and self._wanted and not self._stopping and self._restarts.due(now):
            self._spawn()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            p, self.proc = self.proc, None
        if p is None:
            return
        try:
            p.stdin.close()  # its input ends: it gives its jobs back and leaves Ray
        except OSError:
            pass
        try:
            p.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            self.store.release_jobs_of(_held_by(p.pid))  # what it could not give back itself


def _held_by(pid: int):
    """Whether a job's worker id is one of the dispatcher ``pid``'s (``ray.<pid>.<n>``)."""
    prefix = f"ray.{pid}."
    return lambda worker: worker.startswith(prefix)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m server.proofs.ray_process")
    ap.add_argument("--parent-pid", type=int, required=True)
    args = ap.parse_args(argv)
    from server.proofs.worker import die_with_parent

    die_with_parent(args.parent_pid)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the server stops it (see RayDispatcherProcess)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    (size,) = struct.unpack("!i", stdin.read(4))
    settings = pickle.loads(stdin.read(size))
    from server.logs import configure

    configure(settings.log_format, "warning")  # the server's log lines, on the server's stderr

    from server.proofs.ray_executor import RayExecutor
    from server.proofs.store import JobStore
    from server.receipts.store import ReceiptStore

    executor = RayExecutor(settings, JobStore(settings.receipts_path), ReceiptStore(settings.receipts_path))
    executor.start()
    while True:
        data = stdin.read1(64)  # (the same buffered reader: it may hold bytes read ahead)
        if not data:
            break
        if b"s" in data:
            executor.signal_stop()
        if b"w" in data:
            executor.wake()
    executor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
