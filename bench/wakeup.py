"""What a hand-off between two processes costs here: a one-byte round trip over a socket pair.

The event loop hands each chunk of answers to the receipt writer, a process on the other core,
and waits for its reply. On a VM, a vCPU with nothing to run halts, and waking it (the other
process's ``recv`` returning) costs the host an interrupt and a reschedule. This measures the
round trip with the echoing process blocked in ``recv`` (it sleeps between messages, as the
writer does) and with it polling a non-blocking socket (it never sleeps), each after a pause
of ``--gaps`` microseconds of the sender's own work. Their difference is the price of a wakeup.

    python -m bench.wakeup [--round-trips 3000] [--gaps 0 300 1000]

Prints the medians and p90s and writes ``bench/results/wakeup.json``; docs/performance.md has
what it found.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from pathlib import Path

from bench.loop_cost import write_result

RESULTS = Path(__file__).resolve().parent / "results"


def _echo(sock: socket.socket, poll: bool) -> None:
    while True:
        if poll:
            while True:
                try:
                    m = sock.recv(64, socket.MSG_DONTWAIT)
                    break
                except BlockingIOError:
                    pass
        else:
            m = sock.recv(64)
        if not m:
            return
        sock.send(m)


def round_trips(poll: bool, gap_s: float, n: int) -> list[float]:
    """``n`` round trips (seconds) to an echoing child process."""
    mine, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        mine.close()
        try:
            _echo(theirs, poll)
        finally:
            os._exit(0)
    theirs.close()
    out = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            while time.perf_counter() - start < gap_s:  # the sender's own work between messages
                pass
            t0 = time.perf_counter()
            mine.send(b"x")
            mine.recv(64)
            out.append(time.perf_counter() - t0)
    finally:
        mine.close()
        os.waitpid(pid, 0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--round-trips", type=int, default=3000)
    ap.add_argument("--gaps", type=int, nargs="+", default=[0, 300, 1000], help="µs between messages")
    ap.add_argument("--out", type=Path, default=RESULTS / "wakeup.json")
    args = ap.parse_args(argv)
    rows = []
    for gap in args.gaps:
        for mode in ("blocking", "polling"):
            rtt = sorted(round_trips(mode == "polling", gap / 1e6, args.round_trips))
            row = {"echo": mode, "gap_us": gap, "median_us": round(rtt[len(rtt) // 2] * 1e6, 1),
                   "p90_us": round(rtt[int(len(rtt) * 0.9)] * 1e6, 1)}
            rows.append(row)
            print(f"gap {gap:5d} µs  echo {mode:8s}  round trip median {row['median_us']:6.1f} µs  "
                  f"p90 {row['p90_us']:6.1f}")
    write_result(args.out, {"benchmark": "wakeup", "cpus": os.cpu_count(), "rows": rows}, "bench.wakeup", argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
