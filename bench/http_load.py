"""HTTP load benchmark on loopback for ``digits_cnn``: latency percentiles and throughput.

Compares, at concurrency 1, 16 and 64 (one keep-alive connection per client):

* ``receipts``      the server with signed receipts and dynamic batching (the product)
* ``no_signing``    the same server with signing turned off (``--no-signing``)
* ``no_batching``   the server with receipts and ``--max-batch-size 1``
* ``minimal``       a minimal FastAPI endpoint that only runs the model (bench/minimal_app.py)

Each server runs in its own process (uvicorn, one worker); the load generator
is a small asyncio HTTP/1.1 client in this process. Figures go to stdout and to
``bench/results/http_load-<device>.json``.

    python -m bench.http_load [--duration 5] [--concurrency 1 16 64] [--only receipts ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODEL = "digits_cnn"
PATH = f"/v2/models/{MODEL}/infer".encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONFIGS = {
    "receipts": ["serve"],
    "no_signing": ["serve", "--no-signing"],
    "no_batching": ["serve", "--max-batch-size", "1"],
    "no_batching_no_signing": ["serve", "--max-batch-size", "1", "--no-signing"],
    "minimal": None,
}


def start(config: str, home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "VERINFER_HOME": str(home), "VERINFER_MODELS": json.dumps([MODEL])}
    args = CONFIGS[config]
    if args is None:
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "bench.minimal_app:create_app",
               "--port", str(port), "--log-level", "warning"]
    else:
        cmd = [sys.executable, "-m", "verifier.cli", *args, "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + 120
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{config} exited: {proc.stderr.read().decode()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{config} did not start")


def bodies(n: int = 64) -> list[bytes]:
    from models import load_split

    _, x, _, _ = load_split(MODEL)
    return [
        json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                "data": x[i].ravel().tolist()}]}).encode()
        for i in range(n)
    ]


async def _client(port: int, reqs: list[bytes], t_measure: float, t_end: float, lat: list, k: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors, i = 0, k
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return errors
            writer.write(reqs[i % len(reqs)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            t1 = time.perf_counter()
            if head[9:12] != b"200":
                errors += 1
            if t0 >= t_measure:
                lat.append(t1 - t0)
    finally:
        writer.close()


async def _load(port: int, concurrency: int, warmup: float, duration: float, reqs: list[bytes]):
    lat: list[float] = []
    now = time.perf_counter()
    t_measure, t_end = now + warmup, now + warmup + duration
    errors = await asyncio.gather(*(_client(port, reqs, t_measure, t_end, lat, k) for k in range(concurrency)))
    return lat, sum(errors)


def measure(port: int, concurrency: int, warmup: float, duration: float, reqs: list[bytes]) -> dict:
    lat, errors = asyncio.run(_load(port, concurrency, warmup, duration, reqs))
    ms = np.array(lat) * 1e3
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": errors,
        "throughput_rps": round(len(lat) / duration, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return "cpu"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds before each point")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--out", type=Path, help="JSON output file")
    args = ap.parse_args(argv)

    payload = bodies()
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.only:
            port = free_port()
            proc = start(config, Path(tmp) / config, port)
            reqs = [b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (PATH, len(b), b) for b in payload]
            try:
                results[config] = []
                for c in args.concurrency:
                    r = measure(port, c, args.warmup, args.duration, reqs)
                    results[config].append(r)
                    print(f"{config:24s} c={c:3d}  {r['throughput_rps']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms"
                          f"  p95 {r['p95_ms']:7.2f}  p99 {r['p99_ms']:7.2f}  errors {r['errors']}", flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)

    ratios = {}
    for i, c in enumerate(args.concurrency):
        def rps(name: str) -> float | None:
            return results[name][i]["throughput_rps"] if name in results else None

        row = {}
        if rps("receipts") and rps("no_signing"):
            row["receipts_vs_no_signing"] = round(rps("receipts") / rps("no_signing"), 3)
        if rps("receipts") and rps("no_batching"):
            row["batching_vs_no_batching"] = round(rps("receipts") / rps("no_batching"), 3)
        if rps("no_signing") and rps("no_batching_no_signing"):
            row["batching_vs_no_batching_unsigned"] = round(rps("no_signing") / rps("no_batching_no_signing"), 3)
        if rps("receipts") and rps("minimal"):
            row["receipts_vs_minimal"] = round(rps("receipts") / rps("minimal"), 3)
        ratios[str(c)] = row
    print(json.dumps(ratios, indent=1))
    dev = device()
    out = {
        "benchmark": "http_load",
        "model": MODEL,
        "device": dev,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "duration_s": args.duration,
        "results": results,
        "throughput_ratios": ratios,
        "targets": {"receipts_vs_no_signing": ">= 0.85", "batching_vs_no_batching at c=64": ">= 2.0"},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = args.out or REPO / "bench" / "results" / f"http_load-{'cpu' if dev == 'cpu' else 'cuda'}-{os.cpu_count()}cpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
