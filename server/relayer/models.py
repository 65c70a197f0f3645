"""What the relayer answers with: the models served here (ONNX sessions with their
fixed-point layout) and where proofs come from (this process, or the server's proof queue)."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from verifier.errors import InputError, VerinferError
from verifier.fixedpoint import quantize

log = logging.getLogger("verinfer.relayer")


class ProofUnavailable(VerinferError):
    """A proof source gave up on this input for good (e.g. a job that failed every attempt)."""


class ProofPending(Exception):
    """Not now: the prover's queue is full or the proof is not ready; ask again later (the
    request is delayed, never failed for it)."""


# -- models served here -------------------------------------------------------------


@dataclass
class LocalModel:
    """A model the relayer can answer for: its ONNX session and fixed-point layout."""

    name: str
    model_id: bytes  # sha256 of model.onnx = the oracle's modelId
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: Any  # numpy dtype
    scale: int
    label_output: str
    session: Any  # onnxruntime.InferenceSession
    package: Any = None  # prover.package.CircuitPackage, when there is one (proof path)
    # public instances of the package's proofs: the input, then the public outputs (logits and
    # label, or the label alone: the manifest's public_output); None without a package
    num_instances: int | None = None
    # the label is the proofs' last public instance, where the oracle reads it (not so for a
    # graph that lists its label before its logits: Manifest.label_is_last_instance)
    label_last: bool = True

    @property
    def input_length(self) -> int:
        return math.prod(self.input_shape)

    def dequantize(self, q: list[int]) -> np.ndarray:
        """The float input whose fixed-point form is exactly ``q`` (x = q / 2**scale), or
        :class:`InputError` when the input dtype cannot hold it exactly."""
        x = (np.asarray(q, dtype=np.float64) / float(2**self.scale)).astype(self.input_dtype)
        x = x.reshape(self.input_shape)
        if quantize(x, self.scale) != list(q):
            raise InputError(f"input is not representable in {np.dtype(self.input_dtype).name} "
                             f"at scale {self.scale}")
        return x

    def label(self, x: np.ndarray) -> int:
        out = self.session.run([self.label_output], {self.input_name: x})[0]
        return int(np.ravel(out)[0])

    @classmethod
    def from_package(cls, package) -> LocalModel:
        m = package.manifest
        if m.input.scale is None:
            raise InputError(f"package {m.name}: manifest has no input scale")
        return cls(
            name=m.name,
            model_id=bytes.fromhex(m.model_sha256),
            input_name=m.input.name,
            input_shape=tuple(m.input.shape),
            input_dtype=np.float32 if m.input.datatype == "FP32" else np.float64,
            scale=int(m.input.scale),
            label_output=m.outputs[m.label_output].name,
            session=_session(package.path("model.onnx")),
            package=package,
            num_instances=m.num_instances,
            label_last=m.label_is_last_instance,
        )

    @classmethod
    def from_onnx(cls, name: str, onnx_path: Path, scale: int) -> LocalModel:
        """A model with no circuit package: signature path only."""
        from verifier.digests import sha256_file

        sess = _session(onnx_path)
        inp = sess.get_inputs()[0]
        outs = [o.name for o in sess.get_outputs()]
        if "label" not in outs:
            raise InputError(f"{onnx_path}: no 'label' output")
        shape = tuple(1 if not isinstance(d, int) or d <= 0 else d for d in inp.shape)
        dtype = np.float64 if inp.type == "tensor(double)" else np.float32
        return cls(name, bytes.fromhex(sha256_file(onnx_path)), inp.name, shape, dtype, scale,
                   "label", sess)


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def load_local_models(settings, names: list[str] | None = None) -> dict[bytes, LocalModel]:
    """The circuit packages registered in the data dir (``verinfer models add``), by model id.
    A package that does not open (other EZKL version, altered files) is logged and left out.
    Each package's manifest is read once, and EZKL is not imported here."""
    from prover.package import CircuitPackage
    from verifier.packages import find, list_names

    wanted = names if names is not None else list(list_names(settings))
    out: dict[bytes, LocalModel] = {}
    for name in wanted:
        try:
            pkg = CircuitPackage.of(find(settings, name), check=["model.onnx"])
            lm = LocalModel.from_package(pkg)
        except VerinferError as exc:
            if names is not None:
                raise
            log.warning("relayer: package %s left out: %s", name, exc)
            continue
        out[lm.model_id] = lm
    return out


# -- proofs ----------------------------------------------------------------------------


