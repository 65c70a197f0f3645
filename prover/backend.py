"""The proof system interface: the only door through which prover/ uses EZKL.

A backend works on files in a circuit folder (names fixed below), so a package
is a plain directory that any tool can inspect. Verification is not here: it
belongs to the trust root (:mod:`verifier.proofs`), which needs no prover.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

Visibility = Literal["public", "hashed"]

MODEL = "model.onnx"
SETTINGS = "settings.json"
COMPILED = "model.compiled"
VK = "vk.key"
PK = "pk.key"
SRS = "kzg.srs"
SOLIDITY = "Verifier.sol"


@dataclass(frozen=True)
class CircuitOptions:
    """Circuit settings chosen by hand or by ``verinfer models tune`` instead of the defaults.

    ``scale``: input and parameter scale (2^scale), None = EZKL's calibration picks;
    ``param_scale``: the parameters' scale when it differs from ``scale`` (which is then
    the input scale; needs ``scale``);
    ``decomp_base``/``decomp_legs``: range checks as legs digits of base;
    ``inner_cols``: None = the default rule (prover/build.py); ``max_logrows``: a cap
    that calibration lays the circuit out under (wider, not taller); ``max_ops``: "ezkl" (the
    graph as given) or "range-checks" (MaxPool and ArgMax rewritten exactly from ReLU and
    comparisons, prover/rewrite.py, with integer constants kept at scale 0)."""

    scale: int | None = None
    param_scale: int | None = None
    decomp_base: int = 512
    decomp_legs: int = 4
    inner_cols: int | None = None
    max_logrows: int | None = None
    max_ops: str = "ezkl"

    def as_dict(self) -> dict:
        # max_ops only when not the default: build keys and manifests made before it existed
        # stay as they were
        return {"scale": self.scale, "param_scale": self.param_scale,
                "decomp_base": self.decomp_base,
                "decomp_legs": self.decomp_legs, "inner_cols": self.inner_cols,
                "max_logrows": self.max_logrows} | (
                    {} if self.max_ops == "ezkl" else {"max_ops": self.max_ops})

    @property
    def label(self) -> str:
        scale = "auto" if self.scale is None else str(self.scale)
        if self.param_scale is not None and self.param_scale != self.scale:
            scale += f"/params {self.param_scale}"
        return (f"scale {scale}, decomp "
                f"{self.decomp_base}x{self.decomp_legs}, cols "
                f"{'auto' if self.inner_cols is None else self.inner_cols}"
                + (f", logrows<={self.max_logrows}" if self.max_logrows else "")
                + (", max via range checks" if self.max_ops == "range-checks" else ""))


@dataclass(frozen=True)
class CircuitShape:
    """What calibration settled on."""

    logrows: int
    input_scale: int
    param_scale: int
    output_scales: tuple[int, ...]
    num_rows: int
    inner_cols: int
    report: dict


@dataclass(frozen=True)
class Witness:
    """The circuit's forward pass for one input: what a proof would show."""

    path: Path
    outputs: tuple[tuple[float, ...], ...]  # each output, rescaled to floats


class ProofSystem(Protocol):
    name: str
    version: str

    def make_dev_srs(self, path: Path, logrows: int) -> None:
        """Write an insecure, locally generated SRS (development only)."""

    def calibrate(
        self, folder: Path, calibration_inputs: np.ndarray, visibility: Visibility,
        batch_symbols: tuple[str, ...] = (), inner_cols: int = 2,
        options: CircuitOptions | None = None,
    ) -> CircuitShape:
        """From ``folder/model.onnx`` make ``settings.json`` and ``model.compiled``
        (``options``: scale, decomposition and logrows cap; default: EZKL calibrates)."""

    def setup(self, folder: Path) -> None:
        """Make ``vk.key`` and ``pk.key`` with ``folder/kzg.srs``."""

    def witness(self, folder: Path, sample: np.ndarray, out: Path) -> Witness:
        """Run one sample through the compiled circuit."""

    def prove(self, folder: Path, witness: Path, out: Path) -> dict:
        """Prove a witness; returns the proof JSON (also written to ``out``)."""

    def solidity_verifier(self, folder: Path) -> str:
        """Source of a Solidity contract that verifies this circuit's proofs."""
