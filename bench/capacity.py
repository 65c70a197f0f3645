"""Capacity under an open-loop load: the highest request rate a server sustains within a p99 bound.

``bench.http_load`` drives closed-loop clients (each sends again when answered), so at a
fixed concurrency every millisecond added to a round trip is lost throughput (Little's law):
it measures latency as much as capacity. Here requests arrive on a schedule, at a fixed
rate whatever the server does, as users' requests do; each one's latency runs from its
scheduled time, so a server that falls behind is charged for the wait (no coordinated
omission). The capacity of a server is the highest rate of a ladder at which it answers
at least ``--keep-up`` of the requests offered within the measurement and with p99 under
``--p99-ms``, climbing the ladder until a step fails twice in a row.

The servers (``receipts`` and ``no_signing`` by default, as in ``bench.http_load``) are
measured in turns at each step of the ladder, several rounds, and the ratio of their
capacities is taken per round (this machine's speed drifts). Figures go to stdout and to
``bench/results/capacity-<device>-<cpus>cpu.json``.

    python -m bench.capacity [--rounds 3] [--rates 1000 1500 ...] [--duration 2] [--p99-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.http_load import (
    CONFIGS,
    MODEL,
    ResponseReader,
    _run,
    bodies,
    device,
    http_requests,
    running,
    write_results,
)

CONNECTIONS = 256  # the pool the generator may use; only as many are busy as the load needs


class _Conn(ResponseReader):
    """A keep-alive connection that carries one request at a time for the generator."""

    def __init__(self, gen: _OpenLoop) -> None:
        super().__init__()
        self.gen = gen
        self.sched = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.gen.idle.append(self)

    def send(self, req: bytes, sched: float) -> None:
        self.sched = sched
        self.transport.write(req)

    def answered(self, ok: bool) -> None:
        self.gen.errors += not ok
        self.gen.answered(self, self.sched)

    def connection_lost(self, exc) -> None:
        self.gen.lost += 1


class _OpenLoop:
    """Requests at ``rate`` per second for ``duration`` seconds, each on a free connection at
    its scheduled time, or queued here until one is free (the queue's wait counts)."""

    def __init__(self, reqs: list[bytes], rate: float, duration: float) -> None:
        self.reqs, self.rate, self.duration = reqs, rate, duration
        self.idle: list[_Conn] = []
        self.waiting: collections.deque[float] = collections.deque()
        self.lat: list[float] = []
        self.errors = self.lost = self.sent = 0
        self.end_sched = 0.0

    def answered(self, conn: _Conn, sched: float) -> None:
        now = time.perf_counter()
        if sched < self.end_sched:
            self.lat.append(now - sched)
        if self.waiting:
            self._send(conn, self.waiting.popleft())
        else:
            self.idle.append(conn)

    def _send(self, conn: _Conn, sched: float) -> None:
        conn.send(self.reqs[self.sent % len(self.reqs)], sched)
        self.sent += 1

    async def run(self, port: int) -> dict:
        loop = asyncio.get_running_loop()
        conns = [(await loop.create_connection(lambda: _Conn(self), "127.0.0.1", port))[0]
                 for _ in range(CONNECTIONS)]
        n = int(self.rate * self.duration)
        t0 = time.perf_counter() + 0.01
        self.end_sched = t0 + self.duration
        for i in range(n):
            sched = t0 + i / self.rate
            delay = sched - time.perf_counter()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            if self.idle:
                self._send(self.idle.pop(), sched)
            else:
                self.waiting.append(sched)
        # let what was sent finish (bounded: a server far behind is over capacity anyway)
        deadline = time.perf_counter() + max(2.0, self.duration)
        while len(self.lat) < n and time.perf_counter() < deadline and not self.lost:
            await asyncio.sleep(0.005)
        for t in conns:
            t.close()
        ms = np.array(self.lat or [float("inf")]) * 1e3
        return {"rate": self.rate, "offered": n, "answered": len(self.lat), "errors": self.errors,
                "p50_ms": round(float(np.percentile(ms, 50)), 3),
                "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def sustained(r: dict, p99_ms: float, keep_up: float) -> bool:
    return r["errors"] == 0 and r["answered"] >= keep_up * r["offered"] and r["p99_ms"] <= p99_ms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rates", type=float, nargs="+",
                    default=[1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000, 5500, 6000, 7000, 8000])
    ap.add_argument("--duration", type=float, default=2.0, help="seconds of arrivals per step")
    ap.add_argument("--p99-ms", type=float, default=50.0, help="the latency bound a sustained rate keeps")
    ap.add_argument("--keep-up", type=float, default=0.99,
                    help="share of the offered requests answered within the step and its grace time")
    ap.add_argument("--only", nargs="+", choices=[c for c in CONFIGS if CONFIGS[c]], default=["receipts", "no_signing"])
    ap.add_argument("--out", type=Path, help="JSON output file")
    args = ap.parse_args(argv)
    if len(args.only) != 2:
        ap.error("--only takes two configurations: the numerator and the denominator")

    reqs = http_requests(bodies())
    rates = sorted(args.rates)
    rounds: list[dict] = []
    with running(args.only) as servers:
        for rnd in range(args.rounds):
            steps: dict[str, list[dict]] = {c: [] for c in args.only}
            caps: dict[str, float] = {c: 0.0 for c in args.only}
            climbing = list(args.only)
            for k, rate in enumerate(rates):
                for config in (climbing if (rnd + k) % 2 == 0 else climbing[::-1]):
                    # a step not sustained is tried once more (a VM stall is not the server's
                    # limit); failing twice ends this server's climb: its capacity is the last
                    # rate it sustained
                    for _ in range(2):
                        r = _run(_OpenLoop(reqs, rate, args.duration).run(servers[config][1]))
                        r["sustained"] = sustained(r, args.p99_ms, args.keep_up)
                        steps[config].append(r)
                        print(f"round {rnd + 1}/{args.rounds}  {config:12s} {rate:7.0f} req/s offered: "
                              f"answered {r['answered']}/{r['offered']}  p50 {r['p50_ms']:8.2f} ms  "
                              f"p99 {r['p99_ms']:8.2f}  {'ok' if r['sustained'] else 'NOT sustained'}",
                              flush=True)
                        if r["sustained"]:
                            caps[config] = rate
                            break
                climbing = [c for c in climbing if caps[c] == rate]
                if not climbing:
                    break
            rounds.append({"capacity_rps": caps, "steps": steps})
            print(f"round {rnd + 1}: capacity " + ", ".join(f"{c} {v:.0f} req/s" for c, v in caps.items()), flush=True)

    num, den = args.only
    per_round = sorted(r["capacity_rps"][num] / r["capacity_rps"][den] for r in rounds if r["capacity_rps"][den])
    ratio = {"median": round(statistics.median(per_round), 3), "min": round(per_round[0], 3),
             "max": round(per_round[-1], 3)} if per_round else None
    if ratio:
        print(f"capacity {num}/{den} (median of rounds, [min, max]): {ratio['median']:.3f}  "
              f"[{ratio['min']:.3f}, {ratio['max']:.3f}]")
    write_results({
        "benchmark": "capacity", "model": MODEL, "device": device(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "p99_bound_ms": args.p99_ms, "keep_up": args.keep_up,
        "duration_s": args.duration, "connections": CONNECTIONS, "rates": rates,
        "capacity_ratio": {f"{num}_vs_{den}": ratio}, "rounds": rounds,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
