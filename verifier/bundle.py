"""The proof bundle: one JSON file with everything an offline audit needs
besides the model's circuit package.

It names the circuit package (id and model digest), carries the input exactly
as it was proven, EZKL's proof with its public instances, what the circuit
computed (label, logits), and the agreement between the circuit's label and
the float model's label. A receipt (DSSE envelope) may be attached when the
proof was made for a signed answer.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError, field_validator

from verifier.base import Frozen as _Frozen
from verifier.base import first_error
from verifier.errors import InputError
from verifier.limits import MAX_BUNDLE_BYTES, read_bounded
from verifier.tensors import numpy_dtype, tensor_digest

BUNDLE_FORMAT = "verinfer.proof-bundle/v1"
BUNDLE_FILE = "bundle.json"


class ModelRef(_Frozen):
    name: str
    package_id: str
    model_sha256: str


class InputTensor(_Frozen):
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: tuple[float, ...]  # row-major
    digest: str  # verifier.tensors.tensor_digest of the tensor

    def array(self) -> np.ndarray:
        return np.asarray(self.data, dtype=numpy_dtype(self.datatype)).reshape(self.shape)

    @classmethod
    def of(cls, name: str, array: np.ndarray, datatype: str) -> InputTensor:
        return cls(
            name=name,
            datatype=datatype,
            shape=tuple(array.shape),
            data=tuple(float(v) for v in array.ravel(order="C")),
            digest=tensor_digest(array, datatype),
        )


class CircuitOutputs(_Frozen):
    label: int
    logits: tuple[float, ...]  # rescaled from the circuit's fixed point


class Agreement(_Frozen):
    """The circuit's label against the float model's label for the same input."""

    float_label: int
    circuit_label: int
    agree: bool


class ProofBundle(_Frozen):
    format: Literal["verinfer.proof-bundle/v1"] = BUNDLE_FORMAT
    model: ModelRef
    input: InputTensor
    proof: dict[str, Any]  # EZKL's proof JSON, as ezkl.prove wrote it
    instances: tuple[tuple[str, ...], ...]  # public instances, as in the proof
    outputs: CircuitOutputs
    agreement: Agreement
    receipt: dict[str, Any] | None = None  # DSSE envelope of the signed answer, if any
    # the server's signed proof receipt (verifier.proof_receipts) binding receipt and proof
    proof_receipt: dict[str, Any] | None = None
    created_at: str  # when it was written: a note for people, signed and checked by nothing

    @field_validator("proof")
    @classmethod
    def _proof_has_parts(cls, v: dict) -> dict:
        for key in ("proof", "instances"):
            if key not in v:
                raise ValueError(f"EZKL proof has no {key!r}")
        return v

    def write(self, out_dir: Path) -> Path:
        """Write ``out_dir/bundle.json`` atomically; returns its path."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / BUNDLE_FILE
        # a temporary file of its own: two writers into one folder shared 'bundle.json.tmp', so
        # one renamed the other's (half-written) file and the other's rename failed
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{BUNDLE_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.model_dump_json(indent=1))
            os.chmod(tmp, 0o644)  # as a plain write made it (mkstemp's is 0600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: Path) -> ProofBundle:
        """Read a bundle from its JSON file or from a directory holding ``bundle.json``."""
        path = Path(path)
        if path.is_dir():
            path = path / BUNDLE_FILE
        try:
            raw = read_bounded(path, MAX_BUNDLE_BYTES, "a proof bundle")
        except FileNotFoundError:
            raise InputError(f"{path}: no such bundle") from None
        except OSError as exc:
            raise InputError(f"{path}: cannot read bundle: {exc.strerror}") from None
        return cls.parse(raw, str(path))

    @classmethod
    def parse(cls, raw: bytes | str, where: str) -> ProofBundle:
        """A bundle from its JSON text (``where`` names it in errors), e.g. a sync proof's
        ``parameters.proof_bundle``."""
        if len(raw) > MAX_BUNDLE_BYTES:
            raise InputError(f"{where}: a proof bundle is over {MAX_BUNDLE_BYTES // 2**20} MiB, the most verinfer reads")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["type"] == "json_invalid":  # say where, in json's words
                try:
                    json.loads(raw)
                except ValueError as bad:
                    raise InputError(f"{where}: not JSON: {bad}") from None
            raise InputError(f"{where}: invalid proof bundle: {first_error(exc, 'bundle')}") from None
