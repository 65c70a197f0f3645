"""The prover workers' log, ``<home>/logs/prove-workers.log``, rotated by size.

Workers are separate processes, and what they print comes from Python (their log records, a
``ready`` line) and from EZKL's Rust code, which writes to file descriptors 1 and 2 directly. A
file those processes held open would keep being written after a rename (``O_APPEND`` on the old
inode), and truncating it in place loses what is written between the copy and the truncation.
So no worker holds the file: each writes to a pipe of its own, and one thread of the server
process that runs them (process 0 under ``serve --workers``) reads every pipe and writes whole
lines through :class:`logging.handlers.RotatingFileHandler` (``prove-workers.log.1`` ... ``.N``,
``prover_log_max_bytes`` and ``prover_log_backups``). That thread does nothing else, so a worker
waits on its pipe no longer than it would have on the file itself; the pipe holds 1 MiB where
the system allows (64 KiB otherwise) for a slow disk. A worker's lines reach the file whole and
in order (its partial last line when it exits); lines of different workers are not interleaved
mid-line, as they could be in one shared file.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import selectors
import threading
from pathlib import Path

_PIPE_BYTES = 1 << 20  # asked for each worker's pipe (F_SETPIPE_SZ; the system may refuse)
_LONGEST_LINE = 1 << 16  # a longer "line" (no newline yet) is written in pieces of this size


class WorkerLog:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._out = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8",
            errors="surrogateescape", delay=True)  # bytes that are not UTF-8 written as they came
        self._out.setFormatter(logging.Formatter("%(message)s"))
        self._lock = threading.Lock()
        self._new: list[int] = []  # read ends handed to the thread
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def pipe(self) -> int:
        """The write end of a new pipe for one worker's stdout and stderr; the caller closes it
        once the worker is started (the worker's copy is then the only one)."""
        r, w = os.pipe()  # both non-inheritable: only the worker gets w, as its fds 1 and 2
        with contextlib.suppress(OSError, AttributeError):
            import fcntl

            fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
        with self._lock:
            self._new.append(r)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="verinfer-prover-log",
                                                daemon=True)
                self._thread.start()
        os.write(self._wake_w, b"+")
        return w

    def close(self, timeout_s: float = 5.0) -> None:
        """After the workers ended: write what their pipes still hold, then close the file."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        os.write(self._wake_w, b".")
        if thread is not None:
            thread.join(timeout_s)  # (a pipe still held open elsewhere: its lines are left)
            if thread.is_alive():
                return
        self._out.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _line(self, data: bytes) -> None:
        record = logging.makeLogRecord({"msg": data.decode("utf-8", "surrogateescape")})
        self._out.handle(record)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        partial: dict[int, bytes] = {}
        while True:
            with self._lock:
                for r in self._new:
                    sel.register(r, selectors.EVENT_READ)
                    partial[r] = b""
                self._new.clear()
                if self._stopping and not partial:
                    break
            for key, _ in sel.select():
                fd = key.fd
                if fd == self._wake_r:
                    os.read(fd, 4096)
                    continue
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                buf = partial[fd] + data
                *lines, buf = buf.split(b"\n")
                while len(buf) >= _LONGEST_LINE:
                    lines.append(buf[:_LONGEST_LINE])
                    buf = buf[_LONGEST_LINE:]
                if not data and buf:  # the worker's end: its last line, unended
                    lines.append(buf)
                for line in lines:
                    self._line(line)
                if data:
                    partial[fd] = buf
                else:
                    sel.unregister(fd)
                    os.close(fd)
                    del partial[fd]
        sel.close()
