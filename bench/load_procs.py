"""The Python load generator of ``bench/http_load.py`` in several processes, for machines
where one process would be the bottleneck and ``wrk`` is not installed (the GPU machine).

Each process holds a share of the connections and the request bytes (given once, at start:
binary bodies too); every measurement starts in all of them at one wall-clock time, so their
windows line up. Latencies and counts are merged into what :func:`bench.http_load.measure`
returns.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from multiprocessing.connection import Connection

import numpy as np

from bench.http_load import _cpu_seconds, _load, _run


def _serve(conn: Connection, reqs: dict[str, list[bytes]]) -> None:
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        port, concurrency, start_at, warmup, duration, which = job
        time.sleep(max(0.0, start_at - time.time()))
        lat, errors = _run(_load(port, concurrency, warmup, duration, reqs[which]))
        conn.send((lat, errors, time.process_time()))


class LoadProcs:
    """``procs`` load processes; ``reqs``: name -> raw HTTP requests, sent in turn."""

    def __init__(self, procs: int, reqs: dict[str, list[bytes]]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for _ in range(procs):
            ours, theirs = ctx.Pipe()
            p = ctx.Process(target=_serve, args=(theirs, reqs), daemon=True)
            p.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(p)

    def measure(self, port: int, concurrency: int, warmup: float, duration: float, which: str,
                pid: int | None = None) -> dict:
        n = min(len(self.conns), concurrency)
        shares = [concurrency // n + (k < concurrency % n) for k in range(n)]
        start_at = time.time() + 0.2
        for conn, c in zip(self.conns, shares):
            conn.send((port, c, start_at, warmup, duration, which))
        time.sleep(max(0.0, start_at + warmup - time.time()))
        cpu0, t0 = (_cpu_seconds(pid) if pid else (0.0, 0.0)), time.perf_counter()
        answers = [conn.recv() for conn in self.conns[:n]]
        cpu1, t1 = (_cpu_seconds(pid) if pid else (0.0, 0.0)), time.perf_counter()
        lat = [x for a in answers for x in a[0]]
        ms = np.array(lat or [0.0]) * 1e3
        return {
            "concurrency": concurrency, "client_processes": n, "requests": len(lat),
            "errors": sum(a[1] for a in answers), "throughput_rps": round(len(lat) / duration, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(statistics.fmean(ms), 3),
            # the server (its processes and their children): cores used over the measured window
            "server_cpu_cores": round((sum(cpu1) - sum(cpu0)) / (t1 - t0), 2) if pid else None,
        }

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
