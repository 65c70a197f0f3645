"""Settings search (``verinfer models tune``) against today's default settings, same machine,
same run.

    nice -n 10 .venv/bin/python -m bench.tune [--models digits_cnn sigmoid6x4] [--budget 15]

Per model, one search (prover.tune.search, objective ``prove``) whose first candidate is the
defaults; every candidate kept every label (digits_cnn: the 540 held-out samples; the Sigmoid
model: its 40 calibration samples). Reports, as ratios against the defaults measured in the
same search: the fastest candidate's prove time, the smallest candidate's logrows, the
cheapest candidate's verifyProof gas (anvil). ``sigmoid6x4`` is made here: Linear(6, 4) +
BatchNorm1d + Sigmoid, random weights (seed 0), 40 standard-normal samples (seed 0).

Then the prove-time ratios again, interleaved: the defaults' circuit and the chosen one (and
the fastest one whose verifier is over EIP-170, for reference) are built once more and
proved in turns (defaults, chosen, wide; repeated ``--reps`` times, sample 0); the ratio is the
median over the rounds of the candidate's time / the defaults' time in the same round, with
the 1-minute load average before each round (the machine is shared, the load moves).

Writes bench/results/tune.json and a Pareto plot per model (bench/results/tune-<model>.png:
prove time against verifyProof gas, marker area ~ pk size). Figures, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def sigmoid_source(work: Path):
    """The 6->4 BatchNorm + Sigmoid model (not one of ours), random weights, fixed seed."""
    import numpy as np
    import torch

    from prover.build import ModelSource

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4),
                              torch.nn.Sigmoid()).eval()
    with torch.no_grad():  # a trained-looking BatchNorm, not the identity
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    path = work / "sigmoid6x4.onnx"
    torch.onnx.export(net, torch.randn(1, 6), path, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"},
                                                             "output": {0: "batch"}},
                      dynamo=False)
    samples = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    return ModelSource("sigmoid6x4", path, samples, samples, None, "calibration samples")


def run_model(name: str, home: Path, work: Path, budget: float, reps: int) -> dict:
    from prover.build import reference_source
    from prover.progress import Progress
    from prover.tune import choose, search, table
    from verifier.config import Settings

    source = sigmoid_source(work) if name == "sigmoid6x4" else reference_source(name)
    result = search(Settings(home=home), source, objective="prove", budget_minutes=budget,
                    progress=Progress())
    print(table(result))
    base = result.baseline
    fast = result.chosen
    small = min((m for m in result.measurements if m.measured
                 and m.agreement["percent"] == 100.0), key=lambda m: (m.logrows, m.pk_bytes))
    cheap = choose(result.measurements, "gas")
    # also counting circuits whose verifier is over EIP-170 (provable and verifiable offline,
    # or on chain through EZKL's reusable verifier; never chosen by 'models tune')
    offline = min((m for m in result.measurements if m.prove_s is not None and m.agreement
                   and m.agreement["percent"] == 100.0), key=lambda m: m.prove_s)
    row = {
        "model": name, "eval_set": result.eval_set, "budget_min": budget,
        "elapsed_s": round(result.elapsed_s, 1), "gas_measured_on": result.chain,
        "baseline": base.as_dict(),
        "fastest": fast.as_dict(), "smallest": small.as_dict(), "cheapest_gas": cheap.as_dict(),
        "fastest_incl_over_eip170": offline.as_dict() | {"status": offline.status},
        "prove_ratio": round(fast.prove_s / base.prove_s, 3),
        "prove_ratio_incl_over_eip170": round(offline.prove_s / base.prove_s, 3),
        "logrows_smaller_by": base.logrows - small.logrows,
        "pk_ratio_smallest": round(small.pk_bytes / base.pk_bytes, 3),
        "gas_ratio_cheapest": round(cheap.verify_gas / base.verify_gas, 3),
        "front": [m.as_dict() for m in result.front],
        "candidates": [m.as_dict() for m in result.measurements],
    }
    row["plot"] = plot(name, result)
    others = {"chosen": fast} | ({"fastest_incl_over_eip170": offline}
                                 if offline is not fast and not offline.baseline else {})
    if reps > 0:  # the chosen one can be the defaults: then the ratio is the noise
        row["interleaved"] = interleaved(source, home, work / f"{name}-il", base, others, reps)
    return row


def interleaved(source, home: Path, work: Path, base, others: dict, reps: int) -> dict:
    """Build the defaults' and the others' circuits again and prove sample 0 with each in
    turns; per round, each one's time / the defaults' time in that round; the median."""
    from dataclasses import replace

    return interleaved_options(source, home, work, {
        k: replace(m.options, inner_cols=m.inner_cols) for k, m in others.items()}, reps)


def parse_circuit(spec: str):
    """``COLSxBASExLEGS[@CAP][+rc]`` (e.g. ``8x4096x2``, ``3x4096x2@13``, ``2x512x4+rc``) at
    the default scale; ``+rc``: max_ops "range-checks" (the graph's maxima rewritten)."""
    from prover.backend import CircuitOptions

    body, plus, ops = spec.partition("+")
    layout, _, cap = body.partition("@")
    try:
        if plus and ops != "rc":
            raise ValueError(ops)
        cols, base, legs = (int(v) for v in layout.split("x"))
        return CircuitOptions(decomp_base=base, decomp_legs=legs, inner_cols=cols,
                              max_logrows=int(cap) if cap else None,
                              max_ops="range-checks" if plus else "ezkl")
    except ValueError:
        raise SystemExit(f"--compare: {spec!r} is not COLSxBASExLEGS[@LOGROWS_CAP][+rc]") from None


def interleaved_options(source, home: Path, work: Path, others: dict, reps: int) -> dict:
    """:func:`interleaved` for circuits given as ``{name: CircuitOptions}``."""
    import statistics
    import time

    import numpy as np

    from contracts.solc import compile_sources
    from prover import backend as files
    from prover import onnx_model, srs
    from prover.backend import CircuitOptions
    from prover.build import calibrate, package_model
    from prover.ezkl_backend import EZKLBackend
    from prover.progress import captured_output
    from verifier.config import Settings

    backend, settings = EZKLBackend(), Settings(home=home)
    model = onnx_model.load(source.onnx_path)
    added = onnx_model.ensure_label_output(model)
    info = onnx_model.describe(model, added)
    n_in = int(np.prod(info.input.shape))
    samples = np.asarray(source.calibration, np.float32).reshape(-1, n_in)
    x0 = np.asarray(source.eval_inputs, np.float32).reshape(-1, n_in)[0]
    circuits = {"defaults": CircuitOptions()} | others
    ready = {}
    log = work / "ezkl.log"
    for key, opts in circuits.items():
        folder = work / key
        folder.mkdir(parents=True)
        (folder / files.MODEL).write_bytes(package_model(source, "logits", opts.max_ops)[2])
        with captured_output(log):
            shape = calibrate(backend, folder, samples, "public", info.batch_symbols, opts)
            srs.place(srs.dev_srs(settings.srs_dir, shape.logrows, backend), folder / files.SRS)
            backend.setup(folder)
            wit = backend.witness(folder, x0, folder / "witness.json")
            sol = backend.solidity_verifier(folder)
            verifier = compile_sources({files.SOLIDITY: sol})["Halo2Verifier"].runtime_size
        ready[key] = (folder, wit.path, shape.logrows, shape.inner_cols, verifier,
                      (folder / files.PK).stat().st_size)
        print(f"  built {key}: logrows {shape.logrows}, {shape.inner_cols} columns, verifier "
              f"{verifier:,} bytes, pk {ready[key][5] / 1e6:.0f} MB", file=sys.stderr)
    rounds = []
    for r in range(reps):
        load = round(os.getloadavg()[0], 2)
        times = {}
        for key, (folder, wit, *_) in ready.items():
            t0 = time.perf_counter()
            with captured_output(log):
                backend.prove(folder, wit, folder / "proof.json")
            times[key] = round(time.perf_counter() - t0, 3)
        rounds.append({"load_avg_1m_before": load,
                       "load_avg_1m_after": round(os.getloadavg()[0], 2), "prove_s": times})
        print(f"  round {r + 1}/{reps} (load {load}): "
              + ", ".join(f"{k} {t:.2f}s" for k, t in times.items()), file=sys.stderr)
    out = {"reps": reps, "sample": 0, "rounds": rounds, "circuits": {
        k: {"logrows": v[2], "inner_cols": v[3], "verifier_runtime_bytes": v[4], "pk_bytes": v[5],
            "options": circuits[k].as_dict()}
        for k, v in ready.items()}}
    for key in others:
        ratios = [rd["prove_s"][key] / rd["prove_s"]["defaults"] for rd in rounds]
        out[f"{key}_prove_ratio_median"] = round(statistics.median(ratios), 3)
        out[f"{key}_prove_ratios"] = [round(x, 3) for x in ratios]
    return out


def plot(name: str, result) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ms = [m for m in result.measurements if m.measured]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for m in ms:
        on_front = m in result.front
        ax.scatter(m.prove_s, m.verify_gas / 1e3, s=20 + m.pk_bytes / 2e6,
                   c="tab:red" if m.baseline else ("tab:blue" if on_front else "lightgray"),
                   edgecolors="k" if m is result.chosen else "none", zorder=3 if on_front else 2)
    front = sorted(result.front, key=lambda m: m.prove_s)
    ax.plot([m.prove_s for m in front], [m.verify_gas / 1e3 for m in front], "b--", lw=0.8)
    base = result.baseline
    ax.annotate("defaults", (base.prove_s, base.verify_gas / 1e3), fontsize=8)
    ax.annotate("chosen (prove)", (result.chosen.prove_s, result.chosen.verify_gas / 1e3),
                fontsize=8)
    ax.set_xscale("log")  # the defaults can be 100x slower than the front
    ax.set_xlabel(f"prove time, s, log scale ({os.cpu_count()} CPUs, shared machine)")
    ax.set_ylabel("verifyProof gas, thousands")
    ax.set_title(f"{name}: settings that keep every label (area ~ pk size)")
    out = RESULTS / f"tune-{name}.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return str(out.relative_to(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["sigmoid6x4", "digits_cnn"])
    ap.add_argument("--budget", type=float, default=15.0, help="minutes per model")
    ap.add_argument("--reps", type=int, default=3, help="interleaved proving rounds")
    ap.add_argument("--keep", action="store_true",
                    help="keep the other models' entries already in --out")
    ap.add_argument("--home", type=Path, help="data dir (its SRS cache is reused)")
    ap.add_argument("--out", type=Path, help="default: bench/results/tune.json, with --compare "
                    "bench/results/tune-compare-<model>.json")
    ap.add_argument("--compare", nargs="+", metavar="COLSxBASExLEGS[@CAP]",
                    help="no search: prove the defaults and these circuits of the first --models "
                         "in turns (--reps rounds) and write bench/results/tune-compare-<model>.json")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.compare:
        return compare(args.models[0], [parse_circuit(c) for c in args.compare], args.compare,
                       args.reps, args.home, args.out)
    args.out = args.out or RESULTS / "tune.json"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        home = args.home or Path(tmp) / "home"
        for name in args.models:
            print(f"== {name}", file=sys.stderr)
            rows.append(run_model(name, home, Path(tmp), args.budget, args.reps))
            write(args.out, rows, args.keep)  # each model's figures as soon as they are in
    print(f"\n{'model':<12} {'prove x':>8} {'(turns)':>8} {'logrows':>10} {'pk x':>6} "
          f"{'gas x':>6}  agreement")
    for r in rows:
        b, s = r["baseline"], r["smallest"]
        turns = r.get("interleaved", {}).get("chosen_prove_ratio_median")
        print(f"{r['model']:<12} {r['prove_ratio']:>8.3f} "
              f"{'-' if turns is None else f'{turns:.3f}':>8} "
              f"{b['logrows']:>4} -> {s['logrows']:<3} "
              f"{r['pk_ratio_smallest']:>6.3f} {r['gas_ratio_cheapest']:>6.3f}  "
              f"100% of {r['eval_set']} (every candidate kept)")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def compare(name: str, circuits: list, specs: list[str], reps: int, home: Path | None,
            path: Path | None = None) -> int:
    """The defaults and ``circuits`` of one model, proved in turns on this machine, as it is."""
    import time

    from prover.build import reference_source

    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        source = sigmoid_source(Path(tmp)) if name == "sigmoid6x4" else reference_source(name)
        out = interleaved_options(source, home or Path(tmp) / "home", Path(tmp) / "il",
                                  dict(zip(specs, circuits)), reps)
    out = {"model": name, "machine": {"cpus": os.cpu_count()}, "ezkl": __import__("ezkl").__version__,
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv)} | out
    path = path or RESULTS / f"tune-compare-{name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    for spec in specs:
        print(f"{spec:>14}: logrows {out['circuits'][spec]['logrows']}, prove / defaults "
              f"{out[f'{spec}_prove_ratio_median']:.3f} (rounds {out[f'{spec}_prove_ratios']})")
    print(f"wrote {path}", file=sys.stderr)
    return 0


def write(out: Path, rows: list[dict], keep: bool = False) -> None:
    if keep and out.is_file():
        mine = {r["model"] for r in rows}
        rows = [r for r in json.loads(out.read_text())["results"]
                if r["model"] not in mine] + rows
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "shared": True},
                               "ezkl": __import__("ezkl").__version__, "results": rows},
                              indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
