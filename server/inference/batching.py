"""Dynamic batching: concurrent requests to one model share a forward pass.

Per model, one collector task gathers queued requests until ``max_batch_size`` samples or
``max_queue_delay_ms`` (waiting only for requests that can still come; a lone request never
waits), runs the batch, and gives each caller its own rows. An optional ``finish`` stage
(signing receipts in another process) gets each chunk of ``finish_chunk`` requests as soon as
the batch has run, and answers the chunk when it is done, while the next batch runs;
``max_finishing`` chunks in the stage is the back-pressure. With a finish stage a batch takes
at most half of the requests in flight, so that two groups of clients overlap (one in the
loop, one in the stage). Why, with the measurements behind each choice:
docs/server.md ("Execution"); docs/performance.md ("Where the time goes", "two groups in flight").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.errors import NotReady, Overloaded
from server.settings import BatchPolicy


@dataclass
class Item:
    x: np.ndarray  # this request's input, batch on axis 0
    ctx: Any  # whatever the post-processor needs (request id, ...)
    future: asyncio.Future = field(repr=False)
    queued: float = field(default_factory=time.perf_counter)  # when it was submitted (queue-time metrics)

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


# run_batch(items) -> one result (or an Exception instance) per item; runs in the worker thread.
RunBatch = Callable[[list[Item]], list[Any]]
# finish(items, results) -> an awaitable of the final result (or Exception) per item; called in
# the event loop as soon as the batch has run, before anything else runs there: it should hand
# the chunk over then (a plain function returning an awaitable; an ``async def`` starts only
# when its task first runs).
Finish = Callable[[list[Item], list[Any]], Awaitable[list[Any]]]


class DynamicBatcher:
    def __init__(self, name: str, run_batch: RunBatch, policy: BatchPolicy, *, threaded: bool = True,
                 finish: Finish | None = None,
                 finish_chunk: int = 8, max_finishing: int = 16) -> None:
        self.name = name
        # threaded: batches run in a worker thread (the event loop keeps parsing requests);
        # else inline in the loop, which avoids GIL hand-offs for tiny CPU models.
        self.threaded = threaded
        self.run_batch = run_batch
        self.finish = finish
        self.finish_chunk = finish_chunk
        self._max_finishing = max_finishing
        self._finishing: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task] = set()
        self.max_batch = policy.max_batch_size
        self.delay = policy.max_queue_delay_ms / 1000.0
        self.max_queued = policy.max_queued_requests
        self._queue: asyncio.Queue[Item] | None = None
        self._task: asyncio.Task | None = None
        self._carry: Item | None = None
        self._in_stage = 0  # requests handed to the finish stage and not answered yet
        self._answered = 0  # requests the finish stage answered since the last batch started
        self._last_len = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self.batches = 0  # counters, for metrics and tests
        self.samples = 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._finishing = asyncio.Semaphore(self._max_finishing)
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._tasks:  # batches being finished: let them answer
            await asyncio.wait(self._tasks, timeout=30)
        self._executor.shutdown(wait=True)

    async def submit(self, x: np.ndarray, ctx: Any) -> Any:
        """Queue one request; returns its result (or raises its exception)."""
        assert self._queue is not None, "batcher not started"
        if self._queue.qsize() >= self.max_queued:  # overload: refuse now rather than grow without end
            raise Overloaded(f"model {self.name} has {self.max_queued} requests waiting; retry shortly")
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Item(x, ctx, fut))
        return await fut

    async def _next(self, timeout: float | None) -> Item | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        assert self._queue is not None
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout is not None and timeout <= 0:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    def _sizes(self) -> tuple[int, int]:
        """(requests to wait for, most requests) for the batch being collected.

        Wait only for requests that can come: under steady load, closed-loop clients send
        again only when answered. Beyond that, take what is queued, without waiting. (Waiting
        out the whole delay for requests that could not come cut req/s at c=2 to a third of
        c=1.) Without a finish stage the answers of a batch go out together: as many can come
        as the last batch held.

        With a finish stage (receipts), answers come back chunk by chunk: as many can come as
        were answered since the last batch started. And a batch takes at most half of the
        requests in flight (those that can come and those still in the stage), so that two
        groups of clients take turns: one is parsed and run in the event loop while the other
        is signed in the worker. Without the cap, one batch soon holds every client, the loop
        waits while the worker signs and the worker waits while the loop parses: at c=16
        receipts gave 0.41–0.47 of signing off's req/s, with it 0.6 (docs/performance.md, "two
        groups in flight")."""
        if self.finish is None:
            return self._last_len, self.max_batch
        can_come = max(self._answered, 1 + self._queue.qsize())
        self._answered = 0
        most = max(1, (can_come + self._in_stage + 1) // 2)
        return min(can_come, most), most

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            assert first is not None
            batch, rows = [first], first.rows
            target, most = self._sizes()
            # Wait for the batch to fill only under load (more than one request can come);
            # a lone request runs at once instead of paying the delay.
            deadline = loop.time() + (self.delay if target > 1 else 0.0)
            while rows < self.max_batch and len(batch) < most:
                item = await self._next(deadline - loop.time() if len(batch) < target else 0)
                if item is None:
                    break
                if rows + item.rows > self.max_batch:
                    self._carry = item  # starts the next batch
                    break
                batch.append(item)
                rows += item.rows
            batch = [i for i in batch if not i.future.cancelled()]
            if not batch:
                continue
            self._last_len = len(batch)
            self.batches += 1
            self.samples += rows
            try:
                if self.threaded:
                    results = await loop.run_in_executor(self._executor, self.run_batch, batch)
                else:
                    results = self.run_batch(batch)
                    if self.finish is None:
                        await asyncio.sleep(0)  # let the requests that came meanwhile queue up
                    # (with a finish stage, the chunks are handed over first, below)
            except Exception as exc:  # noqa: BLE001
                if len(batch) == 1:
                    self._answer(batch, [exc])
                    continue
                # one bad request fails alone: run each on its own (and finish each on its
                # own below: the finish stage takes consecutive rows of one run)
                results = [self._run_alone(item) for item in batch]
                alone = True
            else:
                alone = False
            if self.finish is None:
                _deliver(batch, results)
            else:
                size = 1 if alone else self.finish_chunk
                for k in range(0, len(batch), size):
                    await self._finishing.acquire()
                    chunk, done = batch[k:k + size], results[k:k + size]
                    task = loop.create_task(self._finish(chunk, done, self._hand_off(chunk, done)))
                    self._tasks.add(task)
                    self._in_stage += len(chunk)
                    task.add_done_callback(self._tasks.discard)

    def _answer(self, batch: list[Item], results: list[Any]) -> None:
        _deliver(batch, results)
        self._answered += len(batch)

    def _run_alone(self, item: Item) -> Any:
        try:
            return self.run_batch([item])[0]
        except Exception as exc:  # noqa: BLE001  (this request's own error)
            return exc

    def _hand_off(self, batch: list[Item], results: list[Any]) -> Awaitable[list[Any]] | Exception | None:
        """Start finishing a chunk now, before the loop runs anything else: ``finish`` hands
        it over (to the receipt worker) and returns what to await. None: nothing to finish
        (a failed run, chunks of one); an exception: ``finish`` failed at once."""
        if any(isinstance(r, BaseException) for r in results):
            return None
        try:
            return self.finish(batch, results)
        except Exception as exc:  # noqa: BLE001  (handled as a failure of the awaited stage)
            return exc

    async def _finish(self, batch: list[Item], results: list[Any],
                      pending: Awaitable[list[Any]] | Exception | None) -> None:
        try:
            if isinstance(pending, Exception):
                raise pending
            if pending is not None:
                results = await pending
        except NotReady as exc:  # the stage itself is down (a receipt worker died): all fail
            results = [exc] * len(batch)
        except Exception:  # noqa: BLE001  (one bad request fails alone: finish each on its own)
            results = [await self._finish_alone(i, r) for i, r in zip(batch, results)]
        finally:
            self._finishing.release()
            self._in_stage -= len(batch)
        self._answer(batch, results)

    async def _finish_alone(self, item: Item, result: Any) -> Any:
        if isinstance(result, BaseException):
            return result
        try:
            return (await self.finish([item], [result]))[0]
        except Exception as exc:  # noqa: BLE001
            return exc


def _deliver(batch: list[Item], results: list[Any]) -> None:
    for item, res in zip(batch, results):
        if item.future.done():
            continue
        if isinstance(res, BaseException):
            item.future.set_exception(res)
        else:
            item.future.set_result(res)
