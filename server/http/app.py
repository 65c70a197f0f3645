"""The FastAPI app: thin HTTP handlers over :class:`server.inference.service.InferenceService`.

``create_app(settings)`` loads keys (refusing unsafe key files), the receipt store
and the models; batchers start with the app's lifespan. Nothing runs at import.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from server.auth import CURRENT_TIER, ApiKeyStore, RateLimiter, check_proofs_allowed
from server.errors import Conflict, Forbidden, error_body, error_response, status_for
from server.http.auth import AuthGate, LoopbackOnly
from server.http.infer_route import InferRoute, read_body, response_headers
from server.http.schemas import (
    INFER_REQUEST_SCHEMA,
    ErrorBody,
    InferResponse,
    ModelMetadata,
    ServerMetadata,
)
from server.inference.oip import split_body
from server.inference.registry import ServedModel, load_models
from server.inference.service import InferenceService
from server.metrics import CONTENT_TYPE_LATEST, Metrics
from server.receipts.keys import KeyRing, LiveKeys, load_keys
from server.receipts.store import ReceiptStore
from server.receipts.translog import LogReader
from server.settings import ServerSettings
from server.shared import Shared
from verifier.digests import compact_json
from verifier.errors import InputError, VerinferError
from verifier.keys import public_key_from_jwk
from verifier.receipts_v2 import RECEIPT_V2_FORMAT
from verifier.tlog import note_verifier_key

log = logging.getLogger("verinfer.server")
VERSION = "0.1.0"


def _json(body: Any, status: int = 200) -> Response:
    return Response(compact_json(body), status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return Response(error_body(message), status, media_type="application/json")


def _error_response(exc: BaseException) -> Response:
    status, body, headers = error_response(exc)  # headers: e.g. Retry-After
    return Response(body, status, headers=headers, media_type="application/json")


DOCS_STATIC = "/docs/static"


def _install_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from files this server serves (fastapi-offline's copy of
    swagger-ui-dist 5), not FastAPI's default CDN: an operator's browser may have no internet,
    and a script from a CDN would run with this origin's rights."""
    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    static = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_STATIC, StaticFiles(directory=static), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="verinfer API",
                                   swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_STATIC}/favicon.png")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VerinferError)
    async def _verinfer(request: Request, exc: VerinferError) -> Response:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        response = _error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # Allow: every method of every route at this path
            methods = set()
            for route in request.app.router.routes:
                if route.matches(request.scope)[0] != Match.NONE:
                    methods |= getattr(route, "methods", None) or set()
            if "GET" in methods:  # answered as a GET without its body (server.http.head)
                methods.add("HEAD")
            response.headers["Allow"] = ", ".join(sorted(methods))
        return response

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error_response(exc)


def _sign_with(keys: KeyRing, data: bytes) -> tuple[str, bytes]:
    return keys.kid, keys.ed25519.sign(data)


