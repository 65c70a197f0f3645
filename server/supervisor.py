"""``verinfer serve --workers N``: one listening socket, N server processes, one receipt log writer.

The supervisor (the ``verinfer serve`` process) loads the keys once (making them on a first
start), binds the port, starts the shared receipt log writer (``python -m
server.receipts.worker --shared``, on the Unix socket ``<home>/run/receipts.sock``, mode 0600)
and N server processes (``python -m server.supervisor``). Each inherits the listening socket
and runs its own uvicorn, event loop, batchers and engines; the kernel hands each new
connection to whichever process accepts it first. Process 0 also runs the proof-job
supervisor (prover workers, callbacks) and the relayer; every process answers every route
from the same SQLite files. Each answer names its process in ``Verinfer-Worker: <index>.<pid>``.
What must hold for the whole server lives in ``<home>/run``, made anew at each start
(:mod:`server.shared`): prometheus-client's multi-process files (``/metrics`` of any process adds
up all; a dead process's live gauges are dropped), the API keys' rate-limit buckets and the
count of requests waiting for their proofs.

A process that exits is started again (after 1, 2, 4 … 30 s when it keeps dying within 5 s of
its start); the others keep serving, and the connections waiting on the shared socket are
taken by them. Each child holds a socket pair to the supervisor: the supervisor sends its
settings on it; a server process answers ``ready`` once it serves; when the pair closes
(the supervisor stops, or is killed) the child stops too. SIGTERM or Ctrl-C: the server
processes stop first (answering what they hold), then the writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

from server.logs import configure, say
from server.settings import ServerSettings
from server.shared import Shared, prepare

QUICK_DEATH_S = 5.0  # a process that dies sooner than this after its start is restarted later
STOP_TIMEOUT_S = 30.0
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes
LOGGER = "verinfer.supervisor"


@dataclass
class _Child:
    name: str
    index: int  # -1: the receipt writer
    proc: subprocess.Popen | None = None
    conn: Connection | None = None
    started: float = 0.0
    ready: bool = False
    error: str | None = None  # what a server process said was wrong with the settings
    fails: int = 0
    next_start: float = 0.0


def _spawn(args: list[str], hello: tuple, pass_fds: tuple[int, ...] = (),
           env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Connection]:
    """Start ``python -m args`` with one end of a socket pair as its stdin; send ``hello`` on it."""
    ours, theirs = socket.socketpair()
    try:
        proc = subprocess.Popen([sys.executable, "-m", *args], stdin=theirs, pass_fds=pass_fds, env=env)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    conn = Connection(ours.detach())
    try:
        conn.send(hello)
    except (BrokenPipeError, ConnectionResetError):
        pass  # it died before reading it (a stop signal to the group): its exit is seen as any other
    return proc, conn


def writer_socket_path(settings: ServerSettings) -> Path:
    """``<home>/run/receipts.sock``, or one in a new private temporary folder when that path is
    too long for a Unix socket."""
    run = settings.home / "run"
    path = run / "receipts.sock"
    if len(os.fsencode(path)) <= SOCKET_PATH_MAX:
        run.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(run, 0o700)
        return path
    return Path(tempfile.mkdtemp(prefix="verinfer-")) / "receipts.sock"  # mode 0700


def bind(settings: ServerSettings) -> socket.socket:
    """The one listening socket that every server process inherits."""
    from verifier.errors import InputError

    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        return socket.create_server((settings.host, settings.port), family=family, backlog=2048)
    except OSError as exc:
        raise InputError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None


def _exit_reason(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit code {code}"


def _backoff_s(fails: int) -> int:
    """Seconds before a child that keeps failing is started again: 2, 4, 8 … 30."""
    return min(2 ** fails, 30)


@contextlib.contextmanager
def start_errors():
    """What the data dir or a store's path refuses at start (a missing folder, a file where a
    folder should be, no permission): one line, exit 2, not a traceback (exit 1)."""
    import sqlite3

    from verifier.errors import InputError

    try:
        yield
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise InputError(f"cannot start: {where}{exc.strerror or exc}") from None
    except sqlite3.Error as exc:
        raise InputError(f"cannot start: {exc} (see VERINFER_HOME, VERINFER_RECEIPTS_DB, "
                         "VERINFER_LOG_DB)") from None


def check_log(settings: ServerSettings) -> None:
    """Refuse (exit 2, one line) to start where the receipt log's writer could not: another
    server writes the log, or the log's origin is not ``log_origin``. Else the writer would
    fail the start with a traceback (exit 3, or 1 with ``--workers``). A dying server's
    writer is given a few seconds to finish, as the writer itself would."""
    from server.receipts.translog import LogReader, writer_lock
    from verifier.errors import InputError

    path = settings.log_path
    try:
        lock = writer_lock(path, 5.0)
    except InputError:
        raise InputError(f"another verinfer server writes the receipt log {path}; "
                         "give this one its own VERINFER_HOME (or VERINFER_LOG_DB)") from None
    try:
        if settings.log_origin is None or not path.exists():
            return
        reader = LogReader(path)
        try:
            origin = reader.origin()
        finally:
            reader.close()
        if origin is not None and origin != settings.log_origin:
            raise InputError(f"the receipt log at {path} has origin {origin!r}, not VERINFER_LOG_ORIGIN "
                             f"{settings.log_origin!r} (a log's origin never changes; use another file "
                             "for another log)")
    finally:
        lock.close()


class Supervisor:
    def __init__(self, settings: ServerSettings, log_level: str = "warning") -> None:
        self.settings = settings
        self.log_level = log_level
        self.n = settings.workers
        self._stop = False
        self.listener: socket.socket | None = None
        self.writer_path: Path | None = None
        self.writer: _Child | None = None
        self.workers = [_Child(f"server process {i}", i) for i in range(self.n)]
        self.run_dir = settings.home / "run"  # state the server processes share (server/shared.py)
        self.prometheus: Path | None = None
        self._home_lock = None  # held while this supervisor runs (see _lock_home)

    # --- children ---------------------------------------------------------------------------

    def _start(self, child: _Child) -> None:
        if child.index < 0:
            child.proc, child.conn = _spawn(["server.receipts.worker", "--shared"],
                                            (self.settings, str(self.writer_path)))
        else:
            fd = self.listener.fileno()
            hello = (self.settings, child.index, str(self.writer_path) if self.writer_path else None,
                     self.log_level, fd, Shared(self.run_dir, child.index, self.n))
            # before prometheus-client is imported there: its counts go to files /metrics adds up
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.prometheus)}
            child.proc, child.conn = _spawn(["server.supervisor"], hello, (fd,), env)
        child.started, child.ready = time.monotonic(), child.index < 0

    def _end(self, child: _Child, timeout: float) -> None:
        """Close its socket pair (it stops on its own), wait, then kill."""
        if child.conn is not None:
            child.conn.close()
            child.conn = None
        if child.proc is not None:
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()

    def _exited(self, child: _Child) -> bool:
        """True when ``child`` has exited: it is noted, and set to be started again."""
        if child.proc is None or child.proc.poll() is None:
            return False
        why = _exit_reason(child.proc.returncode)
        if child.error is not None:
            why, child.error = f"{why}: {child.error}", None
        now = time.monotonic()
        quick = now - child.started < QUICK_DEATH_S
        child.fails = child.fails + 1 if quick else 0
        child.next_start = now + (_backoff_s(child.fails) if quick else 0)
        if not self._stop:
            say(f"{child.name} (pid {child.proc.pid}) exited ({why}); starting it again", logging.ERROR, LOGGER)
        if child.conn is not None:
            child.conn.close()
            child.conn = None
        if child.index >= 0:  # its live gauges leave /metrics; its counts stay in the totals
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(child.proc.pid, str(self.prometheus))
        child.proc, child.ready = None, False
        return True

    # --- running ----------------------------------------------------------------------------

    def run(self) -> int:
        from server.receipts.keys import load_keys

        s = self.settings
        configure(s.log_format, self.log_level)  # its own lines, and its log's, as its children's
        with start_errors():
            self._lock_home()
            keys = load_keys(s)  # made here once (not raced by N processes); refuses unsafe key files
            if s.signing:  # the stores' files and schemas, made once
                check_log(s)  # its writer could not start: one line, not the writer's traceback
                from server.proofs.store import JobStore
                from server.receipts.store import ReceiptStore

                ReceiptStore(s.receipts_path).close()
                JobStore(s.receipts_path).close()
            self.listener = bind(s)
            self.prometheus = prepare(self.run_dir)
        port = self.listener.getsockname()[1]
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            if s.signing:
                self.writer_path = writer_socket_path(s)
                self.writer = _Child("receipt writer", -1)
                self._start(self.writer)
            for w in self.workers:
                self._start(w)
            if not self._wait_started(keys, port):
                return 1
            self._supervise()
            return 0
        finally:
            self._shutdown()

    def _lock_home(self) -> None:
        """Refuse (exit 2) a second ``serve --workers`` on the same home: it would wipe the
        shared state under ``run/`` (rate buckets, metrics files) of the one already serving.
        The kernel drops the ``flock`` when this process dies, so a killed supervisor leaves
        nothing to clean up."""
        from verifier.errors import InputError

        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        f = open(self.run_dir / "supervisor.lock", "a+b")  # noqa: SIM115 - held until exit
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise InputError(f"another verinfer server runs on {self.settings.home} (its run/supervisor.lock "
                             "is held); give this one its own VERINFER_HOME") from None
        self._home_lock = f

    def _on_signal(self, signum, frame) -> None:
        self._stop = True

    def _children(self) -> list[_Child]:
        return [*self.workers, *([self.writer] if self.writer is not None else [])]

    def _read_ready(self, timeout: float) -> None:
        conns = {w.conn: w for w in self.workers if w.conn is not None and not w.ready}
        for conn in wait(list(conns), timeout):
            try:
                msg = conn.recv()  # "ready", or ("error", why) before it exits 2
            except (EOFError, OSError):  # it is dying: noticed by _exited
                continue
            if msg == "ready":
                conns[conn].ready = True
            else:
                conns[conn].error = msg[1]

    def _wait_started(self, keys, port: int) -> bool:
        """Until every server process serves; False (after saying why) if one exits first."""
        while not self._stop and not all(w.ready for w in self.workers):
            self._read_ready(0.2)
            for child in self._children():
                code = child.proc.poll()
                if code is not None:
                    if self._stop:  # stopped while starting (systemd's stop signals every process)
                        return True
                    self._read_ready(0)  # why, if it said
                    if child.error is not None:  # bad settings: one line, exit 2 (as with one process)
                        from verifier.errors import InputError

                        raise InputError(child.error)
                    say(f"{child.name} exited while starting ({_exit_reason(code)}); stopping (see above)",
                        logging.ERROR, LOGGER)
                    return False
        if self._stop:
            return True
        say(f"serving on http://{self.settings.host}:{port} with {self.n} server processes "
            f"(pids {', '.join(str(w.proc.pid) for w in self.workers)}; key {keys.kid}, "
            f"EIP-712 signer {keys.eth_address})", logger=LOGGER)
        return True

    def _supervise(self) -> None:
        while not self._stop:
            self._read_ready(0.2)
            now = time.monotonic()
            for child in self._children():
                self._exited(child)
                if child.proc is None and now >= child.next_start and not self._stop:
                    try:
                        self._start(child)
                    except OSError as exc:  # e.g. no fork (memory, the unit's task limit): later
                        child.fails += 1
                        child.next_start = now + _backoff_s(child.fails)
                        say(f"cannot start {child.name} ({exc}); trying again in {_backoff_s(child.fails)} s",
                            logging.ERROR, LOGGER)

    def _shutdown(self) -> None:
        """The server processes first (they answer what they hold), then the writer."""
        threads = [threading.Thread(target=self._end, args=(w, STOP_TIMEOUT_S)) for w in self.workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.writer is not None:
            self._end(self.writer, 10)
        if self.listener is not None:
            self.listener.close()
        if self.writer_path is not None:
            with contextlib.suppress(OSError):
                self.writer_path.unlink()


# --- a server process --------------------------------------------------------------------------


def _server_process() -> None:
    """One of the N server processes: ``(settings, index, writer socket, log level, listening
    fd, shared state)`` from the supervisor on stdin (a socket pair); uvicorn on the inherited socket."""
    import uvicorn

    from prover.ezkl_backend import use_ezkl_dir
    from prover.progress import private_stdio
    from server.http.app import create_app, on_stop_signal
    from verifier.errors import InputError

    ctl = Connection(os.dup(0))
    settings, index, writer_path, log_level, fd, shared_state = ctl.recv()
    sock = socket.socket(fileno=fd)
    private_stdio()  # the first process's relayer may prove in threads (EZKL's log: its prints)
    log_config = configure(settings.log_format, log_level)
    use_ezkl_dir(settings)
    try:
        app = create_app(settings, receipt_writer=writer_path, background=index == 0,
                         worker=f"{index}.{os.getpid()}", shared=shared_state)
    except InputError as exc:  # bad settings (e.g. a missing ONNX file): the supervisor says it once
        ctl.send(("error", str(exc)))
        sys.exit(2)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # SIGTERM (systemd's stop, the supervisor's end)
            on_stop_signal(app)
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if not self.should_exit:
                ctl.send("ready")

    def watch_supervisor() -> None:
        """The socket pair closed: the supervisor stops (or is gone): stop as on SIGTERM."""
        with contextlib.suppress(EOFError, OSError):
            while True:
                ctl.recv()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch_supervisor, name="verinfer-supervisor-watch", daemon=True).start()
    config = uvicorn.Config(app, log_level=log_level,
                            **({"log_config": log_config} if log_config is not None else {}))
    Server(config).run(sockets=[sock])


if __name__ == "__main__":  # python -m server.supervisor (started by Supervisor)
    _server_process()
