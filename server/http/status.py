"""The status page: ``GET /`` (plain HTML, two JS modules and one CSS file from
``server/http/static/``, no build step, no outside assets; @noble's secp256k1 and keccak vendored
under ``static/vendor/``) and ``GET /v1/status``, the JSON it draws from: the served models
(digests, batching policy, circuit package figures), recent receipts and proof jobs with their
status, the proof queue, the log's size and a few metrics.

The page's receipt check runs in the browser (``static/receipt_check.js``: WebCrypto Ed25519 and
SHA-256 against ``/.well-known/verinfer-log.json``, and an EIP-712 signature with @noble's
secp256k1 and keccak from ``static/vendor/``): it never asks the server for a verdict.

``/`` and ``/static/*`` are public (``server/http/auth.py``); ``/v1/status`` needs an API key
where the auth gate is on (the page then asks for one), and then lists the recent receipts
without their ids, which are capabilities (receipts by id are public), and only the asking key's
own proof requests: any key of any tier reads it, and must not learn another client's handles.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from server.auth import CURRENT_CLIENT, CURRENT_TIER
from server.metrics import Metrics
from server.settings import ServerSettings
from verifier.digests import compact_json
from verifier.errors import VerinferError
from verifier.packages import name_target, package_dir, read_manifest

RECENT = 12
# a client's proof request and the (maybe shared) job that proves it (server/proofs/store.py)
REQUESTS = "proof_requests r JOIN proof_jobs j ON j.id = r.job_id"
# The EIP-712 check's secp256k1 and keccak: @noble's, pinned in package.json and copied here
# unchanged with their licences (``make vendor-js``; a test holds them equal to node_modules'),
# so that a pip-installed server serves them with no npm. Loaded by the page only to check an
# EIP-712 signature. Served name under static/ -> the file in node_modules.
VENDORED = {
    "vendor/noble-secp256k1.js": "@noble/secp256k1/index.js",
    "vendor/noble-secp256k1.LICENSE": "@noble/secp256k1/LICENSE",
    "vendor/noble-hashes/sha3.js": "@noble/hashes/sha3.js",
    "vendor/noble-hashes/_u64.js": "@noble/hashes/_u64.js",
    "vendor/noble-hashes/utils.js": "@noble/hashes/utils.js",
    "vendor/noble-hashes/LICENSE": "@noble/hashes/LICENSE",
}
STATIC = {  # file name -> media type: the only files served under /static/
    "status.js": "text/javascript; charset=utf-8",
    "receipt_check.js": "text/javascript; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
    **{name: "text/javascript; charset=utf-8" for name in VENDORED if name.endswith(".js")},
}
CIRCUIT_FIGURES = ("logrows", "num_rows", "pk_bytes", "vk_bytes", "prove_seconds",
                   "verify_seconds", "verifier_runtime_bytes", "verifier_fits")


# the page loads only its own script and style, and talks only to this server
PAGE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'"}


def static_file(name: str) -> bytes:
    return resources.files("server.http").joinpath("static", name).read_bytes()


def vendor_js(node_modules: Path, static: Path) -> None:
    """Copy :data:`VENDORED` from ``node_modules`` into ``static`` (``make vendor-js``)."""
    for name, source in VENDORED.items():
        target = static / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((node_modules / source).read_bytes())


def _rows(path: Path, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
    """Rows of a read-only query on the server's SQLite file; [] when it or the table is
    not there (a server without signing)."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        db.row_factory = sqlite3.Row
        return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # no such table yet
        return []
    finally:
        db.close()


def recent_receipts(path: Path, log_size: int | None, client: str | None = None) -> list[dict[str, Any]]:
    """The latest receipts, newest first. ``client`` (access control on: who asks): receipt ids
    are capabilities and the receipt store does not record whose a receipt is, so each is listed
    without its id, with its proof request's state only when that request is ``client``'s own."""
    rows = _rows(path, "SELECT id, model, created, body FROM receipts ORDER BY rowid DESC LIMIT ?",
                 (RECENT,))
    mine = "" if client is None else " AND r.client = ?"
    jobs = {r["receipt_id"]: r for r in _rows(
        path, f"SELECT r.id, r.receipt_id, j.status, j.outcome FROM {REQUESTS} WHERE r.receipt_id "
              f"IN ({','.join('?' * len(rows))}){mine}",
        (*(r["id"] for r in rows), *(() if client is None else (client,))))} if rows else {}
    out = []
    for r in rows:
        try:
            body = json.loads(r["body"])
        except ValueError:
            body = {}
        index = body.get("index")
        status = ("signed (v1)" if body.get("format") == "verinfer.receipt/v1"
                  else "in a checkpoint" if log_size is not None and isinstance(index, int)
                  and index < log_size else "logged")
        job = jobs.get(r["id"])
        out.append({"id": r["id"] if client is None else None, "model": r["model"], "created": r["created"],
                    "format": body.get("format"), "index": index, "status": status,
                    "proof": None if job is None else {"id": job["id"], "status": job["status"],
                                                       "outcome": job["outcome"]}})
    return out


def recent_proofs(path: Path, client: str | None = None) -> list[dict[str, Any]]:
    """The latest proof requests (the handles clients hold), each with its job's state;
    ``client`` (access control on: who asks): that client's own only."""
    mine = "" if client is None else "WHERE r.client = ? "
    rows = _rows(path, "SELECT r.id, r.job_id, j.model, r.receipt_id, j.status, j.stage, j.outcome, "
                       f"j.attempts, r.created, j.started, j.finished, j.error FROM {REQUESTS} {mine}"
                       "ORDER BY r.created DESC LIMIT ?", (RECENT,) if client is None else (client, RECENT))
    return [dict(r) for r in rows]


