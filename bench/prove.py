"""Proving benchmark: the verinfer pipeline against raw EZKL calls on the same files.

    python -m bench.prove [--models iris_mlp digits_cnn] [--repeat 5]

For each reference model: registers it (``verinfer models add``), then times
raw and pipeline runs alternately, each in a fresh subprocess (so peak memory,
max RSS, is per variant and both see the same machine load):

- setup:  raw ``ezkl.setup`` vs the pipeline's backend setup, same circuit and SRS;
- prove:  raw ``ezkl.gen_witness`` + ``ezkl.prove`` vs ``Prover.prove`` (witness, proof,
          float label, re-verification by the trust root, bundle), same input;
- verify: raw ``ezkl.verify`` vs ``verify_bundle`` (links + hashes + EZKL);
- prove*: both prove variants alternating in one long-lived, warmed-up process
          (how the server's proof workers run), same inputs.

Prints a table and writes ``bench/results/prove.json``. Medians over --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _worker(kind: str, package: Path, repeat: int, seed: int = 0) -> dict:
    """Runs in a child process; prints one JSON line of timings."""
    import ezkl
    import numpy as np

    from models import load_split
    from prover.package import CircuitPackage
    from prover.progress import captured_output

    pkg_name = json.loads((package / "manifest.json").read_text())["name"]
    _, x_test, _, _ = load_split(pkg_name)
    times: list[float] = []
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    log = work / "ezkl.log"
    samples = [x_test[(seed + i) % len(x_test)] for i in range(repeat)]

    def p(n: str) -> str:
        return str(package / n)

    if kind == "raw-setup":
        for _ in range(repeat):
            t0 = time.perf_counter()
            with captured_output(log):
                ezkl.setup(p("model.compiled"), str(work / "vk"), str(work / "pk"), p("kzg.srs"))
            times.append(time.perf_counter() - t0)
    elif kind == "pipeline-setup":
        import shutil

        from prover.ezkl_backend import EZKLBackend

        for name in ("model.compiled", "kzg.srs", "settings.json"):
            shutil.copy(package / name, work / name)
        backend = EZKLBackend()
        for _ in range(repeat):
            t0 = time.perf_counter()
            with captured_output(log):
                backend.setup(work)
            times.append(time.perf_counter() - t0)
    elif kind == "raw-prove":
        for x in samples:
            t0 = time.perf_counter()
            _raw_prove(x, package, work, log)
            times.append(time.perf_counter() - t0)
    elif kind == "prove-steady":
        # A long-lived prover (what the server's workers are): one process, both
        # variants warmed up, then alternating on the same inputs.
        from prover.proving import Prover

        prover = Prover(CircuitPackage.open(package, check=[]))
        shape = prover.package.manifest.input.shape
        raw_t, pipe_t = [], []
        for i, x in enumerate([samples[0], *samples]):
            t0 = time.perf_counter()
            _raw_prove(x, package, work, log)
            t1 = time.perf_counter()
            prover.prove(np.asarray(x, np.float32).reshape(shape), log=log)
            t2 = time.perf_counter()
            if i:  # the first pair is the warm-up
                raw_t.append(t1 - t0)
                pipe_t.append(t2 - t1)
        print(json.dumps({"raw_median_s": statistics.median(raw_t),
                          "pipeline_median_s": statistics.median(pipe_t), "runs": len(raw_t),
                          "ratio": statistics.median(pipe_t) / statistics.median(raw_t)}))
        return {}
    elif kind == "pipeline-prove":
        from prover.proving import Prover

        prover = Prover(CircuitPackage.open(package, check=[]))  # hashes checked here, once
        shape = prover.package.manifest.input.shape
        for x in samples:
            t0 = time.perf_counter()
            bundle = prover.prove(np.asarray(x, np.float32).reshape(shape), log=log)
            times.append(time.perf_counter() - t0)
        bundle.write(work)
    elif kind == "make-bundle":
        from prover.proving import Prover

        shape = json.loads((package / "manifest.json").read_text())["input"]["shape"]
        Prover(CircuitPackage.open(package, check=[])).prove(
            np.asarray(samples[0], np.float32).reshape(shape), log=log).write(package.parent /
                                                                              "bench-bundle")
        times.append(0.0)
    elif kind == "raw-verify":
        from verifier.bundle import ProofBundle

        bundle = ProofBundle.load(package.parent / "bench-bundle")
        (work / "proof.json").write_text(json.dumps(bundle.proof))
        for _ in range(repeat):
            t0 = time.perf_counter()
            ezkl.verify(str(work / "proof.json"), p("settings.json"), p("vk.key"), p("kzg.srs"))
            times.append(time.perf_counter() - t0)
    elif kind == "pipeline-verify":
        from verifier.bundle import ProofBundle
        from verifier.proofs import verify_bundle

        bundle = ProofBundle.load(package.parent / "bench-bundle")
        for _ in range(repeat):
            t0 = time.perf_counter()
            verify_bundle(bundle, package)
            times.append(time.perf_counter() - t0)
    else:
        raise SystemExit(f"unknown worker {kind}")
    print(json.dumps({"median_s": statistics.median(times), "runs": len(times),
                      "min_s": min(times), "max_s": max(times), "peak_rss_mb": _vm_hwm_mb()}))
    return {}


def _raw_prove(x, package: Path, work: Path, log: Path) -> None:
    """EZKL's own calls, as a user would make them: input JSON, witness, prove."""
    import ezkl
    import numpy as np

    from prover.progress import captured_output

    data = work / "input.json"
    data.write_text(json.dumps({"input_data": [np.asarray(x, np.float64).ravel().tolist()]}))
    with captured_output(log):
        ezkl.gen_witness(str(data), str(package / "model.compiled"), str(work / "w.json"))
        ezkl.prove(str(work / "w.json"), str(package / "model.compiled"),
                   str(package / "pk.key"), str(work / "proof.json"), str(package / "kzg.srs"))


