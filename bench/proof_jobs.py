"""Proof jobs through the server: end-to-end latency vs raw ``ezkl.prove``, cache hits,
throughput with 1 and 2 prover workers.

    python -m bench.proof_jobs [--models iris_mlp digits_cnn] [--repeat 5] [--jobs 6]
                               [--home DIR]   # a home with the packages registered already

For each reference model (registered with ``verinfer models add`` into a temporary home
unless ``--home`` has it):

- raw:      ``ezkl.prove`` on one witness made once with ``ezkl.gen_witness`` (median of
            --repeat runs, in this process, warmed up);
- e2e:      ``POST /v2/models/{m}/infer`` with ``parameters.proof = "sync"`` on a fresh input
            each time, through the real server process with one warmed-up worker: answer,
            receipt, queue, claim, witness, proof, float label, re-verification, proof
            receipt, store, reply with the bundle. Alternates with raw runs so both see the
            same machine load; overhead = e2e / raw - 1;
- cache:    ``POST /v1/proofs`` for an already proven input (a cache hit), median;
- throughput: --jobs distinct jobs submitted at once, until all are done, with 1 and with
            2 workers (proofs per second).

Prints a table and writes ``bench/results/proof_jobs.json``. No timed asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from testkit.server_process import ServerProcess

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
VERINFER = [sys.executable, "-m", "verifier.cli"]


def _server(home: Path, workers: int) -> ServerProcess:
    env = {"VERINFER_PROOF_WORKERS": str(workers), "VERINFER_MAX_QUEUED_PROOFS": "1000"}
    return ServerProcess(home, env=env).wait_ready()


def _call(s: ServerProcess, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    return s.request(method, path, body, timeout=600)[:2]


def _tensor(x: np.ndarray) -> list[dict]:
    return [{"name": "input", "shape": [1, *x.shape], "datatype": "FP32",
             "data": x.astype(np.float32).ravel().tolist()}]


def _inputs(name: str, n: int, offset: int) -> list[np.ndarray]:
    from models import load_split

    _, x_test, _, _ = load_split(name)
    out = []
    for i in range(n):
        k = offset + i
        out.append(x_test[k % len(x_test)] + np.float32(0.001 * (k // len(x_test) + 1)))
    return out


def _ensure_package(home: Path, name: str) -> Path:
    if not (home / "names" / name).is_file():
        env = {**os.environ, "VERINFER_HOME": str(home)}
        subprocess.run([*VERINFER, "models", "add", name], cwd=REPO, env=env, check=True,
                       capture_output=True)
    return home / "packages" / (home / "names" / name).read_text().strip()


class RawProver:
    """ezkl.prove on one witness, as the raw baseline."""

    def __init__(self, pkg: Path, x: np.ndarray, tmp: Path) -> None:
        import ezkl

        self.ezkl, self.pkg, self.tmp = ezkl, pkg, tmp
        data = tmp / "input.json"
        data.write_text(json.dumps({"input_data": [np.asarray(x, np.float64).ravel().tolist()]}))
        self.witness = tmp / "witness.json"
        ezkl.gen_witness(str(data), str(pkg / "model.compiled"), str(self.witness))

    def prove(self) -> float:
        t = time.perf_counter()
        self.ezkl.prove(str(self.witness), str(self.pkg / "model.compiled"), str(self.pkg / "pk.key"),
                        str(self.tmp / "proof.json"), str(self.pkg / "kzg.srs"))
        return time.perf_counter() - t


def _wait_all(s: ServerProcess, ids: list[str], timeout: float = 1800) -> None:
    end = time.monotonic() + timeout
    pending = set(ids)
    while pending and time.monotonic() < end:
        for j in list(pending):
            st = _call(s, "GET", f"/v1/proofs/{j}")[1]
            if st["status"] in ("done", "failed"):
                if st["status"] == "failed":
                    raise RuntimeError(f"job failed: {st}")
                pending.discard(j)
        time.sleep(0.02)
    if pending:
        raise RuntimeError(f"jobs not done: {pending}")


def bench_model(name: str, src_home: Path, repeat: int, n_jobs: int) -> dict:
    pkg_src = _ensure_package(src_home, name)
    row: dict = {"model": name, "package_id": pkg_src.name}
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        tmp = Path(tmp)
        home = tmp / "home"
        for part in ("packages", "names", "srs"):
            if part == "packages":
                (home / part).mkdir(parents=True)
                shutil.copytree(pkg_src, home / part / pkg_src.name)
            elif (src_home / part).exists():
                shutil.copytree(src_home / part, home / part)
        (home / "names").mkdir(exist_ok=True)
        for f in (home / "names").iterdir():  # only this model's package is copied
            if f.name != name:
                f.unlink()
        pkg = home / "packages" / pkg_src.name
        xs = _inputs(name, repeat + 1, 0)
        raw = RawProver(pkg, xs[0], tmp)
        raw.prove()  # warm-up (keys read, caches)
        s = _server(home, workers=1)
        try:
            warm = _call(s, "POST", f"/v2/models/{name}/infer",
                          {"inputs": _tensor(xs[0]), "parameters": {"proof": "sync"}})
            assert warm[0] == 200 and warm[1]["parameters"]["proof_status"] == "done", warm
            raws, e2es, worker_s = [], [], []
            for x in xs[1:]:
                raws.append(raw.prove())
                t = time.perf_counter()
                status, resp = _call(s, "POST", f"/v2/models/{name}/infer",
                                      {"inputs": _tensor(x), "parameters": {"proof": "sync"}})
                e2es.append(time.perf_counter() - t)
                p = resp["parameters"]
                assert status == 200 and p["proof_status"] == "done", resp
                worker_s.append(_call(s, "GET", f"/v1/proofs/{p['proof_job_id']}")[1]["proof_s"])
            hits = []
            body = {"model": name, "inputs": _tensor(xs[1])}
            for _ in range(50):
                t = time.perf_counter()
                status, job = _call(s, "POST", "/v1/proofs", body)
                hits.append(time.perf_counter() - t)
                assert status == 200 and job["cached"], job
            bundle_t = []
            for _ in range(20):
                t = time.perf_counter()
                _call(s, "GET", f"/v1/proofs/{job['id']}/bundle")
                bundle_t.append(time.perf_counter() - t)
            tput1 = _throughput(s, name, _inputs(name, n_jobs, 1000))
        finally:
            s.stop()
        s2 = _server(home, workers=2)
        try:
            # warm both workers up (each opens the package once)
            _throughput(s2, name, _inputs(name, 2, 3000))
            tput2 = _throughput(s2, name, _inputs(name, n_jobs, 2000))
        finally:
            s2.stop()
    raw_med, e2e_med = statistics.median(raws), statistics.median(e2es)
    row.update({
        "raw_prove_s": round(raw_med, 4),
        "e2e_sync_proof_s": round(e2e_med, 4),
        "worker_job_s": round(statistics.median(worker_s), 4),
        "overhead_vs_raw": round(e2e_med / raw_med - 1, 4),
        "cache_hit_ms": round(statistics.median(hits) * 1000, 2),
        "cache_hit_p95_ms": round(sorted(hits)[int(0.95 * len(hits)) - 1] * 1000, 2),
        "bundle_get_ms": round(statistics.median(bundle_t) * 1000, 2),
        "throughput_1_worker_per_s": round(tput1, 4),
        "throughput_2_workers_per_s": round(tput2, 4),
        "speedup_2_vs_1": round(tput2 / tput1, 3),
        "runs": {"raw": [round(v, 4) for v in raws], "e2e": [round(v, 4) for v in e2es]},
    })
    return row


def _throughput(s: ServerProcess, name: str, xs: list[np.ndarray]) -> float:
    t = time.perf_counter()
    ids = []
    for x in xs:
        status, job = _call(s, "POST", "/v1/proofs", {"model": name, "inputs": _tensor(x)})
        assert status in (200, 202), job
        ids.append(job["id"])
    _wait_all(s, ids)
    return len(xs) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["iris_mlp", "digits_cnn"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=6, help="jobs per throughput run")
    ap.add_argument("--home", type=Path, help="home with the packages registered (else a temp one)")
    ap.add_argument("--out", type=Path, default=RESULTS / "proof_jobs.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-home-") as tmp_home:
        src = args.home or Path(tmp_home)
        rows = [bench_model(m, src, args.repeat, args.jobs) for m in args.models]
    print(f"{'model':12} {'raw prove':>10} {'e2e sync':>10} {'overhead':>9} {'cache hit':>10} "
          f"{'1 worker':>10} {'2 workers':>10}")
    for r in rows:
        print(f"{r['model']:12} {r['raw_prove_s']:>9.3f}s {r['e2e_sync_proof_s']:>9.3f}s "
              f"{r['overhead_vs_raw'] * 100:>8.1f}% {r['cache_hit_ms']:>8.1f}ms "
              f"{r['throughput_1_worker_per_s']:>8.3f}/s {r['throughput_2_workers_per_s']:>8.3f}/s")
    out = {
        "machine": {"cpus": os.cpu_count(), "platform": sys.platform,
                    "loadavg_at_end": [round(v, 2) for v in os.getloadavg()]},
        "note": "medians; e2e = infer with parameters.proof=sync through the real server, one "
                "warmed-up worker; raw = ezkl.prove on a witness made once, alternating with e2e",
        "models": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
