"""A prover worker process: ``python -m server.proofs.worker --db FILE --worker-id ID --parent-pid PID``.

Started and supervised by the server (:mod:`server.proofs.jobs`); one per
``proof_workers``. It claims queued jobs from the SQLite job table (an atomic
claim that takes a lease and counts an attempt), renews the lease while it
proves, and stores the verified, signed bundle. Proving is CPU- and
memory-heavy, so it happens here and not in the server: a prover that crashes
or is killed costs one attempt of one job, nothing else.

* Parent death: the kernel sends SIGKILL when the server dies (Linux
  ``PR_SET_PDEATHSIG``), and EOF on stdin (the server's wake-up pipe) ends the
  loop elsewhere; no orphan keeps proving.
* Memory: ``--memory-mb`` sets RLIMIT_AS where the OS allows.
* Each circuit package is opened once per process (the prover caches the
  pk hash check and its onnxruntime session).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import select
import signal
import sys
import threading
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path

import numpy as np

log = logging.getLogger("verinfer.prove_worker")

STAGES = {"Running the circuit (witness)": "witness", "Proving": "proving",
          "Re-verifying the proof": "verifying"}


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _limit_memory(mb: int | None) -> None:
    if not mb:
        return
    try:
        import resource

        limit = mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError) as exc:  # not every OS allows it
        log.warning("cannot limit worker memory to %d MiB: %s", mb, exc)


def decode_input(spec: dict) -> np.ndarray:
    from verifier.tensors import numpy_dtype

    dtype = np.dtype(numpy_dtype(spec["datatype"])).newbyteorder("<")
    raw = base64.b64decode(spec["data"])
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(spec["shape"])


def encode_input(x: np.ndarray, datatype: str) -> str:
    arr = np.ascontiguousarray(x, x.dtype.newbyteorder("<"))
    return json.dumps({"datatype": datatype, "shape": list(x.shape),
                       "data": base64.b64encode(arr.tobytes()).decode()})


class _StageProgress:
    """A ``prover.progress.Progress`` look-alike that records stages in the job row."""

    def __init__(self, on_stage) -> None:
        self.on_stage = on_stage

    def note(self, message: str) -> None:
        pass

    @contextmanager
    def step(self, label: str):
        self.on_stage(STAGES.get(label, label))
        yield


class Worker:
    def __init__(self, settings, db: Path, worker_id: str, lease_s: float, max_attempts: int) -> None:
        from server.proofs.store import JobStore
        from server.receipts.keys import LiveKeys
        from server.receipts.store import ReceiptStore

        self.settings = settings
        self.id = worker_id
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.jobs = JobStore(db)
        self.receipts = ReceiptStore(db)  # read only
        self._keys = LiveKeys(settings)  # a rotation or revocation while it runs: the keys now
        self.provers: dict[str, object] = {}

    @property
    def keys(self):
        return self._keys.current()

    def prover(self, package_id: str):
        p = self.provers.get(package_id)
        if p is None:
            from prover.package import CircuitPackage
            from prover.proving import Prover
            from verifier.packages import package_dir

            pkg = CircuitPackage.open(package_dir(self.settings, package_id), check=["model.onnx"])
            p = self.provers[package_id] = Prover(pkg)
        return p

    def warm_up(self) -> None:
        """Open every registered package now, so the first proof does not pay for it."""
        from verifier.packages import list_names

        try:
            ids = set(list_names(self.settings).values())
        except Exception:  # noqa: BLE001
            return
        for pid in sorted(ids):
            try:
                self.prover(pid)
            except Exception as exc:  # a broken package fails its jobs, not the worker  # noqa: BLE001
                log.warning("cannot open package %s: %s", pid[:16], exc)

    def run_one(self) -> bool:
        claimed = self.jobs.claim(self.id, self.lease_s)
        if claimed is None:
            return False
        job, spec = claimed
        stop = threading.Event()
        stage = {"now": "starting"}

        def beat() -> None:  # (silent while EZKL holds the GIL: the supervisor renews too)
            while not stop.wait(self.lease_s / 3):
                try:
                    self.jobs.heartbeat(job.id, self.id, self.lease_s)
                except Exception as exc:  # keep proving; the supervisor decides  # noqa: BLE001
                    log.warning("heartbeat for %s failed: %s", job.id, exc)

        def on_stage(name: str) -> None:
            stage["now"] = name
            self.jobs.heartbeat(job.id, self.id, self.lease_s, stage=name)

        hb = threading.Thread(target=beat, daemon=True)
        hb.start()
        try:
            outcome, bundle_json = self.prove(job, spec, _StageProgress(on_stage))
            if not self.jobs.finish(job.id, outcome, bundle_json, worker=self.id):
                log.warning("job %s attempt %d: proven, but no longer ours (given up on and "
                            "queued again, or failed): result dropped", job.id, job.attempts)
        except Exception as exc:  # noqa: BLE001
            from verifier.errors import InputError, PackageError

            reason = f"{stage['now']}: {_first_line(exc)}"
            if isinstance(exc, InputError) and not isinstance(exc, PackageError):
                self.jobs.fail_now(job.id, reason, worker=self.id)  # the input can never be proven
            else:
                self.jobs.retry_or_fail(job.id, reason, self.max_attempts, expect_worker=self.id)
            log.warning("job %s attempt %d: %s", job.id, job.attempts, reason)
        finally:
            stop.set()
        return True

    def prove(self, job, spec: dict, progress) -> tuple[str, str]:
        from verifier.tensors import numpy_dtype

        prover = self.prover(job.package_id)
        m = prover.package.manifest
        x = decode_input(spec).astype(numpy_dtype(m.input.datatype), copy=False)
        receipt, statement = load_receipt(self.receipts, self.keys, job.receipt_id)
        signed_label = statement.predicate.label if statement is not None else None
        bundle = prover.prove(x, receipt=receipt, float_label=signed_label,
                              progress=progress)  # re-verified inside
        progress.on_stage("signing")
        return sign_bundle(job, m, bundle, receipt, statement, self.keys)


def load_receipt(receipts, keys, receipt_id: str | None) -> tuple[dict | None, object]:
    """The stored receipt a job links to and its verified statement (None, None without one)."""
    from verifier.errors import InputError
    from verifier.receipts_v2 import parse_any_receipt, verify_any_receipt

    if receipt_id is None:
        return None, None
    receipt = json.loads(receipts.get(receipt_id))
    statement = verify_any_receipt(parse_any_receipt(receipt), keys.jwks)
    if not isinstance(statement.predicate.label, int):
        raise InputError("the receipt is for a batch; proofs are for one sample")
    return receipt, statement


def sign_bundle(job, m, bundle, receipt: dict | None, statement, keys) -> tuple[str, str]:
    """A verified proof bundle -> ``(outcome, final bundle JSON)`` with the signed proof receipt
    and the agreement of the signed label with the circuit's. Used by the local worker and by
    the server for bundles proven on a Ray node (so no signing key leaves the server)."""
    from verifier.bundle import Agreement, ProofBundle
    from verifier.proof_receipts import (
        ProofPredicate,
        ProofReceipt,
        make_proof_statement,
        sha256_json,
        verify_proof_receipt,
    )
    from verifier.proofs import check_bundle_links, verify_receipt_link
    from verifier.receipts import sign_envelope

    circuit = bundle.outputs.label
    signed = statement.predicate.label if statement is not None else None
    agree = signed is not None and signed == circuit
    kid = keys.kid
    predicate = ProofPredicate(
        jobId=job.id,
        receiptId=job.receipt_id,
        receiptSha256=sha256_json(receipt) if receipt is not None else None,
        proofSha256=sha256_json(bundle.proof),
        packageId=m.package_id,
        modelSha256=m.model_sha256,
        inputDigest=bundle.input.digest,
        circuitLabel=circuit,
        signedLabel=signed,
        status="proven" if agree else "mismatch",
        time=_now(),
        keyId=kid,
    )
    envelope = sign_envelope(make_proof_statement(predicate), kid, keys.ed25519.sign)
    proof_receipt = ProofReceipt(id=job.id, envelope=envelope).model_dump(mode="json")
    fields = bundle.model_dump(mode="json")
    if signed is not None:  # the agreement the issue asks for: signed label vs circuit's
        fields["agreement"] = Agreement(float_label=signed, circuit_label=circuit,
                                        agree=agree).model_dump()
    fields["proof_receipt"] = proof_receipt
    final = ProofBundle.model_validate(fields)
    # the links once more, on the final object (the proof itself was verified by EZKL
    # inside prove(), or by the server for a Ray node's bundle; its bytes are unchanged)
    check_bundle_links(final, m)
    verify_proof_receipt(final.proof_receipt, final, keys.jwks)
    if statement is not None:  # a mismatch too must be of the receipt's model and input
        verify_receipt_link(statement, final, m, labels=agree)
    return predicate.status, final.model_dump_json()


def _now() -> str:
    from datetime import datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _wait_for_wake(timeout: float) -> bool:
    """Block until the server writes to stdin (work was queued) or ``timeout``; False on
    EOF (the server is gone)."""
    fd = sys.stdin.fileno()
    ready, _, _ = select.select([fd], [], [], timeout)
    if ready:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return False
        return bool(data)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m server.proofs.worker")
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--worker-id", required=True)
    ap.add_argument("--parent-pid", type=int, required=True)
    ap.add_argument("--lease-s", type=float, default=15.0)
    ap.add_argument("--max-attempts", type=int, default=3)
    ap.add_argument("--memory-mb", type=int, default=None)
    ap.add_argument("--poll-s", type=float, default=2.0)
    args = ap.parse_args(argv)
    die_with_parent(args.parent_pid)
    from prover.progress import private_stdio

    private_stdio()  # the heartbeat thread's warnings stay off EZKL's log while a job proves
    logging.basicConfig(level=logging.WARNING,  # EZKL logs every step at INFO
                        format=f"%(asctime)s worker {args.worker_id} %(message)s")
    _limit_memory(args.memory_mb)
    # The server stops its workers itself (SIGKILL, then gives the job back to the queue without
    # counting the attempt). systemd's stop sends SIGTERM to every process of the unit, these
    # too, whatever their session: a worker that exited on it was seen dead by the still
    # running server, which counted the attempt (the job failed on its last one) and restarted it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    from server.settings import ServerSettings

    settings = ServerSettings()  # VERINFER_HOME and key settings come from the server's env
    from prover.ezkl_backend import use_ezkl_dir

    use_ezkl_dir(settings)
    worker = Worker(settings, args.db, args.worker_id, args.lease_s, args.max_attempts)
    worker.warm_up()
    print(f"ready {args.worker_id}", flush=True)
    while True:
        if os.getppid() != args.parent_pid:
            return 0
        if worker.run_one():
            continue
        if not _wait_for_wake(args.poll_s):
            return 0


if __name__ == "__main__":
    sys.exit(main())
