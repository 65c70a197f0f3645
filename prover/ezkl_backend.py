"""EZKL (Halo2 + KZG on BN254) as the proof system.

Quirks handled here and nowhere else:
- ``create_evm_verifier`` writes the Solidity source, then tries to download
  solc to compile it, which fails offline; we keep the source and compile it
  with the pinned solcjs elsewhere (:mod:`contracts.solc`).
- EZKL prints its own tables to fds 1/2; callers wrap calls in
  :func:`prover.progress.captured_output`.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np

from prover.backend import (
    COMPILED,
    MODEL,
    PK,
    SETTINGS,
    SOLIDITY,
    SRS,
    VK,
    CircuitOptions,
    CircuitShape,
    Visibility,
    Witness,
)
from verifier.errors import UnsupportedModel, VerinferError

DECOMP_BASE = 512
DECOMP_LEGS = 4


class ProverError(VerinferError):
    """EZKL failed where it should not have (a bug or resource exhaustion)."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0][:400]


def use_ezkl_dir(settings) -> None:
    """Point EZKL's own cache into the data dir (``settings.ezkl_dir``) instead of ``~/.ezkl``.
    EZKL reads ``EZKL_REPO_PATH`` once, at its first use: call this before; an
    ``EZKL_REPO_PATH`` already set is kept (prover workers inherit the server's)."""
    os.environ.setdefault("EZKL_REPO_PATH", str(settings.ezkl_dir))


