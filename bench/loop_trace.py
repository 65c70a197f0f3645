"""Where one server's event loop spends a closed-loop point: a timeline, split by what it did.

The server runs in a process of its own (``verinfer serve``, with receipts or ``--no-signing``),
with a few of its functions wrapped to stamp events (``time.perf_counter``) while recording is
on: a request parsed and queued (``req``), its answer built (``resp``), a batch run (``run``
... ``ran``), a chunk handed to the receipt writer (``handoff`` ... ``handed``), a chunk's
answers back from it (``answered``). ``bench.http_load``'s client drives it at one
concurrency; SIGUSR1 starts recording after the warm-up, SIGUSR2 writes the events out.

Every stretch of the loop's time lies between two consecutive events, so the time between
each kind of pair, summed, says where it went: ``handed -> answered`` (or ``ran ->
answered``, and from ``req`` or ``resp`` when no other request came) is the loop waiting for
the writer; ``resp -> req`` is
sending answers until the next request is read. Stretches of the loop waiting for the writer
longer than ``--stall-ms`` are listed with the requests between them (a fixed count betrays
a periodic cause, e.g. the receipt store's WAL checkpoint every 128 receipts).

    python -m bench.loop_trace [--concurrency 16] [--duration 3] [--no-signing]

Prints the table and writes ``bench/results/loop_trace-<device>-<config>-c<concurrency>.json``. docs/performance.md
has what it found.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


# --- in the server's process ----------------------------------------------------------------

def _instrument(out: Path) -> None:
    """Wrap the service's and the batcher's steps to stamp events while recording is on."""
    from server.inference import batching, service

    events: list[tuple] = []
    on = False
    clock = time.perf_counter

    def mark(*what) -> None:
        if on:
            events.append((clock(), *what))

    def start(*_) -> None:
        nonlocal on
        events.clear()
        on = True

    def dump(*_) -> None:
        nonlocal on
        on = False
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(events))
        os.replace(tmp, out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, dump)

    infer_body = service.InferenceService.infer_body

    async def traced_infer_body(self, *args, **kwargs):
        mark("req")
        try:
            return await infer_body(self, *args, **kwargs)
        finally:
            mark("resp")

    service.InferenceService.infer_body = traced_infer_body

    init, answer = batching.DynamicBatcher.__init__, batching.DynamicBatcher._answer

    def traced_init(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        run_batch, finish = self.run_batch, self.finish

        def traced_run(items):
            mark("run", len(items))
            try:
                return run_batch(items)
            finally:
                mark("ran")

        self.run_batch = traced_run
        if finish is not None:
            def traced_finish(items, results):
                mark("handoff", len(items))
                try:
                    return finish(items, results)
                finally:
                    mark("handed")

            self.finish = traced_finish

    def traced_answer(self, batch, results) -> None:
        mark("answered", len(batch))
        answer(self, batch, results)

    batching.DynamicBatcher.__init__ = traced_init
    batching.DynamicBatcher._answer = traced_answer


def _serve(out: str, args: list[str]) -> int:
    _instrument(Path(out))
    from verifier.cli import main

    return main(args)


# --- the analysis ---------------------------------------------------------------------------

# the loop, after one of these, had nothing to do but wait for the writer's next reply (the
# stretch also holds the end of that step: parsing a request after ``req``, sending after ``resp``)
WAITS = {("handed", "answered"), ("ran", "answered"), ("resp", "answered"), ("req", "answered")}


def analyse(events: list[list], stall_ms: float) -> dict:
    """The loop's time by consecutive pair of events, and the long waits for the writer."""
    if len(events) < 2:
        raise SystemExit("no events were recorded (did the load reach the server?)")
    span = events[-1][0] - events[0][0]
    requests = sum(1 for e in events if e[1] == "req")
    batches = [e[2] for e in events if e[1] == "run"]
    total: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter = collections.Counter()
    stalls, since = [], 0
    for a, b in zip(events, events[1:]):
        pair, dt = f"{a[1]} -> {b[1]}", b[0] - a[0]
        total[pair] += dt
        count[pair] += 1
        since += a[1] == "req"
        if (a[1], b[1]) in WAITS and dt * 1e3 >= stall_ms:
            stalls.append({"at_ms": round((a[0] - events[0][0]) * 1e3, 1), "ms": round(dt * 1e3, 2),
                           "requests_since_last": since})
            since = 0
    pairs = [{"pair": p, "n": count[p], "mean_us": round(t / count[p] * 1e6, 1),
              "share": round(t / span, 4), "us_per_request": round(t / max(1, requests) * 1e6, 1)}
             for p, t in sorted(total.items(), key=lambda kv: -kv[1])]
    waiting = sum(t for p, t in total.items() if tuple(p.split(" -> ")) in WAITS)
    return {
        "span_s": round(span, 4),
        "requests": requests,
        "requests_per_s": round(requests / span, 1),
        "rows_per_batch": round(statistics.fmean(batches), 2) if batches else None,
        "waiting_for_writer_share": round(waiting / span, 4),
        "long_waits_share": round(sum(s["ms"] for s in stalls) / 1e3 / span, 4),
        "long_waits": stalls,
        "pairs": pairs,
    }


