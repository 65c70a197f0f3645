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
``(seq, BatchJob)`` -> ``(seq, [response body, ...], None)`` | ``(seq, None, message)``;
``None`` stops the child. The parent reads through asyncio streams: it never blocks on the
child, so full socket buffers cannot deadlock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from multiprocessing.connection import Connection
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
# The event loop is the server's bottleneck; when the cores are contended it should win.
# The worker needs only part of a core and catches up when the loop waits on the network.
# 5 beat both 0 and 15 (docs/server.md, "Tried and measured").
NICENESS = 5


# Jobs the child takes from its socket at once (one log append, one checkpoint for all).
MAX_GROUP = 64


def make_receipts(maker: LogReceipts, store: ReceiptStore, infos: dict[str, ModelInfo], jobs: list[BatchJob],
                  keep_inputs: bool) -> list[list[bytes] | str]:
    """Log the jobs' answers (one append, one checkpoint), commit their receipts (and one-sample
    inputs, so that a proof can be asked for later) in one transaction; then render each
    answer's whole response, receipt included (all of it off the event loop, in the worker).
    Per job: its responses, or why it could not be signed (a bad job fails alone)."""
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
            rid, receipt = job.request_ids[i], receipts[k]
            k += 1
            rows.append((rid, job.model, job.time, receipt))
            if keep_inputs and n == 1:
                x = job.x_model[start : start + 1]
                inputs.append((rid, info.input_datatype, shape_json(x.shape),
                               np.ascontiguousarray(x, x.dtype.newbyteorder("<")).tobytes()))
            outputs = outputs_json(info.outputs, {k2: v[start : start + n] for k2, v in job.outputs.items()},
                                   job.wanted[i], data_json[i])
            label = job.labels[i] if isinstance(job.labels[i], int) else None
            bodies.append(response_body(info.name, info.version, outputs, job.client_ids[i], label, rid, receipt))
            start += n
        out.append(bodies)
    store.put_many(rows, inputs)  # committed before the answers go out
    return out


