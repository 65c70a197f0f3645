"""The inference data plane: validate, batch, run, sign, store. No web framework here.

A request is parsed in the event loop, queued to its model's dynamic batcher, run in a
batch, and its batch is then signed and stored by the receipt worker process
(:mod:`server.receipts.worker`, the receipt log's writer) while the next batch runs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from server.errors import NotReady
from server.inference.batching import DynamicBatcher, Item
from server.inference.oip import (
    OutputChoice,
    binary_section,
    outputs_json,
    parse_infer_request,
    response_body,
)
from server.inference.registry import ServedModel
from server.metrics import Metrics
from server.receipts.keys import KeyRing
from server.receipts.signer import BatchJob, ModelInfo
from server.receipts.store import ReceiptStore
from server.receipts.worker import ReceiptPool
from server.settings import ServerSettings
from verifier.eip712 import Domain
from verifier.errors import InputError, NotFound
from verifier.fixedpoint import check_range

log = logging.getLogger("verinfer.server")


@dataclass(frozen=True)
class Ctx:
    client_id: str | None
    datatype: str  # as sent
    wanted: OutputChoice | None  # outputs asked for (None: all, as JSON)
    eip712: bool = False  # an EIP-712 signature was asked for


@dataclass(frozen=True)
class Answer:
    outputs: dict[str, np.ndarray]
    label: int | list[int] | None
    body: bytes | None = None  # the whole response, made with the receipt (signing on)
    # (the batch's input, the batch's outputs, this answer's first row): a chunk of answers,
    # consecutive in their batch, is signed from slices of these, not from re-joined pieces
    batch: tuple[np.ndarray, dict[str, np.ndarray], int] | None = None


class InferenceService:
    def __init__(
        self,
        settings: ServerSettings,
        models: dict[str, ServedModel],
        keys: KeyRing | None,
        store: ReceiptStore | None = None,
        metrics: Metrics | None = None,
        receipt_writer: str | None = None,
    ) -> None:
        """``receipt_writer``: the Unix socket of the receipt log writer that several server
        processes share (``serve --workers``); None: this process starts its own."""
        self.settings = settings
        self.metrics = metrics
        self.models = models
        self._infos = {n: model_info(m) for n, m in models.items()}
        signing = settings.signing and keys is not None and store is not None
        self._signing = signing
        self._store = store
        # the EIP-712 domain answers are signed in when asked (GET /v1/keys)
        self.domain = Domain(chainId=settings.chain_id, verifyingContract=settings.verifying_contract) if signing else None
        # receipts are made by one worker process: the receipt log's one writer
        self.receipts = ReceiptPool(settings, self._infos, 1, receipt_writer) if signing else None
        self.batchers = {
            name: DynamicBatcher(
                name, partial(self._run_batch, m), settings.policy_for(name), threaded=_threaded(settings, m),
                finish=partial(self._sign_batch, m) if signing else None,
            )
            for name, m in models.items()
        }
        self.ready = False

    async def start(self) -> None:
        if self.receipts is not None:
            await self.receipts.start()
        for b in self.batchers.values():
            b.start()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for b in self.batchers.values():
            await b.stop()
        if self.receipts is not None:
            await self.receipts.stop()

    def serving(self) -> bool:
        """For readiness (on the event loop): started, and the receipt writer answers."""
        return self.ready and (self.receipts is None or self.receipts.answering())

    def model(self, name: str, version: str | None = None) -> ServedModel:
        m = self.models.get(name)
        if m is None:
            raise NotFound(f"unknown model {name!r} (served: {', '.join(sorted(self.models))})")
        if version is not None and version != m.version:
            raise NotFound(f"model {name!r} has no version {version!r} (versions: [{m.version!r}])")
        return m

    async def infer(self, name: str, version: str | None, body: bytes) -> dict[str, Any]:
        """The OIP v2 response of a JSON request as a dict (``parameters.receipt``: the
        receipt JSON text)."""
        return json.loads((await self.infer_body(name, version, body))[0])

    async def infer_body(self, name: str, version: str | None, body: bytes,
                         header_length: bytes | str | int | None = None,
                         row_limit: tuple[int, type[Exception]] | None = None) -> tuple[bytes, int | None]:
        """The OIP v2 response, encoded, and the length of its JSON header when binary output
        data follows it (None: the whole response is JSON). ``header_length``: the request's
        ``Inference-Header-Content-Length``. With signing on, the receipt stage makes the JSON
        (in the receipt worker, off the event loop); here only without receipts.
        ``row_limit``: (most rows, the error past it), default the server's
        ``max_rows_per_request`` and a 400."""
        m = self.model(name, version)
        if not self.ready:
            raise NotReady("server is not ready")
        req = parse_infer_request(body, m.input, [o.name for o in m.outputs], header_length)
        most, error = row_limit or (self.settings.max_rows_per_request, InputError)
        if req.x.ndim and req.x.shape[0] > most:
            raise error(f"{req.x.shape[0]} rows in one request; at most {most} are allowed")
        dtype = _np_dtype(m.input.datatype)
        if req.x.dtype == dtype:
            x = req.x
        else:
            with np.errstate(over="ignore"):  # e.g. FP64 1e300 to FP32: inf, refused just below
                x = req.x.astype(dtype)
        if req.eip712:
            _check_eip712(m, x)
        if self._signing:  # the receipt commits to x in fixed point (inf and NaN fail it too)
            check_range(x, m.scale)
        elif x.dtype.kind == "f" and not np.isfinite(x).all():  # e.g. FP64 1e39 cast to FP32: inf
            raise InputError(f"an input value is out of range for the model's {m.input.datatype}")
        ctx = Ctx(req.id, req.datatype, req.outputs, req.eip712)
        answer: Answer = await self.batchers[name].submit(x, (ctx, req.x))
        info = self._infos[m.name]
        if answer.body is not None:
            head = answer.body
        else:
            label = answer.label if isinstance(answer.label, int) else None
            head = response_body(m.name, m.version, outputs_json(info.outputs, answer.outputs, req.outputs),
                                 req.id, label)
        if req.outputs is None or not req.outputs.binary:
            return head, None
        return head + binary_section(info.outputs, answer.outputs, req.outputs), len(head)

    # --- runs in the model's batch worker thread (CUDA) or inline (CPU) ------------------

    def _run_batch(self, m: ServedModel, items: list[Item]) -> list[Answer]:
        xs = [i.x for i in items]
        x = np.concatenate(xs) if len(xs) > 1 else xs[0]
        start = time.perf_counter()
        outs = m.engine.run(x)
        if self.metrics is not None:
            self.metrics.batch(m.name, len(x), time.perf_counter() - start, [start - i.queued for i in items])
        results, start = [], 0
        for item in items:
            n = item.rows
            mine = {k: v[start : start + n] for k, v in outs.items()}
            first, start = start, start + n
            label = None
            if m.label_output is not None:
                labels = mine[m.label_output].reshape(-1).tolist()
                label = labels[0] if n == 1 else labels
            results.append(Answer(mine, label, None, (x, outs, first)))
        return results

    # --- then, in the event loop, while the next batch runs --------------------------------

    def _sign_batch(self, m: ServedModel, items: list[Item], answers: list[Answer]) -> Awaitable[list[Answer]]:
        """Receipts for a chunk of a batch, made and stored by the receipt worker process: the
        chunk is handed over here, at once (the batcher calls this as soon as the batch has run),
        so the worker starts on it while the loop parses the next requests; awaited later."""
        return self._signed(m, time.perf_counter(), self.receipts.submit(_job(m, items, answers)), answers)

    async def _signed(self, m: ServedModel, start: float, bodies: Awaitable[list[bytes]],
                      answers: list[Answer]) -> list[Answer]:
        done = await bodies
        if self.metrics is not None:
            self.metrics.signed(m.name, time.perf_counter() - start)
        return [Answer(a.outputs, a.label, b) for a, b in zip(answers, done)]


def _job(m: ServedModel, items: list[Item], answers: list[Answer]) -> BatchJob:
    """The receipts job for ``items``, consecutive requests of one batch."""
    ctxs = [i.ctx[0] for i in items]
    x, outs, start = answers[0].batch
    end = answers[-1].batch[2] + items[-1].rows
    return BatchJob(
        model=m.name,
        request_ids=None,  # made by the signer, off the event loop
        client_ids=[c.client_id for c in ctxs],
        wanted=[c.wanted for c in ctxs],
        datatypes=[c.datatype for c in ctxs],
        x_sent=[None if i.ctx[1] is i.x else i.ctx[1] for i in items],  # None: as the model saw it
        x_model=x[start:end],
        outputs={o.name: outs[o.name][start:end] for o in m.outputs},
        rows=[i.rows for i in items],
        labels=[a.label if a.label is not None else [] for a in answers],
        time=time.time(),
        eip712=[c.eip712 for c in ctxs] if any(c.eip712 for c in ctxs) else None,
    )


def _check_eip712(m: ServedModel, x: np.ndarray) -> None:
    """An EIP-712 attestation is one label for one input (what a contract checks): a request
    asking for one must be able to get it, not an answer that silently lacks it."""
    if m.label_output is None:
        raise InputError(f"parameters.eip712: model {m.name} has no label output to attest")
    rows = x.shape[0] if x.ndim else 1
    if rows != 1:
        raise InputError(f"parameters.eip712 needs a request of one sample (an attestation names one "
                         f"label); this one has {rows}")


def model_info(m: ServedModel) -> ModelInfo:
    return ModelInfo(m.name, m.version, m.sha256, m.input.name, m.input.datatype, m.scale,
                     tuple((o.name, o.datatype) for o in m.outputs), m.engine.device)


def _threaded(settings: ServerSettings, m: ServedModel) -> bool:
    """Run batches in a worker thread on CUDA (the loop parses while the GPU works), inline
    in the event loop on CPU: there the GIL hand-offs between threads cost more than a batch."""
    if settings.batch_thread is not None:
        return settings.batch_thread
    return m.engine.device != "cpu"


def _np_dtype(datatype: str):
    from verifier.tensors import numpy_dtype

    return numpy_dtype(datatype)
