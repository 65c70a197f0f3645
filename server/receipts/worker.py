"""Receipts are made off the event loop, in a child process that logs, signs, stores and renders.

The child is the receipt log's one writer (:mod:`server.receipts.translog`): it writes each
answer's statement (:mod:`server.receipts.logged`), appends a group of batches' statements
to the log durably, signs one checkpoint for the group, stores the receipts and renders the
responses. Jobs that wait on its socket while it works join the next group, so under load
one checkpoint signature and one fsync cover many batches. In a child process this runs on
another core, overlapped with the event loop parsing the next requests and the model
running the next batch (bench/http_load.py, docs/server.md). A receipt is committed, and
its leaf is in the log on disk, before its answer is returned.

Protocol, over a Unix socket pair in ``multiprocessing.Connection``'s framing (4-byte length,
pickle): ``(settings, models)`` -> ``("ready", kid)`` | ``("error", message)``; then each
``(seq, BatchJob, deadline)`` -> ``(seq, [response body, ...], None)`` | ``(seq, None, message)``;
``(seq, None, deadline)`` (a probe: does the writer answer?) -> ``(seq, [], None)``;
``None`` stops the child. ``deadline`` (``time.monotonic()``, one clock for every process of the
machine): when the client stops waiting (``receipt_writer_timeout_s``, a 503); a job the writer
takes after it is refused, not logged. The parent reads through asyncio streams: it never blocks on the
child, so full socket buffers cannot deadlock.

With ``verinfer serve --workers N`` (:mod:`server.supervisor`) one writer serves every server
process: started as ``python -m server.receipts.worker --shared``, it listens on a Unix socket
(mode 0600) and speaks the same protocol with each client connection (a client's ``None``
ends its connection only); jobs waiting on any connection join one group (:func:`_serve`,
the one loop of both modes). A client whose writer goes away fails what it held and
connects again, waiting for the supervisor to restart the writer. A client whose writer does
not answer (stopped, hung) fails each answer at its deadline, and its server's readiness is 503
until the writer answers again (:meth:`ReceiptWorker.answering`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from server.errors import NotReady
from server.inference.oip import outputs_json, response_body
from server.receipts.logged import LogReceipts
from server.receipts.signer import BatchJob, ModelInfo
from server.receipts.store import ReceiptStore
from server.settings import ServerSettings
from verifier.digests import shape_json

log = logging.getLogger("verinfer.server")

START_TIMEOUT_S = 60.0
# The shared writer's control pipe ended while server processes are still connected (the
# supervisor was killed: they stop on their own, finishing their requests): how long it goes
# on answering them before it exits whatever they do.
DRAIN_S = 30.0
# The event loop is the server's bottleneck; when the cores are contended it should win.
# The worker needs only part of a core and catches up when the loop waits on the network.
# 5 beat both 0 and 15 (docs/performance.md, "Tried and measured").
NICENESS = 5


# A group (one log append, one checkpoint): the jobs waiting on the writer's sockets, taken
# until they hold GROUP_ANSWERS answers (every job holds one or more). Not every job waiting: a group of
# all of them answers every waiting client at once, and closed-loop clients then come back
# at once, so the event loop and the writer take turns instead of overlapping. Bounded groups
# keep two groups of clients in flight, one parsed while the other is signed, and still share
# a checkpoint among a batch's chunks or many one-answer jobs. 32 against 8 and 16: the same
# at c=16 within the noise, ~0.8 of signing off at c=64 against 0.63-0.77, batching x2.1-2.2
# against x1.9-2.1 (docs/performance.md, "two groups in flight").
GROUP_ANSWERS = 32
# A writer with no job for this long looks at the key folder: after `verinfer keys rotate` or
# `revoke`, the log's head is signed by the new active key within about this time, answers or not.
IDLE_LOOK_S = 1.0
# A shared writer's client says hello at once; one that does not is dropped.
HELLO_TIMEOUT_S = 10.0
TOO_LATE = "the server stopped waiting for this answer's receipt; not logged"


def make_receipts(maker: LogReceipts, store: ReceiptStore, infos: dict[str, ModelInfo], jobs: list[BatchJob],
                  keep_inputs: bool) -> list[list[bytes] | str]:
    """Log the jobs' answers (one append, one checkpoint), commit their receipts (and one-sample
    inputs, so that a proof can be asked for later) in one transaction; then render each
    answer's whole response, receipt included (all of it off the event loop, in the worker).
    Per job: its responses, or why it could not be signed (a bad job fails alone)."""
    maker.refresh_keys()  # the keys active now name the signer and sign the checkpoint
    parts, rids, stmts, eips = [], [], [], []
    for job in jobs:
        try:
            s, texts, e = maker.statements(infos[job.model], job)
        except Exception as exc:
            log.exception("receipt statement failed")
            parts.append(f"could not sign the receipt: {type(exc).__name__}: {exc}")
            continue
        parts.append(texts)
        rids.extend(job.request_ids)
        stmts.extend(s)
        eips.extend(e)
    receipts = maker.log_batch(rids, stmts, eips) if stmts else []  # durable in the log, checkpoint signed
    rows, inputs, out, k = [], [], [], 0
    for job, data_json in zip(jobs, parts):
        if isinstance(data_json, str):
            out.append(data_json)
            continue
        info, bodies, start = infos[job.model], [], 0
        for i, n in enumerate(job.rows):
            rid, (receipt, literal) = job.request_ids[i], receipts[k]
            k += 1
            rows.append((rid, job.model, job.time, receipt))
            if keep_inputs and n == 1:
                x = job.x_model[start : start + 1]
                inputs.append((rid, info.input_datatype, shape_json(x.shape),
                               np.ascontiguousarray(x, x.dtype.newbyteorder("<")).tobytes()))
            outputs = outputs_json(info.outputs, {k2: v[start : start + n] for k2, v in job.outputs.items()},
                                   job.wanted[i], data_json[i])
            label = job.labels[i] if isinstance(job.labels[i], int) else None
            bodies.append(response_body(info.name, info.version, outputs, job.client_ids[i], label, rid, literal))
            start += n
        out.append(bodies)
    store.put_many(rows, inputs)  # committed before the answers go out
    return out


class _Writer:
    """The receipt log's one writer: its log, store and settings, and one group's work."""

    def __init__(self, settings: ServerSettings) -> None:
        from server.receipts.keys import LiveKeys, load_keys

        if settings.log_format == "json":  # the same log lines as the server's
            from server.logs import configure

            configure("json", "warning")
        self.settings = settings
        keys = load_keys(settings, create=False)
        self.maker = LogReceipts(keys, settings, LiveKeys(settings, keys))
        self.store = ReceiptStore(settings.receipts_path)
        self.infos: dict[str, ModelInfo] = {}  # every client's models (they serve the same ones)
        self.retention = settings.receipt_retention_s is not None or settings.receipt_retention_max is not None
        self.next_prune = time.monotonic()

    def group(self, msgs: list[tuple[int, BatchJob]]) -> list[tuple[int, list[bytes] | None, str | None]]:
        """One log append and one checkpoint for every job in ``msgs``; a reply per job."""
        seqs, jobs = [m[0] for m in msgs], [m[1] for m in msgs]
        try:
            return [(seq, None, r) if isinstance(r, str) else (seq, r, None) for seq, r in
                    zip(seqs, make_receipts(self.maker, self.store, self.infos, jobs, self.settings.store_inputs))]
        except Exception as exc:  # the log or the store failed: the group fails
            log.exception("receipt batch failed")
            why = f"could not log or store the receipt: {type(exc).__name__}: {exc}"
            return [(seq, None, why) for seq in seqs]

    def after_group(self) -> None:
        """The answers are out: WAL checkpoint when due (see ReceiptStore), prune now and then."""
        if self.store.checkpoint_due:
            self.store.checkpoint()
        if self.retention and time.monotonic() >= self.next_prune:
            self.next_prune = time.monotonic() + self.settings.receipt_prune_interval_s
            _prune(self.store, self.settings)

    def idle(self) -> None:
        """No job for a while: follow a key rotation or revocation now (see IDLE_LOOK_S)."""
        try:
            self.maker.follow_keys()
        except Exception:  # (the next group fails with it, and says why)
            log.exception("could not sign the log's head with the active key")

    def close(self) -> None:
        self.store.close()
        self.maker.log.close()


def _serve(writer: _Writer, conns: list[Connection], listener: socket.socket | None = None,
           control: int | None = None) -> None:
    """The writer's loop, shared by both modes: jobs waiting on any client connection, up to
    :data:`GROUP_ANSWERS` answers, join one group: one log append and one checkpoint for all.
    ``listener``: accept more clients (each says hello first); ``control``: a pipe whose end
    (EOF) stops taking clients; the writer then answers those connected until they hang up
    (for :data:`DRAIN_S` at most). Without a listener it stops when its last connection ends."""
    drain_until = None
    while conns or listener is not None:
        watch: list[Any] = [*conns, *(x for x in (listener, control) if x is not None)]
        if drain_until is not None:
            ready = wait(watch, max(0.0, drain_until - time.monotonic()))
            if not ready:
                break  # a server process that never hung up
        else:
            ready = wait(watch, IDLE_LOOK_S)
            if not ready:
                writer.idle()
                continue
        if control is not None and control in ready and not os.read(control, 4096):
            # the supervisor stopped (its server processes are gone) or was killed (they stop
            # on their own, and the requests they still finish need their answers signed)
            if listener is not None:
                listener.close()  # no new clients: their connect is refused, not left waiting
            listener = control = None
            drain_until = time.monotonic() + DRAIN_S
            continue
        if listener is not None and listener in ready:
            _accept(writer, listener, conns)
        msgs: list[tuple[Connection, tuple[int, BatchJob]]] = []
        answers = 0
        for conn in ready:
            if not isinstance(conn, Connection):
                continue
            try:
                while answers < GROUP_ANSWERS:
                    m = conn.recv()
                    if m is None:  # the client stops
                        _drop(conn, conns)
                        break
                    msgs.append((conn, m))
                    answers += len(m[1].rows) if m[1] is not None else 0
                    if not conn.poll(0):
                        break
            except (EOFError, OSError):  # the client is gone
                _drop(conn, conns)
        if not msgs:
            continue
        now, work, replies = time.monotonic(), [], []
        for conn, (seq, job, deadline) in msgs:
            if job is None:  # a probe: this writer answers
                replies.append((conn, (seq, [], None)))
            elif deadline <= now:  # its client answered a 503 (e.g. this writer was stopped)
                replies.append((conn, (seq, None, TOO_LATE)))
            else:
                work.append((conn, (seq, job)))
        if work:
            replies.extend(zip([c for c, _ in work], writer.group([m for _, m in work])))
        for conn, reply in replies:
            if conn.closed:
                continue
            try:
                conn.send(reply)
            except OSError:  # that client is gone; the others still get theirs
                _drop(conn, conns)
        if work:
            writer.after_group()


def _drop(conn: Connection, conns: list[Connection]) -> None:
    if conn in conns:
        conns.remove(conn)
    conn.close()


def _hello(writer: _Writer, conn: Connection) -> None:
    """A client's first message: ``(settings, models)`` -> ``("ready", kid)``."""
    _, models = conn.recv()
    writer.infos.update(models)
    conn.send(("ready", writer.maker.keys.kid))