def _circuit(settings: ServerSettings, name: str, model_sha256: str) -> dict[str, Any] | None:
    pointer = name_target(settings, name)
    if pointer is None:
        return None
    try:
        m = read_manifest(package_dir(settings, pointer))
    except (VerinferError, OSError) as exc:
        return {"error": f"unusable circuit package: {type(exc).__name__}"}
    return {"package_id": m.package_id, "for_served_model": m.model_sha256 == model_sha256,
            "ezkl_version": m.ezkl_version, "input_visibility": m.input_visibility,
            "input_scale": m.input.scale, "srs": {"logrows": m.srs.logrows, "source": m.srs.source,
                                                  "insecure": m.srs.insecure},
            "ops": len(m.preflight.get("ops", ())),
            **{k: m.preflight.get(k) for k in CIRCUIT_FIGURES}}


def models_info(settings: ServerSettings, service) -> list[dict[str, Any]]:
    out = []
    for name, m in sorted(service.models.items()):
        out.append({
            "name": name, "version": m.version, "platform": m.platform, "sha256": m.sha256,
            "input": {"name": m.input.name, "datatype": m.input.datatype, "shape": list(m.input.shape)},
            "outputs": [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
                        for o in m.outputs],
            "scale": m.scale, "label_output": m.label_output,
            "batching": settings.policy_for(name).model_dump(),
            "circuit": _circuit(settings, name, m.sha256),
        })
    return out


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank, prev_le, prev_n = q * buckets[-1][1], 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_n) / (n - prev_n) if n > prev_n else 0)
        prev_le, prev_n = le, n
    return prev_le


def metrics_info(metrics: Metrics) -> dict[str, Any]:
    """Totals over every model: requests by status, the latency and batch-size histograms
    (with p50/p95/p99 as Prometheus' histogram_quantile reads them), proof jobs by status."""
    requests: dict[str, float] = {}
    hist: dict[str, dict[float, float]] = {"verinfer_request_duration_seconds": {},
                                           "verinfer_batch_rows": {}}
    proofs: dict[str, float] = {}
    rows = compute = 0.0
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == "verinfer_requests_total":
                requests[s.labels["status"]] = requests.get(s.labels["status"], 0) + s.value
            elif s.name.endswith("_bucket") and s.name[:-7] in hist:
                h = hist[s.name[:-7]]
                le = float(s.labels["le"])
                h[le] = h.get(le, 0) + s.value
            elif s.name == "verinfer_proof_jobs":
                proofs[s.labels["status"]] = s.value
            elif s.name == "verinfer_rows_total":
                rows += s.value
            elif s.name == "verinfer_compute_seconds_total":
                compute += s.value
    out: dict[str, Any] = {"requests_by_status": requests, "proof_jobs": proofs, "rows": rows,
                           "compute_seconds": compute}
    for name, h in hist.items():
        buckets = sorted(h.items())
        out[name] = {"buckets": [["+Inf" if le == float("inf") else le, n] for le, n in buckets],
                     **{f"p{int(q * 100)}": _quantile(q, buckets) for q in (0.5, 0.95, 0.99)}}
    return out


def install(app: FastAPI, settings: ServerSettings, service, metrics: Metrics, log_reader,
            jobs) -> None:
    page = static_file("index.html")

    @app.get("/", include_in_schema=False)
    async def status_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    for name, media_type in STATIC.items():
        body = static_file(name)

        async def serve(body: bytes = body, media_type: str = media_type) -> Response:
            return Response(body, media_type=media_type, headers=PAGE_HEADERS)

        app.add_api_route(f"/static/{name}", serve, methods=["GET"], include_in_schema=False)

    def snapshot(ready: bool, client: str | None) -> dict[str, Any]:
        log_size = None
        if log_reader is not None:
            try:
                log_size = log_reader.latest()[0]
            except VerinferError:  # no checkpoint yet
                log_size = 0
        path = settings.receipts_path
        queue = None
        if jobs is not None:
            counts = jobs.store.counts()
            queue = {"jobs": {k: counts.get(k, 0) for k in ("queued", "running", "done", "failed")},
                     "max_queued": settings.max_queued_proofs,
                     "workers": len(jobs.worker_pids())}
        return {"ready": ready, "signing": settings.signing,
                "log": None if log_reader is None else {"origin": log_reader.origin(),
                                                        "size": log_size},
                "models": models_info(settings, service),
                "proof_queue": queue,
                "recent_receipts": recent_receipts(path, log_size, client) if settings.signing else [],
                "recent_proofs": recent_proofs(path, client) if jobs is not None else [],
                "metrics": metrics_info(metrics)}

    @app.get("/v1/status", tags=["status"])
    async def status() -> Response:
        """What the status page at ``/`` shows: models, recent receipts and proof jobs, the
        proof queue, the log's size and request metrics (needs an API key where auth is on;
        then the recent receipts come without their ids and the proof requests are the key's own)."""
        client = CURRENT_CLIENT.get() if CURRENT_TIER.get() is not None else None  # None: auth off
        return Response(compact_json(await asyncio.to_thread(snapshot, service.serving(), client)),
                        media_type="application/json")
