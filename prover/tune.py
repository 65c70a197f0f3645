"""``verinfer models tune``: a search over EZKL's circuit settings that keeps every label.

Each candidate (scale, range-check decomposition, inner columns, a logrows cap) is
calibrated on the model's calibration samples, which is cheap and gives its
logrows and rows. Candidates with more logrows than today's defaults are pruned
there, before any key is made. The rest run every evaluation sample through the
circuit (the held-out split for reference models, the calibration samples for
others); one label different from the float model's and the candidate is out.
Survivors are measured: key setup, pk size, one proof (time), its verification
(time), and ``verifyProof`` gas of the compiled Solidity verifier on the
embedded chain (py-evm). The Pareto front over prove time, pk size and gas is
reported; the best candidate for the objective is what ``models tune`` registers.

The circuit's arithmetic (so its labels) depends only on the scales and lookup
range that calibration settles on; columns and decomposition change the layout,
not the values. Agreement is computed once per distinct arithmetic and shared.

A model with MaxPool or ArgMax is also tried with them rewritten from ReLU and
comparisons (``max_ops="range-checks"``, prover/rewrite.py): EZKL lays a maximum out
as a sort, whose shuffle and dynamic-lookup arguments raise the circuit's degree from 5
to 6, doubling the extended domain every proof computes on. The rewrite is exact in
the circuit; its labels are checked against the user's model like any candidate's.

Order of the search (bounded by the budget): today's defaults (the baseline);
lower scales with the baseline's layout, downwards until one changes a label;
then the layouts (decomposition x columns, each with the maxima rewritten first,
then as given; and a logrows cap) for the lowest
scale that kept every label and for the baseline's scale; then full measurements,
most promising first by their calibrated logrows and columns. Candidates whose
verifier likely fits EIP-170 (guessed from the defaults' verifier and the number
of columns, blocks included) are calibrated and measured before wider ones; once a
verifier N columns wide is over the limit, no candidate as wide or wider is keyed.

Separate input and parameter scales (``CircuitOptions.param_scale``) are measured
when given as candidates; the built-in plan does not search them, because EZKL's
rows do not depend on the scales and the pair is calibrated at the higher of the
two (see prover/ezkl_backend.py), so a split pair is never smaller than that scale.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from contracts.solc import EIP170_LIMIT
from prover import backend as files
from prover import onnx_model, srs
from prover.backend import CircuitOptions, ProofSystem
from prover.build import ModelSource, calibrate, float_labels, samples_for
from prover.progress import SILENT, Progress, captured_output
from prover.rewrite import rewrite_max_ops
from prover.workdirs import held_dir, release, remove_dead
from verifier.config import Settings
from verifier.errors import InputError, VerinferError

OBJECTIVES = ("prove", "pk", "gas")
METRIC = {"prove": "prove_s", "pk": "pk_bytes", "gas": "verify_gas"}
FRONT_METRICS = ("prove_s", "pk_bytes", "verify_gas")
# --verifier offline: proofs checked off chain only (verinfer verify, audit, HTTP clients), so
# a verifier contract over EIP-170 is no reason to leave a circuit out, and gas is no figure
OFFLINE_METRICS = ("prove_s", "pk_bytes", "verify_s")
VERIFIERS = ("chain", "offline")
SCALES = (8, 6, 5, 4, 3)  # tried downwards from the first
FALLBACK_SCALE = 10  # when the first step down already changes a label
DECOMPS = ((512, 4), (4096, 2), (2048, 2), (1024, 3), (512, 3))
COLUMNS = (1, 2, 3, 4, 8)
# Runtime bytes a Solidity verifier grows by per inner column, at least (measured with
# EZKL 23.0.5: digits_cnn 2 -> 3 columns +5.7 KB, 2 -> 8 +3.7 KB per column; the Sigmoid
# bench model 1 -> 4 +6.4 KB per column). Used only to measure likely deployable
# candidates first; the compiled size decides.
VERIFIER_BYTES_PER_COLUMN = 3_000
# A proof that took less than this is timed twice (the faster run counts): one short
# timing on a busy machine says little.
PROVE_REPEAT_UNDER_S = 20.0


@dataclass
class Measurement:
    """One candidate and what was found for it."""

    options: CircuitOptions
    # ok | labels-changed | verifier-too-large | pruned | failed | not-reached
    status: str = "planned"
    reason: str = ""
    baseline: bool = False
    logrows: int | None = None
    num_rows: int | None = None
    inner_cols: int | None = None
    input_scale: int | None = None
    arithmetic: tuple | None = None  # what the labels depend on (see module doc)
    # EZKL's shuffles and dynamic lookups (its sorts, for MaxPool and ArgMax): any of them
    # raises the circuit's degree to 6, doubling halo2's extended domain
    sort_args: int | None = None
    agreement: dict | None = None
    pk_bytes: int | None = None
    setup_s: float | None = None
    prove_s: float | None = None
    verify_s: float | None = None
    verify_gas: int | None = None
    verifier_runtime_bytes: int | None = None
    # measured in an offline search with a verifier contract over EIP-170: no gas figure
    offline_only: bool = False
    folder: Path | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return "defaults" if self.baseline else self.options.label

    @property
    def measured(self) -> bool:
        return self.status == "ok" and all(getattr(self, m) is not None for m in (
            OFFLINE_METRICS if self.offline_only else FRONT_METRICS))

    @property
    def width(self) -> int:
        """Advice columns per variable: the inner columns times EZKL's blocks (a circuit
        whose rows do not fit under its logrows, as under a logrows cap, is laid out in
        several blocks of columns side by side)."""
        cols = self.inner_cols or 2
        if not self.num_rows or not self.logrows:
            return cols
        return cols * max(1, math.ceil(self.num_rows / 2 ** self.logrows))

    def verifier_guess(self, base: Measurement) -> int:
        """Likely runtime size of this candidate's verifier, from the defaults' measured one."""
        return (base.verifier_runtime_bytes or 0) + VERIFIER_BYTES_PER_COLUMN * (
            self.width - base.width)

    def estimate(self, objective: str) -> float:
        """Cost guess from calibration alone, to order the expensive measurements."""
        cols = self.inner_cols or 2
        if objective == "gas":
            return cols * 64 + (self.logrows or 30) + (8 if self.sort_args else 0)
        return 2.0 ** (self.logrows or 30) * (cols + 2) * (2 if self.sort_args else 1)

    def as_dict(self) -> dict:
        return {"options": self.options.as_dict(), "label": self.label, "baseline": self.baseline,
                "status": self.status, "reason": self.reason, "logrows": self.logrows,
                "num_rows": self.num_rows, "inner_cols": self.inner_cols,
                "sort_args": self.sort_args, "input_scale": self.input_scale, "agreement": self.agreement,
                "pk_bytes": self.pk_bytes, "setup_s": self.setup_s, "prove_s": self.prove_s,
                "verify_s": self.verify_s, "verify_gas": self.verify_gas,
                "verifier_runtime_bytes": self.verifier_runtime_bytes} | (
                    {"offline_only": True} if self.offline_only else {})


@dataclass
class TuneResult:
    objective: str
    budget_s: float
    elapsed_s: float
    eval_set: str
    baseline: Measurement
    measurements: list[Measurement]
    front: list[Measurement]
    chosen: Measurement
    chain: str | None = None  # where verifyProof gas was measured
    public_output: str = "logits"  # the circuits' public output (models add --public-output)
    verifier: str = "chain"  # chain: only deployable verifiers; offline: any (--verifier)
    # why the graph's maxima were not tried rewritten although it has some (a reference
    # model's name), else None
    rewrite_not_tried: str | None = None

    def record(self) -> dict:
        """What the manifest keeps of the search."""
        base = self.baseline

        def ratio(m: Measurement, key: str) -> float | None:
            a, b = getattr(m, key), getattr(base, key)
            return round(a / b, 4) if a is not None and b else None

        return {
            "objective": self.objective, "budget_s": round(self.budget_s, 1),
            "elapsed_s": round(self.elapsed_s, 1), "eval_set": self.eval_set,
            "gas_measured_on": self.chain, "public_output": self.public_output,
            "verifier": self.verifier,
            "baseline": base.as_dict(),
            "chosen": self.chosen.as_dict()
            | {"vs_baseline": {k: ratio(self.chosen, k) for k in FRONT_METRICS}},
            "front": [m.label for m in self.front],
            "candidates": [m.as_dict() for m in self.measurements],
        }


def pareto_front(ms: list[Measurement], verifier: str = "chain") -> list[Measurement]:
    """Fully measured candidates that no other beats on every figure (prove time, pk size and
    ``verifyProof`` gas; for ``verifier="offline"``, verification time instead of gas)."""
    offline = verifier == "offline"
    ok = [m for m in ms if m.measured and (offline or not m.offline_only)]
    keys = OFFLINE_METRICS if offline else FRONT_METRICS

    def dominates(a: Measurement, b: Measurement) -> bool:
        av = [getattr(a, k) for k in keys]
        bv = [getattr(b, k) for k in keys]
        return all(x <= y for x, y in zip(av, bv)) and av != bv

    return sorted((m for m in ok if not any(dominates(o, m) for o in ok)),
                  key=lambda m: getattr(m, METRIC["prove"]))


def choose(ms: list[Measurement], objective: str, verifier: str = "chain") -> Measurement:
    """The best fully measured candidate for ``objective``; only candidates whose labels
    all agree with the float model's are eligible (``status == "ok"``), and for
    ``verifier="chain"`` only those whose verifier contract fits EIP-170."""
    key = METRIC[objective]
    eligible = [m for m in ms if m.measured and m.agreement and m.agreement["percent"] == 100.0
                and (verifier == "offline" or (m.verifier_runtime_bytes or 0) <= EIP170_LIMIT)]
    if not eligible:
        if verifier == "chain" and any(m.status == "verifier-too-large" for m in ms):
            # measured only once its labels were kept: the size, not the labels, ruled it out
            raise SearchFailed("no candidate that kept every label has a Solidity verifier "
                               "within EIP-170's 24,576 bytes: no "
                               "chain would deploy one; '--verifier offline' keeps them for "
                               "proofs checked off chain")
        raise SearchFailed("no candidate kept every label (not even the defaults)")
    others = [k for k in (OFFLINE_METRICS if verifier == "offline" else FRONT_METRICS) if k != key]
    return min(eligible, key=lambda m: (getattr(m, key), *(getattr(m, k) for k in others)))


class SearchFailed(VerinferError):
    """The search found nothing it may register."""


class _Search:
    def __init__(self, settings: Settings, source: ModelSource, objective: str,
                 budget_s: float, progress: Progress, backend: ProofSystem,
                 visibility: str, public_output: str = "logits", verifier: str = "chain",
                 rewrite: bool = True) -> None:
        self.settings, self.source, self.objective = settings, source, objective
        self.verifier = verifier
        self.budget_s, self.progress, self.backend = budget_s, progress, backend
        self.visibility = visibility
        self.t0 = time.perf_counter()
        model = onnx_model.load(source.onnx_path)
        added = onnx_model.ensure_label_output(model)
        self.info = onnx_model.describe(model, added)
        self.onnx_bytes = model.SerializeToString() if added else source.onnx_path.read_bytes()
        n_in = int(np.prod(self.info.input.shape))
        self.samples = samples_for(source.calibration, self.info.input.shape)
        self.eval_x = np.asarray(source.eval_inputs, np.float32).reshape(-1, n_in)
        self.floats = float_labels(self.onnx_bytes, self.info, self.eval_x)
        # Closest calls first: a label that flips is found after a few witnesses.
        self.order = _by_margin(self.onnx_bytes, self.info, self.eval_x)
        self.public_output = public_output
        if onnx_model.apply_public_output(model, public_output):  # the circuit as build_package makes it
            self.info = onnx_model.describe(model, added)
            self.onnx_bytes = model.SerializeToString()
        # the graph with its maxima rewritten (max_ops "range-checks"), when there are any
        self.rewritten = (model.SerializeToString() if rewrite_max_ops(model) else None)
        self.rewrite_not_tried = None  # why there is a rewrite and it is left out
        if self.rewritten is not None and not rewrite:
            self.rewritten = None
            self.rewrite_not_tried = (
                f"the server serves {source.name} from its reference file; tune it under "
                f"another --name to try its MaxPool/ArgMax rewritten")
            progress.note(f"  (not tried: {self.rewrite_not_tried})")
        # Beside the builds' working folders, held the same way (its proving keys are hundreds
        # of MB; in /tmp a killed search's stayed for good): a build or search after a killed
        # one removes it.
        settings.packages_dir.mkdir(parents=True, exist_ok=True)
        remove_dead(settings.packages_dir, ".tmp-")
        self.root, self._held = held_dir(".tmp-tune-", settings.packages_dir)
        self.log = self.root / "ezkl.log"
        self.agreements: dict[tuple, dict] = {}
        self.chain = None
        self.chain_name = None
        self.baseline_s = 0.0
        # per max_ops, the narrowest width (see Measurement.width) seen with a verifier over
        # EIP-170: as wide or wider ones are not keyed (the rewritten maxima's verifiers are
        # smaller at the same width: digits_cnn 3 columns 18,775 bytes against 25,282)
        self.too_wide: dict[str, int] = {}
        self._stack = contextlib.ExitStack()
        self.ms: list[Measurement] = []

    # -- steps -------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over_budget(self) -> bool:
        return self.elapsed() > self.budget_s

    def note(self, m: Measurement, text: str) -> None:
        self.progress.note(f"  [{self.elapsed():5.0f}s] {m.label}: {text}")

    def calibrate(self, m: Measurement) -> bool:
        rewritten = m.options.max_ops == "range-checks"
        # as build_package refuses them: a rewrite the name cannot be served with, or none
        why = None if not rewritten or self.rewritten is not None else (
            self.rewrite_not_tried or "max_ops range-checks: nothing in the model to rewrite")
        if why:
            self.ms.append(m)
            m.status, m.reason = "failed", why
            self.note(m, m.reason)
            return False
        folder = self.root / f"c{len(self.ms)}"
        folder.mkdir()
        (folder / files.MODEL).write_bytes(self.rewritten if rewritten else self.onnx_bytes)
        m.folder = folder
        self.ms.append(m)
        try:
            with captured_output(self.log):
                shape = calibrate(self.backend, folder, self.samples, self.visibility,
                                  self.info.batch_symbols, m.options)
        except VerinferError as exc:
            m.status, m.reason = "failed", str(exc)[:200]
            self.note(m, f"calibration failed ({m.reason[:80]})")
            return False
        s = json.loads((folder / files.SETTINGS).read_text())
        ra = s["run_args"]
        m.logrows, m.num_rows, m.inner_cols = shape.logrows, shape.num_rows, shape.inner_cols
        m.input_scale = shape.input_scale
        m.sort_args = s.get("num_shuffles", 0) + s.get("num_dynamic_lookups", 0)
        m.arithmetic = (ra["input_scale"], ra["param_scale"], ra["scale_rebase_multiplier"],
                        tuple(ra["lookup_range"]), ra["input_visibility"],
                        ra["rebase_frac_zero_constants"], rewritten)
        return True

    def agree(self, m: Measurement) -> bool:
        if m.arithmetic not in self.agreements:
            self.agreements[m.arithmetic] = self._agreement(m.folder)
        m.agreement = self.agreements[m.arithmetic]
        if m.agreement["percent"] != 100.0:
            m.status = "labels-changed"
            m.reason = (f"label differs from the float model's on {self.source.eval_set} "
                        f"sample {m.agreement['disagreeing_indices'][0]}")
            self.note(m, f"logrows {m.logrows}: OUT, {m.reason}")
            return False
        return True

    def _agreement(self, folder: Path) -> dict:
        out = self.info.label_output
        wit = self.root / "witness.json"
        checked = 0
        with captured_output(self.log):
            for i in self.order:
                label = int(round(self.backend.witness(folder, self.eval_x[i], wit)
                                  .outputs[out][0]))
                checked += 1
                if label != self.floats[i]:  # one changed label is enough to reject
                    return {"samples": len(self.eval_x), "checked": checked, "agree": checked - 1,
                            "percent": round(100.0 * (checked - 1) / checked, 3),
                            "disagreeing_indices": [int(i)],
                            "float_label": int(self.floats[i]), "circuit_label": label}
        return {"samples": len(self.eval_x), "checked": checked, "agree": checked,
                "percent": 100.0, "disagreeing_indices": []}

    def measure(self, m: Measurement) -> None:
        """Keys, one timed proof and its verification, the verifier's gas."""
        from contracts.solc import compile_sources
        from verifier.onchain import proof_parts
        from verifier.proofs import ezkl_verify

        folder = m.folder
        try:
            with captured_output(self.log):
                info = srs.dev_srs(self.settings.srs_dir, m.logrows, self.backend)
                srs.place(info, folder / files.SRS)
                t0 = time.perf_counter()
                self.backend.setup(folder)
                m.setup_s = round(time.perf_counter() - t0, 3)
                m.pk_bytes = (folder / files.PK).stat().st_size
                wit = self.backend.witness(folder, self.eval_x[0], folder / "witness.json")
                times = []
                while len(times) < 2 and sum(times) < PROVE_REPEAT_UNDER_S:
                    t0 = time.perf_counter()
                    proof = self.backend.prove(folder, wit.path, folder / "proof.json")
                    times.append(time.perf_counter() - t0)
                m.prove_s = round(min(times), 3)
                t0 = time.perf_counter()
                ezkl_verify(proof, folder / files.SETTINGS, folder / files.VK, folder / files.SRS)
                m.verify_s = round(time.perf_counter() - t0, 4)
                sol = self.backend.solidity_verifier(folder)
                compiled = compile_sources({files.SOLIDITY: sol})["Halo2Verifier"]
            m.verifier_runtime_bytes = compiled.runtime_size
            if compiled.runtime_size > EIP170_LIMIT and self.offline:  # checked off chain only
                m.offline_only = True
            elif compiled.runtime_size > EIP170_LIMIT:  # no chain would deploy its verifier
                ops = m.options.max_ops
                self.too_wide[ops] = min(self.too_wide.get(ops, m.width), m.width)
                m.status = "verifier-too-large"
                m.reason = f"verifier {compiled.runtime_size:,} bytes, over EIP-170's 24,576"
                self.note(m, f"logrows {m.logrows}, prove {m.prove_s:.2f}s: OUT, {m.reason}")
                return
            else:
                m.verify_gas = self._gas(compiled, *proof_parts(proof))
        except VerinferError as exc:
            m.status, m.reason = "failed", str(exc)[:200]
            self.note(m, f"measurement failed ({m.reason[:80]})")
            return
        finally:
            (folder / files.PK).unlink(missing_ok=True)  # hundreds of MB each
        m.status = "ok"
        gas = (f"verifier {m.verifier_runtime_bytes:,} bytes (offline only)" if m.offline_only
               else f"verifyProof {m.verify_gas:,} gas")
        self.note(m, f"logrows {m.logrows}, {m.num_rows:,} rows, pk {m.pk_bytes / 1e6:.0f} MB, "
                  f"prove {m.prove_s:.2f}s, verify {m.verify_s * 1000:.0f} ms, {gas}")

    def _gas(self, compiled, proof: bytes, instances: list[int]) -> int:
        """``verifyProof`` as a transaction: on a local anvil when installed, else on the
        embedded py-evm chain (its pure-Python pairing takes ~45 s per call)."""
        from contracts.anvil import anvil_path, local_anvil
        from contracts.chain import connect

        if self.chain is None:
            binary = anvil_path()
            if binary is not None:
                self.chain = connect(self._stack.enter_context(local_anvil(binary)))
                self.chain_name = "anvil"
            else:
                self.chain, self.chain_name = connect(), "embedded py-evm"
        address, _ = self.chain.deploy(compiled.abi, compiled.bytecode)
        v = self.chain.contract(address, compiled.abi)
        # a fixed gas limit: no estimate, so the verifier runs once
        receipt = self.chain.transact(v.functions.verifyProof(proof, instances), gas=8_000_000)
        return int(receipt["gasUsed"])

    # -- the search --------------------------------------------------------
    def run(self, candidates: list[CircuitOptions] | None) -> TuneResult:
        p = self.progress
        p.note(f"Tuning {self.source.name} for {self.objective}"
               f"{', verified offline' if self.offline else ''} (budget "
               f"{self.budget_s / 60:.1f} min; labels checked on {len(self.eval_x)} "
               f"{self.source.eval_set})")
        base = Measurement(CircuitOptions(), baseline=True)
        if not self.calibrate(base):
            raise SearchFailed(f"the default settings do not calibrate: {base.reason}")
        self.agree(base)
        self.measure(base)
        # The budget bounds the search, not the reference it is measured against.
        self.t0, self.baseline_s = time.perf_counter(), self.elapsed()
        if candidates is not None:
            self._run_list(base, candidates)
        else:
            self._run_plan(base)
        for m in self.ms:
            if m.status in ("calibrated", "planned"):
                m.status, m.reason = "not-reached", "budget spent"
        front = pareto_front(self.ms, self.verifier)
        chosen = choose(self.ms, self.objective, self.verifier)
        return TuneResult(self.objective, self.budget_s, self.baseline_s + self.elapsed(),
                          self.source.eval_set,
                          base, self.ms, front, chosen, self.chain_name, self.public_output,
                          self.verifier, self.rewrite_not_tried)

    def _run_list(self, base: Measurement, candidates: list[CircuitOptions]) -> None:
        for opts in candidates:
            if self.over_budget():
                self.ms.append(Measurement(opts, status="not-reached", reason="budget spent"))
                continue
            m = Measurement(opts)
            if self.calibrate(m) and self._worth(m, base) and self.agree(m):
                self.measure(m)

    def _worth(self, m: Measurement, base: Measurement) -> bool:
        """Prune by logrows before any key is made; skip exact duplicates."""
        if base.logrows is not None and m.logrows > base.logrows:
            m.status, m.reason = "pruned", f"logrows {m.logrows} > defaults' {base.logrows}"
            self.note(m, m.reason)
            return False
        over = self.too_wide.get(m.options.max_ops)
        if over is not None and m.width >= over and not self.offline:
            m.status = "verifier-too-large"
            m.reason = (f"{m.width} columns wide: the verifier of a circuit {over} wide "
                        f"(maxima {m.options.max_ops}) was already over EIP-170's 24,576 bytes")
            self.note(m, m.reason)
            return False
        for o in self.ms:
            if o is not m and o.status == "ok" and (o.logrows, o.num_rows, o.inner_cols,
                                                    o.arithmetic) == (
                    m.logrows, m.num_rows, m.inner_cols, m.arithmetic):
                m.status, m.reason = "pruned", f"same circuit as {o.label}"
                self.note(m, m.reason)
                return False
        return True

    def _run_plan(self, base: Measurement) -> None:
        layout = dict(decomp_base=512, decomp_legs=4, inner_cols=base.inner_cols)
        kept: list[int] = []
        # 1. lower scales, baseline layout, downwards until one changes a label
        # (each kept scale costs a pass over every evaluation sample; a change is
        # usually found in a few, closest calls first)
        top = base.input_scale or 14
        for s in [s for s in SCALES if s < top]:
            if self.over_budget():
                break
            m = Measurement(CircuitOptions(scale=s, **layout))
            if not self.calibrate(m):
                continue
            if not self.agree(m):
                break  # lower still would be worse; none kept: FALLBACK_SCALE below
            kept.append(s)
            self.note(m, f"logrows {m.logrows}, {m.num_rows:,} rows: labels kept")
            m.status = "calibrated"
        if not kept and FALLBACK_SCALE < top and not self.over_budget():
            m = Measurement(CircuitOptions(scale=FALLBACK_SCALE, **layout))
            if self.calibrate(m) and self.agree(m):
                kept.append(FALLBACK_SCALE)
                m.status = "calibrated"
        # 2. layouts for the lowest scale kept and the defaults' scale: the columns whose
        # verifier likely fits EIP-170 first (widest first, or narrowest for gas), the
        # decompositions with fewest legs (fewest rows) first
        scales = sorted(kept)[:1] + [base.input_scale]
        guess = {c: Measurement(CircuitOptions(), inner_cols=c).verifier_guess(base)
                 for c in COLUMNS}
        cols = sorted(COLUMNS, key=lambda c: (self._over(guess[c]),
                                              c if self.objective == "gas" else -c))
        decomps = sorted(DECOMPS, key=lambda d: d[1])
        # each layout with the graph's maxima rewritten first (when it has any), then as given
        max_ops = ("range-checks", "ezkl") if self.rewritten is not None else ("ezkl",)
        for s in scales:
            for c in cols:
                for (base_, legs), ops in itertools.product(decomps, max_ops):
                    if self.over_budget() or self.elapsed() > 0.5 * self.budget_s:
                        break
                    opts = CircuitOptions(scale=s, decomp_base=base_, decomp_legs=legs,
                                          inner_cols=c, max_ops=ops)
                    if any(o.options == opts for o in self.ms):
                        continue
                    m = Measurement(opts)
                    if self.calibrate(m):
                        m.status = "calibrated"
        # 3. a logrows cap one below for the most promising circuits found
        # (calibration then lays the circuit out wider, not taller)
        calibrated = sorted((m for m in self.ms if m.status == "calibrated"),
                            key=lambda m: (self._over(m.verifier_guess(base)),
                                           m.estimate(self.objective)))
        for m in calibrated[:2]:
            if self.over_budget() or self.elapsed() > 0.5 * self.budget_s or m.logrows <= 10:
                break
            capped = Measurement(replace(m.options, max_logrows=m.logrows - 1))
            if self.calibrate(capped):
                capped.status = "calibrated"
        # 4. full measurements, most promising first
        # (likely deployable ones first: a verifier over EIP-170 is out whatever its speed)
        todo = [m for m in self.ms if m.status == "calibrated"]
        for m in sorted(todo, key=lambda m: (self._over(m.verifier_guess(base)),
                                             m.estimate(self.objective))):
            if self.over_budget():
                break
            if self._worth(m, base) and self.agree(m):
                self.measure(m)

    @property
    def offline(self) -> bool:
        return self.verifier == "offline"

    def _over(self, verifier_bytes: int) -> bool:
        """Whether a verifier this size is out (and so measured last): never, offline."""
        return not self.offline and verifier_bytes > EIP170_LIMIT

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            release(self.root, self._held)