def _accept(writer: _Writer, listener: socket.socket, conns: list[Connection]) -> None:
    try:
        sock, _ = listener.accept()
    except OSError:
        return
    sock.setblocking(True)
    conn = Connection(sock.detach())
    try:
        if not conn.poll(HELLO_TIMEOUT_S):
            raise EOFError("no hello")
        _hello(writer, conn)
    except (EOFError, OSError, pickle.UnpicklingError, TypeError, ValueError) as exc:
        log.warning("receipt writer: a client left before its hello (%s)", exc)
        conn.close()
        return
    conns.append(conn)


def _child(conn: Connection) -> None:
    """A server's own writer, on a socket pair (one server process)."""
    # Ctrl-C and a SIGTERM to the whole group (systemd's stop) are the parent's to handle: it
    # answers what is in flight, then stops this writer; when the parent dies, its socket ends
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(NICENESS)
    try:
        settings, models = conn.recv()
        writer = _Writer(settings)
        writer.infos.update(models)
    except Exception as exc:  # e.g. an unreadable key: the parent reports it  # noqa: BLE001
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", writer.maker.keys.kid))
    _serve(writer, [conn])
    writer.close()


def listen(path: str) -> socket.socket:
    """The writer's Unix socket at ``path``, mode 0600 (any client may send pickles: only this
    user's processes may connect); a stale socket file is replaced."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


def _shared() -> None:
    """The shared writer of ``verinfer serve --workers N`` (started by :mod:`server.supervisor`):
    ``(settings, socket path)`` pickled on stdin, which then stays open; its end stops the writer."""
    # Ctrl-C and a group SIGTERM are the supervisor's to handle: it stops the server processes,
    # then this writer (the control pipe's end), which also ends if the supervisor dies
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    control = Connection(os.dup(0))
    settings, path = control.recv()
    writer = _Writer(settings)
    listener = listen(path)
    try:
        _serve(writer, [], listener, control.fileno())
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        writer.close()


def _prune(store: ReceiptStore, settings: ServerSettings) -> None:
    """The retention settings applied (the writer prunes: never inside a commit an answer waits for)."""
    try:
        before = time.time() - settings.receipt_retention_s if settings.receipt_retention_s else None
        gone = store.prune(before, settings.receipt_retention_max)
        if gone:
            log.info("pruned %d stored receipts (retention)", gone)
    except Exception:  # a failed prune must not stop the signer
        log.exception("receipt pruning failed")


class ReceiptWorker:
    """The parent's handle: :meth:`sign` a batch from the event loop, await its receipts."""

    def __init__(self, settings: ServerSettings, models: dict[str, ModelInfo],
                 address: str | None = None) -> None:
        self.settings = settings
        self.address = address  # the shared writer's Unix socket (server.supervisor); None: a child of ours
        self.models = models
        self._proc: subprocess.Popen | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # seq -> (its future, None for a probe; when it fails): in the order sent
        self._pending: dict[int, tuple[asyncio.Future | None, float]] = {}
        self._seq = 0
        self._restarting: asyncio.Task | None = None
        self._stopping = False
        self.timeout = settings.receipt_writer_timeout_s
        self._stalled = False  # a job or probe got no reply in time, and none came since
        self._probe: int | None = None
        self._watching: asyncio.Task | None = None

    # --- lifecycle ----------------------------------------------------------------

    def _spawn(self) -> tuple[subprocess.Popen | None, socket.socket]:
        """Start a child (or, with ``address``, reach the shared writer) and wait for its
        ready message (blocking: run in a thread)."""
        if self.address is not None:
            return None, self._hello(self._dial(), None)
        ours, theirs = socket.socketpair()
        proc = subprocess.Popen([sys.executable, "-m", "server.receipts.worker", str(theirs.fileno())],
                                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        return proc, self._hello(ours, proc)

    def _dial(self) -> socket.socket:
        """Connect to the shared writer's socket; while it (re)starts, try again for a while."""
        end = time.monotonic() + START_TIMEOUT_S
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.address)
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > end:
                    raise NotReady("the receipt writer is not running") from None
                time.sleep(0.1)

    def _hello(self, ours: socket.socket, proc: subprocess.Popen | None) -> socket.socket:
        conn = Connection(os.dup(ours.fileno()))
        try:
            conn.send((self.settings, self.models))
            if not conn.poll(START_TIMEOUT_S):
                if proc is not None:
                    proc.kill()
                raise NotReady("the receipt signer did not start")
            try:
                kind, detail = conn.recv()
            except EOFError:
                code = proc.wait(5) if proc is not None else None
                raise NotReady(f"the receipt signer exited at start (code {code})") from None
            if kind != "ready":
                if proc is not None:
                    proc.wait(5)
                raise NotReady(f"the receipt signer could not start: {detail}")
            return ours
        except BaseException:
            ours.close()
            raise
        finally:
            conn.close()

    async def _connect(self) -> None:
        try:
            self._proc, sock = await asyncio.to_thread(self._spawn)
            reader, self._writer = await asyncio.open_unix_connection(sock=sock)
        except OSError as exc:  # e.g. the shared writer died between accepting and answering: a 503
            raise NotReady(f"could not reach the receipt signer ({type(exc).__name__})") from None
        self._stalled, self._probe = False, None
        self._reading = self._loop.create_task(self._read(reader), name="receipt-replies")

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._connect()
        self._watching = self._loop.create_task(self._watch(), name="receipt-deadlines")

    async def stop(self) -> None:
        """Answer what is in flight, then stop the child."""
        self._stopping = True
        if self._restarting is not None:
            self._restarting.cancel()
        if self._watching is not None:
            self._watching.cancel()
        writer = self._writer
        if writer is not None:
            try:
                writer.write(_frame(None))
                await asyncio.wait_for(asyncio.shield(self._reading), 10)
            except (OSError, TimeoutError):
                pass
            writer.close()
        if self._proc is not None:
            await asyncio.to_thread(_reap, self._proc, 10)
        self._fail_pending("the server is stopping")

    # --- signing ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Jobs sent and not answered yet."""
        return len(self._pending)

    def submit(self, job: BatchJob) -> asyncio.Future | None:
        """Hand ``job`` to the writer now, without yielding to the event loop; the future of
        its answers. None when that cannot be done at once (stopping, or no connection yet):
        :meth:`sign` waits or fails as it should."""
        if self._stopping or self._writer is None or self._restarting is not None:
            return None
        return self._send(job)

    def _send(self, job: BatchJob | None) -> asyncio.Future | None:
        """Send ``job`` (None: a probe); its future (None for a probe)."""
        self._seq += 1
        seq = self._seq
        fut = self._loop.create_future() if job is not None else None
        deadline = time.monotonic() + self.timeout
        self._pending[seq] = (fut, deadline)
        try:
            self._writer.write(_frame((seq, job, deadline)))  # buffered: never blocks the loop
        except (RuntimeError, OSError):  # the signer just died; its reader has not noticed yet
            self._pending.pop(seq, None)
            raise NotReady("the receipt signer stopped; the answer was not signed") from None
        if job is None:
            self._probe = seq
        return fut

    def answering(self) -> bool:
        """For readiness: False while the writer does not answer (a job or probe had no reply
        in ``receipt_writer_timeout_s`` and none came since), or this client has no connection
        to it. Sends a probe when none is in flight, so a writer that hangs while no answers
        are signed is noticed too."""
        connected = not self._stopping and self._writer is not None and self._restarting is None
        if connected and self._probe not in self._pending:
            with contextlib.suppress(NotReady):
                self._send(None)
        return connected and not self._stalled

    async def _watch(self) -> None:
        """Fail each job at its deadline (a 503; the writer refuses it if it comes to it later)."""
        tick = min(0.5, self.timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now, late = time.monotonic(), []
            for seq, (_, deadline) in self._pending.items():  # sent in order: deadlines too
                if deadline > now:
                    break
                late.append(seq)
            if not late:
                continue
            self._stalled = True
            failed = 0
            for seq in late:
                fut, _ = self._pending.pop(seq)
                if fut is not None and not fut.done():
                    fut.set_exception(NotReady(f"the receipt writer did not answer in {self.timeout:g} s; "
                                               "the answer was not signed"))
                    failed += 1
            log.error("the receipt writer did not answer in %g s (%d answers failed with a 503)",
                      self.timeout, failed)

    async def sign(self, job: BatchJob) -> list[str]:
        if self._stopping:
            raise NotReady("the server is stopping")
        if self._writer is None and self._restarting is None:  # an earlier restart failed
            self._restarting = self._loop.create_task(self._restart())
        if self._restarting is not None:
            await asyncio.shield(self._restarting)
        return await self._send(job)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (size,) = struct.unpack("!i", await reader.readexactly(4))
                seq, receipts, error = pickle.loads(await reader.readexactly(size))
                self._stalled = False  # the writer answers
                fut = self._pending.pop(seq, (None, 0.0))[0]
                if fut is None or fut.done():  # a probe, or too late
                    continue
                if error is not None:
                    fut.set_exception(NotReady(error))
                else:
                    fut.set_result(receipts)
        except (asyncio.IncompleteReadError, OSError):  # the child exited
            pass
        self._on_exit()

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for fut, _ in pending.values():
            if fut is not None and not fut.done():
                fut.set_exception(NotReady(why))

    def _on_exit(self) -> None:
        """The child exited: asked to (stop), or killed; then fail what it held and restart it."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._stopping:
            return
        if self._proc is None:
            log.error("receipt writer connection lost; connecting again")
        else:
            log.error("receipt signer exited (code %s); restarting it", self._proc.poll())
        self._fail_pending("the receipt signer stopped; the answer was not signed")
        self._restarting = self._loop.create_task(self._restart())

    async def _restart(self) -> None:
        try:
            if self._proc is not None:
                await asyncio.to_thread(_reap, self._proc, 5)
            await self._connect()
        finally:
            self._restarting = None


class ReceiptPool:
    """``n`` receipt workers; a job goes to the one with the least in flight. With the receipt
    log there is one (its one writer): a child of this process, or with ``address`` the
    connection to the writer that several server processes share (``serve --workers``)."""

    def __init__(self, settings: ServerSettings, models: dict[str, ModelInfo], n: int,
                 address: str | None = None) -> None:
        self.workers = [ReceiptWorker(settings, models, address) for _ in range(n)]

    async def start(self) -> None:
        await asyncio.gather(*(w.start() for w in self.workers))

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers))

    def answering(self) -> bool:
        """Every worker's writer answers (see :meth:`ReceiptWorker.answering`)."""
        return all([w.answering() for w in self.workers])  # a list: each sends its probe

    def submit(self, job: BatchJob) -> Awaitable[list[str]]:
        """Hand ``job`` over now when a worker can take it at once (the writer starts on it
        while the event loop goes on parsing); the awaitable of its answers."""
        worker = min(self.workers, key=lambda w: w.in_flight)
        fut = worker.submit(job)
        return fut if fut is not None else worker.sign(job)


def _reap(proc: subprocess.Popen, timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _frame(obj: Any) -> bytes:
    """``multiprocessing.Connection``'s framing, for the child's ``recv``."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return struct.pack("!i", len(data)) + data


if __name__ == "__main__":
    if sys.argv[1] == "--shared":  # python -m server.receipts.worker --shared (server.supervisor)
        _shared()
    else:  # python -m server.receipts.worker FD (started by ReceiptWorker)
        _child(Connection(int(sys.argv[1])))
