"""The dynamic batcher: batches form under load, each caller gets its own slice."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.batching import DynamicBatcher
from server.settings import BatchPolicy


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("threaded", [True, False])
def test_concurrent_requests_are_batched_and_answered_in_order(threaded):
    sizes = []

    def run_batch(items):
        x = np.concatenate([i.x for i in items])
        sizes.append(len(x))
        y = x * 2
        out, start = [], 0
        for i in items:
            out.append((i.ctx, y[start : start + i.rows]))
            start += i.rows
        return out

    async def main():
        b = DynamicBatcher("m", run_batch, BatchPolicy(max_batch_size=8, max_queue_delay_ms=20), threaded=threaded)
        b.start()
        try:
            rows = [1, 2, 1, 3, 1, 1, 1, 2, 1, 1] * 3
            xs = [np.full((r, 2), k, dtype=np.float32) for k, r in enumerate(rows)]
            res = await asyncio.gather(*(b.submit(x, k) for k, x in enumerate(xs)))
        finally:
            await b.stop()
        return xs, res

    xs, res = run(main())
    for k, (x, (ctx, y)) in enumerate(zip(xs, res)):
        assert ctx == k
        np.testing.assert_array_equal(y, x * 2)
    assert max(sizes) <= 8
    assert len(sizes) < len(xs)  # some requests shared a batch
    assert sum(sizes) == sum(len(x) for x in xs)


def test_batch_size_one_means_no_batching():
    sizes = []

    def run_batch(items):
        sizes.append(len(items))
        return [i.ctx for i in items]

    async def main():
        b = DynamicBatcher("m", run_batch, BatchPolicy(max_batch_size=1, max_queue_delay_ms=50))
        b.start()
        try:
            return await asyncio.gather(*(b.submit(np.zeros((1, 1)), k) for k in range(10)))
        finally:
            await b.stop()

    assert run(main()) == list(range(10))
    assert sizes == [1] * 10


def test_errors_reach_every_caller_and_batcher_survives():
    calls = []

    def run_batch(items):
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("engine failed")
        return [ValueError("bad item") if i.ctx == "bad" else i.ctx for i in items]

    async def main():
        b = DynamicBatcher("m", run_batch, BatchPolicy(max_batch_size=4, max_queue_delay_ms=1))
        b.start()
        try:
            with pytest.raises(RuntimeError):
                await b.submit(np.zeros((1, 1)), "first")
            got = await asyncio.gather(
                b.submit(np.zeros((1, 1)), "ok"), b.submit(np.zeros((1, 1)), "bad"), return_exceptions=True
            )
        finally:
            await b.stop()
        return got

    ok, bad = run(main())
    assert ok == "ok" and isinstance(bad, ValueError)
