"""Proof jobs on a Ray cluster (``prover_executor = "ray"``; docs/ray.md).

The job table stays the source of truth. A dispatcher thread, in a child process of the
server (:mod:`server.proofs.ray_process`), claims queued jobs exactly as a local worker does
(an attempt counted, a lease taken), hands each to Ray, renews the lease while Ray works, and stores the result only
if the job is still leased to that attempt (:meth:`JobStore.finish` with ``worker``). A node
that dies takes its attempt with it: the job is queued again and dispatched to
another node, and a late answer from a given-up attempt is dropped, so a job
never ends with two different bundles. Ray itself retries nothing
(``max_restarts=0``, ``max_retries=0``): attempts are counted in one place.

What runs on a node only proves (:mod:`server.proofs.ray_node`): it opens the package
by content address, hash-checked, and returns the bundle. The server checks the proof
again and signs the proof receipt itself: no signing key leaves the server. A private
instance's processes are ended with it (:mod:`server.proofs.ray_instance`).

Placement: each proof reserves ``ray_cpus_per_proof`` CPUs and the memory the
package's preflight measured (:func:`proof_resources`), so Ray puts it only on a
node that can hold the proving key. With ``ray_actors`` (the default) a prover
actor per package per node keeps the package open (hash-checked once, onnxruntime
session built once, the pk warm in the page cache), and jobs of that package go
to an idle actor of it first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from server.proofs.ray_instance import end_processes, ray_processes, start_reaper
from server.proofs.ray_node import (
    PackageProver,
    package_files,
    proof_resources,
    prove_once,
    threads_for,
)

log = logging.getLogger("verinfer.server")

# systemd's stop signals every process of the unit at once: the Ray processes of a private
# instance die of it while the server, signalled with them, stops. A Ray process's death is
# taken for the server's stop (the attempt not counted) if its stop signal comes this soon after.
STOP_SIGNAL_WAIT_S = 1.0


@dataclass
class _Actor:
    handle: object
    package_id: str
    node: str | None = None  # the node's name, once the actor is placed and has the package
    node_ref: object = None  # its node() call while it starts
    busy: bool = False
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class _Claimed:
    """A job claimed from the store (leased, attempt counted) and not yet finished."""

    job: object
    spec: dict
    worker: str
    claimed: float
    receipt: dict | None = None
    statement: object = None
    ref: object = None  # the Ray call proving it, once handed over
    actor: _Actor | None = None


class RayExecutor:
    """Hands claimed jobs to Ray and stores what comes back (see the module doc).

    A claimed job waits here (leased) until an actor of its package is placed and idle;
    a job is never bound to an actor that Ray has not placed yet, so an actor that cannot
    be placed (its node died, the cluster is full) holds up no job."""

    def __init__(self, settings, store, receipts) -> None:
        self.settings = settings
        self.store = store
        self.receipts = receipts
        self._keys = None
        self._stop = threading.Event()
        self.stopping = threading.Event()  # the server got its stop signal (see stopping())
        self._not_stopping_at = 0.0  # Ray failures seen until then were not the server's stop
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._jobs: list[_Claimed] = []  # claimed, waiting or in flight
        self._actors: list[_Actor] = []
        self._seq = 0
        self._files: dict[str, list] = {}  # package id -> [ObjectRef of its files]
        self._manifests: dict[str, object] = {}
        self._nodes: dict[str, str] = {}  # node id -> name
        self._capacity = (0, 0.0)  # (value, when)
        self._ray = None
        self._task = None
        self._last_beat = 0.0
        self._next_connect = 0.0
        self._reaper: subprocess.Popen | None = None  # a private instance's (see start_reaper)
        self._temp_dir: str | None = None  # a private instance's Ray temp dir (its processes' files)
        self.prefix = f"ray.{os.getpid()}"

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="verinfer-ray-dispatcher",
                                        daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def signal_stop(self) -> None:
        """The server got its stop signal (SIGTERM, Ctrl-C), in its signal handler: claim no more
        jobs, and a proof whose Ray process dies now gives its job back without counting the
        attempt (systemd's stop signals the private instance's processes too)."""
        self.stopping.set()
        self._wake.set()

    def stop(self) -> None:
        # A private instance (no address): its processes are ours to end. Found now, while the
        # dispatcher thread that started them lives: they die with that thread (Ray sets
        # PR_SET_PDEATHSIG), except the raylet's agents (DashboardAgent, RuntimeEnvAgent),
        # which would be left orphaned, out of this process's tree.
        ray = self._ray
        private = ray_processes(ray) if ray is not None and not self.settings.ray_address else []
        self.stopping.set()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        for c in self._jobs:  # stopped on purpose: not the job's fault
            self.store.release(c.job.id, c.worker)
        self._jobs.clear()
        if self._ray is not None:
            try:
                self._ray.shutdown()
            except Exception:  # shutting down anyway
                log.exception("ray shutdown")
        end_processes(private)
        if self._reaper is not None:  # its pipe's end: it ends what is left, and itself
            self._reaper.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._reaper.wait(10)

    def _connect(self) -> bool:
        if self._ray is not None:
            return True
        if time.monotonic() < self._next_connect:
            return False
        # Ray's C++ core would otherwise take SIGTERM over (print a stack, die at once),
        # skipping the server's graceful stop that gives running jobs back to the queue
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        import ray

        # a private instance needs no dashboard (a web server and port 8265 on this machine)
        private = {} if self.settings.ray_address else {"include_dashboard": False}
        if private:
            if self._reaper is None:  # before any of the instance's processes exists
                # where Ray's own would be (RAY_TMPDIR, else TMPDIR, else /tmp), and short: its
                # Unix sockets live under it (sun_path holds 108 bytes)
                self._temp_dir = tempfile.mkdtemp(prefix="vr-", dir=os.environ.get("RAY_TMPDIR"))
                self._reaper = start_reaper(self._temp_dir, os.path.dirname(ray.__file__))
            private["_temp_dir"] = self._temp_dir  # every process of the instance keeps files there
        try:
            ray.init(address=self.settings.ray_address, namespace="verinfer",
                     logging_level=logging.WARNING, log_to_driver=False,
                     ignore_reinit_error=True, configure_logging=False, **private)
        except Exception as exc:  # noqa: BLE001 - no cluster yet: jobs wait, queued
            log.error("cannot join the Ray cluster at %s: %s (retrying)",
                      self.settings.ray_address or "(local)", exc)
            self._next_connect = time.monotonic() + 5
            return False
        self._ray = ray
        log.warning("proving on Ray: %s", ray.cluster_resources())
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.stopping.is_set() and not self.settings.ray_address:
                # systemd's stop ends a private instance with the server: its proofs will not
                # come back, so their jobs go back to the queue now (the attempt not counted),
                # and no Ray call is made: one that finds the GCS gone makes Ray abort this
                # process (a failed check in GetAllNodeInfo: no graceful stop, jobs left running)
                for c in self._jobs:
                    self.store.release(c.job.id, c.worker)
                self._jobs.clear()
                self._stop.wait(0.1)
                continue
            try:
                if self._connect():
                    self._collect()
                    self._beat()
                    self._check_timeouts()
                    self._place_actors()
                    self._claim()
                    self._route()
            except Exception:  # the dispatcher must outlive any one problem
                log.exception("ray dispatcher")
                time.sleep(0.5)
            if not any(c.ref is not None for c in self._jobs):  # else ray.wait paced it
                self._wake.wait(0.1 if self._jobs else 1.0)
                self._wake.clear()

    # -- claiming and routing ------------------------------------------------------------

    def capacity(self) -> int:
        s = self.settings
        if s.ray_max_in_flight:
            return s.ray_max_in_flight
        value, when = self._capacity
        if time.monotonic() - when > 2:
            cpus = self._ray.cluster_resources().get("CPU", 0)
            value = max(1, int(cpus // s.ray_cpus_per_proof))
            self._capacity = (value, time.monotonic())
        return value

    def _manifest(self, package_id: str):
        m = self._manifests.get(package_id)
        if m is None:
            from verifier.proofs import load_manifest_checked

            # hashes the verifying artifacts (vk, settings, SRS) once per package
            m = load_manifest_checked(self.settings.packages_dir / package_id)
            self._manifests[package_id] = m
        return m

    def _options(self, package_id: str) -> dict:
        s = self.settings
        res = proof_resources(self._manifest(package_id), s.ray_cpus_per_proof, s.ray_memory_mb)
        env = {"RAYON_NUM_THREADS": str(threads_for(s.ray_cpus_per_proof)),
               "OMP_NUM_THREADS": "1"}
        return {**res, "runtime_env": {"env_vars": env}}

    def _files_box(self, package_id: str) -> list | None:
        if not self.settings.ray_ship_packages:
            return None
        box = self._files.get(package_id)
        if box is None:
            box = self._files[package_id] = [self._ray.put(
                package_files(self.settings.packages_dir / package_id))]
        return box

    def _shared(self) -> str:
        return str(self.settings.ray_packages_dir or self.settings.packages_dir)

    def _claim(self) -> None:
        from server.proofs.worker import load_receipt
        from server.receipts.keys import LiveKeys

        s = self.settings
        while not self.stopping.is_set() and len(self._jobs) < self.capacity():
            self._seq += 1
            worker = f"{self.prefix}.{self._seq}"
            claimed = self.store.claim(worker, s.proof_lease_s)
            if claimed is None:
                return
            c = _Claimed(claimed[0], claimed[1], worker, time.monotonic())
            try:
                if self._keys is None:
                    self._keys = LiveKeys(s)  # (follows a rotation or revocation: the keys now)
                self._manifest(c.job.package_id)
                c.receipt, c.statement = load_receipt(self.receipts, self._keys.current(),
                                                      c.job.receipt_id)
            except Exception as exc:  # noqa: BLE001 - this job's problem, not the loop's
                self._attempt_failed(c, exc)
                continue
            self._jobs.append(c)

    def _route(self) -> None:
        """Hand waiting jobs to idle placed actors of their package (or to a task each)."""
        for c in [c for c in self._jobs if c.ref is None]:
            label = c.statement.predicate.label if c.statement is not None else None
            args = (c.spec, c.receipt, label)
            pid = c.job.package_id
            if not self.settings.ray_actors:
                if self._task is None:
                    self._task = self._ray.remote(prove_once)
                task = self._task.options(max_retries=0, **self._options(pid))
                c.ref = task.remote(pid, self._shared(), self._files_box(pid), *args)
                continue
            actor = next((a for a in self._actors if a.package_id == pid and a.node
                          and not a.busy), None)
            if actor is None:
                self._start_actor_for(pid)
                continue
            actor.busy, actor.last_used = True, time.monotonic()
            c.actor, c.ref = actor, actor.handle.prove.remote(*args)
            new = f"{c.worker}@{actor.node}"
            if self.store.reassign(c.job.id, c.worker, new):
                c.worker = new

    def _start_actor_for(self, package_id: str) -> None:
        """One more actor for this package, unless one is already starting; Ray spreads
        them over the nodes with room. An idle actor of another package gives way when the
        cluster is full."""
        if any(a.package_id == package_id and a.node is None for a in self._actors):
            return
        if len(self._actors) >= self.capacity():
            idle = [a for a in self._actors if not a.busy and a.package_id != package_id]
            if not idle:
                return  # all busy: the job waits for one of this package's to finish
            self._kill_actor(min(idle, key=lambda a: a.last_used))
        cls = self._ray.remote(PackageProver).options(
            max_restarts=0, max_task_retries=0, scheduling_strategy="SPREAD",
            **self._options(package_id))
        handle = cls.remote(package_id, self._shared(), self._files_box(package_id))
        self._actors.append(_Actor(handle, package_id, node_ref=handle.node.remote()))

    def _place_actors(self) -> None:
        """Learn where starting actors landed; drop actors that died starting (counting an
        attempt of a job that waits for one), that nobody waits for, or idle for long."""
        waiting = {c.job.package_id for c in self._jobs if c.ref is None}
        now = time.monotonic()
        for a in list(self._actors):
            if a.node is None:
                ready, _ = self._ray.wait([a.node_ref], timeout=0)
                seen = time.monotonic()
                if ready:
                    try:
                        a.node = self._node_name(self._ray.get(a.node_ref))
                        a.last_used = now
                    except Exception as exc:  # noqa: BLE001 - it died starting
                        self._kill_actor(a)
                        c = next((c for c in self._jobs if c.ref is None
                                  and c.job.package_id == a.package_id), None)
                        if c is not None:
                            self._jobs.remove(c)
                            self._attempt_failed(c, exc, seen)
                elif a.package_id not in waiting:  # not placed, and no longer needed
                    self._kill_actor(a)
            elif not a.busy and now - a.last_used > 300:
                self._kill_actor(a)

    def _kill_actor(self, a: _Actor) -> None:
        if a in self._actors:
            self._actors.remove(a)
        try:
            self._ray.kill(a.handle, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - already gone
            log.debug("ray.kill: %s", exc)

    def _node_name(self, node_id: str) -> str:
        if node_id not in self._nodes:
            for n in self._ray.nodes():
                self._nodes[n["NodeID"]] = n.get("NodeName") or n["NodeID"][:12]
        return self._nodes.get(node_id, node_id[:12])

    # -- results ---------------------------------------------------------------------------

    def _collect(self) -> None:
        flying = {c.ref: c for c in self._jobs if c.ref is not None}
        if not flying:
            return
        ready, _ = self._ray.wait(list(flying), num_returns=len(flying), timeout=0.2)
        seen = time.monotonic()
        for ref in ready:
            c = flying[ref]
            self._jobs.remove(c)
            if c.actor is not None:
                c.actor.busy = False
                c.actor.last_used = time.monotonic()
            try:
                bundle_json = self._ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - sorted out in _attempt_failed
                self._attempt_failed(c, exc, seen)
                continue
            try:
                outcome, final = self._finish(c, bundle_json)
            except Exception as exc:  # noqa: BLE001 - a bundle we cannot accept
                self._attempt_failed(c, exc)
                continue
            if not self.store.finish(c.job.id, outcome, final, worker=c.worker):
                log.warning("proof job %s: a result from %s arrived after its attempt was "
                            "given up; dropped", c.job.id, c.worker)

    def _finish(self, c: _Claimed, bundle_json: str) -> tuple[str, str]:
        """Check a node's bundle (the proof itself, against the server's copy of the package)
        and sign it here."""
        from server.proofs.worker import sign_bundle
        from verifier.bundle import ProofBundle
        from verifier.errors import DigestMismatch
        from verifier.proofs import verify_bundle

        m = self._manifest(c.job.package_id)
        bundle = ProofBundle.model_validate_json(bundle_json)
        if bundle.input.digest != c.job.input_digest:
            raise DigestMismatch("the node proved another input than the job's")
        verify_bundle(bundle, self.settings.packages_dir / c.job.package_id, manifest=m)
        return sign_bundle(c.job, m, bundle, c.receipt, c.statement, self._keys.current())

    def _stopped_by_us(self, seen: float) -> bool:
        """Whether a Ray process's death, seen at ``seen``, is the server's stop: its stop signal
        came, or comes within :data:`STOP_SIGNAL_WAIT_S` (waited once for every death seen
        until the wait began)."""
        if self.stopping.is_set():
            return True
        if seen <= self._not_stopping_at:
            return False
        began = time.monotonic()
        if self.stopping.wait(STOP_SIGNAL_WAIT_S):
            return True
        self._not_stopping_at = began
        return False

    def _attempt_failed(self, c: _Claimed, exc: BaseException, seen: float | None = None) -> None:
        """An attempt ended without a bundle: the job fails now if its input can never be
        proven, else it is queued again (or fails once its attempts are used up). When a Ray
        process died of the server's own stop (systemd's stop signals a private instance's
        processes with the server), the job is given back without counting the attempt."""
        from ray.exceptions import RayError, RayTaskError

        from verifier.errors import InputError, PackageError

        if isinstance(exc, RayTaskError):  # our code raised on the node; the actor lives on
            cause = exc.cause if exc.cause is not None else exc
        else:  # the actor, its worker process or its node is gone (or it never started)
            cause = exc
            if c.actor is not None:
                self._kill_actor(c.actor)
            if isinstance(exc, RayError) and self._stopped_by_us(time.monotonic() if seen is None else seen):
                self.store.release(c.job.id, c.worker)
                log.info("proof job %s given back to the queue: the server stops (%s)",
                         c.job.id, type(exc).__name__)
                return
        lines = (str(cause).strip() or type(cause).__name__).splitlines()
        text = next((ln for ln in lines if ln.strip() and not ln.startswith(" ")), lines[0])
        reason = f"{type(cause).__name__}: {text[:300]}"
        if isinstance(cause, InputError) and not isinstance(cause, PackageError):
            self.store.fail_now(c.job.id, reason)
        else:
            self.store.retry_or_fail(c.job.id, reason, self.settings.proof_attempts,
                                     expect_worker=c.worker)
        log.warning("proof job %s attempt %d on Ray: %s", c.job.id, c.job.attempts, reason)
        self._wake.set()

    # -- leases and time limits ------------------------------------------------------------

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat < self.settings.proof_lease_s / 3:
            return
        self._last_beat = now
        for c in list(self._jobs):
            if not self.store.heartbeat(c.job.id, c.worker, self.settings.proof_lease_s):
                log.warning("proof job %s is no longer leased to %s", c.job.id, c.worker)
                if c.ref is None:  # (in flight: its result will be refused by finish)
                    self._jobs.remove(c)

    def _check_timeouts(self) -> None:
        limit = self.settings.proof_timeout_s
        for c in list(self._jobs):
            if time.monotonic() - c.claimed <= limit:
                continue
            self._jobs.remove(c)
            if c.actor is not None:
                self._kill_actor(c.actor)
            elif c.ref is not None:
                try:
                    self._ray.cancel(c.ref, force=True)
                except Exception as exc:  # noqa: BLE001 - already finished or gone
                    log.debug("ray.cancel: %s", exc)
            self.store.retry_or_fail(c.job.id, f"timed out after {limit:g}s",
                                     self.settings.proof_attempts, expect_worker=c.worker)
