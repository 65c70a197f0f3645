"""Micro-benchmark: what ``serve --workers N`` pays per request for whole-server state
(``server/shared.py``, ``server/metrics.py``): one API key rate-limit check with the bucket in
memory (N=1), in the shared mapped file, and, for comparison, in a SQLite table; and what one
answered request records in the metrics, in memory (N=1) and in prometheus-client's
multi-process files. CPU time per call (``time.process_time``, best of 7), so that other work on
a shared machine weighs less than in wall time. Runs itself a second time in a child process
with ``PROMETHEUS_MULTIPROC_DIR`` set (it must be set before prometheus-client is imported).

    python -m bench.shared_state
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from server.auth import RateLimiter, Tier
from server.metrics import Metrics, multiprocess_dir
from server.shared import SharedBuckets

KEY = "0123456789abcdef"


def per_call_us(f, n: int) -> float:
    return min(timeit.Timer(f, timer=time.process_time).repeat(number=n, repeat=7)) / n * 1e6


def buckets(folder: Path) -> None:
    tier = Tier(rate_per_s=1e9, burst=10**9)  # every call passes
    memory, shared = RateLimiter(), RateLimiter(SharedBuckets(folder / "buckets"))
    print(f"rate-limit check, bucket in memory:      {per_call_us(lambda: memory.take(KEY, tier), 100_000):6.1f} us")
    print(f"rate-limit check, bucket in shared file: {per_call_us(lambda: shared.take(KEY, tier), 100_000):6.1f} us")
    db = sqlite3.connect(folder / "buckets.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE b (k TEXT PRIMARY KEY, tokens REAL, last REAL)")

    def sqlite_take() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("SELECT tokens, last FROM b WHERE k = ?", (KEY,)).fetchone()
        db.execute("INSERT INTO b VALUES (?, 1, ?) ON CONFLICT (k) DO UPDATE SET tokens = excluded.tokens, "
                   "last = excluded.last", (KEY, time.monotonic()))
        db.execute("COMMIT")

    print(f"rate-limit check, bucket in SQLite:      {per_call_us(sqlite_take, 20_000):6.1f} us")


def metrics() -> None:
    m = Metrics()

    def answered() -> None:  # a batch of one, its signing, its answer
        m.batch("digits_cnn", 1, 0.001, [0.0005])
        m.signed("digits_cnn", 0.0002)
        m.answered("digits_cnn", 200, 0.002)

    where = "multi-process files" if multiprocess_dir() else "in memory"
    print(f"metrics of one answered request, {where}: {per_call_us(answered, 50_000):6.1f} us")


def main() -> None:
    import argparse

    argparse.ArgumentParser(prog="python -m bench.shared_state",
                            description=__doc__.split("\n\n")[0]).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if multiprocess_dir() is None:
            buckets(Path(tmp))
            metrics()
            subprocess.run([sys.executable, "-m", "bench.shared_state"], check=True,
                           env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": tmp})
        else:
            metrics()


if __name__ == "__main__":
    main()
