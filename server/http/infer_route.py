"""The infer endpoint as a bare ASGI handler, in front of FastAPI's routing.

``POST /v2/models/{name}/infer`` and ``POST /v2/models/{name}/versions/{version}/infer`` are
answered here; every other request, and any other method on these paths, goes on to FastAPI.

Why: on CPU the event loop is the bottleneck, and FastAPI's per-request machinery cost it more
than parsing, batching and the model together (docs/server.md, "Execution"). The route makes
one call to the app's handler (``create_app``'s ``infer_answer``), as FastAPI's declared routes
do: those stay, for ``/docs``, and answer exactly as this does, errors included
(:func:`server.errors.error_response`; ``tests/server/test_infer_route.py``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from server.errors import ClientGone, PayloadTooLarge, error_response
from verifier.errors import InputError, VerinferError

log = logging.getLogger("verinfer.server")

# Starlette's {param} matches one path segment: [^/]+ (the path is already percent-decoded)
_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")

# async (model name, version or None, ASGI receive, the Content-Length header or None,
# the Inference-Header-Content-Length header or None) -> (body, JSON header length or None)
InferHandler = Callable[..., Awaitable[tuple[bytes, int | None]]]


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
        except Exception as exc:
            status, body, extra = error_response(exc)
            headers = {"content-type": "application/json", **extra}  # e.g. Retry-After
            if not isinstance(exc, VerinferError):
                log.exception("internal error on POST %s", scope["path"])
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", b"%d" % len(body)),
                        *((k.lower().encode(), v.encode()) for k, v in headers.items())],
        })
        await send({"type": "http.response.body", "body": body})
