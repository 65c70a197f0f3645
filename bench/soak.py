"""Soak run on loopback: many keep-alive clients of mixed inference and proof requests against a
real ``verinfer serve`` process, then the same with the server killed (``kill -9``, its whole
process group: receipt worker and provers too) once mid-run and restarted on the same data dir.

    python -m bench.soak [--duration 60] [--clients 64] [--proof-interval 2] [--home DIR]
                         [--runs steady kill] [--no-proofs]

Clients (one keep-alive connection each, asyncio) loop over: ``digits_cnn`` one-row infers,
``iris_mlp`` one-row and 8-row infers; one more client submits a proof for a fresh iris input
every ``--proof-interval`` s, alternately ``POST /v1/proofs`` and an infer with
``parameters.proof: "async"``. Proofs need ``iris_mlp``'s circuit package: ``--home`` with it
registered, else ``verinfer models add iris_mlp`` into a temporary home first (about a minute).

Reported per run: requests, answers per second, p50/p95/p99 latency, errors (non-2xx answers and
broken connections while the server was up; target 0), proof jobs accepted and how each ended
(after the load, waiting for the queue to drain). Kill run: requests lost (sent, no answer: the
connection broke under them), refused while down, receipts lost (every receipt a client got is
fetched by id after the restart and must be the same bytes; each is verified as received, and a
sample with ``?fresh=1`` against the restarted log's latest checkpoint), jobs lost (every accepted
job must still be known after the restart and end). Writes ``bench/results/soak.json``. Loopback
only; no timed asserts anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from testkit.server_process import REPO_ROOT, VERINFER, ServerProcess

RESULTS = REPO_ROOT / "bench" / "results"
DIGITS = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.25] * 64}]}
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


def _iris(rows: int, jitter: float = 0.0) -> dict:
    data = [v + jitter for v in IRIS_ROW] * rows
    return {"inputs": [{"name": "input", "shape": [rows, 4], "datatype": "FP32", "data": data}]}


MIX = [  # (path, body): what the load clients send, in turn
    ("/v2/models/digits_cnn/infer", DIGITS),
    ("/v2/models/iris_mlp/infer", _iris(1)),
    ("/v2/models/digits_cnn/infer", DIGITS),
    ("/v2/models/iris_mlp/infer", _iris(8)),
]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # non-2xx, or broken while the server was up
    lost: int = 0  # sent, no answer: the connection broke under it (the server was killed)
    refused: int = 0  # could not connect while the server was down
    receipts: list[str] = field(default_factory=list)  # every receipt JSON a client got
    jobs: list[str] = field(default_factory=list)  # every accepted proof job id


class Target:
    """Where the clients send: changes when the killed server is restarted on a new port."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.up = True


async def _exchange(reader, writer, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n" + (body or b""))
    resp = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in resp.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return int(resp[9:12]), await reader.readexactly(length)


async def _client(k: int, target: Target, stop: float, tally: Tally, proofs: bool,
                  interval: float) -> None:
    """A load client (``proofs=False``: the infer mix) or the proof client."""
    rng = random.Random(k)
    turn, reader, writer = k, None, None
    next_proof = time.monotonic()
    while time.monotonic() < stop:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", target.server.port)
            except OSError:
                tally.refused += 1
                await asyncio.sleep(0.1)
                continue
        if proofs:
            await asyncio.sleep(max(0.0, min(next_proof, stop) - time.monotonic()))
            if time.monotonic() >= stop:
                break
            next_proof += interval
            jitter = round(rng.uniform(0.001, 0.9), 4)
            if turn % 2:
                path, body = "/v1/proofs", {"model": "iris_mlp", **_iris(1, jitter)}
            else:
                path, body = "/v2/models/iris_mlp/infer", {**_iris(1, jitter),
                                                           "parameters": {"proof": "async"}}
        else:
            path, body = MIX[turn % len(MIX)]
        turn += 1
        t0 = time.perf_counter()
        try:
            status, raw = await _exchange(reader, writer, "POST", path, json.dumps(body).encode())
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            writer.close()
            writer = None
            if target.up:
                tally.errors.append(f"{path}: connection broke ({type(exc).__name__})")
            else:
                tally.lost += 1
            continue
        tally.latencies.append(time.perf_counter() - t0)
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        if status not in (200, 202):
            tally.errors.append(f"{path}: {status} {raw[:200]!r}")
            continue
        answer = json.loads(raw)
        params = answer.get("parameters", {}) if path.startswith("/v2") else {}
        if "receipt" in params:
            tally.receipts.append(params["receipt"])
        job = params.get("proof_job_id") or (answer.get("id") if path == "/v1/proofs" else None)
        if job:
            tally.jobs.append(job)
    if writer is not None:
        writer.close()


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 2)


