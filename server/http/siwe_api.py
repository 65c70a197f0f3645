"""HTTP routes of Sign-In with Ethereum (thin: the checks are in :mod:`server.siwe`, the
nonces and sessions in :class:`server.auth.ApiKeyStore`).

* ``GET /v1/auth/nonce``: a fresh single-use nonce, with the domain and chain id a message
  must name.
* ``POST /v1/auth/siwe`` ``{"message": <EIP-4361 text>, "signature": "0x…"}``: a session
  token (``Authorization: Bearer vs_…``) of the wallet's tier, until ``expires_at``.

Both are public (a client has no key yet). A wallet must be registered with
``verinfer apikeys wallet ADDRESS --tier T``; an unknown or revoked one gets 403.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from server.auth import ApiKeyStore
from server.errors import Conflict, Forbidden
from server.http.infer_route import read_body
from server.settings import ServerSettings
from server.siwe import check_message, parse_message
from verifier.digests import compact_json

SIWE_BODY_BYTES = 16_384  # a 4 KiB message, its signature and JSON's escapes


class SiweRequest(BaseModel):
    message: str = Field(max_length=4096, description="The EIP-4361 message, as signed.")
    signature: str = Field(max_length=200, description="The EIP-191 signature, 0x hex (65 bytes).")


def _json(body: dict) -> Response:
    return Response(compact_json(body), media_type="application/json")


def install(app: FastAPI, settings: ServerSettings) -> None:
    def store() -> ApiKeyStore:
        s: ApiKeyStore | None = app.state.apikeys
        if s is None:
            raise Conflict("access control is off on this server (a loopback bind): no sign-in is needed")
        return s

    def domain() -> str:
        # configured, never the request's Host header: a phishing site's message names its own
        # domain (the wallet shows no warning there) and it would post it with that Host
        if not settings.siwe_domain:
            raise Conflict("sign-in with a wallet is off: set VERINFER_SIWE_DOMAIN to the domain "
                           "(host[:port]) your users sign in from")
        return settings.siwe_domain

    @app.get("/v1/auth/nonce", tags=["auth"])
    async def siwe_nonce() -> Response:
        """A single-use nonce for a Sign-In with Ethereum message, and what the message must name."""
        keys, where = store(), domain()
        nonce = keys.new_nonce(settings.siwe_nonce_ttl_s)
        return _json({"nonce": nonce, "domain": where, "scheme": settings.siwe_scheme, "chain_id": settings.chain_id,
                      "expires_in_s": settings.siwe_nonce_ttl_s})

    @app.post("/v1/auth/siwe", tags=["auth"], openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": SiweRequest.model_json_schema()}}}})
    async def siwe_sign_in(request: Request) -> Response:
        """Sign in with a wallet: an EIP-4361 message and its signature give a session token."""
        keys, where = store(), domain()
        # a public route: its body is bounded as the infer route's is (413), before parsing
        raw = await read_body(request.receive, request.headers.get("content-length"),
                              min(settings.max_body_bytes, SIWE_BODY_BYTES))
        try:
            body = SiweRequest.model_validate_json(raw)
        except ValidationError as exc:  # a 422, as FastAPI's own body validation answers
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
        msg = parse_message(body.message)
        address = check_message(msg, body.signature, body.message, domain=where, scheme=settings.siwe_scheme,
                                chain_id=settings.chain_id, nonce_ttl=timedelta(seconds=settings.siwe_nonce_ttl_s))
        wallet = keys.wallet(address)
        if wallet is None:
            raise Forbidden(f"wallet {address} is not registered on this server")
        if wallet.revoked is not None:
            raise Forbidden("this wallet's access has been revoked")
        if wallet.tier not in settings.tiers:
            raise Forbidden("this wallet's tier is not configured on this server")
        # a sign-in stores its spent nonce until the nonce would expire: at the wallet's rate,
        # from a bucket of its own (signing in spends none of its requests' tokens); a nonce
        # this server did not mint, or one expired, is refused first and costs no token
        keys.check_nonce(msg.nonce, settings.siwe_nonce_ttl_s)
        app.state.limiter.take(f"siwe:{address}", settings.tiers[wallet.tier])
        keys.spend_nonce(msg.nonce, settings.siwe_nonce_ttl_s)  # only now: a bad try does not burn it
        expires = time.time() + settings.siwe_session_ttl_s
        if msg.expiration_time is not None:
            expires = min(expires, msg.expiration_time.timestamp())
        token = keys.start_session(address, expires, settings.siwe_max_sessions)
        return _json({"token": token, "address": address, "tier": wallet.tier,
                      "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(timespec="seconds")})

