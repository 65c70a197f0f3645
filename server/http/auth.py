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
from urllib.parse import urlsplit

from server.auth import CURRENT_CLIENT, CURRENT_TIER, ApiKeyStore, RateLimiter, Tier
from server.errors import Forbidden, Unauthenticated, error_response
from server.settings import loopback_name

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


async def _refuse(send: Callable, exc: Exception) -> None:
    status, body, extra = error_response(exc)
    if status >= 500:
        log.exception("access check failed")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", b"%d" % len(body)),
                            (b"content-type", b"application/json"),
                            *((k.lower().encode(), v.encode()) for k, v in extra.items())]})
    await send({"type": "http.response.body", "body": body})


def _host_of(authority: str) -> str:
    """The host of a Host header's ``host[:port]`` (an IPv6 literal without its brackets)."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    return authority.rpartition(":")[0] if authority.count(":") == 1 else authority


def _local_origin(origin: str) -> bool:
    try:
        url = urlsplit(origin)
        return url.scheme in ("http", "https") and loopback_name(url.hostname or "")
    except ValueError:
        return False


class LoopbackOnly:
    """With access control off for a loopback bind (auth=auto), the one other line of defence:
    a request must name a loopback host (``localhost``, 127.0.0.0/8 or ``[::1]``, any port) and,
    when it comes from a web page (an ``Origin`` header), from a page on such a host; else 403.

    A loopback bind keeps other machines out, not the web pages its user opens: any site can
    make the browser POST (a ``text/plain`` body needs no preflight) to ``127.0.0.1:PORT`` and
    have this server infer, sign and prove; and a site that rebinds its own name to 127.0.0.1
    reads the answers too (its requests name its host, ``Host: evil.example:PORT``)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._hosts: set[bytes] = set()  # Host values seen to be loopback (each request has one)

    def _loopback_host(self, value: bytes) -> bool:
        if value in self._hosts:  # a set lookup, not an address parse, on every request
            return True
        if not loopback_name(_host_of(value.decode("latin-1"))):
            return False
        if len(self._hosts) < 256:  # bounded: 127.0.0.0/8 with every port is many names
            self._hosts.add(value)
        return True

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            for key, value in scope["headers"]:
                if key == b"host" and not self._loopback_host(value):
                    return await _refuse(send, Forbidden(
                        f"Host {value.decode('latin-1')!r} is not this machine's loopback: without "
                        "API keys (auth=auto on a loopback bind) this server answers local names only"))
                if key == b"origin" and not _local_origin(value.decode("latin-1")):
                    return await _refuse(send, Forbidden(
                        f"a web page of {value.decode('latin-1')!r} may not use this server: without "
                        "API keys (auth=auto on a loopback bind) only pages on a loopback host may"))
        return await self.app(scope, receive, send)


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
        except Exception as exc:  # answered, and logged when a 5xx (_refuse)  # noqa: BLE001
            return await _refuse(send, exc)
        reset, reset_client = CURRENT_TIER.set(tier), CURRENT_CLIENT.set(key.id)
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT_TIER.reset(reset)
            CURRENT_CLIENT.reset(reset_client)