def _start(home: Path, proof_workers: int) -> ServerProcess:
    env = {"VERINFER_PROOF_WORKERS": str(proof_workers), "VERINFER_MAX_QUEUED_PROOFS": "1000"}
    return ServerProcess(home, env=env, new_session=True).wait_ready()


def _wait_jobs(server: ServerProcess, jobs: list[str], timeout: float) -> dict:
    """Every accepted job's end (or where it stands at the timeout); unknown ids are lost."""
    end = time.monotonic() + timeout
    states: dict[str, str] = {}
    pending = list(dict.fromkeys(jobs))
    while pending and time.monotonic() < end:
        still = []
        for job in pending:
            status, body, _ = server.request("GET", f"/v1/proofs/{job}")
            if status == 404:
                states[job] = "lost"
            elif body["status"] in ("done", "failed"):
                states[job] = body.get("outcome") or body["status"]
            else:
                states[job] = body["status"]
                still.append(job)
        pending = still
        if pending:
            time.sleep(0.5)
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s] = counts.get(s, 0) + 1
    return {"accepted": len(states), "by_end": counts,
            "unfinished": sum(1 for s in states.values() if s in ("queued", "running")),
            "lost": counts.get("lost", 0)}


def _check_receipts(server: ServerProcess, received: list[str], fresh_sample: int) -> dict:
    """Every receipt a client got: verified as received; fetched by id (same bytes); a sample
    fetched with ?fresh=1 and verified against the log's latest checkpoint."""
    from verifier.errors import VerinferError
    from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2
    from verifier.tlog import NoteVerifier

    note_keys = [NoteVerifier.parse(k) for k in server.get("/.well-known/verinfer-log.json")["note_keys"]]
    missing, changed, invalid = [], [], []
    rng = random.Random(0)
    sample = set(rng.sample(range(len(received)), min(fresh_sample, len(received))))
    for i, text in enumerate(received):
        r = ReceiptV2.parse(text)
        try:
            verify_receipt_v2(r, note_keys)
        except VerinferError as exc:
            invalid.append(f"{r.id}: {exc}")
        status, body = _get_text(server, f"/v1/receipts/{r.id}")
        if status == 404:
            missing.append(r.id)
            continue
        if body != text:
            changed.append(r.id)
        if i in sample:
            status, body = _get_text(server, f"/v1/receipts/{r.id}?fresh=1")
            try:
                verify_receipt_v2(ReceiptV2.parse(body), note_keys)
            except VerinferError as exc:
                invalid.append(f"{r.id} (fresh): {exc}")
    return {"received": len(received), "lost": len(missing), "changed": len(changed),
            "invalid": len(invalid), "fresh_checked": len(sample),
            "examples": (missing + changed + invalid)[:5]}