class ProofSource(Protocol):
    """Where proofs come from: in this process, or the server's proof job queue."""

    def prove(self, model: LocalModel, x: np.ndarray):  # -> verifier.bundle.ProofBundle
        ...


class InProcessProofs:
    """Proves in this process with :class:`prover.proving.Prover` (one per package, kept). The
    last ``keep`` proofs are kept too, by package and input: a request whose fulfilment could
    not be sent (the node refused it: the account ran out of funds; the node went down) is
    prepared again at the next poll, and gets the proof already made instead of another (as
    the server's proof queue reuses a job for the same input)."""

    keep = 64

    def __init__(self) -> None:
        from collections import OrderedDict

        self._provers: dict[str, Any] = {}
        self._recent: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def prove(self, model: LocalModel, x: np.ndarray):
        if model.package is None:
            raise InputError(f"model {model.name} has no circuit package: no proof path here")
        key = (model.package.id, x.dtype.str, x.shape, x.tobytes())
        with self._lock:
            bundle = self._recent.get(key)
            if bundle is not None:
                self._recent.move_to_end(key)
                return bundle
            prover = self._provers.get(model.package.id)
            if prover is None:
                from prover.proving import Prover

                prover = self._provers[model.package.id] = Prover(model.package)
            bundle = self._recent[key] = prover.prove(x)
            while len(self._recent) > self.keep:
                self._recent.popitem(last=False)
            return bundle


class QueueProofs:
    """Proves through the server's durable proof job queue (:class:`server.proofs.jobs.ProofJobs`:
    ``submit_x``/``get``/``bundle``), so the relayer inside ``verinfer serve`` shares the
    server's prover workers, their limits and their job records; a job for the same input is
    reused (idempotent). Models the queue cannot prove (no package for the served model file)
    are proven in this process instead."""

    def __init__(self, jobs, timeout_s: float | None = None,
                 fallback: ProofSource | None = None) -> None:
        self.jobs = jobs
        s = getattr(jobs, "settings", None)
        self.timeout_s = timeout_s or (
            float(s.proof_timeout_s) * int(s.proof_attempts) + 60 if s is not None else 1800.0)
        self.fallback = fallback or InProcessProofs()

    def prove(self, model: LocalModel, x: np.ndarray):
        from server.auth import RELAYER
        from server.errors import Gone
        from verifier.bundle import ProofBundle

        try:
            job, _ = self.jobs.submit_x(model.name, x, None, None, client=RELAYER)  # the reserved share
        except VerinferError as exc:
            if type(exc).__name__ in ("NoCircuitPackage", "NotFound"):
                return self.fallback.prove(model, x)
            if type(exc).__name__ == "QueueFull":
                raise ProofPending(str(exc)) from None
            raise
        end = time.monotonic() + self.timeout_s
        delay = 0.05
        while True:
            try:
                job = self.jobs.get(job.id, RELAYER)
                text = self.jobs.bundle(job.id, RELAYER) if job.status == "done" else None
            except Gone as exc:  # retention pruned it as it ended: not this input's fault
                raise ProofPending(f"{exc} (asked again at the next poll)") from None
            if text is not None:
                bundle = ProofBundle.model_validate_json(text)
                if bundle.model.model_sha256 != model.model_id.hex():
                    raise ProofUnavailable(f"proof job {job.id} proved another model file")
                return bundle
            if job.status == "failed":
                raise ProofUnavailable(f"proof job {job.id} failed: {job.error}")
            if time.monotonic() > end:  # the job goes on: the next poll finds it again
                raise ProofPending(f"proof job {job.id} still {job.status} after "
                                   f"{self.timeout_s:.0f} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)


def _reference_models(settings) -> dict[bytes, LocalModel]:
    """The reference models the server serves, for the signature path where they have no
    circuit package (input scale as the server's receipts use it)."""
    try:
        from models import REFERENCE_MODELS, get_reference_model
        from server.inference.registry import input_scale
        from verifier.digests import sha256_file
    except ImportError:
        return {}
    out = {}
    for name in settings.models if settings.models is not None else REFERENCE_MODELS:
        try:
            path = get_reference_model(name).onnx_path
            lm = LocalModel.from_onnx(name, path,
                                      input_scale(settings, name, sha256_file(path)))
        except Exception as exc:  # noqa: BLE001 - a model we cannot load is left out
            log.warning("relayer: reference model %s left out: %s", name, exc)
            continue
        out[lm.model_id] = lm
    return out
