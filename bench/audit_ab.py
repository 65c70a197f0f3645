"""The v2 audit of this checkout against another checkout's, both at once on one CPU.

    python -m bench.audit_ab --against DIR [--rounds 6] [--seconds 8] [--receipts 3000]

This machine's speed drifts by up to 2x within minutes, more than most changes to the audit
are worth, so timing one checkout and then the other (even in turns) mostly measures the
drift. Here both run in the same seconds as two processes pinned to the same CPU: the kernel
gives each half of it, whatever the machine does then, and each counts the receipts it audits
per second of its own CPU time (``time.process_time``). The ratio of the two is the change's
worth; the figures themselves are each process's share, not the single-process speed
(``bench.audit_v2`` gives that).

The receipts (digits_cnn-shaped v2 receipts from the server's log writer, ``bench.audit_v2``)
are built once by this checkout and read by both. ``DIR`` is another checkout of the repository,
e.g. ``git worktree add /tmp/before HEAD~1``. Writes ``bench/results/audit_ab.json``. No timing
is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def worker(receipts: Path, start: float, seconds: float, cpu: int) -> None:
    """Audits the receipts over and over from ``start`` for ``seconds``; prints what it did.
    Run as this file with PYTHONPATH at a checkout: that checkout's verifier is measured."""
    from verifier.audit import Auditor, Item

    os.sched_setaffinity(0, {cpu})
    doc = json.loads(receipts.read_text())
    items = [Item(f"r:{i}", "receipt", line) for i, line in enumerate(doc["lines"])]
    auditor = Auditor(jwks=doc["jwks"])
    assert all(auditor.check(i).outcome == "ok" for i in items)  # warm, and the receipts are good
    while time.time() < start:
        time.sleep(0.001)
    n, cpu0, end = 0, time.process_time(), start + seconds
    while time.time() < end:
        auditor = Auditor(jwks=doc["jwks"])  # as one audit run: caches start empty
        for item in items[:500]:
            if auditor.check(item).outcome != "ok":
                raise SystemExit(f"{item.name} did not verify")
        n += min(500, len(items))
    print(json.dumps({"receipts": n, "cpu_s": time.process_time() - cpu0}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", type=Path, required=True, help="another checkout of the repository")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--receipts", type=int, default=3000)
    ap.add_argument("--cpu", type=int, default=None, help="the CPU both run on (default: the last)")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)  # RECEIPTS START SECONDS
    args = ap.parse_args(argv)
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    if args.worker:
        worker(Path(args.worker[0]), float(args.worker[1]), float(args.worker[2]), cpu)
        return 0
    other = args.against.resolve()
    if not (other / "verifier" / "audit.py").is_file():
        print(f"audit_ab: {other} is not a checkout of this repository", file=sys.stderr)
        return 2

    from bench.audit_v2 import build

    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        lines, jwks = build(Path(tmp), args.receipts, 64)
        receipts = Path(tmp) / "receipts.json"
        receipts.write_text(json.dumps({"lines": lines, "jwks": jwks}))
        for r in range(args.rounds):
            start = time.time() + 5  # both have imported and warmed up by then
            procs = {name: subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--against", str(other), "--cpu", str(cpu),
                 "--worker", str(receipts), str(start), str(args.seconds)],
                cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE, text=True)
                for name, root in (("this", ROOT), ("other", other))}  # (this file, each one's verifier)
            got = {}
            for name, p in procs.items():
                out, _ = p.communicate()
                if p.returncode:
                    print(f"audit_ab: the {name} checkout's worker failed", file=sys.stderr)
                    return 1
                w = json.loads(out)
                got[name] = round(w["receipts"] / w["cpu_s"])
            got["ratio"] = round(got["this"] / got["other"], 3)
            rounds.append(got)
            print(f"round {r + 1}: this {got['this']:,}/cpu-s, other {got['other']:,}/cpu-s, ratio {got['ratio']}")
    ratios = [g["ratio"] for g in rounds]
    print(f"this / other: median {statistics.median(ratios)} [{min(ratios)}, {max(ratios)}]")
    out = {"benchmark": "audit_ab", "against": str(other), "this_commit": _commit(ROOT), "other_commit": _commit(other),
           "receipts": args.receipts, "seconds": args.seconds, "pinned_to_cpu": cpu, "python": platform.python_version(),
           "rounds": rounds, "ratio_median": statistics.median(ratios),
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "audit_ab.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS / 'audit_ab.json'}", file=sys.stderr)
    return 0


def _commit(root: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip() + (
            "+changes" if subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                         capture_output=True, text=True).stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
