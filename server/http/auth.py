"""The access-control gate in front of every route (ASGI middleware).

Public: health, server and model metadata, the JWKS and key info, the log's checkpoints and
proofs, receipts by id, the docs, Sign-In with Ethereum (a nonce, the sign-in itself), and the
status page (``/`` and ``/static/*``; its data, ``/v1/status``, is not public). Everything else
needs an API key (``Authorization: Bearer``
or ``X-API-Key``): none or an unknown one -> 401, a revoked one -> 403, over the tier's rate ->
429 with ``Retry-After``. The key's tier is then the request's (``server.auth.CURRENT_TIER``),
which the infer and proof routes check for proofs and rows (403).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from server.auth import CURRENT_CLIENT, CURRENT_TIER, ApiKeyStore, RateLimiter, Tier
from server.errors import Unauthenticated, error_response

log = logging.getLogger("verinfer.server")

PUBLIC_GET = re.compile(
    r"/|/v2|/v2/health/(live|ready)|/v2/models/[^/]+(/versions/[^/]+)?(/ready)?"
    r"|/\.well-known/[^/]+|/v1/keys|/v1/log(/.*)?|/v1/receipts/[^/]+|/docs(/.*)?|/openapi\.json"
    r"|/v1/auth/nonce"
    r"|/static/[^/]+"  # the status page's script and style (the page itself is "/")
)
PUBLIC_POST = frozenset({"/v1/auth/siwe"})  # signing in: the client has no key yet


def _token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key == b"authorization":
            scheme, _, rest = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and rest.strip():
                return rest.strip()
        elif key == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


class AuthGate:
    def __init__(self, app: Any, store: ApiKeyStore, tiers: dict[str, Tier],
                 limiter: RateLimiter | None = None) -> None:
        self.app = app
        self.store = store
        self.tiers = tiers
        self.limiter = limiter or RateLimiter()  # serve --workers: one shared by every process

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or (scope["method"] in ("GET", "HEAD")
                                       and PUBLIC_GET.fullmatch(scope["path"])) or (
                scope["method"] == "POST" and scope["path"] in PUBLIC_POST):
            return await self.app(scope, receive, send)
        try:
            token = _token(scope["headers"])
            if token is None:
                raise Unauthenticated("an API key is required (Authorization: Bearer <key>)")
            key = self.store.authenticate(token)
            tier = self.tiers.get(key.tier)
            if tier is None:  # a tier removed from the settings since the key was made
                log.warning("API key %s has unknown tier %r", key.id, key.tier)
                raise Unauthenticated("this API key's tier is not configured on this server")
            self.limiter.take(key.id, tier)
        except Exception as exc:
            status, body, extra = error_response(exc)
            if status >= 500:
                log.exception("access check failed")
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-length", b"%d" % len(body)),
                                    (b"content-type", b"application/json"),
                                    *((k.lower().encode(), v.encode()) for k, v in extra.items())]})
            await send({"type": "http.response.body", "body": body})
            return
        reset, reset_client = CURRENT_TIER.set(tier), CURRENT_CLIENT.set(key.id)
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT_TIER.reset(reset)
            CURRENT_CLIENT.reset(reset_client)
