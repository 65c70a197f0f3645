"""Prove one input with an opened circuit package, into a proof bundle.

The proof is re-verified (by the trust root's check, not the prover's) before
a bundle is returned, and the bundle says whether the circuit's label agrees
with the float model's label for the same input.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from prover import backend as files
from prover.backend import ProofSystem
from prover.package import PROVE_ARTIFACTS, CircuitPackage
from prover.progress import SILENT, Progress, captured_output
from prover.workdirs import held_tempdir
from verifier.bundle import Agreement, CircuitOutputs, InputTensor, ModelRef, ProofBundle
from verifier.errors import InputError
from verifier.proofs import check_manifest_settings, verify_bundle


class InputOutOfRange(InputError):
    """The circuit cannot compute this input: a value (the input's, or one computed from it)
    is beyond the range its range checks were sized for at calibration. Never worth retrying."""


def _why_witness_failed(printed: str, fallback: str) -> str:
    """EZKL's own explanation, which it prints (e.g. a decomposition error naming the
    integer too large), else its exception's first line."""
    lines = [ln.strip() for ln in printed.splitlines() if ln.strip()]
    # EZKL's log records are there as their bare messages (prover.progress.captured_output)
    return next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else fallback)


class Prover:
    """Proves inputs for one package; opens, checks and caches what it needs once."""

    def __init__(self, package: CircuitPackage, backend: ProofSystem | None = None) -> None:
        from prover.ezkl_backend import EZKLBackend

        self.package = package
        self.backend = backend or EZKLBackend()
        package.check(PROVE_ARTIFACTS)  # hash pk, compiled circuit, ... once
        check_manifest_settings(package.manifest, package.path(files.SETTINGS))  # once, too
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(package.path(files.MODEL)), opts,
                                             providers=["CPUExecutionProvider"])

    def float_label(self, x: np.ndarray) -> int:
        """The float model's label for ``x`` (what a signed answer would say)."""
        m = self.package.manifest
        out = m.outputs[m.label_output].name
        return int(np.ravel(self._session.run([out], {m.input.name: x})[0])[0])

    def prove(self, x: np.ndarray, *, receipt: dict | None = None,
              float_label: int | None = None,
              progress: Progress = SILENT, log: Path | None = None) -> ProofBundle:
        """Prove ``x``. ``float_label``: the float model's label when the caller already
        has it (a signed answer's label); else it is computed here with onnxruntime."""
        m = self.package.manifest
        if tuple(x.shape) != m.input.shape:
            raise InputError(f"input shape {list(x.shape)}, the model takes {list(m.input.shape)}")
        # a worker killed mid-proof (a timeout, the OOM killer) left this folder in /tmp for
        # good: the next proof removes such folders
        with held_tempdir("verinfer-prove-") as tmp:
            with progress.step("Running the circuit (witness)"):
                wit = self._witness(x, tmp, log)
            with progress.step("Proving"), captured_output(log):
                proof = self.backend.prove(self.package.dir, wit.path, tmp / "proof.json")
        label = int(round(wit.outputs[m.label_output][0]))
        logits_index = next((i for i in range(len(m.outputs)) if i != m.label_output), None)
        if float_label is None:
            float_label = self.float_label(x)
        bundle = ProofBundle(
            model=ModelRef(name=m.name, package_id=m.package_id, model_sha256=m.model_sha256),
            input=InputTensor.of(m.input.name, x, m.input.datatype),
            proof=proof,
            instances=tuple(tuple(row) for row in proof["instances"]),
            outputs=CircuitOutputs(label=label, logits=wit.outputs[logits_index]
                                   if logits_index is not None else ()),
            agreement=Agreement(float_label=float_label, circuit_label=label,
                                agree=float_label == label),
            receipt=receipt,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        with progress.step("Re-verifying the proof"):
            verify_bundle(bundle, self.package.dir, manifest=self.package.manifest)  # checked above
        return bundle

    def _witness(self, x: np.ndarray, tmp: Path, log: Path | None):
        """The witness of ``x``; what EZKL prints goes to ``log`` (if given) and, when the
        circuit cannot compute ``x``, into one :class:`InputOutOfRange` line."""
        from prover.ezkl_backend import ProverError

        printed = tmp / "witness.log"
        try:
            with captured_output(printed):
                return self.backend.witness(self.package.dir, x, tmp / "witness.json")
        except ProverError as exc:
            why = _why_witness_failed(printed.read_text(errors="replace"), str(exc))
            raise InputOutOfRange(f"the circuit cannot compute this input: {why} (a value is beyond the "
                                  "range the circuit was calibrated for)") from None
        finally:
            if log is not None and printed.exists():
                with open(log, "ab") as f:
                    f.write(printed.read_bytes())