def _by_margin(onnx_bytes: bytes, info, x: np.ndarray) -> list[int]:
    """Sample indices, smallest gap between the top two logits first."""
    import onnxruntime as ort

    logits_i = next((i for i in range(len(info.outputs)) if i != info.label_output), None)
    if logits_i is None:
        return list(range(len(x)))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    dtype = np.float32 if info.input.datatype == "FP32" else np.float64
    gaps = []
    for s in x:
        out = np.ravel(sess.run([info.outputs[logits_i].name],
                                {info.input.name: s.reshape(info.input.shape).astype(dtype)})[0])
        top = np.sort(out)[-2:] if out.size > 1 else np.array([0.0, out[0]])
        gaps.append(float(top[1] - top[0]))
    return [int(i) for i in np.argsort(gaps, kind="stable")]


def search(settings: Settings, source: ModelSource, *, objective: str = "prove",
           budget_minutes: float = 10.0, progress: Progress = SILENT,
           candidates: list[CircuitOptions] | None = None, backend: ProofSystem | None = None,
           visibility: str = "public", public_output: str = "logits",
           verifier: str = "chain", rewrite: bool = True) -> TuneResult:
    """Run the search (``candidates``: these instead of the built-in plan). ``verifier``:
    ``chain`` keeps only circuits whose Solidity verifier fits EIP-170; ``offline`` keeps
    any (their proofs are checked off chain), and then gas is not an objective. ``rewrite``:
    whether the plan tries the graph's maxima rewritten (``max_ops``)."""
    from prover.ezkl_backend import EZKLBackend

    if objective not in OBJECTIVES:
        raise InputError(f"objective must be one of {', '.join(OBJECTIVES)}")
    if verifier not in VERIFIERS:
        raise InputError(f"--verifier must be one of {', '.join(VERIFIERS)}")
    if verifier == "offline" and objective == "gas":
        raise InputError("--objective gas needs a verifier on chain (not --verifier offline)")
    if not budget_minutes > 0:
        raise InputError("--budget must be a positive number of minutes")
    s = _Search(settings, source, objective, budget_minutes * 60.0, progress,
                backend or EZKLBackend(), visibility, public_output, verifier, rewrite)
    try:
        return s.run(candidates)
    finally:
        s.close()


