"""The dynamic batcher: batches form under load, each caller gets its own slice."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.inference.batching import DynamicBatcher
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


def test_batch_waits_no_longer_than_for_as_many_requests_as_last_time():
    """Two closed-loop clients: once both are in, the batch runs; it does not wait out the
    delay (10 minutes here: a wait would time out, however slow the machine) for requests that
    cannot come."""
    async def main():
        b = DynamicBatcher("m", _echo, BatchPolicy(max_batch_size=64, max_queue_delay_ms=600_000), threaded=False)
        b.start()

        async def client(k):
            for i in range(5):
                assert await b.submit(np.zeros((1, 1)), (k, i)) == (k, i)

        try:
            # the first batch runs alone (nothing to wait for yet), then in pairs
            await asyncio.wait_for(asyncio.gather(client(0), client(1)), timeout=60)
            await asyncio.wait_for(asyncio.gather(client(0), client(1)), timeout=60)
        finally:
            await b.stop()
        return b.batches, b.samples

    batches, samples = run(main())
    assert samples == 20 and batches <= 12


def test_batch_does_not_wait_for_requests_still_in_the_finish_stage():
    """A request whose answer is still being finished cannot be sent again yet: the next
    batch runs without it instead of waiting (the delay is 10 minutes here). "slow"'s answer
    stays in the stage until "fast" has had all its answers (an event, not a sleep: a batcher
    that waited for "slow" never gets there and times out, whatever the machine's speed)."""
    done = []
    fast_done = asyncio.Event()

    async def finish(items, results):
        if items[0].ctx[0] == "slow":
            await fast_done.wait()
        return results

    async def main():
        b = DynamicBatcher("m", _echo, BatchPolicy(max_batch_size=64, max_queue_delay_ms=600_000), threaded=False,
                           finish=finish, finish_chunk=1)
        b.start()

        async def client(name, n):
            for i in range(n):
                await b.submit(np.zeros((1, 1)), (name, i))
                done.append(name)
            if name == "fast":
                fast_done.set()

        try:
            await asyncio.wait_for(asyncio.gather(client("fast", 6), client("slow", 2)), timeout=60)
        finally:
            await b.stop()

    run(main())
    # both start in one batch; "fast" goes on alone while "slow"'s answer is in the stage
    assert done == ["fast"] * 6 + ["slow"] * 2


# --- the finish stage (receipts: handed off to the receipt worker process) -----------------------


def _echo(items):
    return [i.ctx for i in items]


def test_finish_stage_takes_each_batch_in_chunks():
    """Every batch goes to the finish stage in chunks of ``finish_chunk``; every caller gets its
    own result."""
    handed = []

    async def finish(items, results):
        handed.append([i.ctx for i in items])
        await asyncio.sleep(0.01)  # another process at work
        return [("off", r) for r in results]

    async def main():
        b = DynamicBatcher("m", _echo, BatchPolicy(max_batch_size=32, max_queue_delay_ms=50), threaded=False,
                           finish=finish, finish_chunk=4)
        b.start()
        try:
            first = await b.submit(np.zeros((1, 1)), "warm")  # the batcher now waits for batches to fill
            res = await asyncio.gather(*(b.submit(np.zeros((1, 1)), k) for k in range(10)))
        finally:
            await b.stop()
        return first, res

    first, res = run(main())
    assert first == ("off", "warm")
    assert res == [("off", k) for k in range(10)]
    # 10 requests: two batches of five (at most half of those in flight each), in chunks
    # [0-3], [4] and [5-8], [9]
    assert handed == [["warm"], [0, 1, 2, 3], [4], [5, 6, 7, 8], [9]]


def test_finish_stage_failures_stay_in_their_chunk():
    release = asyncio.Event

    async def main():
        gate = release()

        async def finish(items, results):
            if any(i.ctx == 2 for i in items):
                raise RuntimeError("worker died")
            await gate.wait()
            return results

        b = DynamicBatcher("m", _echo, BatchPolicy(max_batch_size=2, max_queue_delay_ms=0), threaded=False,
                           finish=finish, finish_chunk=1)
        b.start()
        try:
            tasks = [asyncio.create_task(b.submit(np.zeros((1, 1)), k)) for k in range(6)]
            await asyncio.sleep(0.05)
            gate.set()
            res = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await b.stop()
        return res

    res = run(main())
    assert isinstance(res[2], RuntimeError) and "worker died" in str(res[2])
    assert [r for k, r in enumerate(res) if k != 2] == [0, 1, 3, 4, 5]


@pytest.mark.parametrize("threaded", [True, False])
@pytest.mark.parametrize("stage", ["run", "finish"])
def test_one_bad_request_fails_alone(threaded, stage):
    """A request that cannot be run or finished (signed) fails on its own; the others of its
    batch and chunk are answered. A request is bad here when its input holds -1."""

    def bad(items):
        return any((i.x == -1).any() for i in items)

    def run_batch(items):
        if stage == "run" and bad(items):
            raise ValueError("cannot run this input")
        return [i.x * 2 for i in items]

    async def finish(items, results):
        if stage == "finish" and bad(items):
            raise ValueError("cannot sign this input")
        return [("signed", r) for r in results]

    async def main():
        b = DynamicBatcher("m", run_batch, BatchPolicy(max_batch_size=64, max_queue_delay_ms=50),
                           threaded=threaded, finish=finish, finish_chunk=8)
        b.start()
        try:
            xs = [np.full((1, 2), -1 if k == 3 else k, np.float32) for k in range(6)]
            # one request first (a lone batch), so the next batch waits for the others to join
            await b.submit(np.zeros((1, 2), np.float32), None)
            await b.submit(np.zeros((1, 2), np.float32), None)
            return await asyncio.gather(*(b.submit(x, k) for k, x in enumerate(xs)),
                                        return_exceptions=True)
        finally:
            await b.stop()

    res = run(main())
    assert isinstance(res[3], ValueError)
    for k in (0, 1, 2, 4, 5):
        assert res[k][0] == "signed", res[k]
        np.testing.assert_array_equal(res[k][1], np.full((1, 2), 2 * k, np.float32))


def test_a_finish_stage_that_is_down_fails_its_chunk_once():
    """NotReady (the receipt worker died) is the stage's failure, not a request's: the chunk
    fails as a whole, with no retry request by request."""
    from server.errors import NotReady

    calls = []

    async def finish(items, results):
        calls.append(len(items))
        raise NotReady("the receipt signer died")

    async def main():
        b = DynamicBatcher("m", lambda items: [i.x for i in items],
                           BatchPolicy(max_batch_size=64, max_queue_delay_ms=50), threaded=False,
                           finish=finish, finish_chunk=8)
        b.start()
        try:
            await asyncio.gather(b.submit(np.zeros((1, 2), np.float32), None),
                                 return_exceptions=True)
            return await asyncio.gather(*(b.submit(np.ones((1, 2), np.float32), k) for k in range(5)),
                                        return_exceptions=True)
        finally:
            await b.stop()

    res = run(main())
    assert all(isinstance(r, NotReady) for r in res)
    assert sum(calls) == 6 and all(n >= 1 for n in calls)  # each request went to finish once


def test_a_full_queue_refuses_with_503_and_answers_the_rest():
    """Requests beyond max_queued_requests waiting for a batch are refused at once (Overloaded:
    503 + Retry-After), not queued without end; those queued are answered."""
    from server.errors import Overloaded, status_for

    async def main():
        b = DynamicBatcher("m", lambda items: [i.ctx for i in items],
                           BatchPolicy(max_batch_size=1, max_queue_delay_ms=0, max_queued_requests=3), threaded=False)
        b.start()
        first = asyncio.ensure_future(b.submit(np.zeros((1, 1)), "first"))
        await asyncio.sleep(0)
        # the collector is busy with "first" until the loop runs again: queue three more, then a fifth
        waiting = [asyncio.ensure_future(b.submit(np.zeros((1, 1)), k)) for k in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await b.submit(np.zeros((1, 1)), "over")
        got = await asyncio.gather(first, *waiting)
        await b.stop()
        return got, info.value

    got, exc = run(main())
    assert got == ["first", 0, 1, 2]
    assert status_for(exc) == 503 and exc.headers["Retry-After"] == "1"


def test_a_chunk_is_handed_to_the_finish_stage_before_the_loop_runs_anything_else():
    """The receipt worker starts on a chunk while the event loop parses the next requests:
    ``finish`` is called right after the batch has run, not from a task that runs later."""
    events = []

    def run_batch(items):
        asyncio.get_running_loop().call_soon(events.append, "loop")  # whatever the loop does next
        events.append("run")
        return [i.ctx for i in items]

    def finish(items, results):  # hands over now; the answers come later
        events.append("handed")
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(results)
        return fut

    async def main():
        b = DynamicBatcher("m", run_batch, BatchPolicy(max_batch_size=8, max_queue_delay_ms=0), threaded=False,
                           finish=finish)
        b.start()
        try:
            return await b.submit(np.zeros((1, 1)), "x")
        finally:
            await b.stop()

    assert run(main()) == "x"
    assert events[:3] == ["run", "handed", "loop"]


@pytest.mark.parametrize("stage", [False, True])
def test_with_a_finish_stage_a_batch_takes_half_of_the_requests_in_flight(stage):
    """16 requests waiting: without a finish stage one batch takes them all; with one (receipts)
    two batches of 8 do, so that one group is in the stage while the other is in the loop."""
    sizes = []

    def run_batch(items):
        sizes.append(len(items))
        return [i.ctx for i in items]

    async def finish(items, results):
        return results

    async def main():
        b = DynamicBatcher("m", run_batch, BatchPolicy(max_batch_size=64, max_queue_delay_ms=50), threaded=False,
                           finish=finish if stage else None)
        b.start()
        try:
            return await asyncio.gather(*(b.submit(np.zeros((1, 1)), k) for k in range(16)))
        finally:
            await b.stop()

    assert run(main()) == list(range(16))
    assert sizes == ([8, 8] if stage else [16])
