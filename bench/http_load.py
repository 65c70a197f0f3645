"""HTTP load benchmark on loopback for ``digits_cnn``: latency percentiles and throughput.

Compares, at concurrency 1, 16 and 64 (one keep-alive connection per client):

* ``receipts``      the server with signed receipts and dynamic batching (the product)
* ``no_signing``    the same server with signing turned off (``--no-signing``)
* ``no_batching``   the server with receipts and ``--max-batch-size 1``
* ``minimal``       a minimal FastAPI endpoint that only runs the model (bench/minimal_app.py)

Each server runs in its own process (uvicorn, one worker); the load generator
is a lean HTTP/1.1 client in this process (an asyncio Protocol on uvloop) or, with ``--client wrk``,
``wrk`` (threads in C, ``bench/wrk_infer.lua``; it leaves more of the cores to the server
under test, which matters most to the server with receipts, the one with two busy
processes: docs/performance.md). All servers start first and
are measured in turns: ``--rounds`` rounds, each measuring every configuration at
every concurrency, in a rotated order. This machine's speed drifts by ±20% over
minutes, so a ratio is taken between measurements of the same round (seconds
apart) and the median over rounds is reported, with its range. Also recorded: the
CPU time per request of the server process and of its children (the receipt worker).
Figures go to stdout and to ``bench/results/http_load-<device>.json``.

    python -m bench.http_load [--rounds 5] [--duration 3] [--concurrency 1 16 64] [--only receipts ...]
                              [--client python|wrk]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
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


def start(config: str, home: Path, port: int, args: list[str] | None = None, *,
          command: list[str] | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A server of ``CONFIGS[config]`` (or the ``verinfer`` arguments ``args``, or the whole
    ``command`` with ``env`` added), once ready."""
    env = {**os.environ, "VERINFER_HOME": str(home), "VERINFER_MODELS": json.dumps([MODEL]), **(env or {})}
    args = args if args is not None or command is not None else CONFIGS[config]
    if command is not None:
        cmd = command
    elif args is None:
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


@contextmanager
def running(configs: list[str]) -> Iterator[dict[str, tuple[subprocess.Popen, int]]]:
    """A server of each configuration, each on its own port and data dir: {config: (process,
    port)}, stopped on the way out."""
    with tempfile.TemporaryDirectory() as tmp:
        servers: dict[str, tuple[subprocess.Popen, int]] = {}
        try:
            for config in configs:
                port = free_port()
                servers[config] = (start(config, Path(tmp) / config, port), port)
            yield servers
        finally:
            for proc, _ in servers.values():
                proc.terminate()
            for proc, _ in servers.values():
                proc.wait(timeout=30)


def bodies(n: int = 64) -> list[bytes]:
    from models import load_split

    _, x, _, _ = load_split(MODEL)
    return [
        json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                "data": x[i].ravel().tolist()}]}).encode()
        for i in range(n)
    ]


def http_requests(payloads: list[bytes]) -> list[bytes]:
    """Each JSON body as a whole HTTP/1.1 infer request."""
    return [b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (PATH, len(b), b) for b in payloads]


class ResponseReader(asyncio.Protocol):
    """A keep-alive connection with one request at a time: ``answered(ok)`` is called when a
    whole response (``Content-Length`` framed) has come back."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.need = -1  # bytes of the current response (head + body), -1: head not seen yet
        self.ok = True

    def answered(self, ok: bool) -> None:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            at = head.find(b"content-length:")
            self.need = end + 4 + (int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0)
            self.ok = head[9:12] == b"200"
        if len(buf) < self.need:
            return
        del buf[: self.need]
        self.need = -1
        self.answered(self.ok)


class _Client(ResponseReader):
    """One keep-alive connection sending requests back to back: the next one as soon as the
    last answer is complete. A Protocol on uvloop, not streams: the generator shares the
    cores with the server under test, so every microsecond it spends is taken from the
    server (asyncio streams took ~100 µs of CPU per request at concurrency 1 here, this ~70)."""

    def __init__(self, reqs: list[bytes], k: int, t_measure: float, t_end: float, lat: list,
                 done: asyncio.Future) -> None:
        super().__init__()
        self.reqs, self.i, self.t_measure, self.t_end, self.lat, self.done = reqs, k, t_measure, t_end, lat, done
        self.errors = 0
        self.t0 = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        self.t0 = t0 = time.perf_counter()
        if t0 >= self.t_end:
            self.transport.close()
            return
        self.transport.write(self.reqs[self.i % len(self.reqs)])
        self.i += 1

    def answered(self, ok: bool) -> None:
        t1 = time.perf_counter()
        self.errors += not ok
        if self.t0 >= self.t_measure:
            self.lat.append(t1 - self.t0)
        self._send()

    def connection_lost(self, exc) -> None:
        if exc is not None or time.perf_counter() < self.t_end:  # the server closed it
            self.errors += 1
        if not self.done.done():
            self.done.set_result(self.errors)


async def _load(port: int, concurrency: int, warmup: float, duration: float, reqs: list[bytes]):
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    now = time.perf_counter()
    t_measure, t_end = now + warmup, now + warmup + duration
    done = [loop.create_future() for _ in range(concurrency)]
    for k in range(concurrency):
        await loop.create_connection(lambda k=k: _Client(reqs, k, t_measure, t_end, lat, done[k]), "127.0.0.1", port)
    errors = await asyncio.gather(*done)
    return lat, sum(errors)


def _run(coro):
    try:
        import uvloop
    except ImportError:  # the serve extra installs it (uvicorn[standard])
        return asyncio.run(coro)
    return uvloop.run(coro)


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (utime + stime) of ``pid`` and of its live children, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    own = children = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if int(entry) == pid:
            own += seconds
        elif int(fields[1]) == pid:  # fields[1]: ppid, e.g. the receipt worker
            children += seconds
    return own, children


def _batch_counters(port: int) -> tuple[float, float, float] | None:
    """The server's batches, rows and engine seconds so far for ``MODEL`` (its Prometheus
    ``/metrics``); None where there are none (the minimal app)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") == MODEL and s.name in (
                    "verinfer_batch_rows_count", "verinfer_batch_rows_sum", "verinfer_compute_seconds_total"):
                found[s.name] = s.value
    if len(found) < 3:
        return None
    return found["verinfer_batch_rows_count"], found["verinfer_batch_rows_sum"], found["verinfer_compute_seconds_total"]


