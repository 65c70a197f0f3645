"""The inference data plane: validate, batch, run, sign, store. No web framework here."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from server.batching import DynamicBatcher, Item
from server.errors import NotReady
from server.keys import KeyRing
from server.oip import parse_infer_request, render_output
from server.registry import ServedModel
from server.settings import ServerSettings
from server.signer import ReceiptSigner, new_request_id
from server.store import ReceiptStore
from verifier.errors import NotFound
from verifier.receipts import ModelRef

log = logging.getLogger("verinfer.server")


@dataclass(frozen=True)
class Ctx:
    request_id: str
    client_id: str | None
    datatype: str  # as sent


@dataclass(frozen=True)
class Answer:
    outputs: dict[str, np.ndarray]
    label: int | list[int] | None
    receipt_json: str | None


class InferenceService:
    def __init__(
        self,
        settings: ServerSettings,
        models: dict[str, ServedModel],
        keys: KeyRing | None,
        store: ReceiptStore | None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.store = store
        self.signer = ReceiptSigner(keys, settings) if settings.signing and keys else None
        self.batchers = {
            name: DynamicBatcher(
                name, partial(self._run_batch, m), settings.policy_for(name), threaded=_threaded(settings, m)
            )
            for name, m in models.items()
        }
        self.ready = False

    async def start(self) -> None:
        for b in self.batchers.values():
            b.start()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for b in self.batchers.values():
            await b.stop()

    def model(self, name: str, version: str | None = None) -> ServedModel:
        m = self.models.get(name)
        if m is None:
            raise NotFound(f"unknown model {name!r} (served: {', '.join(sorted(self.models))})")
        if version is not None and version != m.version:
            raise NotFound(f"model {name!r} has no version {version!r} (versions: [{m.version!r}])")
        return m

    async def infer(self, name: str, version: str | None, body: bytes) -> dict[str, Any]:
        m = self.model(name, version)
        if not self.ready:
            raise NotReady("server is not ready")
        req = parse_infer_request(body, m.input, [o.name for o in m.outputs])
        x = req.x.astype(_np_dtype(m.input.datatype), copy=False)
        ctx = Ctx(new_request_id(), req.id, req.datatype)
        answer: Answer = await self.batchers[name].submit(x, (ctx, req.x))
        dtypes = {o.name: o.datatype for o in m.outputs}
        wanted = req.outputs or list(answer.outputs)
        resp: dict[str, Any] = {
            "model_name": m.name,
            "model_version": m.version,
            "outputs": [render_output(n, dtypes[n], answer.outputs[n]) for n in wanted],
        }
        if req.id is not None:
            resp["id"] = req.id
        params: dict[str, Any] = {}
        if answer.receipt_json is not None:
            params["receipt_id"] = ctx.request_id
            params["receipt"] = answer.receipt_json
        if answer.label is not None and isinstance(answer.label, int):
            params["label"] = answer.label
        if params:
            resp["parameters"] = params
        return resp

    # --- runs in the model's batch worker thread -------------------------------

    def _run_batch(self, m: ServedModel, items: list[Item]) -> list[Any]:
        xs = [i.x for i in items]
        outs = m.engine.run(np.concatenate(xs) if len(xs) > 1 else xs[0])
        results, rows, inputs, start = [], [], [], 0
        now = time.time()
        ref = ModelRef(name=m.name, version=m.version, sha256=m.sha256)
        for item in items:
            n = item.rows
            mine = {k: v[start : start + n] for k, v in outs.items()}
            start += n
            label = None
            if m.label_output is not None:
                labels = mine[m.label_output].reshape(-1).tolist()
                label = labels[0] if n == 1 else labels
            receipt_json = None
            if self.signer is not None:
                ctx, sent = item.ctx
                receipt = self.signer.sign(
                    request_id=ctx.request_id,
                    client_request_id=ctx.client_id,
                    model=ref,
                    input_name=m.input.name,
                    datatype=ctx.datatype,
                    x_sent=sent,
                    x_model=item.x,
                    scale=m.scale,
                    outputs=[(o.name, o.datatype, mine[o.name]) for o in m.outputs],
                    label=label if label is not None else [],
                    device=m.engine.device,
                )
                receipt_json = receipt.model_dump_json()
                rows.append((ctx.request_id, m.name, now, receipt_json))
                if n == 1 and self.settings.store_inputs:  # a proof can be asked for later
                    inputs.append((ctx.request_id, m.input.datatype, _shape_json(item.x),
                                   np.ascontiguousarray(item.x, item.x.dtype.newbyteorder("<")).tobytes()))
            results.append(Answer(mine, label, receipt_json))
        if rows and self.store is not None:
            self.store.put_many(rows, inputs)
        return results


def _threaded(settings: ServerSettings, m: ServedModel) -> bool:
    """Run batches in a worker thread on CUDA (the loop parses while the GPU works), inline
    in the event loop on CPU: there the GIL hand-offs between threads cost more than a batch."""
    if settings.batch_thread is not None:
        return settings.batch_thread
    return m.engine.device != "cpu"


def _shape_json(x: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in x.shape) + "]"


def _np_dtype(datatype: str):
    from verifier.tensors import numpy_dtype

    return numpy_dtype(datatype)