def report(r: dict, stall_ms: float) -> None:
    print(f"{r['requests']} requests in {r['span_s'] * 1e3:.0f} ms ({r['requests_per_s']:.0f} req/s), "
          f"{r['rows_per_batch']} rows per batch")
    print(f"the loop waiting for the writer: {r['waiting_for_writer_share']:.1%} of its time, "
          f"{r['long_waits_share']:.1%} in waits of {stall_ms:g} ms or more ({len(r['long_waits'])})")
    print(f"{'between':22s} {'n':>6s} {'mean us':>8s} {'share':>6s} {'us/req':>7s}")
    for p in r["pairs"]:
        if p["share"] >= 0.002:
            print(f"{p['pair']:22s} {p['n']:6d} {p['mean_us']:8.1f} {p['share']:6.3f} {p['us_per_request']:7.1f}")
    gaps = [s["requests_since_last"] for s in r["long_waits"][1:]]
    if gaps:
        common = collections.Counter(gaps).most_common(3)
        print("requests between two long waits, most common:", ", ".join(f"{k} ({v}x)" for k, v in common))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:  # the server's process: python -m bench.loop_trace --serve OUT ARGS...
        return _serve(argv[1], argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=3.0, help="recorded seconds")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--no-signing", action="store_true", help="trace the server without receipts")
    ap.add_argument("--stall-ms", type=float, default=1.0, help="a wait for the writer listed as long")
    ap.add_argument("--out", type=Path, help="JSON output file")
    args = ap.parse_args(argv)

    from bench.http_load import _load, _run, bodies, device, free_port, http_requests, start

    reqs = http_requests(bodies())
    with tempfile.TemporaryDirectory() as tmp:
        events_file, port = Path(tmp) / "events.json", free_port()
        serve = ["serve", *(["--no-signing"] if args.no_signing else []), "--port", str(port)]
        proc = start("traced", Path(tmp) / "home", port,
                     command=[sys.executable, "-m", "bench.loop_trace", "--serve", str(events_file), *serve])
        try:
            _run(_load(port, args.concurrency, 0.0, args.warmup, reqs))
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.05)
            lat, errors = _run(_load(port, args.concurrency, 0.0, args.duration, reqs))
            proc.send_signal(signal.SIGUSR2)
            end = time.monotonic() + 30
            while not events_file.exists() and time.monotonic() < end:
                time.sleep(0.1)
            events = json.loads(events_file.read_text())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    r = analyse(events, args.stall_ms)
    r = {"config": "no_signing" if args.no_signing else "receipts", "concurrency": args.concurrency,
         "client_requests": len(lat), "errors": errors, **r}
    report(r, args.stall_ms)
    name = f"loop_trace-{device().replace(' ', '_').lower()}-{r['config']}-c{args.concurrency}.json"
    out = args.out or REPO / "bench" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