def _batch_figures(before: tuple | None, after: tuple | None) -> dict | None:
    """Rows per forward pass and the engine's wall time per row (the model's share of a
    request) between two :func:`_batch_counters` readings."""
    if not before or not after or after[0] <= before[0]:
        return None
    n, rows, engine_s = (b - a for a, b in zip(before, after))
    return {"rows_per_batch": round(rows / n, 2), "engine_us_per_row": round(engine_s / rows * 1e6, 1)}


def _cpu_figures(cpu0: tuple[float, float], cpu1: tuple[float, float], seconds: float, requests: int,
                 known: bool = True) -> dict:
    """Cores used and CPU µs per request, between two :func:`_cpu_seconds` readings, of the
    server process (event loop, model) and of its children (the receipt worker); None where
    the server's process is not known."""
    own, children = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    n = max(1, requests)
    return {"server_cpu_cores": round(own / seconds, 2) if known else None,
            "worker_cpu_cores": round(children / seconds, 2) if known else None,
            "server_cpu_us_per_request": round(own / n * 1e6) if known else None,
            "worker_cpu_us_per_request": round(children / n * 1e6) if known else None}


def measure(port: int, concurrency: int, warmup: float, duration: float, reqs: list[bytes],
            pid: int | None = None) -> dict:
    if warmup:
        _run(_load(port, concurrency, 0.0, warmup, reqs))
    batches0 = _batch_counters(port) if pid else None
    cpu0, t0, own0 = (_cpu_seconds(pid) if pid else (0.0, 0.0)), time.perf_counter(), time.process_time()
    lat, errors = _run(_load(port, concurrency, 0.0, duration, reqs))
    cpu1, t1, own1 = (_cpu_seconds(pid) if pid else (0.0, 0.0)), time.perf_counter(), time.process_time()
    batches1 = _batch_counters(port) if batches0 else None
    batch = _batch_figures(batches0, batches1)
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
        **_cpu_figures(cpu0, cpu1, t1 - t0, len(lat), pid is not None),
        # the load generator (this process) shares the cores: what it takes, the server cannot use
        "client_cpu_us_per_request": round((own1 - own0) / max(1, len(lat)) * 1e6),
        **(batch or {}),
    }


LUA = Path(__file__).with_name("wrk_infer.lua")