def tune_and_register(settings: Settings, source: ModelSource, *, objective: str = "prove",
                      budget_minutes: float = 10.0, progress: Progress = SILENT,
                      candidates: list[CircuitOptions] | None = None,
                      visibility: str = "public", public_output: str = "logits",
                      verifier: str = "chain", **build_kw):
    """Search, then register the chosen candidate as a normal package recording the search.
    ``public_output``: the package's public output (``models add --public-output``), searched
    and registered with it."""
    from prover.build import build_package, served_from_reference_file

    # a rewritten graph is another model file: under a reference model's name the server
    # would answer from the reference file, which the package could not prove
    result = search(settings, source, objective=objective, budget_minutes=budget_minutes,
                    progress=progress, candidates=candidates, visibility=visibility,
                    public_output=public_output, verifier=verifier,
                    rewrite=not served_from_reference_file(source.name))
    chosen = result.chosen
    # The chosen circuit, exactly: its columns too (the default rule could pick others).
    options = replace(chosen.options, inner_cols=chosen.inner_cols)
    progress.note(f"Registering the best for {objective}: {chosen.label}")
    pkg = build_package(settings, source, visibility=visibility, progress=progress,
                        options=options, tuning=result.record(), public_output=public_output,
                        **build_kw)
    return result, pkg


