"""Proof throughput: the local worker pool against Ray, same jobs, same machine; the per-proof
overhead Ray adds; modelled throughput for N prover nodes from the measured per-proof cost.

    python -m bench.ray_proofs                       # this machine: 2 local workers vs 2 Ray slots
    python -m bench.ray_proofs --models digits_cnn --jobs 16 \\
        --local-workers 1 --local-threads 16 --ray-slots 8 --ray-cpus 2   # a 16-core machine

Each configuration is a real ``verinfer serve`` process on the same home (one registered
package), fed the same ``--jobs`` distinct inputs at once, after one warm-up job per worker
slot (worker processes / actors started, package opened), until all are done:

- local:     ``--local-workers`` prover processes, EZKL with ``--local-threads`` threads each;
- ray-actor: a one-node Ray cluster started here (``--ray-slots`` x ``--ray-cpus`` CPUs), the
             server proving on it with one actor per slot that keeps the package open;
- ray-task:  the same cluster, one stateless Ray task per proof (opens and hash-checks the
             package each time): the alternative the actors were measured against.

Per-proof cost = the mean job ``proof_s`` (claim to stored bundle: dispatch, witness, proof,
re-verification, the server's check and signature). Ray's overhead = ray-actor's minus local's.
The model: N nodes of ``--ray-slots`` slots give N x slots / cost proofs/s until the server's
own per-proof work (re-verify the proof, sign; measured here in-process) saturates its one
dispatcher thread. Writes ``bench/results/ray_proofs[-<tag>].json`` and ``.svg``. No timed
asserts; one run (the machine may be shared: say so with the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the real-cluster helper the tests use

from bench.proof_jobs import RESULTS, _call, _ensure_package, _inputs, _tensor  # noqa: E402
from testkit.server_process import ServerProcess  # noqa: E402


def _run(server: ServerProcess, name: str, xs, warm) -> dict:
    ids = []
    for x in warm:  # start every worker / actor and open the package first
        status, job = _call(server, "POST", "/v1/proofs", {"model": name, "inputs": _tensor(x)})
        assert status in (200, 202), job
        ids.append(job["id"])
    _wait(server, ids)
    t = time.perf_counter()
    ids = []
    for x in xs:
        status, job = _call(server, "POST", "/v1/proofs", {"model": name, "inputs": _tensor(x)})
        assert status in (200, 202), job
        ids.append(job["id"])
    jobs = _wait(server, ids)
    wall = time.perf_counter() - t
    per = [j["proof_s"] for j in jobs]
    return {"jobs": len(xs), "wall_s": round(wall, 3), "proofs_per_s": round(len(xs) / wall, 4),
            "mean_proof_s": round(statistics.mean(per), 4),
            "median_proof_s": round(statistics.median(per), 4),
            "attempts": sum(j["attempts"] for j in jobs), "first_job": ids[0]}


def _wait(server: ServerProcess, ids: list[str], timeout: float = 3600) -> list[dict]:
    end = time.monotonic() + timeout
    done: dict[str, dict] = {}
    while len(done) < len(ids):
        if time.monotonic() > end:
            raise RuntimeError(f"jobs not done in {timeout}s")
        for j in ids:
            if j not in done:
                st = _call(server, "GET", f"/v1/proofs/{j}")[1]
                if st["status"] == "failed":
                    raise RuntimeError(f"job failed: {st}")
                if st["status"] == "done":
                    done[j] = st
        time.sleep(0.05)
    return [done[j] for j in ids]


def _server(home: Path, env: dict) -> ServerProcess:
    return ServerProcess(home, env={"VERINFER_MAX_QUEUED_PROOFS": "1000", **env}).wait_ready()


def _server_cost(pkg: Path, bundle: dict, home: Path, repeat: int = 5) -> float:
    """What the server does per Ray proof besides dispatching: check the proof, sign."""
    from server.proofs.worker import sign_bundle
    from server.receipts.keys import load_keys
    from server.settings import ServerSettings
    from verifier.bundle import ProofBundle
    from verifier.proofs import load_manifest_checked, verify_bundle

    class _Job:
        id, receipt_id = "job_bench", None

    b = ProofBundle.model_validate({**bundle, "proof_receipt": None, "receipt": None})
    m = load_manifest_checked(pkg)
    keys = load_keys(ServerSettings(home=home), create=False)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        verify_bundle(b, pkg, manifest=m)
        sign_bundle(_Job, m, b, None, None, keys)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _svg(rows: list[dict], title: str) -> str:
    w, h, left, bottom = 640, 400, 70, 50
    xs = [r["nodes"] for r in rows]
    ymax = max(r["proofs_per_s"] for r in rows) * 1.1
    import math

    def px(n):
        return left + (w - left - 20) * math.log2(n) / math.log2(max(xs))

    def py(v):
        return h - bottom - (h - bottom - 30) * v / ymax

    pts = " ".join(f"{px(r['nodes']):.1f},{py(r['proofs_per_s']):.1f}" for r in rows)
    lin = " ".join(f"{px(r['nodes']):.1f},{py(min(r['linear_proofs_per_s'], ymax)):.1f}"
                   for r in rows)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="{w / 2}" y="18" text-anchor="middle">{title}</text>',
           f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{h - bottom}" x2="{left}" y2="20" stroke="black"/>',
           f'<polyline points="{lin}" fill="none" stroke="#aaa" stroke-dasharray="4"/>',
           f'<polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="2"/>']
    for r in rows:
        out.append(f'<circle cx="{px(r["nodes"]):.1f}" cy="{py(r["proofs_per_s"]):.1f}" r="3" '
                   'fill="#1f77b4"/>')
        out.append(f'<text x="{px(r["nodes"]):.1f}" y="{h - bottom + 16}" '
                   f'text-anchor="middle">{r["nodes"]}</text>')
    for i in range(5):
        v = ymax * i / 4
        out.append(f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    out.append(f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">prover nodes</text>')
    out.append(f'<text x="16" y="{h / 2}" transform="rotate(-90 16 {h / 2})" '
               'text-anchor="middle">proofs / s (modelled; dashed: no server limit)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["iris_mlp"])
    ap.add_argument("--jobs", type=int, default=8, help="timed jobs per configuration")
    ap.add_argument("--local-workers", type=int, default=2)
    ap.add_argument("--local-threads", type=int, default=1, help="EZKL threads per local worker")
    ap.add_argument("--ray-slots", type=int, default=2, help="proofs at once on the Ray node")
    ap.add_argument("--ray-cpus", type=int, default=1, help="CPUs (EZKL threads) per Ray proof")
    ap.add_argument("--no-task", action="store_true", help="skip the task-per-proof run")
    ap.add_argument("--home", type=Path, help="home with the packages registered (else a temp one)")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    args = ap.parse_args(argv)
    from ray_support import RayCluster

    tag = f"-{args.tag}" if args.tag else ""
    out = {"machine": {"cpus": os.cpu_count(), "platform": sys.platform},
           "config": {k: v for k, v in vars(args).items() if k != "home"} | {"home": None},
           "models": []}
    with tempfile.TemporaryDirectory(prefix="bench-ray-home-") as tmp:
        home = args.home or Path(tmp)
        for mi, name in enumerate(args.models):
            pkg = _ensure_package(home, name)
            offset = 1000 * (mi + 1)
            common = {"VERINFER_MAX_QUEUED_PROOFS": "1000", "VERINFER_PROOF_LEASE_S": "30"}
            row: dict = {"model": name}
            n_warm = max(args.local_workers, args.ray_slots)
            xs_warm = {k: _inputs(name, n_warm, offset + 100 * i)
                       for i, k in enumerate(("local", "ray-actor", "ray-task"))}
            # the same timed inputs for each configuration: each server starts with an empty
            # job table (its own db), so nothing is a cache hit
            xs = _inputs(name, args.jobs, offset + 500)
            s = _server(home, {**common, "VERINFER_PROOF_WORKERS": str(args.local_workers),
                               "VERINFER_RECEIPTS_DB": str(home / f"local-{name}.sqlite3"),
                               "RAYON_NUM_THREADS": str(args.local_threads)})
            try:
                row["local"] = _run(s, name, xs, xs_warm["local"])
                bundle = _call(s, "GET", f"/v1/proofs/{row['local'].pop('first_job')}/bundle")[1]
            finally:
                s.stop()
            print(f"{name} local: {row['local']}", file=sys.stderr)
            server_s = _server_cost(pkg, bundle, home)
            cluster = RayCluster(head_cpus=args.ray_slots * args.ray_cpus)
            try:
                cluster.wait_nodes(1)
                modes = [("ray-actor", "1")] + ([] if args.no_task else [("ray-task", "0")])
                for label, actors in modes:
                    s = _server(home, {**common, "VERINFER_PROVER_EXECUTOR": "ray",
                                       "VERINFER_RAY_ADDRESS": cluster.address,
                                       "VERINFER_RAY_ACTORS": actors,
                                       "VERINFER_RAY_CPUS_PER_PROOF": str(args.ray_cpus),
                                       "VERINFER_RECEIPTS_DB": str(home / f"{label}-{name}.sqlite3")})
                    try:
                        row[label] = _run(s, name, xs, xs_warm[label])
                        row[label].pop("first_job")
                    finally:
                        s.stop()
                    print(f"{name} {label}: {row[label]}", file=sys.stderr)
            finally:
                cluster.stop()
            cost = row["ray-actor"]["mean_proof_s"]
            row["ray_overhead_per_proof_s"] = round(cost - row["local"]["mean_proof_s"], 4)
            row["ray_vs_local_throughput"] = round(
                row["ray-actor"]["proofs_per_s"] / row["local"]["proofs_per_s"], 3)
            if "ray-task" in row:
                row["actor_vs_task_throughput"] = round(
                    row["ray-actor"]["proofs_per_s"] / row["ray-task"]["proofs_per_s"], 3)
            row["server_check_and_sign_s"] = round(server_s, 4)
            ceiling = 1 / server_s
            model = []
            for n in (1, 2, 4, 8, 16, 32, 64, 128, 256):
                linear = n * args.ray_slots / cost
                model.append({"nodes": n, "linear_proofs_per_s": round(linear, 3),
                              "proofs_per_s": round(min(linear, ceiling), 3)})
            row["modelled"] = model
            out["models"].append(row)
            stem = RESULTS / f"ray_proofs{tag}-{name}"
            stem.with_suffix(".svg").write_text(_svg(model, f"{name}: modelled proofs/s, "
                                                     f"{args.ray_slots} slots x {args.ray_cpus} "
                                                     "CPU per node"))
    out["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    out["note"] = ("one run; per-proof cost = mean job proof_s (claim to stored bundle); "
                   "modelled = nodes x ray_slots / ray-actor cost, capped by 1 / "
                   "server_check_and_sign_s; absolute figures follow the machine's load")
    for row in out["models"]:
        print(f"\n{row['model']}: per-proof cost local {row['local']['mean_proof_s']:.3f}s, "
              f"Ray actor {row['ray-actor']['mean_proof_s']:.3f}s "
              f"(overhead {row['ray_overhead_per_proof_s'] * 1000:+.0f} ms)")
        print(f"{'config':10} {'proofs/s':>9} {'wall s':>8} {'mean proof s':>13}")
        for k in ("local", "ray-actor", "ray-task"):
            if k in row:
                r = row[k]
                print(f"{k:10} {r['proofs_per_s']:>9.3f} {r['wall_s']:>8.2f} "
                      f"{r['mean_proof_s']:>13.3f}")
        print(f"server check+sign per proof {row['server_check_and_sign_s'] * 1000:.1f} ms "
              f"-> one server dispatches at most {1 / row['server_check_and_sign_s']:.0f} proofs/s")
        print(f"{'nodes':>6} {'proofs/s':>10}")
        for m in row["modelled"]:
            print(f"{m['nodes']:>6} {m['proofs_per_s']:>10.2f}")
    path = RESULTS / f"ray_proofs{tag}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