def _get_text(server: ServerProcess, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(server.base + path, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def _load(target: Target, args, tally: Tally, kill_at: float | None, home: Path) -> dict:
    start = time.monotonic()
    stop = start + args.duration
    tasks = [asyncio.create_task(_client(k, target, stop, tally, False, 0))
             for k in range(args.clients)]
    if not args.no_proofs:
        tasks.append(asyncio.create_task(_client(args.clients, target, stop, tally, True,
                                                 args.proof_interval)))
    downtime = None
    if kill_at is not None:
        await asyncio.sleep(kill_at * args.duration)
        target.up = False
        target.server.kill9(group=True)
        t_kill = time.monotonic()
        server = await asyncio.to_thread(_start, home, args.proof_workers)
        target.server = server
        downtime = round(time.monotonic() - t_kill, 2)
        await asyncio.sleep(0.5)  # clients broken by the kill reconnect before errors count again
        target.up = True
    await asyncio.gather(*tasks)
    return {"wall_s": round(time.monotonic() - start, 2), "downtime_s": downtime}


def run(name: str, home: Path, args, kill_at: float | None) -> dict:
    target = Target(_start(home, args.proof_workers))
    tally = Tally()
    try:
        timing = asyncio.run(_load(target, args, tally, kill_at, home))
        jobs = _wait_jobs(target.server, tally.jobs, args.job_timeout)
        receipts = _check_receipts(target.server, tally.receipts, args.fresh_sample)
    finally:
        target.server.stop()
    n = len(tally.latencies)
    out = {
        "run": name, "clients": args.clients, "duration_s": args.duration, **timing,
        "requests": n, "answers_per_s": round(n / args.duration, 1),
        "latency_ms": {"p50": _pct(tally.latencies, 0.50), "p95": _pct(tally.latencies, 0.95),
                       "p99": _pct(tally.latencies, 0.99), "max": _pct(tally.latencies, 1.0)},
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "errors": len(tally.errors), "error_examples": tally.errors[:5],
        "proof_jobs": jobs, "receipts": receipts,
    }
    if kill_at is not None:
        out["kill"] = {"at_s": round(kill_at * args.duration, 1), "lost_requests": tally.lost,
                       "refused_while_down": tally.refused}
    return out


def _ensure_home(args) -> tuple[Path, Path | None]:
    """A data dir with iris_mlp's circuit package: --home's, else a fresh one (``models add``)."""
    if args.home:
        return Path(args.home), None
    tmp = Path(tempfile.mkdtemp(prefix="verinfer-soak-"))
    home = tmp / "home"
    if not args.no_proofs:
        print("registering iris_mlp (verinfer models add iris_mlp) ...", flush=True)
        subprocess.run([*VERINFER, "models", "add", "iris_mlp"], cwd=REPO_ROOT, check=True,
                       env={**os.environ, "VERINFER_HOME": str(home)}, capture_output=True)
    return home, tmp


def _fresh_copy(home: Path, into: Path) -> Path:
    """Each run gets its own data dir (the package copied, no receipts or jobs from before)."""
    dst = into / "data"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for part in ("packages", "names", "srs"):
        if (home / part).exists():
            shutil.copytree(home / part, dst / part, symlinks=True)
    return dst


def _line(r: dict) -> str:
    lat, jobs, rec = r["latency_ms"], r["proof_jobs"], r["receipts"]
    s = (f"{r['run']:>6}: {r['requests']} requests ({r['answers_per_s']}/s), p50 {lat['p50']} ms, "
         f"p95 {lat['p95']} ms, p99 {lat['p99']} ms, errors {r['errors']}; proof jobs "
         f"{jobs['accepted']} accepted {jobs['by_end']}, unfinished {jobs['unfinished']}, lost "
         f"{jobs['lost']}; receipts {rec['received']} received, lost {rec['lost']}, changed "
         f"{rec['changed']}, invalid {rec['invalid']}")
    if "kill" in r:
        k = r["kill"]
        s += (f"; kill -9 at {k['at_s']} s, down {r['downtime_s']} s: lost requests "
              f"{k['lost_requests']}, refused while down {k['refused_while_down']}")
    return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per run")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--proof-interval", type=float, default=2.0, help="seconds between proof requests")
    p.add_argument("--proof-workers", type=int, default=1)
    p.add_argument("--no-proofs", action="store_true", help="inference only (no circuit package needed)")
    p.add_argument("--home", help="a data dir with iris_mlp registered (copied per run)")
    p.add_argument("--runs", nargs="+", choices=("steady", "kill"), default=["steady", "kill"])
    p.add_argument("--kill-at", type=float, default=0.5, help="fraction of --duration")
    p.add_argument("--job-timeout", type=float, default=600.0, help="seconds to wait for the queue to drain")
    p.add_argument("--fresh-sample", type=int, default=200, help="receipts re-fetched with ?fresh=1")
    args = p.parse_args(argv)

    home, tmp = _ensure_home(args)
    work = Path(tempfile.mkdtemp(prefix="verinfer-soak-run-"))
    results = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
               "args": {k: v for k, v in vars(args).items() if k != "home"}, "runs": []}
    try:
        for name in args.runs:
            data = _fresh_copy(home, work / name)
            r = run(name, data, args, args.kill_at if name == "kill" else None)
            results["runs"].append(r)
            print(_line(r), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "soak.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
