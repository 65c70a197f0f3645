"""Which HTTP server runs verinfer's N processes: uvicorn (what ``serve --workers N`` runs)
against granian (a Rust HTTP server), the same app under both.

Each server runs ``bench/asgi_app.py`` (the verinfer app, ``digits_cnn``) with its own
multi-process mode (``uvicorn --workers N``, ``granian --workers N``: N processes on one
listening socket) at N = 1 and 2, with signing off (``--only no_signing``: the HTTP layer is
all that differs) and with receipts (``receipts``: a shared receipt log writer started here, as
``serve --workers N`` starts it). Every configuration is started first and measured in
interleaved rounds (rotated order); ratios (granian against uvicorn at the same N and mode, N=2
against N=1 per server) are taken within a round, the median over rounds reported with its range
(``bench/http_load.py``). The load is ``wrk`` (``bench/wrk_infer.lua``) or, where there is none,
the Python client of ``bench/http_load.py``. The load average before and after is recorded:
on a shared machine the figures are rough. JSON to ``bench/results/http_servers-<cpu|cuda>-<cpus>cpu.json``.

    python -m bench.http_servers [--workers 1 2] [--rounds 3] [--duration 2] [--concurrency 32]
                                 [--only no_signing receipts] [--servers uvicorn granian]

granian is not a dependency: ``pip install 'verinfer[bench]'``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.http_load import (
    MODEL,
    _median_point,
    device,
    free_port,
    print_ratios,
    ratio_range,
    start,
)
from bench.http_load import write_results as write_json
from bench.load_procs import LoadProcs
from bench.workers import measure_point, requests, stop, wait_processes

FACTORY = "bench.asgi_app:create_app"


def server_command(server: str, n: int, port: int) -> list[str]:
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "--factory", FACTORY, "--host", "127.0.0.1",
                "--port", str(port), "--workers", str(n), "--log-level", "warning", "--no-access-log"]
    return [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", FACTORY, "--host",
            "127.0.0.1", "--port", str(port), "--workers", str(n), "--log-level", "warning"]


def start_writer(home: Path, signing: bool):
    """``serve --workers N``'s shared receipt log writer for the data dir ``home`` (keys and
    stores made first, as the supervisor does); None with signing off."""
    if not signing:
        return None, None
    from server.proofs.store import JobStore
    from server.receipts.keys import load_keys
    from server.receipts.store import ReceiptStore
    from server.settings import ServerSettings
    from server.supervisor import _spawn, writer_socket_path

    settings = ServerSettings(home=home, models=(MODEL,))
    load_keys(settings)
    ReceiptStore(settings.receipts_path).close()
    JobStore(settings.receipts_path).close()
    path = writer_socket_path(settings)
    proc, conn = _spawn(["server.receipts.worker", "--shared"], (settings, str(path)))
    end = time.monotonic() + 60
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError("the receipt writer did not start")
        time.sleep(0.05)
    return (proc, conn), str(path)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", nargs="+", choices=["uvicorn", "granian"], default=["uvicorn", "granian"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--only", nargs="+", choices=["no_signing", "receipts"], default=["no_signing", "receipts"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=2.0, help="measured seconds per point and round")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--client", choices=["auto", "python", "wrk", "procs"], default="auto")
    ap.add_argument("--load-procs", type=int, default=4, help="load processes of --client procs")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if "granian" in args.servers and shutil.which("granian", path=str(Path(sys.executable).parent)) is None:
        print("no granian: pip install 'verinfer[bench]'", file=sys.stderr)
        return 2
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    payload, reqs = requests(1, binary=False)
    names = [f"{mode}_{srv}_n{n}" for mode in args.only for n in args.workers for srv in args.servers]
    points: dict[str, list[dict]] = {name: [] for name in names}
    load = LoadProcs(args.load_procs, {"bench": reqs}) if client == "procs" else None
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "bodies.jsonl"
        body_file.write_bytes(b"\n".join(payload) + b"\n")
        servers: dict[str, tuple[subprocess.Popen, int]] = {}
        writers = []
        try:
            for name in names:
                mode, srv, n = name.rsplit("_", 2)[0], name.rsplit("_", 2)[1], int(name.rsplit("_n", 1)[1])
                home = Path(tmp) / name
                writer, path = start_writer(home, mode == "receipts")
                writers.append(writer)
                env = {"VERINFER_SIGNING": "true" if mode == "receipts" else "false",
                       **({"VERINFER_BENCH_RECEIPT_WRITER": path} if path else {})}
                port = free_port()
                proc = start(name, home, port, command=server_command(srv, n, port), env=env)
                if wait_processes(port, n) < n:
                    raise RuntimeError(f"{name}: fewer than {n} processes answer")
                servers[name] = (proc, port)
            for rnd in range(args.rounds):
                order = names[rnd % len(names):] + names[: rnd % len(names)]
                for name in order:
                    proc, port = servers[name]
                    r = measure_point(client, load, port, args.concurrency, args.warmup, args.duration, body_file,
                                      reqs, args.wrk_threads, proc.pid)
                    points[name].append(r)
                    print(f"round {rnd + 1}/{args.rounds}  {name:24s} {r['throughput_rps']:9.1f} req/s  p50 "
                          f"{r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f}  server cores {r['server_cpu_cores']}  "
                          f"errors {r['errors']}", flush=True)
        finally:
            stop(load, [proc for proc, _ in servers.values()])
            for w in writers:
                if w is not None:
                    w[1].close()  # its control pair closed: the writer stops
                    w[0].wait(timeout=30)
    load_after = load_average()
    ratios: dict[str, dict] = {}
    for mode in args.only:
        row = {}
        if len(args.servers) == 2:
            for n in args.workers:
                row[f"granian_vs_uvicorn_n{n}"] = ratio_range(points[f"{mode}_granian_n{n}"],
                                                              points[f"{mode}_uvicorn_n{n}"])
        for srv in args.servers:
            for n in args.workers[1:]:
                row[f"{srv}_n{n}_vs_n{args.workers[0]}"] = ratio_range(
                    points[f"{mode}_{srv}_n{n}"], points[f"{mode}_{srv}_n{args.workers[0]}"])
        ratios[mode] = row
    print_ratios(ratios)
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    from importlib.metadata import PackageNotFoundError, version

    def installed(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    out = {
        "benchmark": "http_servers", "model": MODEL, "device": device(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "uvicorn": installed("uvicorn"), "granian": installed("granian"),
        "client": client, "concurrency": args.concurrency, "rounds": args.rounds, "duration_s": args.duration,
        "load_average_before": load_before, "load_average_after": load_after,
        "results": {name: _median_point(points[name]) for name in names}, "throughput_ratios": ratios,
        "command": "python -m bench.http_servers " + " ".join(argv if argv is not None else sys.argv[1:]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