def table(result: TuneResult) -> str:
    """The Pareto front (and the baseline) as text."""
    base = result.baseline
    rows = [("", "candidate", "logrows", "rows", "pk MB", "prove s", "verify ms",
             "verifyProof gas", "labels")]
    shown = list(result.front)
    if base not in shown:
        shown.append(base)
    for m in shown:
        mark = ("*" if m is result.chosen else " ") + ("b" if m.baseline else " ")
        a = m.agreement or {}
        rows.append((mark, m.label, str(m.logrows), f"{m.num_rows:,}",
                     f"{m.pk_bytes / 1e6:.1f}" if m.pk_bytes else "-",
                     f"{m.prove_s:.2f}" if m.prove_s is not None else "-",
                     f"{m.verify_s * 1000:.0f}" if m.verify_s is not None else "-",
                     f"{m.verify_gas:,}" if m.verify_gas else (
                         "offline only" if m.offline_only else "-"),
                     f"{a.get('agree', '-')}/{a.get('checked', '-')}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in rows]
    counts: dict[str, int] = {}
    for m in result.measurements:
        counts[m.status] = counts.get(m.status, 0) + 1
    lines.append(f"* chosen for {result.objective}; b the defaults. Candidates: "
                 + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                 + f"; {result.elapsed_s:.0f}s")
    if result.rewrite_not_tried:  # said at the start too, but this is what one reads
        lines.append(f"Not tried: {result.rewrite_not_tried} (docs/tuning.md)")
    return "\n".join(lines)