def _vm_hwm_mb() -> float:
    """This process's own peak RSS. (Not getrusage/wait4: on Linux their maxrss
    keeps the parent's high-water mark across fork+exec, so every child would
    report the orchestrator's memory.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _measure(kind: str, package: Path, repeat: int, seed: int = 0) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "bench.prove", "--worker", kind,
                             "--package", str(package), "--repeat", str(repeat),
                             "--seed", str(seed)],
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"worker {kind} failed")
    return json.loads(out.strip().splitlines()[-1])


def bench_model(name: str, home: Path, repeat: int) -> dict:
    from prover.build import build_package, reference_source
    from prover.progress import Progress
    from verifier.config import Settings

    settings = Settings(home=home)
    t0 = time.perf_counter()
    pkg = build_package(settings, reference_source(name), progress=Progress())
    add_s = time.perf_counter() - t0
    pre = pkg.manifest.preflight
    row = {"model": name, "logrows": pre["logrows"], "pk_bytes": pre["pk_bytes"],
           "verifier_runtime_bytes": pre["verifier_runtime_bytes"],
           "agreement_percent": pre["agreement"]["percent"], "add_total_s": round(add_s, 2)}
    _measure("make-bundle", pkg.dir, 1)
    # Raw and pipeline alternate, one fresh process each, so both see the same
    # machine (load from other work shifts both alike). Per-stage inner loops:
    inner = {"setup": 1, "prove": 1, "verify": 20}
    for stage in ("setup", "prove", "verify"):
        runs: dict[str, list[dict]] = {"raw": [], "pipeline": []}
        for i in range(repeat):
            for variant in ("raw", "pipeline"):
                runs[variant].append(_measure(f"{variant}-{stage}", pkg.dir, inner[stage], i))
        summary = {v: {"median_s": statistics.median(r["median_s"] for r in rs),
                       "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "runs": len(rs)}
                   for v, rs in runs.items()}
        summary["ratio"] = round(summary["pipeline"]["median_s"] / summary["raw"]["median_s"], 4)
        row[stage] = summary
    steady = subprocess.run([sys.executable, "-m", "bench.prove", "--worker", "prove-steady",
                             "--package", str(pkg.dir), "--repeat", str(max(repeat, 5))],
                            capture_output=True, text=True, check=True)
    row["prove_steady"] = json.loads(steady.stdout.strip().splitlines()[-1])
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["iris_mlp", "digits_cnn"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--package", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS / "prove.json")
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.package, args.repeat, args.seed)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-home-") as home:
        rows = [bench_model(m, Path(home), args.repeat) for m in args.models]
    print(f"\n{'model':<11} {'stage':<7} {'raw s':>8} {'verinfer s':>11} {'ratio':>7} "
          f"{'raw RSS MB':>11} {'verinfer RSS MB':>16}")
    for r in rows:
        for stage in ("setup", "prove", "verify"):
            s = r[stage]
            print(f"{r['model']:<11} {stage:<7} {s['raw']['median_s']:>8.3f} "
                  f"{s['pipeline']['median_s']:>11.3f} {s['ratio']:>7.3f} "
                  f"{s['raw']['peak_rss_mb']:>11.0f} {s['pipeline']['peak_rss_mb']:>16.0f}")
        st = r["prove_steady"]
        print(f"{r['model']:<11} {'prove*':<7} {st['raw_median_s']:>8.3f} "
              f"{st['pipeline_median_s']:>11.3f} {st['ratio']:>7.3f}   (* one long-lived process)")
        print(f"{r['model']:<11} logrows {r['logrows']}, pk {r['pk_bytes'] / 1e6:.0f} MB, "
              f"verifier {r['verifier_runtime_bytes']} B, agreement {r['agreement_percent']}%, "
              f"models add {r['add_total_s']} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "repeat": args.repeat,
                                    "results": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
