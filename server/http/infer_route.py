"""The infer endpoint as a bare ASGI handler, in front of FastAPI's routing.

``POST /v2/models/{name}/infer`` and ``POST /v2/models/{name}/versions/{version}/infer`` are
answered here; every other request, and any other method on these paths, goes on to FastAPI.

Why: on CPU the event loop is the server's bottleneck, and on this route FastAPI's own
per-request machinery (its middleware stack, routing, dependency solving, the Request and
Response objects) took ~45% of the loop's time at concurrency 64, more than parsing,
batching and the model together (py-spy; docs/server.md, "Where the time goes"). The route's
work is one call to the app's handler (``create_app``'s ``infer_answer``), which FastAPI's
declared routes also make: they stay, so that ``/docs`` and ``/openapi.json`` describe the
endpoint, and answer exactly as this does (``tests/server/test_infer_route.py``).
Errors are the same ``{"error": ...}`` bodies as the app's exception handlers give.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from server.errors import PayloadTooLarge, status_for
from verifier.errors import InputError, VerinferError

log = logging.getLogger("verinfer.server")

# Starlette's {param} matches one path segment: [^/]+ (the path is already percent-decoded)
_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")

# async (model name, version or None, ASGI receive, the Content-Length header or None,
# the Inference-Header-Content-Length header or None) -> (body, JSON header length or None)
InferHandler = Callable[..., Awaitable[tuple[bytes, int | None]]]


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


async def read_body(receive: Callable[[], Awaitable[dict]], content_length: bytes | str | None,
                    limit: int) -> bytes:
    """A request body from ASGI ``receive``, refused (413) as soon as it passes ``limit`` bytes:
    at once when its Content-Length says so, else while it streams in."""
    if content_length is not None:
        try:
            size = int(content_length)
        except ValueError:
            raise InputError("invalid Content-Length header") from None
        if size > limit:
            raise PayloadTooLarge(f"request body of {size} bytes is over the limit of {limit} bytes")
    chunks, total = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def response_headers(json_length: int | None) -> dict[str, str]:
    """An infer answer's headers: JSON, or a JSON header of ``json_length`` bytes followed by
    binary output data (the binary data extension)."""
    if json_length is None:
        return {"content-type": "application/json"}
    return {"content-type": "application/octet-stream",
            "inference-header-content-length": str(json_length)}


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}, separators=(",", ":")).encode()


class InferRoute:
    """ASGI middleware: the infer endpoint's requests to ``handler``, the rest to ``app``."""

    def __init__(self, app: Any, handler: InferHandler) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        match = _INFER_PATH.fullmatch(scope["path"])
        if match is None:
            return await self.app(scope, receive, send)
        content_length = header_length = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                content_length = value
            elif key == b"inference-header-content-length":
                header_length = value
        try:
            body, json_length = await self.handler(match[1], match[2], receive, content_length,
                                                   header_length)
            status, headers = 200, response_headers(json_length)
        except ClientGone:
            return
        except VerinferError as exc:
            status, body = status_for(exc), error_body(str(exc))
            # e.g. Retry-After
            headers = {"content-type": "application/json", **(getattr(exc, "headers", None) or {})}
        except Exception:
            log.exception("internal error on POST %s", scope["path"])
            status, body = 500, error_body("internal server error")
            headers = {"content-type": "application/json"}
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", b"%d" % len(body)),
                        *((k.lower().encode(), v.encode()) for k, v in headers.items())],
        })
        await send({"type": "http.response.body", "body": body})