def create_app(
    settings: ServerSettings,
    *,
    models: dict[str, ServedModel] | None = None,
    keys: KeyRing | None = None,
    infer_route: bool = True,
    receipt_writer: str | None = None,
    background: bool = True,
    worker: str | None = None,
    shared: Shared | None = None,
) -> FastAPI:
    """Build the app. Raises :class:`InputError` (e.g. an unsafe key file) before serving.

    ``infer_route=False`` leaves the infer endpoint to FastAPI's routing instead of
    :class:`server.http.infer_route.InferRoute` (same answers, ~2x slower; for tests and benchmarks).
    For one of several processes of ``serve --workers`` (:mod:`server.supervisor`):
    ``receipt_writer``, the shared receipt log writer's socket; ``background=False``, another
    process runs the proof-job supervisor and the relayer; ``worker``, sent in every answer's
    ``Verinfer-Worker`` header; ``shared``, where the API keys' rate limits and the sync proof
    waiters are counted for every process (:mod:`server.shared`)."""
    keys = keys or load_keys(settings)  # also when signing is off: JWKS still served
    key_files = LiveKeys(settings, keys)  # `verinfer keys rotate`/`revoke` while serving: the JWKS follows
    store = ReceiptStore(settings.receipts_path) if settings.signing else None
    log_reader = LogReader(settings.log_path) if settings.signing else None
    models = models if models is not None else load_models(settings)
    metrics = Metrics()
    if log_reader is not None:
        metrics.watch_log(log_reader)
    service = InferenceService(settings, models, keys, store, metrics, receipt_writer)
    jobs = None
    if store is not None:  # proofs link to receipts: no receipts, no proof jobs
        from server.proofs.jobs import ProofJobs

        jobs = ProofJobs(settings, service, store,
                         sign_callback=lambda data: _sign_with(key_files.current(), data),
                         waiter_counts=shared.waiters() if shared is not None else None)
        metrics.watch_proofs(jobs.store)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        if jobs is not None:
            jobs.start(supervise=background, shared=receipt_writer is not None)
        from server.relayer.relayer import start_in_server  # on-chain relayer, if relay_rpc is set

        relayer = start_in_server(settings, keys, getattr(app.state, "jobs", None)) if background else None
        # Everything loaded so far (torch, the models, the app) lives as long as the server:
        # keep it out of the cyclic GC's generations, so that collections only walk what
        # requests allocate (a full collection otherwise walks ~1M objects: a ~100 ms stall).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if relayer is not None:
                import asyncio

                await asyncio.to_thread(relayer.stop)
            if jobs is not None:
                jobs.stop()
            await service.stop()
            if store is not None:
                store.close()
            if app.state.apikeys is not None:
                app.state.apikeys.close()
            if log_reader is not None:
                log_reader.close()

    app = FastAPI(
        title="verinfer",
        version=VERSION,
        description="Open Inference Protocol v2 inference with signed receipts.",
        lifespan=lifespan,
        docs_url=None,  # /docs is served from this server's own files (_install_docs)
        redoc_url=None,
        # every route may answer an error body (the one table in server/errors.py)
        responses={"4XX": {"model": ErrorBody, "description": "the request cannot be served"},
                   "5XX": {"model": ErrorBody, "description": "not ready, or an internal error"}},
    )
    app.state.service = service
    app.state.keys = keys
    app.state.jobs = jobs
    _install_error_handlers(app)
    _install_docs(app)

    @app.get("/v2/health/live", tags=["health"])
    async def live() -> Response:
        return _json({"live": True})

    @app.get("/v2/health/ready", tags=["health"])
    async def ready() -> Response:
        ok = service.serving()  # started, and the receipt writer answers
        return _json({"ready": ok}, 200 if ok else 503)

    @app.get("/v2", response_model=ServerMetadata, tags=["metadata"])
    async def server_metadata() -> Response:
        return _json({"name": "verinfer", "version": VERSION, "extensions": ["verinfer_receipts"]})

    def _metadata(name: str, version: str | None) -> Response:
        m = service.model(name, version)
        return _json(
            {
                "name": m.name,
                "versions": [m.version],
                "platform": m.platform,
                "inputs": [_meta(m.input)],
                "outputs": [_meta(o) for o in m.outputs],
            }
        )

    def _ready(name: str, version: str | None) -> Response:
        service.model(name, version)
        ok = service.serving()
        return _json({"name": name, "ready": ok}, 200 if ok else 503)

    from server.http.proofs_api import infer_with_proof, proof_parameters

    async def infer_answer(name: str, version: str | None, receive, content_length,
                           header_length=None) -> tuple[bytes, int | None]:
        """The infer endpoint's answer and, when binary output data follows its JSON header,
        that header's length (server.http.infer_route serves it in front of FastAPI); counted
        in the metrics by model and status."""
        start, status = time.perf_counter(), 200
        try:
            return await _answer(name, version, receive, content_length, header_length)
        except Exception as exc:
            status = status_for(exc)
            raise
        finally:  # unknown names share one label: clients cannot grow the metrics
            metrics.answered(name if name in service.models else "(unknown)", status,
                             time.perf_counter() - start)

    async def _answer(name: str, version: str | None, receive, content_length,
                      header_length) -> tuple[bytes, int | None]:
        service.model(name, version)  # 404 before reading a body
        body = await read_body(receive, content_length, settings.max_body_bytes)
        mode, callback, req = proof_parameters(split_body(body, header_length)[0])
        if mode is not None:
            check_proofs_allowed()
            if jobs is None:
                raise Conflict("this server does not sign receipts (--no-signing); proofs need them")
            return await infer_with_proof(jobs, service, name, version, body, header_length, mode,
                                          callback, req)
        return await service.infer_body(name, version, body, header_length, row_limit())

    def row_limit() -> tuple[int, type[Exception]]:
        """The global row limit (400), or the API key tier's when it is lower (403)."""
        tier = CURRENT_TIER.get()
        if tier is not None and tier.max_rows < settings.max_rows_per_request:
            return tier.max_rows, Forbidden
        return settings.max_rows_per_request, InputError

    if infer_route:
        app.add_middleware(InferRoute, handler=infer_answer)
    apikeys = limiter = None
    if settings.auth_enabled:  # outermost: every request is checked before anything else
        apikeys = ApiKeyStore(settings.apikeys_path)
        limiter = RateLimiter(shared.buckets() if shared is not None else None)
        app.add_middleware(AuthGate, store=apikeys, tiers=settings.tiers, limiter=limiter)
    if settings.loopback_only:  # no keys: no other host's names, no other site's pages
        app.add_middleware(LoopbackOnly)
    app.state.apikeys, app.state.limiter = apikeys, limiter  # (the sign-in route's rate too)
    from server.http.request_ids import RequestIds

    app.add_middleware(RequestIds, worker=worker)  # the id is set for everything below, the gate included
    from server.http.head import HeadAsGet

    app.add_middleware(HeadAsGet)  # outermost: HEAD is a GET without its body, for every route

    async def _infer(request: Request, name: str, version: str | None) -> Response:
        # reached only with infer_route=False; declared for the OpenAPI docs either way
        body, json_length = await infer_answer(name, version, request.receive,
                                               request.headers.get("content-length"),
                                               request.headers.get("inference-header-content-length"))
        return Response(body, headers=response_headers(json_length))

    infer_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": INFER_REQUEST_SCHEMA}}}}

    @app.get("/v2/models/{name}", response_model=ModelMetadata, tags=["models"])
    async def model_metadata(name: str) -> Response:
        return _metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata, tags=["models"])
    async def model_version_metadata(name: str, version: str) -> Response:
        return _metadata(name, version)

    @app.get("/v2/models/{name}/ready", tags=["models"])
    async def model_ready(name: str) -> Response:
        return _ready(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["models"])
    async def model_version_ready(name: str, version: str) -> Response:
        return _ready(name, version)

    @app.post("/v2/models/{name}/infer", response_model=InferResponse, openapi_extra=infer_doc, tags=["inference"])
    async def infer(request: Request, name: str) -> Response:
        return await _infer(request, name, None)

    @app.post(
        "/v2/models/{name}/versions/{version}/infer",
        response_model=InferResponse,
        openapi_extra=infer_doc,
        tags=["inference"],
    )
    async def infer_version(request: Request, name: str, version: str) -> Response:
        return await _infer(request, name, version)

    def _log() -> LogReader:
        if log_reader is None:
            raise Conflict("this server does not sign or log receipts (--no-signing)")
        return log_reader

    @app.get("/v1/receipts/{receipt_id}", tags=["receipts"])
    async def get_receipt(receipt_id: str, fresh: bool = False) -> Response:
        """The receipt as handed out; ``?fresh=1``: with an inclusion proof to the latest checkpoint."""
        if store is None:
            raise Conflict("this server does not sign or store receipts (--no-signing)")
        body = store.get(receipt_id)
        if not fresh:
            return Response(body, media_type="application/json")
        receipt = json.loads(body)
        if receipt.get("format") != RECEIPT_V2_FORMAT:
            raise InputError("this receipt predates the receipt log (v1): it has no inclusion proof")
        size, note = _log().latest()
        proof = _log().inclusion(receipt["index"], size)
        receipt.update(proof=[base64.b64encode(h).decode() for h in proof], checkpoint=note)
        return _json(receipt)

    @app.get("/v1/log/checkpoint", tags=["log"], response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "C2SP tlog-checkpoint signed note"}})
    async def log_checkpoint() -> Response:
        """The latest signed checkpoint (C2SP tlog-checkpoint signed note), as text."""
        return Response(_log().latest()[1], media_type="text/plain; charset=utf-8")

    @app.get("/v1/log/proof/inclusion", tags=["log"])
    async def log_inclusion(index: int = Query(ge=0), size: int | None = Query(None, ge=0)) -> Response:
        """Inclusion proof of leaf ``index`` in the tree of ``size`` leaves (default: the latest checkpoint)."""
        log_ = _log()
        size = log_.latest()[0] if size is None else size
        proof = log_.inclusion(index, size)
        return _json({"index": index, "size": size, "proof": [base64.b64encode(h).decode() for h in proof]})

    @app.get("/v1/log/proof/consistency", tags=["log"])
    async def log_consistency(old: int = Query(alias="from", ge=0),
                              to: int | None = Query(None, ge=0)) -> Response:
        """Consistency proof from the tree of ``from`` leaves to that of ``to`` (default: the latest)."""
        log_ = _log()
        to = log_.latest()[0] if to is None else to
        proof = log_.consistency(old, to)
        return _json({"from": old, "to": to, "proof": [base64.b64encode(h).decode() for h in proof]})

    def _log_keys(keys: KeyRing) -> dict[str, Any]:
        # Every key of the JWKS, revoked ones too (checkpoints they signed before stay
        # verifiable), and when each revoked one was revoked: a document of note keys alone
        # would let a revoked key vouch for statements after its revocation. ``keys``: one read
        # of the key folder per document (a rotation between two reads would pair one key
        # set's JWKS with another's note keys).
        origin = log_reader.origin() if log_reader is not None else None
        note_keys: list[str] = []
        revoked: dict[str, str] = {}
        for jwk in keys.jwks["keys"] if origin is not None else []:
            vkey = note_verifier_key(origin, public_key_from_jwk(jwk))
            note_keys.append(vkey)
            if "revoked_at" in jwk:
                revoked[vkey] = jwk["revoked_at"]
        return {"origin": origin, "note_keys": note_keys, "revoked": revoked}

    @app.get("/.well-known/verinfer-log.json", tags=["keys"])
    async def log_keys() -> Response:
        """The receipt log's origin, its note verifier keys (active first) and when each revoked one
        was revoked (``revoked``: note key -> RFC 3339 time), next to the JWKS."""
        return _json(_log_keys(key_files.current()))

    from server.http.siwe_api import install as install_siwe_routes

    install_siwe_routes(app, settings)

    if jobs is not None:
        from server.http.proofs_api import install as install_proof_routes

        install_proof_routes(app, jobs, service, settings)

    @app.get("/metrics", tags=["metrics"], response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}})
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    from server.http.status import install as install_status_page  # GET /, /v1/status

    install_status_page(app, settings, service, metrics, log_reader, jobs)

    @app.get("/.well-known/jwks.json", tags=["keys"])
    async def jwks() -> Response:
        return _json(key_files.current().jwks)

    @app.get("/v1/keys", tags=["keys"])
    async def key_info() -> Response:
        keys = key_files.current()
        return _json(
            {
                "jwks": keys.jwks,
                "active_kid": keys.kid,
                "log": _log_keys(keys),
                "eip712": {
                    "signer": keys.eth_address,
                    "retired_signers": list(keys.eth_retired),  # `keys rotate --eip712`
                    "domain": service.domain.model_dump() if service.domain else None,
                },
            }
        )

    return app


def on_stop_signal(app: FastAPI) -> None:
    """The server's stop signal arrived (from uvicorn's signal handler, before its graceful stop
    begins): the proof jobs learn it now (see ``ProofJobs.signal_stop``)."""
    jobs = app.state.jobs
    if jobs is not None:
        jobs.signal_stop()


def _meta(t) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
