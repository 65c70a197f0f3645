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


_P = 2**255 - 19
# Ed25519's points of small order (1, 2, 4, 8), encoded with the x sign bit cleared (libsodium's
# blocklist, less its non-canonical y >= p entries, refused on their own): the identity, (0, -1),
# the two points of y = 0, and the four of order 8 (y and p - y).
_SMALL_ORDER = frozenset(bytes.fromhex(h) for h in (
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
))


def ed25519_public_key(raw: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from its 32 bytes (RFC 8032), refusing (``InputError``) an encoding
    that is not canonical (y >= p: a second spelling of a key, with another kid) and a point of
    small order, under which anyone can make signatures that verify (OpenSSL checks neither: under
    the identity, R = identity and S = 0 verifies for every message)."""
    if len(raw) != 32:
        raise InputError("not a 32-byte Ed25519 public key")
    if int.from_bytes(raw, "little") & ((1 << 255) - 1) >= _P:
        raise InputError("Ed25519 public key is not canonically encoded (y >= p)")
    if raw[:31] + bytes([raw[31] & 0x7F]) in _SMALL_ORDER:
        raise InputError("Ed25519 public key is a point of small order (anyone can sign for it)")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_key_from_jwk(jwk: dict[str, Any]) -> Ed25519PublicKey:
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise InputError("JWK is not an OKP/Ed25519 key")
    raw = b64url_decode(str(jwk.get("x", "")))
    try:
        return ed25519_public_key(raw)
    except InputError as exc:
        raise InputError(f"JWK x: {exc}") from None


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
        if isinstance(jwk, dict) and jwk.get("kid") == kid:
            check_jwk_not_revoked(jwk, signed_at)


def check_jwk_not_revoked(jwk: dict[str, Any], signed_at: str) -> None:
    """:func:`check_not_revoked` for one JWK (a ``kid`` is not needed: a v2 receipt's
    checkpoint names its key by the note key id)."""
    if "revoked_at" not in jwk:
        return
    kid = jwk.get("kid") or jwk_thumbprint(jwk)
    try:
        revoked = _instant(str(jwk["revoked_at"]))
        when = _instant(signed_at)
    except (ValueError, TypeError):
        raise KeyRevoked(f"key {kid} is revoked ({jwk['revoked_at']}); the item's "
                         f"signing time {signed_at!r} cannot be read") from None
    if when >= revoked:
        raise KeyRevoked(f"key {kid} was revoked at {jwk['revoked_at']}; this was "
                         f"signed at {signed_at}")
