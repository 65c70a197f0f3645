"""Proving benchmark: the verinfer pipeline against raw EZKL calls on the same files.

    python -m bench.prove [--models iris_mlp digits_cnn] [--repeat 5]

For each reference model: registers it (``verinfer models add``), then times,
each in a fresh subprocess so peak memory (max RSS) is per variant:

- setup:  raw ``ezkl.setup`` vs the pipeline's backend setup, same circuit and SRS;
- prove:  raw ``ezkl.gen_witness`` + ``ezkl.prove`` vs ``Prover.prove`` (witness, proof,
          float label, re-verification by the trust root, bundle), same input;
- verify: raw ``ezkl.verify`` vs ``verify_bundle`` (links + hashes + EZKL).

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


def _worker(kind: str, package: Path, repeat: int) -> dict:
    """Runs in a child process; prints one JSON line of timings."""
    import numpy as np

    import ezkl
    from models import load_split
    from prover.package import CircuitPackage
    from prover.progress import captured_output

    pkg_name = json.loads((package / "manifest.json").read_text())["name"]
    _, x_test, _, _ = load_split(pkg_name)
    times: list[float] = []
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    log = work / "ezkl.log"
    samples = [x_test[i % len(x_test)] for i in range(repeat)]
    p = lambda n: str(package / n)  # noqa: E731
    if kind == "raw-setup":
        for _ in range(max(1, repeat // 2)):
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
        for _ in range(max(1, repeat // 2)):
            t0 = time.perf_counter()
            with captured_output(log):
                backend.setup(work)
            times.append(time.perf_counter() - t0)
    elif kind == "raw-prove":
        for x in samples:
            data = work / "input.json"
            t0 = time.perf_counter()
            data.write_text(json.dumps({"input_data": [np.asarray(x, np.float64).ravel().tolist()]}))
            with captured_output(log):
                ezkl.gen_witness(str(data), p("model.compiled"), str(work / "w.json"))
                ezkl.prove(str(work / "w.json"), p("model.compiled"), p("pk.key"),
                           str(work / "proof.json"), p("kzg.srs"))
            times.append(time.perf_counter() - t0)
    elif kind == "pipeline-prove":
        from prover.proving import Prover

        prover = Prover(CircuitPackage.open(package, check=[]))  # hashes checked here, once
        shape = prover.package.manifest.input.shape
        for x in samples:
            t0 = time.perf_counter()
            bundle = prover.prove(np.asarray(x, np.float32).reshape(shape), log=log)
            times.append(time.perf_counter() - t0)
        bundle.write(work)
    elif kind == "raw-verify":
        from prover.proving import Prover

        bundle = Prover(CircuitPackage.open(package, check=[])).prove(
            np.asarray(samples[0], np.float32).reshape(
                json.loads((package / "manifest.json").read_text())["input"]["shape"]), log=log)
        (work / "proof.json").write_text(json.dumps(bundle.proof))
        for _ in range(repeat * 4):
            t0 = time.perf_counter()
            ezkl.verify(str(work / "proof.json"), p("settings.json"), p("vk.key"), p("kzg.srs"))
            times.append(time.perf_counter() - t0)
    elif kind == "pipeline-verify":
        from prover.proving import Prover
        from verifier.proofs import verify_bundle

        bundle = Prover(CircuitPackage.open(package, check=[])).prove(
            np.asarray(samples[0], np.float32).reshape(
                json.loads((package / "manifest.json").read_text())["input"]["shape"]), log=log)
        for _ in range(repeat * 4):
            t0 = time.perf_counter()
            verify_bundle(bundle, package)
            times.append(time.perf_counter() - t0)
    else:
        raise SystemExit(f"unknown worker {kind}")
    print(json.dumps({"median_s": statistics.median(times), "runs": len(times),
                      "min_s": min(times), "max_s": max(times)}))
    return {}


def _measure(kind: str, package: Path, repeat: int) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "bench.prove", "--worker", kind,
                             "--package", str(package), "--repeat", str(repeat)],
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"worker {kind} failed")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: KiB
    return result


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
    for stage in ("setup", "prove", "verify"):
        raw = _measure(f"raw-{stage}", pkg.dir, repeat)
        pipe = _measure(f"pipeline-{stage}", pkg.dir, repeat)
        row[stage] = {"raw": raw, "pipeline": pipe,
                      "ratio": round(pipe["median_s"] / raw["median_s"], 4)}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["iris_mlp", "digits_cnn"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--package", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS / "prove.json")
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.package, args.repeat)
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
