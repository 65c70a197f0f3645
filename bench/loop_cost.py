"""The event loop's CPU per answer, by stage, with receipts and with signing off (no HTTP).

``bench/http_load.py`` measures what a client sees; this measures where the server process's
own CPU goes, without the load generator, the sockets and uvicorn sharing the cores. Clients
are coroutines in the server's process calling ``InferenceService.infer_body`` (the infer
route's one call) on ``digits_cnn``; the receipt worker is the real child process. Per answer:
the loop process's CPU time (``time.process_time``), and the CPU inside parsing
(``parse_infer_request``), the batch (``_run_batch``: the model and the slicing), the receipt
job and its frame (receipts), and the response JSON (signing off). Configurations run in turns,
``--rounds`` rounds, each in a fresh service; medians are reported with their range.

Also: the model's forward pass alone, back to back and after a short sleep, to show what a
cold cache costs a loop that waits between batches (docs/performance.md, "The loop's CPU").

    python -m bench.loop_cost [--rounds 4] [--answers 6000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "digits_cnn"
STAGES = ("parse", "batch", "job", "frame", "response")


def _bodies(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                    "data": rng.random(64).round(4).tolist()}]}).encode() for _ in range(n)]


class StageClock:
    """CPU time spent inside a few named functions (wrapped in place for the run)."""

    def __init__(self) -> None:
        self.cpu = collections.Counter()
        self.calls = collections.Counter()
        self._undo = []

    def wrap(self, owner, attr: str, stage: str) -> None:
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[stage] += time.process_time() - start
                self.calls[stage] += 1

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, fn))

    def unwrap(self) -> None:
        for owner, attr, fn in reversed(self._undo):
            setattr(owner, attr, fn)
        self._undo.clear()


async def one_run(signing: bool, concurrency: int, answers: int, bodies: list[bytes]) -> dict:
    from server.inference import service as svc_mod
    from server.receipts import worker
    from server.settings import ServerSettings

    settings = ServerSettings(home=Path(tempfile.mkdtemp(prefix="loop-cost-")), models=(MODEL,), signing=signing)
    clock = StageClock()  # wrapped before the service binds its batch function
    clock.wrap(svc_mod, "parse_infer_request", "parse")
    clock.wrap(svc_mod.InferenceService, "_run_batch", "batch")
    clock.wrap(svc_mod, "_job", "job")
    clock.wrap(worker, "_frame", "frame")
    clock.wrap(svc_mod, "response_body", "response")
    clock.wrap(svc_mod, "outputs_json", "response")
    try:
        return await _measure(svc_mod, settings, clock, signing, concurrency, answers, bodies)
    finally:
        clock.unwrap()


async def _measure(svc_mod, settings, clock: StageClock, signing: bool, concurrency: int, answers: int,
                   bodies: list[bytes]) -> dict:
    from server.inference.registry import load_models
    from server.receipts.keys import load_keys
    from server.receipts.store import ReceiptStore

    store = ReceiptStore(settings.receipts_path) if signing else None
    service = svc_mod.InferenceService(settings, load_models(settings), load_keys(settings) if signing else None,
                                       store)
    await service.start()
    gc.collect()
    gc.freeze()  # as the server does after start-up
    done = 0

    async def client(k: int, n: int) -> None:
        nonlocal done
        i = k
        while done < n:
            await service.infer_body(MODEL, None, bodies[i % len(bodies)])
            done += 1
            i += concurrency

    try:
        await asyncio.gather(*(client(k, answers // 4) for k in range(concurrency)))  # warm up
        clock.cpu.clear()
        clock.calls.clear()
        done = 0
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client(k, answers) for k in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await service.stop()
        if store is not None:
            store.close()
        gc.unfreeze()
    return {"answers_per_s": done / wall, "loop_cpu_us": cpu / done * 1e6,
            "answers_per_batch": done / max(1, clock.calls["batch"]),
            "stages_us": {s: clock.cpu[s] / done * 1e6 for s in STAGES}}


def forward_cold(reps: int = 400) -> dict:
    """digits_cnn's forward pass on 8 rows (CPU µs): back to back, and after sleeps."""
    from server.inference.registry import load_models
    from server.settings import ServerSettings

    settings = ServerSettings(home=Path(tempfile.mkdtemp(prefix="loop-cost-")), models=(MODEL,))
    engine = load_models(settings)[MODEL].engine
    x = np.random.default_rng(1).random((8, 1, 8, 8), dtype=np.float32)
    out = {}
    for gap in (0.0, 0.0002, 0.001, 0.003):
        total = 0.0
        for i in range(reps + 50):
            if gap:
                time.sleep(gap)
            start = time.process_time()
            engine.run(x)
            if i >= 50:
                total += time.process_time() - start
        out[f"after_sleep_{gap * 1e3:g}ms" if gap else "back_to_back"] = total / reps * 1e6
    return out


def med(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def write_result(out: Path, result: dict, module: str, argv: list[str] | None) -> None:
    """``result`` with the command that made it, as JSON in ``out``."""
    result["command"] = f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


def _summary(runs: list[dict]) -> dict:
    return {"answers_per_s": med([r["answers_per_s"] for r in runs]),
            "loop_cpu_us": med([r["loop_cpu_us"] for r in runs]),
            "answers_per_batch": med([r["answers_per_batch"] for r in runs]),
            "stages_us": {s: med([r["stages_us"][s] for r in runs]) for s in STAGES}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.loop_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--answers", type=int, default=6000, help="answers per measured run")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path, default=RESULTS / "loop_cost.json")
    args = ap.parse_args(argv)
    import uvloop

    bodies = _bodies(256)
    runs = {"no_signing": [], "receipts": []}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            res = uvloop.run(one_run(name == "receipts", args.concurrency, args.answers, bodies))
            runs[name].append(res)
            stages = ", ".join(f"{s} {res['stages_us'][s]:.0f}" for s in STAGES)
            print(f"round {r + 1} {name:10s} loop {res['loop_cpu_us']:.0f} µs/answer, "
                  f"{res['answers_per_s']:,.0f} answers/s, {res['answers_per_batch']:.1f} per batch; "
                  f"µs/answer: {stages}", flush=True)
    cold = forward_cold()
    print("forward pass, 8 rows, CPU µs: " + ", ".join(f"{k} {v:.0f}" for k, v in cold.items()))
    result = {"model": MODEL, "concurrency": args.concurrency, "answers": args.answers, "rounds": args.rounds,
              "summary": {k: _summary(v) for k, v in runs.items()}, "runs": runs, "forward_8_rows_us": cold}
    write_result(args.out, result, "bench.loop_cost", argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
