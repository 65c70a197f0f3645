"""Every HTTP request gets an id (ASGI middleware, outermost): the client's ``X-Request-Id`` when
it sends a usable one (up to 128 letters, digits, ``.``, ``_``, ``-``), else 16 random hex
digits. It is set for the request's log lines (:data:`server.logs.REQUEST_ID`) and sent back in
the response's ``X-Request-Id`` header, so a client can quote it and an operator find it. With
``worker`` (one of several server processes, ``serve --workers``) every response also says which
process answered, in ``Verinfer-Worker``."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from server.logs import REQUEST_ID

_USABLE = re.compile(rb"[A-Za-z0-9._-]{1,128}")


class RequestIds:
    def __init__(self, app: Any, worker: str | None = None) -> None:
        self.app = app
        self.extra = ((b"verinfer-worker", worker.encode()),) if worker else ()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                if _USABLE.fullmatch(value):
                    rid = value
                break
        rid = rid or os.urandom(8).hex().encode()
        token = REQUEST_ID.set(rid.decode())

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid), *self.extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