class EZKLBackend:
    name = "ezkl"

    def __init__(self) -> None:
        import ezkl

        self._ezkl = ezkl
        self.version = ezkl.__version__

    # -- SRS ---------------------------------------------------------------
    def make_dev_srs(self, path: Path, logrows: int) -> None:
        self._ezkl.gen_srs(str(path), logrows)

    # -- circuit -----------------------------------------------------------
    def calibrate(
        self, folder: Path, calibration_inputs: np.ndarray, visibility: Visibility,
        batch_symbols: tuple[str, ...] = (), inner_cols: int = 2,
        options: CircuitOptions | None = None,
    ) -> CircuitShape:
        ezkl = self._ezkl
        opts = options or CircuitOptions()
        args = ezkl.PyRunArgs()
        args.input_visibility = visibility
        args.output_visibility = "public"
        args.param_visibility = "fixed"
        args.variables = [(sym, 1) for sym in batch_symbols] or [("batch_size", 1)]
        # Range checks decompose values into DECOMP_LEGS digits of DECOMP_BASE.
        # EZKL's default (2 legs of 2^14) needs a 2^14-row table, which alone
        # forces logrows >= 15; 4 legs of 2^9 cover a wider range (2^36 vs 2^28)
        # with a 2^9-row table. Measured on iris_mlp: logrows 15 -> 11, prove
        # 9.5 s -> 0.75 s, pk 350 MB -> 22 MB; digits_cnn stays at logrows 15.
        args.decomp_base = opts.decomp_base
        args.decomp_legs = opts.decomp_legs
        args.num_inner_cols = inner_cols
        # The rewritten maxima (prover/rewrite.py) count with integer constants: at scale 0
        # the label stays an integer, where at the parameters' scale casting it back costs a
        # 2^scale-row range-check table.
        args.rebase_frac_zero_constants = opts.max_ops == "range-checks"
        # A fixed scale: calibration tries only it, with no rebase multiplier (EZKL's
        # search would otherwise pick multipliers that blow lookup tables up ~2^10-fold).
        split = opts.scale is not None and opts.param_scale not in (None, opts.scale)
        # EZKL's calibration gives inputs and parameters one scale: a split pair is
        # calibrated at the higher one (its logrows, lookup range and decomposition check
        # cover the lower one's smaller values), then laid out at the pair (below).
        top = max(opts.scale, opts.param_scale) if split else opts.scale
        fixed = {} if top is None else {"scales": [top], "scale_rebase_multiplier": [1]}
        if opts.max_logrows is not None:
            fixed["max_logrows"] = opts.max_logrows
        data = folder / "calibration.json"
        flat = np.asarray(calibration_inputs, dtype=np.float64).reshape(-1)
        data.write_text(json.dumps({"input_data": [flat.tolist()]}))
        model, settings = str(folder / MODEL), str(folder / SETTINGS)
        try:
            ezkl.gen_settings(model, settings, py_run_args=args)
        except RuntimeError as exc:
            raise UnsupportedModel(f"EZKL cannot turn this model into a circuit: "
                                   f"{_first_line(exc)}") from None
        try:
            ezkl.calibrate_settings(str(data), model, settings, "accuracy", **fixed)
            if split:
                _split_scales(ezkl, args, model, settings, opts.scale, opts.param_scale)
            ezkl.compile_circuit(model, str(folder / COMPILED), settings)
        except RuntimeError as exc:
            raise UnsupportedModel(f"EZKL could not calibrate this model: "
                                   f"{_first_line(exc)}") from None
        s = json.loads((folder / SETTINGS).read_text())
        ra = s["run_args"]
        return CircuitShape(
            logrows=ra["logrows"],
            input_scale=s["model_input_scales"][0],
            param_scale=ra["param_scale"],
            output_scales=tuple(s["model_output_scales"]),
            num_rows=s["num_rows"],
            inner_cols=ra["num_inner_cols"],
            report={
                "num_inner_cols": ra["num_inner_cols"],
                "decomp_base": ra["decomp_base"],
                "decomp_legs": ra["decomp_legs"],
                "input_scale": ra["input_scale"],
                "param_scale": ra["param_scale"],
                "scale_rebase_multiplier": ra["scale_rebase_multiplier"],
                "lookup_range": ra["lookup_range"],
                "logrows": ra["logrows"],
                "num_rows": s["num_rows"],
                "required_range_checks": s.get("required_range_checks"),
            } | ({"rebase_frac_zero_constants": True} if ra["rebase_frac_zero_constants"]
                 else {}),
        )

    def setup(self, folder: Path) -> None:
        try:
            ok = self._ezkl.setup(
                str(folder / COMPILED), str(folder / VK), str(folder / PK), str(folder / SRS)
            )
        except RuntimeError as exc:
            raise ProverError(f"EZKL setup failed: {_first_line(exc)}") from None
        if not ok:
            raise ProverError("EZKL setup failed")

    # -- proving -----------------------------------------------------------
    def witness(self, folder: Path, sample: np.ndarray, out: Path) -> Witness:
        data = out.with_suffix(".input.json")
        flat = np.asarray(sample, dtype=np.float64).reshape(-1)
        data.write_text(json.dumps({"input_data": [flat.tolist()]}))
        try:
            self._ezkl.gen_witness(str(data), str(folder / COMPILED), str(out))
        except RuntimeError as exc:
            raise ProverError(f"EZKL could not run the circuit: {_first_line(exc)}") from None
        finally:
            data.unlink(missing_ok=True)
        rescaled = json.loads(out.read_text())["pretty_elements"]["rescaled_outputs"]
        return Witness(path=out, outputs=tuple(tuple(float(v) for v in o) for o in rescaled))

    def prove(self, folder: Path, witness: Path, out: Path) -> dict:
        try:
            self._ezkl.prove(str(witness), str(folder / COMPILED), str(folder / PK), str(out),
                             str(folder / SRS))
        except RuntimeError as exc:
            raise ProverError(f"EZKL proving failed: {_first_line(exc)}") from None
        return json.loads(out.read_text())

    # -- on chain ----------------------------------------------------------
    def solidity_verifier(self, folder: Path) -> str:
        sol, abi = folder / SOLIDITY, folder / "Verifier.ezkl-abi.json"

        async def render() -> None:
            await self._ezkl.create_evm_verifier(
                str(folder / VK), str(folder / SETTINGS), str(sol), str(abi), str(folder / SRS)
            )

        try:
            asyncio.run(render())
        except RuntimeError:
            # Expected offline: the source is written before EZKL tries to
            # download solc. Anything else leaves no source behind.
            pass
        abi.unlink(missing_ok=True)
        if not sol.is_file() or sol.stat().st_size == 0:
            raise ProverError("EZKL did not write a Solidity verifier")
        return sol.read_text()


def _split_scales(ezkl, args, model: str, settings: str, input_scale: int,
                  param_scale: int) -> None:
    """Settings at input scale ``input_scale`` and parameter scale ``param_scale``, with the
    logrows and lookup range calibration found at the higher of the two."""
    ra = json.loads(Path(settings).read_text())["run_args"]
    args.input_scale, args.param_scale = input_scale, param_scale
    args.scale_rebase_multiplier = 1
    args.logrows, args.lookup_range = ra["logrows"], tuple(ra["lookup_range"])
    ezkl.gen_settings(model, settings, py_run_args=args)

