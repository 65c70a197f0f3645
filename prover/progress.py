"""Progress for long steps, and keeping EZKL's own prints off the terminal.

EZKL's Rust code prints tables and warnings straight to file descriptors 1
and 2; :func:`captured_output` sends them to a log file so a user sees our
lines, while the log keeps EZKL's for whoever needs them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path


class Progress:
    """Prints ``• step … done (1.2s)`` lines; a live elapsed counter on a terminal."""

    def __init__(self, enabled: bool = True, stream=None) -> None:
        self.enabled = enabled
        # A private duplicate of stderr, so captured_output() does not swallow us.
        self._stream = stream or os.fdopen(os.dup(2), "w", buffering=1)
        self._tty = self._stream.isatty()

    def note(self, message: str) -> None:
        if self.enabled:
            print(message, file=self._stream, flush=True)

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        start = time.perf_counter()
        stop = threading.Event()
        ticker = None
        if self._tty:
            def tick() -> None:
                while not stop.wait(0.5):
                    elapsed = time.perf_counter() - start
                    print(f"\r• {label} … {elapsed:.0f}s", end="", file=self._stream, flush=True)
            ticker = threading.Thread(target=tick, daemon=True)
            ticker.start()
        else:
            print(f"• {label} …", file=self._stream, flush=True)
        try:
            yield
        except BaseException:
            stop.set()
            if ticker:
                ticker.join()
                print(file=self._stream)
            raise
        stop.set()
        if ticker:
            ticker.join()
        elapsed = time.perf_counter() - start
        prefix = "\r" if self._tty else ""
        print(f"{prefix}• {label} … done ({elapsed:.1f}s)", file=self._stream, flush=True)


SILENT = Progress(enabled=False, stream=sys.stderr)


# fds are the process's: threads that prove (the relayer's workers) take turns redirecting
# them, else one restores what another redirected and leaves fd 2 in that one's log file
_CAPTURE = threading.Lock()
_capturing: int | None = None  # the thread inside captured_output, if any


@contextlib.contextmanager
def captured_output(log_path: Path | None) -> Iterator[None]:
    """Send fds 1 and 2 to ``log_path`` while inside: EZKL's Rust prints, and its log records
    (pyo3-log hands them to Python's logging, on the thread that called EZKL), each written as
    its bare message, whatever the format of the process's log handlers (a time, a worker id,
    a JSON object: a witness failure's cause is read from this log). One thread at a time; what
    other threads write meanwhile goes there too, unless :func:`private_stdio` was called."""
    global _capturing
    if log_path is None:
        yield
        return
    with _CAPTURE, _redirected(log_path), _bare_records(threading.get_ident()):
        _capturing = threading.get_ident()
        try:
            yield
        finally:
            _capturing = None


class _OtherThreads(logging.Filter):
    def __init__(self, thread: int) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread


class _BareMessage(logging.Handler):
    """The capturing thread's records: the message alone, to fd 2 (the log file). Another
    thread's go to ``others`` (logging's last resort where the root logger had no handler:
    this one must not swallow them)."""

    def __init__(self, thread: int, others: logging.Handler | None) -> None:
        super().__init__()
        self.thread, self.others = thread, others

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            if self.others is not None and record.levelno >= self.others.level:
                self.others.handle(record)
        else:
            try:
                os.write(2, (record.getMessage() + "\n").encode(errors="replace"))
            except Exception:  # noqa: BLE001 - as logging.Handler does
                self.handleError(record)


@contextlib.contextmanager
def _bare_records(thread: int) -> Iterator[None]:
    """While inside, ``thread``'s log records skip the root logger's handlers (their formats)
    and go to :class:`_BareMessage`; other threads' records are untouched."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    others = _OtherThreads(thread)
    bare = _BareMessage(thread, None if handlers else logging.lastResort)
    for h in handlers:
        h.addFilter(others)
    root.addHandler(bare)
    try:
        yield
    finally:
        root.removeHandler(bare)
        for h in handlers:
            h.removeFilter(others)


class _PerThread:
    """``sys.stdout`` or ``sys.stderr`` after :func:`private_stdio`: the thread inside
    :func:`captured_output` writes to the fd (into EZKL's log), every other thread to a private
    duplicate of it made before any capture (where the fd pointed)."""

    def __init__(self, fd_stream, private) -> None:
        self._fd_stream, self._private = fd_stream, private

    def write(self, text: str) -> int:
        out = self._fd_stream if threading.get_ident() == _capturing else self._private
        return out.write(text)

    def flush(self) -> None:
        self._fd_stream.flush()
        self._private.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ...: the private stream's
        return getattr(self._private, name)


def private_stdio() -> None:
    """For a process whose other threads keep logging while one proves (a server, the relayer):
    their lines, and their prints, stay where they were going, and EZKL's log gets the proving
    thread's alone. Call it before logging is set up (handlers keep the stream they are given)."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if isinstance(stream, _PerThread):
            continue
        stream.flush()
        private = os.fdopen(os.dup(fd), "w", buffering=1, encoding=stream.encoding,
                            errors=stream.errors)
        setattr(sys, name, _PerThread(stream, private))


@contextlib.contextmanager
def _redirected(log_path: Path) -> Iterator[None]:
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