def _child(conn: Connection) -> None:
    """The child's main loop: the receipt log's one writer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    os.nice(NICENESS)
    from server.receipts.keys import load_keys

    try:
        settings, models = conn.recv()
        if settings.log_format == "json":  # the same log lines as the server's
            from server.logs import configure

            configure("json", "warning")
        maker = LogReceipts(load_keys(settings, create=False), settings)
        store = ReceiptStore(settings.receipts_path)
    except Exception as exc:  # e.g. an unreadable key: the parent reports it  # noqa: BLE001
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", maker.keys.kid))
    keep_inputs = settings.store_inputs
    retention = settings.receipt_retention_s is not None or settings.receipt_retention_max is not None
    next_prune = time.monotonic()
    stop = False
    while not stop:
        try:
            msgs = [conn.recv()]
            # what else is waiting joins this group: one log append and one checkpoint for all
            while msgs[-1] is not None and len(msgs) < MAX_GROUP and conn.poll(0):
                msgs.append(conn.recv())
        except (EOFError, OSError):  # the parent is gone
            break
        if msgs[-1] is None:
            stop = True
            msgs.pop()
        if not msgs:
            break
        seqs, jobs = [m[0] for m in msgs], [m[1] for m in msgs]
        try:
            replies = [(seq, None, r) if isinstance(r, str) else (seq, r, None) for seq, r in
                       zip(seqs, make_receipts(maker, store, models, jobs, keep_inputs))]
        except Exception as exc:  # the log or the store failed: the group fails
            log.exception("receipt batch failed")
            why = f"could not log or store the receipt: {type(exc).__name__}: {exc}"
            replies = [(seq, None, why) for seq in seqs]
        try:
            for reply in replies:
                conn.send(reply)
        except OSError:  # the parent is gone
            break
        if store.checkpoint_due:  # the answers are out; see ReceiptStore
            store.checkpoint()
        if retention and time.monotonic() >= next_prune:  # the answers are out: prune now and then
            next_prune = time.monotonic() + settings.receipt_prune_interval_s
            _prune(store, settings)
    store.close()
    maker.log.close()


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

    def __init__(self, settings: ServerSettings, models: dict[str, ModelInfo], kid: str) -> None:
        self.settings = settings
        self.kid = kid  # the child loads the keys itself; it must find this one active
        self.models = models
        self._proc: subprocess.Popen | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._seq = 0
        self._restarting: asyncio.Task | None = None
        self._stopping = False

    # --- lifecycle ----------------------------------------------------------------

    def _spawn(self) -> tuple[subprocess.Popen, socket.socket]:
        """Start a child and wait for its ready message (blocking: run in a thread)."""
        ours, theirs = socket.socketpair()
        proc = subprocess.Popen([sys.executable, "-m", "server.receipts.worker", str(theirs.fileno())],
                                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        conn = Connection(os.dup(ours.fileno()))
        try:
            conn.send((self.settings, self.models))
            if not conn.poll(START_TIMEOUT_S):
                proc.kill()
                raise NotReady("the receipt signer did not start")
            try:
                kind, detail = conn.recv()
            except EOFError:
                raise NotReady(f"the receipt signer exited at start (code {proc.wait(5)})") from None
            if kind != "ready":
                proc.wait(5)
                raise NotReady(f"the receipt signer could not start: {detail}")
            if detail != self.kid:  # e.g. `verinfer keys rotate` ran in between
                proc.kill()
                raise NotReady(f"the receipt signer loaded key {detail}, not the server's {self.kid};"
                               " restart the server")
            return proc, ours
        except BaseException:
            ours.close()
            raise
        finally:
            conn.close()

    async def _connect(self) -> None:
        self._proc, sock = await asyncio.to_thread(self._spawn)
        reader, self._writer = await asyncio.open_unix_connection(sock=sock)
        self._reading = self._loop.create_task(self._read(reader), name="receipt-replies")

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._connect()

    async def stop(self) -> None:
        """Answer what is in flight, then stop the child."""
        self._stopping = True
        if self._restarting is not None:
            self._restarting.cancel()
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

    async def sign(self, job: BatchJob) -> list[str]:
        if self._stopping:
            raise NotReady("the server is stopping")
        if self._writer is None and self._restarting is None:  # an earlier restart failed
            self._restarting = self._loop.create_task(self._restart())
        if self._restarting is not None:
            await asyncio.shield(self._restarting)
        self._seq += 1
        seq = self._seq
        fut = self._loop.create_future()
        self._pending[seq] = fut
        self._writer.write(_frame((seq, job)))  # buffered: never blocks the loop
        return await fut

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (size,) = struct.unpack("!i", await reader.readexactly(4))
                seq, receipts, error = pickle.loads(await reader.readexactly(size))
                fut = self._pending.pop(seq, None)
                if fut is None or fut.done():
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
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(NotReady(why))

    def _on_exit(self) -> None:
        """The child exited: asked to (stop), or killed; then fail what it held and restart it."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._stopping:
            return
        code = self._proc.poll() if self._proc is not None else None
        log.error("receipt signer exited (code %s); restarting it", code)
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
    log there is one (its one writer); the pool stays for the next step, several processes
    feeding one log writer."""

    def __init__(self, settings: ServerSettings, models: dict[str, ModelInfo], kid: str, n: int) -> None:
        self.workers = [ReceiptWorker(settings, models, kid) for _ in range(n)]

    async def start(self) -> None:
        await asyncio.gather(*(w.start() for w in self.workers))

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers))

    async def sign(self, job: BatchJob) -> list[str]:
        return await min(self.workers, key=lambda w: w.in_flight).sign(job)


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


if __name__ == "__main__":  # python -m server.receipts.worker FD (started by ReceiptWorker)
    _child(Connection(int(sys.argv[1])))
