"""Proof jobs in the server process: submit (idempotent, bounded), wait, supervise.

The work itself happens in prover worker processes (:mod:`server.proofs.worker`)
that claim jobs from the SQLite job table (:mod:`server.proofs.store`). Here, a
supervisor thread keeps ``proof_workers`` of them alive, queues again the jobs
of a worker that died or whose lease ran out, kills a worker whose job passed
``proof_timeout_s`` (the attempt counts), and delivers callbacks. No web
framework here: the routes are in :mod:`server.http.proofs_api`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.auth import CURRENT_CLIENT, CURRENT_TIER, RELAYER
from server.errors import Conflict, Gone, NoCircuitPackage, QueueFull
from server.proofs.callbacks import CallbackSigner, Dispatcher, check_callback_url
from server.proofs.restarts import RestartBackoff
from server.proofs.store import Job, JobStore
from server.proofs.worker import encode_input
from server.proofs.worker_log import WorkerLog
from server.receipts.signer import REQUEST_ID
from server.receipts.store import ReceiptStore
from server.settings import ServerSettings
from verifier.errors import InputError, NotFound, VerinferError
from verifier.packages import name_target, package_dir, read_manifest

log = logging.getLogger("verinfer.server")


@dataclass(frozen=True)
class Circuit:
    """What a proof for one served model needs to know about its package."""

    package_id: str
    model_sha256: str
    datatype: str
    shape: tuple[int, ...]


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen | None = None
    worker_id: str | None = None
    # a worker that dies within 5 s of its start is started again after 2, 4, ... 30 s
    restarts: RestartBackoff = field(default_factory=lambda: RestartBackoff(quick_s=5.0, cap_s=30.0))


class ProofJobs:
    def __init__(self, settings: ServerSettings, service, receipts: ReceiptStore | None,
                 sign_callback: CallbackSigner | None = None, waiter_counts=None) -> None:
        self.settings = settings
        self.sign_callback = sign_callback  # callbacks carry the server's Ed25519 signature
        self.service = service
        self.receipts = receipts
        self.store = JobStore(settings.receipts_path)
        # local prover workers, unless proofs run on Ray
        self.slots = [] if settings.prover_executor == "ray" else [_Slot(i) for i in range(settings.proof_workers)]
        self.ray = None  # the Ray dispatcher's process, when proofs run on Ray (the supervising process's)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._callbacks = Dispatcher(attempts=settings.callback_attempts,
                                     backoff_s=settings.callback_backoff_s,
                                     allow=settings.callback_allow, sign=sign_callback,
                                     done=self._callback_done)
        self._waiters: set = set()  # (loop, asyncio.Event) of requests waiting for their proof
        self._stop_at: float | None = None  # after the stop signal: when waiters stop waiting
        # serve --workers: every process's waiters (server.shared.ProcessCounts); else this one's
        self.waiter_counts = waiter_counts
        self._ended_mark = 0.0  # the newest finish time the waiters were told about
        # workers start with the first job (an idle server runs no prover processes)
        self._wanted = threading.Event()
        self._shared = False
        self._supervising = False
        # serve --workers: the supervising process publishes its provers' pids here for the
        # other processes (GET /v1/proofs, the status page); None: not written yet
        self._pids_file = settings.home / "run" / "prover-pids.json"
        self._published: list[int] | None = None
        self._lock = threading.Lock()
        self._circuits: dict[str, tuple[str, Circuit]] = {}  # model -> (names-file text, circuit)
        self.log_path = settings.home / "logs" / "prove-workers.log"
        self._worker_log: WorkerLog | None = None  # made by start(), in the supervising process
        self._retention = settings.proof_retention_s is not None or settings.proof_retention_max is not None
        self._pruner: threading.Thread | None = None  # applies them, in the supervising process

    # --- life cycle -----------------------------------------------------------------

    def start(self, supervise: bool = True, shared: bool = False) -> None:
        """``supervise=False``: another process of the same server (``serve --workers``) runs the
        prover workers and callbacks; this one only submits, and wakes its waiters when a job
        ends. ``shared``: jobs may be queued by other processes: look for them in the store."""
        self._shared, self._supervising = shared, supervise
        if not supervise:
            self._thread = threading.Thread(target=self._watch, name="verinfer-proof-waiters", daemon=True)
            self._thread.start()
            return
        # A job left running by a previous server process has no worker any more (they
        # die with their server): queue it again now, counting the attempt it used.
        for job in self.store.running():
            self.store.retry_or_fail(job.id, "the server stopped while it was proving",
                                     self.settings.proof_attempts)
        if self.store.counts().get("queued"):
            self._wanted.set()
        self._worker_log = WorkerLog(self.log_path, self.settings.prover_log_max_bytes,
                                     self.settings.prover_log_backups)
        self._callbacks.start()
        self._thread = threading.Thread(target=self._supervise, name="verinfer-proof-supervisor",
                                        daemon=True)
        self._thread.start()
        if self._retention:  # a thread of its own: a first prune of a big store takes minutes, in
            # which the supervisor would renew no lease, start no worker, wake no waiter
            self._pruner = threading.Thread(target=self._retain, name="verinfer-proof-retention", daemon=True)
            self._pruner.start()
        if self.settings.prover_executor == "ray":
            # the dispatcher in a child process, which Ray may end (it exits a driver that lost
            # the GCS for a minute: a cluster's head, or a private instance's) without the server
            from server.proofs.ray_process import RayDispatcherProcess

            self.ray = RayDispatcherProcess(self.settings, self.store)
            self.ray.start()

    def signal_stop(self) -> None:
        """Called from the server's stop signal handler, before the graceful stop begins (see
        :meth:`server.proofs.ray_executor.RayExecutor.signal_stop`). Requests waiting for
        their proofs (``proof: "sync"``) wait at most ``sync_proof_stop_wait_s`` more (a proof
        running may still end and be handed over), then answer with their job as it stands, as
        at their timeout: the graceful stop waits for every request, and theirs could hold it
        for ``sync_proof_timeout_s`` (300 s, past systemd's 90 s, whose SIGKILL then cut the
        answers). Their jobs stay; the next start proves them."""
        self._stop_at = time.monotonic() + self.settings.sync_proof_stop_wait_s
        self._notify_waiters()  # each takes the nearer deadline
        if self.ray is not None:
            self.ray.signal_stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._pruner):
            if thread is not None:
                thread.join(timeout=10)  # (a prune ends after its batch under way)
        ours = {slot.worker_id for slot in self.slots if slot.proc is not None}
        for slot in self.slots:
            self._end_worker(slot)
        self.store.release_jobs_of(ours.__contains__)  # stopped on purpose: not the job's fault
        worker_log, self._worker_log = self._worker_log, None
        if worker_log is not None:
            worker_log.close()  # the ended workers' last lines
        if self.ray is not None:
            self.ray.stop()
        self._callbacks.stop()
        self.store.close()

    # --- submitting -------------------------------------------------------------------

    def circuit(self, model: str) -> Circuit:
        """The registered circuit package for a served model, or :class:`NoCircuitPackage`."""
        served = self.service.model(model)  # NotFound for an unknown model
        hint = f"run 'verinfer models add {model}'"
        pointer = name_target(self.settings, model)
        if pointer is None:
            raise NoCircuitPackage(f"no circuit package for model {model}: {hint}")
        cached = self._circuits.get(model)
        if cached is not None and cached[0] == pointer:
            c = cached[1]
        else:
            try:
                m = read_manifest(package_dir(self.settings, pointer))
            except (VerinferError, OSError) as exc:
                raise NoCircuitPackage(f"circuit package for model {model} is unusable ({exc}): "
                                       f"{hint}") from None
            c = Circuit(m.package_id, m.model_sha256, m.input.datatype, tuple(m.input.shape))
            self._circuits[model] = (pointer, c)
        if c.model_sha256 != served.sha256:
            raise NoCircuitPackage(f"the circuit package registered for {model} is for another "
                                   f"model file than the one served: {hint}")
        return c

    def require_receipts(self) -> ReceiptStore:
        """The receipt store; a 409 when the server signs none (proofs link to receipts)."""
        if self.receipts is None:
            raise Conflict("this server does not sign receipts (--no-signing); proofs need them")
        return self.receipts

    def check_callback(self, url: Any) -> str | None:
        """A client's ``callback_url``, checked (None: no callback); refused with a 4xx."""
        if url is None:
            return None
        return check_callback_url(url, self.settings.callback_allow)

    def submit_receipt(self, receipt_id: str, callback_url: Any = None) -> tuple[Job, str]:
        """A proof for a stored one-sample answer."""
        receipts = self.require_receipts()
        callback = self.check_callback(callback_url)
        if not isinstance(receipt_id, str) or not REQUEST_ID.fullmatch(receipt_id):
            raise InputError("receipt_id must be a receipt id: 0x and 64 lowercase hex digits")
        body = json.loads(receipts.get(receipt_id))  # NotFound
        model = body_model(body)
        stored = receipts.get_input(receipt_id)
        if stored is None:
            raise Conflict(f"receipt {receipt_id} has no stored input (a batch, or the server "
                           "keeps no inputs: VERINFER_STORE_INPUTS): send the model and input")
        _, datatype, shape, data = stored
        from verifier.tensors import numpy_dtype

        x = np.frombuffer(data, dtype=np.dtype(numpy_dtype(datatype)).newbyteorder("<"))
        x = x.reshape(json.loads(shape))
        return self._submit(model, x, receipt_id, callback)

    def submit_x(self, model: str, x: np.ndarray, receipt_id: str | None,
                 callback: str | None, client: str | None = None) -> tuple[Job, str]:
        """``client``: :data:`RELAYER` for the relayer's on-chain requests (the reserved share
        of the queue); default: whoever the HTTP request is (its API key, or one local client)."""
        return self._submit(model, x, receipt_id, callback, client)

    def _job_key(self, model: str, x: np.ndarray, client: str | None) -> tuple[Circuit, np.ndarray, dict]:
        """The circuit, the input in its dtype, and the store's limits for ``client``."""
        from verifier.tensors import numpy_dtype

        c = self.circuit(model)
        x = np.asarray(x).astype(numpy_dtype(c.datatype), copy=False)
        if tuple(x.shape) != c.shape:
            raise InputError(f"a proof is for one sample: input shape {list(x.shape)}, the "
                             f"circuit takes {list(c.shape)}")
        relayer = client == RELAYER
        tier = None if relayer else CURRENT_TIER.get()
        s = self.settings
        return c, x, dict(max_active=s.max_queued_proofs if relayer else s.public_proof_queue, client=client,
                          client_max_active=tier.max_queued_proofs if tier is not None else None)

    def _refuse(self, how: str, limits: dict) -> None:
        s = self.settings
        if how == "quota":
            raise QueueFull(f"this API key has {limits['client_max_active']} proof jobs queued or running, "
                            "its tier's limit; retry when one ends", s.proof_retry_after_s)
        raise QueueFull(f"the proof queue is full ({limits['max_active']} jobs queued or running); "
                        "retry later", s.proof_retry_after_s)

    def check_room(self, model: str, x: np.ndarray, sync: bool = False) -> None:
        """Refuse now (429), before an answer is signed for it, a proof request that
        :meth:`submit_x` would refuse for a full queue or the client's quota, or (``sync``)
        that :meth:`wait` would refuse for want of a waiter's place (unless its proof is done)."""
        from verifier.tensors import tensor_digest

        c, x, limits = self._job_key(model, x, CURRENT_CLIENT.get())
        how = self.store.refusal(package_id=c.package_id, input_digest=tensor_digest(x, c.datatype), **limits)
        if how in ("full", "quota"):
            self._refuse(how, limits)
        if sync and how != "done" and not self._waiter_room():
            self._no_waiter_room()

    def _waiter_room(self) -> bool:
        limit, counts = self.settings.max_sync_proof_waiters, self.waiter_counts
        return (counts.total() if counts is not None else len(self._waiters)) < limit

    def _no_waiter_room(self) -> None:
        raise QueueFull(f"{self.settings.max_sync_proof_waiters} requests already wait for their proofs; "
                        "ask with parameters.proof='async' and poll the job", self.settings.proof_retry_after_s)

    def _submit(self, model: str, x: np.ndarray, receipt_id: str | None,
                callback: str | None, client: str | None = None) -> tuple[Job, str]:
        from verifier.tensors import tensor_digest

        c, x, limits = self._job_key(model, x, CURRENT_CLIENT.get() if client is None else client)
        job, how = self.store.submit(
            model=model, package_id=c.package_id, model_sha256=c.model_sha256,
            input_digest=tensor_digest(x, c.datatype), input_json=encode_input(x, c.datatype),
            receipt_id=receipt_id, callback_url=callback, **limits)
        if job is None:  # full or quota (room was checked before the answer; taken meanwhile)
            self._refuse(how, limits)
        if how in ("new", "requeued"):
            self._wanted.set()
            self._wake()
        return job, how

    def own_request(self, model: str, x: np.ndarray) -> Job | None:
        """The asking client's own request for the job of (model's package, input), as it sees
        the job; None when there is no such job or this client has not asked for it."""
        from verifier.tensors import numpy_dtype, tensor_digest

        c = self.circuit(model)
        x = np.asarray(x).astype(numpy_dtype(c.datatype), copy=False)
        if tuple(x.shape) != c.shape:
            return None
        return self.store.request_for(c.package_id, tensor_digest(x, c.datatype), CURRENT_CLIENT.get())

    def get(self, request_id: str, client: str | None = None) -> Job:
        """A proof request (the id a client was given) as its client sees the job: the asking
        client's own only (``client``, else the request's), as if no other existed. A second
        client's bundle names the job by the first client's request id: that must not open the
        first client's handle, its receipt id and callback URL."""
        client = CURRENT_CLIENT.get() if client is None else client
        job = self.store.request(request_id, client)
        if job is None:
            if self.store.pruned(request_id, client):
                raise _pruned(request_id)
            raise NotFound(f"no proof job with id {request_id!r}")
        return job

    def bundle(self, request_id: str, client: str | None = None) -> str:
        job = self.get(request_id, client)
        if job.status != "done":
            extra = f": {job.error}" if job.status == "failed" else ""
            raise Conflict(f"proof job {request_id} is {job.status}{extra}; no bundle")
        text = self.store.bundle(self.store.job_of(request_id))
        if text is None:  # retention pruned it since it was read as done
            raise _pruned(request_id)
        return text

    async def wait(self, request_id: str, timeout_s: float) -> Job:
        """Wait until the job ends (or ``timeout_s`` passes), woken by the supervisor when a job
        ends (one store query per tick for every waiter, not a poll per waiter on the event
        loop). At most ``max_sync_proof_waiters`` wait at once (in the whole server, under
        ``serve --workers``): past it :class:`QueueFull`."""
        job = self.get(request_id)
        if job.status in ("done", "failed"):
            return job
        limit, counts = self.settings.max_sync_proof_waiters, self.waiter_counts
        if not (counts.enter(limit) if counts is not None else len(self._waiters) < limit):
            self._no_waiter_room()
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()
        waiter = (loop, ended)
        self._waiters.add(waiter)
        try:
            end = time.monotonic() + timeout_s
            while job.status not in ("done", "failed"):
                stop_at = self._stop_at
                left = (end if stop_at is None else min(end, stop_at)) - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(ended.wait(), left)
                except TimeoutError:
                    pass
                ended.clear()
                job = self.get(request_id)
            return job
        finally:
            self._waiters.discard(waiter)
            if counts is not None:
                counts.leave()

    def _notify_waiters(self) -> None:
        """Some job ended: wake every waiter (each checks its own job once)."""
        for loop, ended in list(self._waiters):
            loop.call_soon_threadsafe(ended.set)

    # --- workers ------------------------------------------------------------------------

    def _wake(self) -> None:
        if self.ray is not None:
            self.ray.wake()
        for slot in self.slots:
            p = slot.proc
            if p is None or p.stdin is None or p.poll() is not None:
                continue
            try:
                os.write(p.stdin.fileno(), b"\n")
            except (BlockingIOError, BrokenPipeError, OSError):
                pass  # busy (pipe full) or dying: it will look for work anyway

    def _spawn(self, slot: _Slot) -> None:
        worker_id = f"{os.getpid()}.{slot.index}.{os.urandom(3).hex()}"
        s = self.settings
        cmd = [sys.executable, "-m", "server.proofs.worker", "--db", str(s.receipts_path),
               "--worker-id", worker_id, "--parent-pid", str(os.getpid()),
               "--lease-s", str(s.proof_lease_s), "--max-attempts", str(s.proof_attempts)]
        if s.proof_memory_mb:
            cmd += ["--memory-mb", str(s.proof_memory_mb)]
        # the installed package, found as any import is (no repository path or working folder)
        env = {**os.environ, "VERINFER_HOME": str(s.home)}
        env.setdefault("OMP_NUM_THREADS", "1")  # onnxruntime for the float label: tiny models
        out = self._worker_log.pipe()  # its output, to the log this process writes and rotates
        try:
            # its own session: a signal to the server's process group (Ctrl-C) is the server's to
            # handle, which then ends its workers (systemd's SIGTERM, sent to every process of the
            # unit, reaches them anyway: they ignore it); they die with it anyway
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        finally:
            os.close(out)
        os.set_blocking(proc.stdin.fileno(), False)
        slot.proc, slot.worker_id = proc, worker_id
        slot.restarts.started_at(time.monotonic())
        log.info("prover worker %s started (pid %d)", worker_id, proc.pid)

    def _end_worker(self, slot: _Slot) -> None:
        p = slot.proc
        if p is None:
            return
        try:
            if p.stdin:
                p.stdin.close()
        except OSError:
            pass
        if p.poll() is None:  # it ignores SIGTERM (systemd's stop signals it too; see the worker)
            p.kill()
            p.wait()
        slot.proc = None

    def worker_pids(self) -> list[int]:
        """The live prover worker processes of the whole server (also when asked in a
        process of ``serve --workers`` that does not run them)."""
        if self._shared and not self._supervising:
            try:
                pids = json.loads(self._pids_file.read_text())
            except (OSError, ValueError):
                return []
            return [p for p in pids if isinstance(p, int) and _alive(p)]
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None]

    def _publish_pids(self) -> None:
        pids = self.worker_pids()
        if pids != self._published:
            self._published = pids  # (tried once per change: a failure is not retried each tick)
            tmp = self._pids_file.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(pids))
                os.replace(tmp, self._pids_file)
            except OSError as exc:
                log.warning("could not publish the prover workers' pids: %s", exc)

    def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # the supervisor must outlive any one problem
                log.exception("proof supervisor")
            self._stop.wait(0.2)

    def _watch(self) -> None:
        """Not the supervising process: only wake the requests waiting for their proofs."""
        while not self._stop.is_set():
            try:
                self._check_waiters()
            except Exception:
                log.exception("proof waiters")
            self._stop.wait(0.2)

    def _check_waiters(self) -> None:
        if self._waiters:  # requests waiting for their proofs: did a job end since we looked?
            ended = self.store.last_finished()
            if ended > self._ended_mark:
                self._ended_mark = ended
                self._notify_waiters()

    def _tick(self) -> None:
        s = self.settings
        now_m = time.monotonic()
        if self.ray is not None:  # a Ray dispatcher's process that exited is started again
            self.ray.tick()
        if self._shared:
            self._publish_pids()
        if self._shared and not self._wanted.is_set() and self.store.counts().get("queued"):
            self._wanted.set()  # queued by another server process
        for slot in self.slots:
            p = slot.proc
            if p is not None and p.poll() is not None:
                code = p.returncode
                why = f"signal {-code}" if code < 0 else f"exit code {code}"
                log.warning("prover worker %s died (%s)", slot.worker_id, why)
                if self.store.retry_jobs_of(slot.worker_id.__eq__, f"prover worker died ({why})", s.proof_attempts):
                    self._wake()
                slot.restarts.exited_at(now_m)
                slot.proc = None
            if slot.proc is None and slot.restarts.due(now_m) and self._wanted.is_set():
                self._spawn(slot)
        now = time.time()
        by_worker = {slot.worker_id: slot for slot in self.slots if slot.proc is not None}
        for job in self.store.running():
            slot = by_worker.get(job.worker)
            if slot is not None and slot.proc.poll() is None and (
                    job.lease_until is None or job.lease_until - now < s.proof_lease_s / 2):
                # our worker lives, so it holds its job: EZKL keeps the GIL for a whole proving
                # step, which silences the worker's own heartbeat thread past the lease (the
                # job was proven twice, or failed and then done); a hung one meets the timeout
                self.store.heartbeat(job.id, job.worker, s.proof_lease_s)
            if slot is not None and job.started and now - job.started > s.proof_timeout_s:
                log.warning("proof job %s passed %.0fs: killing worker %s", job.id,
                            s.proof_timeout_s, job.worker)
                slot.proc.kill()
                slot.proc.wait()
                self.store.retry_or_fail(job.id, f"timed out after {s.proof_timeout_s:g}s",
                                         s.proof_attempts, expect_worker=job.worker)
                slot.proc = None
                self._wake()
        for job in self.store.expired(now):
            if self.store.retry_or_fail(job.id, "lease expired (worker stopped responding)",
                                        s.proof_attempts, expect_worker=job.worker):
                self._wake()
        self._check_waiters()
        for job, client in self.store.callbacks_due():  # one already pending is not taken twice
            self._callbacks.submit(job.id, job.callback_url, job.public(), client=client,
                                   token=job.finished)

    def _retain(self) -> None:
        """The retention settings applied every ``proof_prune_interval_s``, until the stop."""
        while not self._stop.is_set():
            self._prune()
            self._stop.wait(max(self.settings.proof_prune_interval_s, 0.2))

    def _prune(self) -> None:
        s = self.settings
        try:
            gone = self.store.prune(time.time() - s.proof_retention_s if s.proof_retention_s else None,
                                    s.proof_retention_max, stop=self._stop.is_set)
            if gone:
                log.info("pruned %d finished proof jobs (retention)", gone)
        except Exception:  # a failed prune must not stop the supervisor's other work
            log.exception("proof job retention")

    def _callback_done(self, request_id: str, delivered: bool, finished: object) -> None:
        self.store.set_callback_state(request_id, "delivered" if delivered else "failed", finished)


def _pruned(request_id: str) -> Gone:
    return Gone(f"proof job {request_id} was pruned: the server forgets finished jobs and their "
                "bundles after its retention period; ask for the proof again")


def body_model(receipt: dict) -> str:
    """The model name a stored receipt's statement names."""
    import base64

    try:
        # v2: the logged statement; v1: the DSSE payload
        st = json.loads(base64.b64decode(receipt["statement"] if "statement" in receipt
                                         else receipt["envelope"]["payload"]))
        return st["predicate"]["model"]["name"]
    except (KeyError, ValueError, TypeError):
        raise InputError("stored receipt is unreadable") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (a reused pid)
        pass
    return True
