"""In-process batching throughput of the torch engine: inputs/s by batch size.

    python -m bench.gpu_batching [--model digits_cnn] [--out FILE]

Uses the server's own ``TorchEngine`` (host->device copy, forward, copy back:
what one batch costs the server), on CUDA when present. Then, where the
server's ``DynamicBatcher`` imports, drives it with concurrent submitters at
the best batch size to show what the batcher reaches. Prints a table, writes
JSON. Run on a GPU machine for the CUDA figures; works on CPU too.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def engine_throughput(engine, shape, batch: int, min_seconds: float = 0.5) -> float:
    x = np.random.default_rng(0).uniform(0, 16, size=(batch, *shape)).astype(np.float32)
    for _ in range(3):
        engine.run(x)
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < min_seconds or n < 3:
        engine.run(x)  # returns numpy arrays: the device work is finished
        n += 1
    return n * batch / elapsed


def batcher_throughput(engine, shape, max_batch: int, seconds: float = 3.0) -> dict | None:
    try:
        import asyncio

        from server.inference.batching import DynamicBatcher
        from server.settings import BatchPolicy
    except ImportError as exc:
        return {"skipped": f"server batcher not importable here: {exc}"}

    policy = BatchPolicy(max_batch_size=max_batch, max_queue_delay_ms=2.0)

    def run_batch(items):  # the server's contract: one result per queued item
        engine.run(np.concatenate([it.x for it in items]))
        return [None] * len(items)

    async def main() -> dict:
        batcher = DynamicBatcher("bench", run_batch, policy)
        batcher.start()
        x = np.ones((1, *shape), np.float32)
        done = 0
        stop = time.perf_counter() + seconds

        async def client():
            nonlocal done
            while time.perf_counter() < stop:
                await batcher.submit(x, None)
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(2 * max_batch)))
        elapsed = time.perf_counter() - t0
        await batcher.stop()
        return {"inputs_per_s": done / elapsed, "concurrency": 2 * max_batch}

    try:
        return asyncio.run(main())
    except Exception as exc:  # report, do not hide: the engine figures stand on their own  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits_cnn")
    ap.add_argument("--max-batch", type=int, default=16384)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_batching.json")
    args = ap.parse_args(argv)

    import torch

    from models import get_reference_model
    from server.inference.engines import TorchEngine

    engine = TorchEngine(args.model, ["logits", "label"])
    shape = get_reference_model(args.model).input_shape
    rows = []
    b = 1
    while b <= args.max_batch:
        rows.append({"batch": b, "inputs_per_s": engine_throughput(engine, shape, b)})
        print(f"batch {b:>6}: {rows[-1]['inputs_per_s']:>14,.0f} inputs/s", flush=True)
        b *= 4 if b >= 64 else 2
    best = max(rows, key=lambda r: r["inputs_per_s"])
    via_batcher = batcher_throughput(engine, shape, min(best["batch"], 4096))
    result = {
        "model": args.model, "device": engine.device, "torch": torch.__version__,
        "host": platform.node(), "engine": rows,
        "batch_1_inputs_per_s": rows[0]["inputs_per_s"],
        "best_batch": best["batch"], "best_inputs_per_s": best["inputs_per_s"],
        "best_vs_batch_1": best["inputs_per_s"] / rows[0]["inputs_per_s"],
        "through_dynamic_batcher": via_batcher,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "engine"}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
