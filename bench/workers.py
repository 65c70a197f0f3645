"""``verinfer serve --workers N``: requests/s of N server processes against one, with receipts
and with signing off (``digits_cnn``, one sample per request, loopback).

Every configuration (N in ``--workers``, receipts and ``--no-signing``) is started first, then
measured in turns: ``--rounds`` rounds, each measuring every configuration at every concurrency
in a rotated order; a ratio (N against 1, same mode) is taken within a round and the median
over rounds reported with its range, as in ``bench/http_load.py`` (whose servers, client and
CPU accounting this reuses). The load comes from that benchmark's Python client (one process,
uvloop) or, with ``--client wrk``, from ``wrk`` (threads in C, ``bench/wrk_infer.lua``), so
that on a big machine the client is not the bottleneck. Also recorded: the CPU cores the
whole server (supervisor, server processes, receipt writer) used. Figures go to stdout and to
``bench/results/workers-<device>-<cpus>cpu.json``.

    python -m bench.workers [--workers 1 2] [--rounds 3] [--duration 3] [--concurrency 64]
                            [--client python|wrk] [--wrk-threads 4]

On the 16-core GPU machine, in under 5 minutes: ``python -m bench.workers --workers 1 2 4 8 14
--rounds 2 --duration 3 --concurrency 256 --client wrk --wrk-threads 8 --only receipts``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.http_load import (
    PATH,
    _median_point,
    bodies,
    device,
    free_port,
    http_requests,
    measure,
    measure_wrk,
    print_ratios,
    ratio_range,
    start,
    write_results,
)
from bench.load_procs import LoadProcs

MODES = {"receipts": [], "no_signing": ["--no-signing"]}


def requests(rows: int, binary: bool, n: int = 16) -> tuple[list[bytes], list[bytes]]:
    """(bodies, raw HTTP requests): one sample a request as JSON (``bench/http_load.py``), or
    ``rows`` samples a request, as JSON or with the binary tensor data extension (binary input,
    binary outputs: what ``tritonclient.http`` sends by default)."""
    if rows == 1 and not binary:
        payload = bodies()
        return payload, http_requests(payload)
    import json

    import numpy as np

    from models import load_split

    _, x, _, _ = load_split("digits_cnn")
    x = np.asarray(x, "<f4").reshape(-1, 1, 8, 8)
    payload, reqs = [], []
    for k in range(n):
        batch = np.take(x, range(k * rows, (k + 1) * rows), axis=0, mode="wrap")
        inp = {"name": "input", "shape": list(batch.shape), "datatype": "FP32"}
        if not binary:
            body = json.dumps({"inputs": [{**inp, "data": batch.ravel().tolist()}]}).encode()
            extra = b"Content-Type: application/json\r\n"
        else:
            head = json.dumps({"inputs": [{**inp, "parameters": {"binary_data_size": batch.nbytes}}],
                               "parameters": {"binary_data_output": True}}).encode()
            body = head + batch.tobytes()
            extra = b"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: %d\r\n" % len(head)
        payload.append(body)
        reqs.append(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Length: %d\r\n\r\n%s"
                    % (PATH, extra, len(body), body))
    return payload, reqs


def wait_processes(port: int, n: int, timeout: float = 120) -> int:
    """Until ``n`` distinct processes have answered (new connections); how many did."""
    seen: set[str] = set()
    end = time.monotonic() + timeout
    while len(seen) < n and time.monotonic() < end:
        with contextlib.suppress(OSError), urllib.request.urlopen(
                f"http://127.0.0.1:{port}/v2/health/ready", timeout=5) as r:
            seen.add(r.headers.get("Verinfer-Worker", ""))
        time.sleep(0.01)
    return len(seen)


def measure_point(client: str, load: LoadProcs | None, port: int, concurrency: int, warmup: float,
                  duration: float, body_file: Path, reqs: list[bytes], wrk_threads: int, pid: int) -> dict:
    """One point, loaded by ``wrk``, by the load processes ``load``, or by one Python process."""
    if load is not None:
        return load.measure(port, concurrency, warmup, duration, "bench", pid)
    r = (measure_wrk(port, concurrency, warmup, duration, body_file, wrk_threads, pid) if client == "wrk"
         else measure(port, concurrency, warmup, duration, reqs, pid))
    # the whole server: the supervisor and its children (server processes, receipt writer)
    r["server_cpu_cores"] = round(r["server_cpu_cores"] + r.pop("worker_cpu_cores"), 2)
    return r


def stop(load: LoadProcs | None, procs: list[subprocess.Popen]) -> None:
    """The load processes, then the servers (SIGTERM, all at once)."""
    if load is not None:
        load.close()
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="N to compare (1 first)")
    ap.add_argument("--only", nargs="+", choices=list(MODES), default=list(MODES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds per point and round")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64])
    ap.add_argument("--client", choices=["python", "wrk", "procs"], default="python",
                    help="python: one load process; procs: --load-procs of them (bench/load_procs.py)")
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--load-procs", type=int, default=4, help="load processes of --client procs")
    ap.add_argument("--rows", type=int, default=1, help="samples a request (inputs/s = requests/s x rows)")
    ap.add_argument("--binary", action="store_true", help="binary tensor data (not with --client wrk)")
    ap.add_argument("--serve-args", default="", help="more `verinfer serve` arguments, e.g. '--max-batch-size 4096'")
    ap.add_argument("--out", type=Path, help="JSON output file")
    args = ap.parse_args(argv)
    if args.client == "wrk" and shutil.which("wrk") is None:
        print("no wrk: `make wrk` (Debian's wrk package) or --client python", file=sys.stderr)
        return 2
    if args.client == "wrk" and args.binary:
        print("binary bodies: --client python or procs", file=sys.stderr)
        return 2
    configs = {f"{mode}_n{n}": ["serve", "--workers", str(n), *MODES[mode], *args.serve_args.split()]
               for mode in args.only for n in args.workers}
    payload, reqs = requests(args.rows, args.binary)
    points: dict[str, dict[int, list[dict]]] = {c: {k: [] for k in args.concurrency} for c in configs}
    names = list(configs)
    load = LoadProcs(args.load_procs, {"bench": reqs}) if args.client == "procs" else None
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "bodies.jsonl"
        body_file.write_bytes(b"\n".join(payload) + b"\n")
        servers: dict[str, tuple[subprocess.Popen, int]] = {}
        try:
            for name, cmd in configs.items():
                port = free_port()
                servers[name] = (start(name, Path(tmp) / name, port, cmd), port)
            for name, (_, port) in servers.items():  # every process serves before the first round
                n = int(name.rsplit("_n", 1)[1])
                if wait_processes(port, n) < n:
                    raise RuntimeError(f"{name}: fewer than {n} server processes answer")
            for rnd in range(args.rounds):
                order = names[rnd % len(names):] + names[: rnd % len(names)]
                for c in args.concurrency:
                    for name in order:
                        proc, port = servers[name]
                        r = measure_point(args.client, load, port, c, args.warmup, args.duration, body_file,
                                          reqs, args.wrk_threads, proc.pid)
                        r["inputs_per_s"] = round(r["throughput_rps"] * args.rows, 1)
                        points[name][c].append(r)
                        print(f"round {rnd + 1}/{args.rounds}  {name:16s} c={c:4d}  {r['throughput_rps']:9.1f} req/s"
                              + (f" ({r['inputs_per_s']:,.0f} inputs/s)" if args.rows > 1 else "") +
                              f"  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f}  server cores "
                              f"{r['server_cpu_cores']}  errors {r['errors']}", flush=True)
        finally:
            stop(load, [proc for proc, _ in servers.values()])

    results = {name: [_median_point(points[name][c]) for c in args.concurrency] for name in names}
    ratios: dict[str, dict] = {}
    base = args.workers[0]
    for c in args.concurrency:
        row = {}
        for mode in args.only:
            for n in args.workers[1:]:
                row[f"{mode}_n{n}_vs_n{base}"] = ratio_range(points[f"{mode}_n{n}"][c], points[f"{mode}_n{base}"][c])
        ratios[str(c)] = row
    print_ratios(ratios)
    dev = device()
    out = {
        "benchmark": "workers", "model": "digits_cnn", "device": dev, "cpus": os.cpu_count(),
        "python": platform.python_version(), "client": args.client, "rounds": args.rounds,
        "rows_per_request": args.rows, "binary": args.binary, "serve_args": args.serve_args,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "command": "python -m bench.workers " + " ".join(argv if argv is not None else sys.argv[1:]),
        "duration_s": args.duration, "results": results, "throughput_ratios": ratios,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_results(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
