"""HTTP routes of proof jobs (thin: the logic is in :mod:`server.proofs.jobs`).

* ``POST /v1/proofs`` ``{"receipt_id": ...}`` or ``{"model": ..., "inputs": [<OIP tensor>]}``,
  optional ``"callback_url"``: ``202`` + the job (``200`` when a finished proof for the same
  package and input exists: a cache hit).
* ``GET /v1/proofs/{id}``: the job's status; ``GET /v1/proofs/{id}/bundle``: its bundle.
* ``parameters.proof = "sync" | "async"`` on an infer request (see :func:`infer_with_proof`).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from server.auth import check_proofs_allowed
from server.errors import Gone
from server.http.schemas import PROOF_REQUEST_SCHEMA
from server.inference.oip import load_header, parse_infer_request
from server.proofs.jobs import ProofJobs
from verifier.digests import compact_json
from verifier.errors import InputError

PROOF_MODES = ("sync", "async")


def _json(body: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(compact_json(body), status,
                    media_type="application/json", headers=headers)


def _job_response(job, how: str) -> Response:
    body = {**job.public(), "cached": how == "cached"}
    status = 200 if job.status == "done" else 202
    return _json(body, status, headers={"Location": f"/v1/proofs/{job.id}"})


def proof_parameters(body: bytes) -> tuple[str | None, str | None, dict | None]:
    """(mode, callback_url, parsed body) of an infer request; mode None when no proof
    was asked for. Cheap when the body does not mention ``proof`` (nor holds a ``\\u`` escape,
    which may spell it: ``"pro\\u006ff"``)."""
    if b'"proof"' not in body and b"\\u" not in body:
        return None, None, None
    try:
        req = load_header(body)
    except InputError:
        return None, None, None  # the infer path reports the malformed JSON
    params = req.get("parameters") if isinstance(req, dict) else None
    if not isinstance(params, dict) or "proof" not in params:
        return None, None, None
    mode = params["proof"]
    if mode not in PROOF_MODES:
        raise InputError(f"parameters.proof must be one of {list(PROOF_MODES)}, not {mode!r}")
    return mode, params.get("callback_url"), req


async def infer_with_proof(jobs: ProofJobs, service, name: str, version: str | None, body: bytes,
                           header_length, mode: str, callback: Any, req: dict) -> tuple[bytes, int | None]:
    """Answer, then queue (``async``) or wait for (``sync``) the proof of that answer: the
    encoded response and its JSON header's length when binary outputs follow (as
    :meth:`InferenceService.infer_body`).

    The checks that can refuse the proof (a circuit package, one sample, the callback
    host, room in the queue and the client's quota) run before the inference, so a refused
    request costs no receipt."""
    jobs.circuit(name)
    jobs.require_receipts()
    cb = jobs.check_callback(callback)
    inputs = req.get("inputs")
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
        shape = inputs[0].get("shape")
        if isinstance(shape, list) and shape and shape[0] != 1:
            raise InputError("a proof is for one sample: send a batch of 1")
    m = service.model(name)
    jobs.check_room(name, parse_infer_request(body, m.input, [o.name for o in m.outputs], header_length).x,
                    sync=mode == "sync")
    answer, json_length = await service.infer_body(name, version, body, header_length)
    head, binary = (answer, b"") if json_length is None else (answer[:json_length], answer[json_length:])
    resp = json.loads(head)
    params = resp.setdefault("parameters", {})
    receipt_id = params.get("receipt_id")
    if receipt_id is None:
        raise InputError("this answer has no receipt; proofs need one")
    job, _how = jobs.submit_receipt(receipt_id, cb)
    if mode == "sync" and job.status not in ("done", "failed"):
        job = await jobs.wait(job.id, jobs.settings.sync_proof_timeout_s)
    params["proof_job_id"] = job.id
    params["proof_status"] = job.status
    if job.status == "done":
        params["proof_outcome"] = job.outcome
        if mode == "sync":
            try:
                params["proof_bundle"] = jobs.bundle(job.id)
            except Gone:  # retention pruned it as it ended: the answer stands, its id says 410
                pass
    elif job.status == "failed":
        params["proof_error"] = job.error or "failed"
    head = compact_json(resp)
    return head + binary, (None if json_length is None else len(head))


def install(app: FastAPI, jobs: ProofJobs, service, settings) -> None:
    from server.http.infer_route import read_body

    @app.post("/v1/proofs", tags=["proofs"], status_code=202, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": PROOF_REQUEST_SCHEMA}}}},
        responses={200: {"description": "a finished proof for the same input (cache hit)"}})
    async def submit_proof(request: Request) -> Response:
        check_proofs_allowed()
        body = await read_body(request.receive, request.headers.get("content-length"),
                               settings.max_body_bytes)
        req = load_header(body)
        unknown = set(req) - {"receipt_id", "model", "inputs", "callback_url"}
        if unknown:
            raise InputError(f"unknown field(s) {sorted(unknown)}")
        callback = req.get("callback_url")
        if "receipt_id" in req:
            if "model" in req or "inputs" in req:
                raise InputError("send either receipt_id, or model and inputs, not both")
            job, how = jobs.submit_receipt(req["receipt_id"], callback)
            return _job_response(job, how)
        model = req.get("model")
        if not isinstance(model, str) or "inputs" not in req:
            raise InputError("send receipt_id, or model and inputs (an OIP v2 tensor list)")
        m = service.model(model)
        jobs.circuit(model)
        cb = jobs.check_callback(callback)
        infer_body = json.dumps({"inputs": req["inputs"]}).encode()
        x = parse_infer_request(infer_body, m.input, [o.name for o in m.outputs]).x
        existing = jobs.own_request(model, x)  # this client asked for this proof before
        if existing is not None and existing.status != "failed":
            job, how = jobs.submit_x(model, x, existing.receipt_id, cb)  # same request; maybe callback
            return _job_response(job, how)
        # sign an answer for this input first: every proof links to a receipt, and a client
        # asking for a proof another client asked for gets its own receipt, not the other's
        jobs.require_receipts()
        if tuple(x.shape)[:1] != (1,):
            raise InputError("a proof is for one sample: send a batch of 1")
        jobs.check_room(model, x)  # (before the answer: a refusal costs no receipt)
        resp = await service.infer(model, None, infer_body)
        job, how = jobs.submit_receipt(resp["parameters"]["receipt_id"], cb)
        return _job_response(job, how)

    @app.get("/v1/proofs", tags=["proofs"])
    async def proof_queue() -> Response:
        return _json({"jobs": jobs.store.counts(), "worker_pids": jobs.worker_pids(),
                      "max_queued": settings.max_queued_proofs})

    @app.get("/v1/proofs/{job_id}", tags=["proofs"])
    async def proof_status(job_id: str) -> Response:
        return _json(jobs.get(job_id).public())

    @app.get("/v1/proofs/{job_id}/bundle", tags=["proofs"])
    async def proof_bundle(job_id: str) -> Response:
        return Response(jobs.bundle(job_id), media_type="application/json")
