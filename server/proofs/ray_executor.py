"""Proof jobs on a Ray cluster (``prover_executor = "ray"``; docs/ray.md).

The job table stays the source of truth. A dispatcher thread in the server claims
queued jobs exactly as a local worker does (an attempt counted, a lease taken),
hands each to Ray, renews the lease while Ray works, and stores the result only
if the job is still leased to that attempt (:meth:`JobStore.finish` with ``worker``). A node
that dies takes its attempt with it: the job is queued again and dispatched to
another node, and a late answer from a given-up attempt is dropped, so a job
never ends with two different bundles. Ray itself retries nothing
(``max_restarts=0``, ``max_retries=0``): attempts are counted in one place.

What runs on a node only proves: the node gets the package id, the input and the
receipt's signed label; it opens the package by content address (a shared
folder, or files shipped through Ray's object store, in both cases checked
against the manifest's hashes, whose own hash is the package id) and returns the
bundle. The server checks the proof again and signs the proof receipt itself:
no signing key leaves the server.

Placement: each proof reserves ``ray_cpus_per_proof`` CPUs and the memory the
package's preflight measured (:func:`proof_resources`), so Ray puts it only on a
node that can hold the proving key. With ``ray_actors`` (the default) a prover
actor per package per node keeps the package open (hash-checked once, onnxruntime
session built once, the pk warm in the page cache), and jobs of that package go
to an idle actor of it first.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("verinfer.server")

# systemd's stop signals every process of the unit at once: the Ray processes of a private
# instance die of it while the server, signalled with them, stops. A Ray process's death is
# taken for the server's stop (the attempt not counted) if its stop signal comes this soon after.
STOP_SIGNAL_WAIT_S = 1.0
# A prover process before its first proof (Python, EZKL, onnxruntime, numpy): what a
# package's own figures are added to when a proof's memory is reserved.
PROCESS_BASE_BYTES = 400 * 1024 * 1024


def proof_resources(manifest, cpus: float, memory_mb: int | None) -> dict:
    """The Ray resources one proof of this package reserves: ``num_cpus`` and ``memory``
    (bytes). Memory: ``memory_mb`` if set; else the process base plus the larger of the
    preflight's measured RSS growth while proving and twice the proving key (packages made
    before the growth was measured: three times the proving key)."""
    if memory_mb:
        return {"num_cpus": cpus, "memory": memory_mb * 1024 * 1024}
    pf = manifest.preflight
    pk = int(pf.get("pk_bytes") or manifest.artifacts["pk.key"].bytes)
    growth = pf.get("prove_rss_growth_bytes")
    need = max(int(growth), 2 * pk) if growth else 3 * pk
    return {"num_cpus": cpus, "memory": PROCESS_BASE_BYTES + need}


def threads_for(cpus: float) -> int:
    return max(1, math.ceil(cpus))


# --- on a node: opening a package by content address ------------------------------------

def package_files(folder: Path) -> dict[str, bytes]:
    """What a node needs to prove with a package: its manifest and the proving artifacts."""
    from prover.package import PROVE_ARTIFACTS
    from verifier.manifest import MANIFEST_FILE

    return {n: (folder / n).read_bytes() for n in (MANIFEST_FILE, *PROVE_ARTIFACTS)}


def _manifest_matches(folder: Path, package_id: str) -> bool:
    from verifier.manifest import MANIFEST_FILE

    try:
        raw = (folder / MANIFEST_FILE).read_bytes()
    except OSError:
        return False
    return hashlib.sha256(raw).hexdigest() == package_id


def open_package(package_id: str, shared: Path | None, cache: Path, files=None):
    """The :class:`prover.package.CircuitPackage` with id ``package_id``, proving artifacts
    hash-checked: from ``shared/<id>`` if there, else ``cache/<id>``, else written into the
    cache from ``files()`` (name -> bytes). The manifest must hash to the id and every file
    as the manifest says (:class:`verifier.errors.PackageError` otherwise): nothing a node
    is given or finds is used unchecked."""
    from prover.package import PROVE_ARTIFACTS, CircuitPackage
    from verifier.errors import PackageError
    from verifier.manifest import MANIFEST_FILE

    if not package_id or set(package_id) - set("0123456789abcdef") or len(package_id) != 64:
        raise PackageError(f"not a package id: {package_id!r}")
    for root in (shared, cache):
        if root is None:
            continue
        folder = Path(root) / package_id
        if (folder / MANIFEST_FILE).is_file():
            if not _manifest_matches(folder, package_id):
                raise PackageError(f"{folder}: manifest.json does not hash to the package id")
            return CircuitPackage.open(folder, check=PROVE_ARTIFACTS)
    if files is None:
        raise PackageError(f"package {package_id[:16]}… is not under {shared} on this node "
                           "(share the packages folder, or set VERINFER_RAY_SHIP_PACKAGES)")
    got = files()
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
    try:
        for name, data in got.items():
            if "/" in name or name.startswith("."):
                raise PackageError(f"package file name {name!r} refused")
            (work / name).write_bytes(data)
        if not _manifest_matches(work, package_id):
            raise PackageError(f"the manifest sent for package {package_id[:16]}… does not "
                               "hash to its id")
        pkg = CircuitPackage.open(work, check=PROVE_ARTIFACTS)  # every file as the manifest says
        final = cache / package_id
        try:
            os.rename(work, final)
        except OSError:  # another process on this node placed it first
            shutil.rmtree(work, ignore_errors=True)
        return CircuitPackage.open(final, check=PROVE_ARTIFACTS) if final != pkg.dir else pkg
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _cache_dir() -> Path:
    return Path(os.environ.get("VERINFER_RAY_CACHE")
                or Path(tempfile.gettempdir()) / f"verinfer-packages-{os.getuid()}")


class PackageProver:
    """Proves for one package on one node (the body of the Ray actor, and of the stateless
    task when ``ray_actors`` is off)."""

    def __init__(self, package_id: str, shared: str | None, files_box: list | None) -> None:
        from prover.proving import Prover

        def fetch():
            import ray

            return ray.get(files_box[0])

        pkg = open_package(package_id, Path(shared) if shared else None, _cache_dir(),
                           fetch if files_box else None)
        self.prover = Prover(pkg)

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def prove(self, spec: dict, receipt: dict | None, float_label: int | None) -> str:
        from server.proofs.worker import decode_input
        from verifier.tensors import numpy_dtype

        m = self.prover.package.manifest
        x = decode_input(spec).astype(numpy_dtype(m.input.datatype), copy=False)
        bundle = self.prover.prove(x, receipt=receipt, float_label=float_label)  # re-verified
        return bundle.model_dump_json()


def prove_once(package_id, shared, files_box, spec, receipt, float_label) -> str:
    """One proof in a Ray task: opens (and hash-checks) the package every time."""
    return PackageProver(package_id, shared, files_box).prove(spec, receipt, float_label)


# --- in the server: the dispatcher --------------------------------------------------------

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
        self._reaper: subprocess.Popen | None = None  # a private instance's (see _start_reaper)
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
        private = _ray_processes(ray) if ray is not None and not self.settings.ray_address else []
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
        _end(private)
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
                self._reaper = _start_reaper(self._temp_dir, os.path.dirname(ray.__file__))
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


# -- a private Ray instance's processes ----------------------------------------------------


def _ray_processes(ray, root: int | None = None) -> list[int]:
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


def _end(pids: list[int], grace_s: float = 5.0) -> None:
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


def _start_reaper(temp_dir: str, ray_dir: str) -> subprocess.Popen:
    """A private Ray instance's processes end with this server even when it is killed (kill -9,
    the OOM killer), when :meth:`RayExecutor.stop` does not run: the raylet and GCS die with
    the dispatcher thread (``PR_SET_PDEATHSIG``), but the raylet's agents were left running,
    orphaned, for good (they ignore SIGTERM). A small process in its own session (a signal to
    the server's group is the server's) waits for the end of a pipe from this one (the server
    exited, or stops Ray itself), then ends every Ray process (``ray_dir``: Ray's package
    folder) of this user that holds a file under ``temp_dir``, the instance's Ray temp dir (each
    of its processes, agents and workers too, writes its logs there from its start; not, say,
    an operator's ``tail -f`` of one), and removes that folder. Which processes are the
    instance's is read when the server is gone, not noted while it lived: one started just
    before the server was killed is found too, whoever its parent is by then."""
    return subprocess.Popen([sys.executable, "-m", "server.proofs.ray_executor", "--reap",
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
    """``python -m server.proofs.ray_executor --reap SERVER_PID TEMP_DIR RAY_DIR`` (see
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
        _end(left)
    shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    _reap(int(sys.argv[2]), sys.argv[3], sys.argv[4])
