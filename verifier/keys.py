"""Public keys as JWKs (RFC 7517/8037) and their stable ids (RFC 7638 thumbprints).

Receipts are signed with Ed25519; the public keys are published as a JWK Set of
``{"kty": "OKP", "crv": "Ed25519", "x": <base64url>, "kid": <thumbprint>}``; a revoked
key stays listed with ``"revoked_at": <RFC 3339 time>`` (``verinfer keys revoke``).
The ``kid`` is the RFC 7638 thumbprint: base64url (no padding) of the SHA-256
of ``{"crv":"Ed25519","kty":"OKP","x":"..."}`` (required members only, sorted,
no whitespace), so the same key always has the same id.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from verifier.digests import compact_json
from verifier.errors import InputError, KeyRevoked, KeyUnknown


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise InputError(f"invalid base64url: {exc}") from None


def ed25519_jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    """The public JWK of an Ed25519 key, with its thumbprint as ``kid``."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    return {**jwk, "kid": jwk_thumbprint(jwk)}


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of an OKP JWK."""
    if jwk.get("kty") != "OKP":
        raise InputError(f"unsupported JWK kty {jwk.get('kty')!r} (only OKP)")
    members = {k: jwk[k] for k in ("crv", "kty", "x")}
    canon = compact_json(members, sort_keys=True)
    return b64url(hashlib.sha256(canon).digest())


def public_key_from_jwk(jwk: dict[str, Any]) -> Ed25519PublicKey:
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise InputError("JWK is not an OKP/Ed25519 key")
    raw = b64url_decode(str(jwk.get("x", "")))
    if len(raw) != 32:
        raise InputError("JWK x is not a 32-byte Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def find_key(jwks: dict[str, Any], kid: str) -> Ed25519PublicKey:
    """The key with this ``kid`` in a JWK Set; its thumbprint must match the kid.

    Raises :class:`KeyUnknown` when no such key is listed (fail closed).
    """
    for jwk in jwks.get("keys", []):
        if isinstance(jwk, dict) and jwk.get("kid") == kid:
            if jwk_thumbprint(jwk) != kid:
                raise KeyUnknown(f"JWK {kid!r}: kid is not the key's RFC 7638 thumbprint")
            return public_key_from_jwk(jwk)
    raise KeyUnknown(f"signing key {kid!r} is not in the trusted JWK Set")


def _instant(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def check_not_revoked(jwks: dict[str, Any], kid: str, signed_at: str) -> None:
    """Raise :class:`KeyRevoked` if ``kid`` is marked revoked in ``jwks`` at or before
    ``signed_at`` (the signed statement's RFC 3339 time). Fails closed: a revoked key with a
    time that does not parse is revoked. Someone holding the stolen key can backdate a
    statement, so a revocation time bounds honest signing, not a thief."""
    for jwk in jwks.get("keys", []):
        if isinstance(jwk, dict) and jwk.get("kid") == kid and "revoked_at" in jwk:
            try:
                revoked = _instant(str(jwk["revoked_at"]))
                when = _instant(signed_at)
            except (ValueError, TypeError):
                raise KeyRevoked(f"key {kid} is revoked ({jwk['revoked_at']}); the item's "
                                 f"signing time {signed_at!r} cannot be read") from None
            if when >= revoked:
                raise KeyRevoked(f"key {kid} was revoked at {jwk['revoked_at']}; this was "
                                 f"signed at {signed_at}")
