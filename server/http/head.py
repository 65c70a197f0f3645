"""``HEAD`` answered as ``GET`` without its body (ASGI middleware, outermost), for every route
at once: load balancers' health checks and ``curl -I`` send HEAD, and FastAPI's routes answer
only the methods they declare (HEAD to a GET route was a 405). The request goes on as a GET
(the access gate, the routes and the logs see a GET); its answer keeps every header,
``Content-Length`` included (RFC 9110 9.3.2), and loses its body."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class HeadAsGet:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message: dict) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the rest of a streamed body: nothing of it is sent
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