def _seconds(text: str) -> float:
    """wrk's latency figure (``812.00us``, ``1.20ms``, ``2.01s``) in seconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]


def measure_wrk(port: int, concurrency: int, warmup: float, duration: float, body_file: Path,
                threads: int, pid: int) -> dict:
    """One point driven by ``wrk`` (the requests of ``body_file``, one JSON body a line, in
    turn): what :func:`measure` gives, less the client's CPU (wrk's threads, in C, take a
    fraction of what this process's client does: more of the cores are left to the server)."""
    cmd = ["wrk", "-t", str(min(threads, concurrency)), "-c", str(concurrency), "--latency",
           "-s", str(LUA), f"http://127.0.0.1:{port}{PATH.decode()}"]
    env = {**os.environ, "WRK_BODIES": str(body_file)}
    if warmup:
        subprocess.run([*cmd[:-1], "-d", f"{max(1, round(warmup))}s", cmd[-1]], env=env,
                       capture_output=True, check=True)
    batches0 = _batch_counters(port)
    cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
    out = subprocess.run([*cmd[:-1], "-d", f"{max(1, round(duration))}s", cmd[-1]], env=env,
                         capture_output=True, text=True, check=True).stdout
    cpu1, t1 = _cpu_seconds(pid), time.perf_counter()
    batches1 = _batch_counters(port) if batches0 else None
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    n = int(re.search(r"(\d+) requests in", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"concurrency": concurrency, "client": "wrk", "requests": n, "throughput_rps": round(rps, 1),
            "errors": errors + (int(non2xx.group(1)) if non2xx else 0),
            "p50_ms": round(_seconds(lat["50"]) * 1e3, 3), "p99_ms": round(_seconds(lat["99"]) * 1e3, 3),
            **_cpu_figures(cpu0, cpu1, t1 - t0, n), **(_batch_figures(batches0, batches1) or {})}


def device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return "cpu"


# (numerator, denominator): the targets first
RATIOS = {
    "receipts_vs_no_signing": ("receipts", "no_signing"),  # target >= 0.85
    "batching_vs_no_batching": ("receipts", "no_batching"),  # target >= 2 at c=64
    "batching_vs_no_batching_unsigned": ("no_signing", "no_batching_no_signing"),
    "receipts_vs_minimal": ("receipts", "minimal"),
}


def _median_point(points: list[dict]) -> dict:
    """The round with the median throughput (its latencies stay consistent with it)."""
    ordered = sorted(points, key=lambda r: r["throughput_rps"])
    return {**ordered[len(ordered) // 2], "throughput_rps_rounds": [r["throughput_rps"] for r in points]}


def ratio_range(num: list[dict], den: list[dict]) -> dict:
    """Throughput ratios of two configurations, round by round: median, min and max."""
    per_round = sorted(a["throughput_rps"] / b["throughput_rps"] for a, b in zip(num, den))
    return {"median": round(statistics.median(per_round), 3),
            "min": round(per_round[0], 3), "max": round(per_round[-1], 3)}


def print_ratios(ratios: dict[str, dict[str, dict]]) -> None:
    print("throughput ratios (median of rounds, [min, max]):")
    for c, row in ratios.items():
        for name, r in row.items():
            print(f"  c={c:>4s}  {name:34s} {r['median']:.3f}  [{r['min']:.3f}, {r['max']:.3f}]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="measurements of each point, interleaved")
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds per point and round")
    ap.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each point")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--client", choices=["python", "wrk"], default="python",
                    help="the load generator: this process (uvloop) or wrk (`make wrk`)")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="JSON output file")
    args = ap.parse_args(argv)
    if args.client == "wrk" and shutil.which("wrk") is None:
        print("no wrk: `make wrk` (Debian's wrk package) or --client python", file=sys.stderr)
        return 2

    payload = bodies()
    reqs = http_requests(payload)
    points: dict[str, dict[int, list[dict]]] = {c: {k: [] for k in args.concurrency} for c in args.only}
    with running(args.only) as servers, tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "bodies.jsonl"  # wrk's requests
        body_file.write_bytes(b"\n".join(payload) + b"\n")
        for rnd in range(args.rounds):
            order = args.only[rnd % len(args.only):] + args.only[: rnd % len(args.only)]
            for c in args.concurrency:
                for config in order:
                    proc, port = servers[config]
                    r = (measure_wrk(port, c, args.warmup, args.duration, body_file, args.wrk_threads, proc.pid)
                         if args.client == "wrk" else measure(port, c, args.warmup, args.duration, reqs, proc.pid))
                    points[config][c].append(r)
                    print(f"round {rnd + 1}/{args.rounds}  {config:24s} c={c:3d}  {r['throughput_rps']:8.1f} req/s"
                          f"  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f}  cpu us/req: server "
                          f"{r['server_cpu_us_per_request']}, worker {r['worker_cpu_us_per_request']}, "
                          f"client {r.get('client_cpu_us_per_request', 'wrk')}"
                          + (f", model {r['engine_us_per_row']:.0f} per row in batches of {r['rows_per_batch']:.1f}"
                             if "rows_per_batch" in r else "")
                          + f"  errors {r['errors']}", flush=True)

    results = {config: [_median_point(points[config][c]) for c in args.concurrency] for config in args.only}
    ratios: dict[str, dict] = {}
    for c in args.concurrency:
        row = {}
        for name, (num, den) in RATIOS.items():
            if num in points and den in points:
                row[name] = ratio_range(points[num][c], points[den][c])
        ratios[str(c)] = row
    print_ratios(ratios)
    dev = device()
    out = {
        "benchmark": "http_load",
        "model": MODEL,
        "device": dev,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "client": args.client,
        "results": results,
        "throughput_ratios": ratios,
        "targets": {"receipts_vs_no_signing": ">= 0.85", "batching_vs_no_batching at c=64": ">= 2.0"},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_results(out, args.out)
    return 0


def write_results(out: dict, path: Path | None) -> None:
    """``out`` to ``path``, default ``bench/results/<benchmark>-<cpu|cuda>-<cpus>cpu.json``."""
    kind = "cpu" if out["device"] == "cpu" else "cuda"
    path = path or REPO / "bench" / "results" / f"{out['benchmark']}-{kind}-{os.cpu_count()}cpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
