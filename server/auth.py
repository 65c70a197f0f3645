"""API keys and their tiers: the core of access control (no web framework here).

A key is shown once, when it is created (``verinfer apikeys create``): ``vk_<id>_<secret>``,
the secret 32 random bytes. The store (``<home>/apikeys.sqlite3``) keeps the id, the tier, a
name and the SHA-256 of the whole key: a 256-bit random secret needs no slow hash, and a
leaked store reveals no usable key. Each key has a tier (settings ``tiers``): a request rate
(token bucket, shared by the server's processes), whether it may ask for proofs, and the most rows one
request may carry. The HTTP gate is :mod:`server.http.auth`.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from server.errors import Forbidden, RateLimited, Unauthenticated
from server.shared import SharedBuckets
from server.sqlite import Schema, connect, transaction
from verifier.base import Frozen
from verifier.errors import InputError, NotFound


class Tier(Frozen):
    """What one API key may do."""

    rate_per_s: float = Field(20.0, gt=0, description="Sustained requests per second.")
    burst: int = Field(40, ge=1, description="Requests allowed at once above the rate.")
    proofs: bool = Field(False, description="May ask for proofs (parameters.proof, POST /v1/proofs).")
    max_rows: int = Field(256, ge=1, description="Most rows (samples) in one infer request.")
    max_queued_proofs: int = Field(8, ge=1, description="Most proof jobs this key may have queued or running.")


DEFAULT_TIERS = {
    "basic": Tier(),
    "prover": Tier(rate_per_s=50, burst=100, proofs=True, max_rows=1024, max_queued_proofs=16),
    "unlimited": Tier(rate_per_s=1e9, burst=10**9, proofs=True, max_rows=10**9, max_queued_proofs=10**9),
}

SCHEMA = Schema("API key store", slot=3, steps=("""
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        tier TEXT NOT NULL,
        name TEXT NOT NULL,
        created REAL NOT NULL,
        revoked REAL
    );
""", """
    CREATE TABLE wallets (
        address TEXT PRIMARY KEY,
        tier TEXT NOT NULL,
        name TEXT NOT NULL,
        created REAL NOT NULL,
        revoked REAL
    );
    CREATE TABLE siwe_nonces (nonce TEXT PRIMARY KEY, created REAL NOT NULL, used REAL);
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        address TEXT NOT NULL,
        expires REAL NOT NULL
    );
""", """
    -- sign-in nonces are minted without a write (HMAC under this key, server.auth.NonceMinter);
    -- siwe_nonces now lists only the spent ones, until they expire
    CREATE TABLE siwe_secret (id INTEGER PRIMARY KEY CHECK (id = 1), key BLOB NOT NULL);
    DELETE FROM siwe_nonces;
"""))

_TOKEN = re.compile(r"vk_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")
_SESSION = re.compile(r"vs_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")
_WALLET = re.compile(r"0x[0-9a-f]{40}")


@dataclass(frozen=True)
class ApiKey:
    id: str
    tier: str
    name: str
    created: float
    revoked: float | None

    def public(self) -> dict:
        return {"id": self.id, "tier": self.tier, "name": self.name, "created": self.created,
                "revoked": self.revoked}


NONCE_CLOCK_SKEW_S = 60.0  # several server processes' clocks


class NonceMinter:
    """Sign-in nonces that need no storage until spent: the issuing second, 8 random bytes
    and an HMAC-SHA256 tag over both under the store's key, as 64 hex digits (EIP-4361 asks
    for 8 or more letters and digits). A nonce this key did not tag is refused unread."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, b"verinfer siwe nonce\x00" + body, hashlib.sha256).digest()[:16]

    def mint(self, now: float) -> str:
        body = int(now).to_bytes(8, "big") + secrets.token_bytes(8)
        return (body + self._tag(body)).hex()

    def issued(self, nonce: str) -> int | None:
        """The Unix second ``nonce`` was minted at, or None if this key did not mint it."""
        if not _NONCE.fullmatch(nonce):
            return None
        raw = bytes.fromhex(nonce)
        if not hmac.compare_digest(raw[16:], self._tag(raw[:16])):
            return None
        return int.from_bytes(raw[:8], "big")


_NONCE = re.compile(r"[0-9a-f]{64}")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiKeyStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.db = connect(self.path, SCHEMA, ("journal_mode=WAL", "synchronous=FULL"))  # 0600
        self._lock = threading.Lock()
        self._minter: NonceMinter | None = None

    def close(self) -> None:
        self.db.close()

    def create(self, tier: str, name: str = "") -> tuple[ApiKey, str]:
        """A new key: its record and the token, which is not stored and cannot be shown again."""
        key_id = secrets.token_hex(8)
        token = f"vk_{key_id}_{secrets.token_urlsafe(32)}"
        now = time.time()
        with transaction(self.db, self._lock):
            self.db.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
                            (key_id, _digest(token), tier, name, now))
        return ApiKey(key_id, tier, name, now, None), token

    def list(self) -> list[ApiKey]:
        rows = self.db.execute("SELECT id, tier, name, created, revoked FROM api_keys ORDER BY created")
        return [ApiKey(*r) for r in rows]

    def revoke(self, key_id: str) -> ApiKey:
        if key_id.lower().startswith(("0x", "wallet:")):  # a wallet: it and its sessions
            address = key_id.lower().removeprefix("wallet:")
            with transaction(self.db, self._lock):
                n = self.db.execute("UPDATE wallets SET revoked = ? WHERE address = ? AND revoked IS NULL",
                                    (time.time(), address)).rowcount
                self.db.execute("DELETE FROM sessions WHERE address = ?", (address,))
            wallet = self.wallet(address)
            if wallet is None:
                raise NotFound(f"no wallet {address!r} (see 'verinfer apikeys list')")
            if n == 0:
                raise InputError(f"wallet {address} was already revoked")
            return wallet
        with transaction(self.db, self._lock):
            n = self.db.execute("UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL",
                                (time.time(), key_id)).rowcount
        found = [k for k in self.list() if k.id == key_id]
        if not found:
            raise NotFound(f"no API key {key_id!r} (see 'verinfer apikeys list')")
        if n == 0:
            raise InputError(f"API key {key_id} was already revoked")
        return found[0]

    # --- wallets and Sign-In with Ethereum sessions (server/siwe.py) -----------------------

    def add_wallet(self, address: str, tier: str, name: str = "") -> ApiKey:
        """Register (or re-tier, or un-revoke) a wallet that may sign in; its id is ``wallet:<address>``."""
        address = address.lower()
        if not _WALLET.fullmatch(address):
            raise InputError(f"not an Ethereum address: {address!r}")
        now = time.time()
        with transaction(self.db, self._lock):
            self.db.execute("INSERT INTO wallets VALUES (?, ?, ?, ?, NULL) ON CONFLICT (address) DO UPDATE "
                            "SET tier = excluded.tier, name = excluded.name, revoked = NULL",
                            (address, tier, name, now))
        return ApiKey(f"wallet:{address}", tier, name, now, None)

    def wallets(self) -> list[ApiKey]:
        rows = self.db.execute("SELECT address, tier, name, created, revoked FROM wallets ORDER BY created")
        return [ApiKey(f"wallet:{a}", *rest) for a, *rest in rows]

    def wallet(self, address: str) -> ApiKey | None:
        row = self.db.execute("SELECT address, tier, name, created, revoked FROM wallets WHERE address = ?",
                              (address.lower(),)).fetchone()
        return ApiKey(f"wallet:{row[0]}", *row[1:]) if row else None

    def new_nonce(self, ttl_s: float) -> str:
        """A single-use sign-in nonce. Minted, not stored: the public nonce route writes
        nothing, so asking for nonces in a loop costs the server no disk (``ttl_s`` is checked
        when the nonce is spent)."""
        return self._nonces().mint(time.time())

    def spend_nonce(self, nonce: str, ttl_s: float) -> None:
        """Use a nonce once: :class:`Unauthenticated` if this server did not mint it, it
        expired, or it was used (a replayed sign-in). Only spent nonces are stored, until
        they expire; the check and the spending are one transaction."""
        now = time.time()
        issued = self.check_nonce(nonce, ttl_s, now)
        with transaction(self.db, self._lock, "IMMEDIATE"):
            self.db.execute("DELETE FROM siwe_nonces WHERE created < ?", (now - ttl_s - NONCE_CLOCK_SKEW_S,))
            if self.db.execute("SELECT 1 FROM siwe_nonces WHERE nonce = ?", (nonce,)).fetchone():
                raise Unauthenticated("SIWE nonce was already used: sign in again with a new nonce")
            self.db.execute("INSERT INTO siwe_nonces VALUES (?, ?, ?)", (nonce, issued, now))

    def check_nonce(self, nonce: str, ttl_s: float, now: float | None = None) -> int:
        """The second ``nonce`` was minted at, or :class:`Unauthenticated` if this server did not
        mint it or it expired (whether it was used is :meth:`spend_nonce`'s to say)."""
        now = time.time() if now is None else now
        issued = self._nonces().issued(nonce)
        if issued is None:
            raise Unauthenticated("SIWE nonce was not issued by this server (or has expired)")
        if issued < now - ttl_s:
            raise Unauthenticated("SIWE nonce has expired: ask for a new one")
        if issued > now + NONCE_CLOCK_SKEW_S:
            raise Unauthenticated("SIWE nonce was not issued by this server (or has expired)")
        return issued

    def _nonces(self) -> NonceMinter:
        if self._minter is None:
            with transaction(self.db, self._lock):  # one key for every process sharing the store
                self.db.execute("INSERT OR IGNORE INTO siwe_secret VALUES (1, ?)", (secrets.token_bytes(32),))
            self._minter = NonceMinter(self.db.execute("SELECT key FROM siwe_secret").fetchone()[0])
        return self._minter

    def start_session(self, address: str, expires: float, most: int) -> str:
        """A session token for a signed-in wallet, valid until ``expires`` (Unix time). The
        wallet keeps at most ``most`` live sessions: past it, its oldest end (their tokens get
        401), so signing in in a loop cannot grow the store."""
        session_id = secrets.token_hex(8)
        token = f"vs_{session_id}_{secrets.token_urlsafe(32)}"
        address = address.lower()
        with transaction(self.db, self._lock, "IMMEDIATE"):
            self.db.execute("DELETE FROM sessions WHERE expires < ?", (time.time(),))
            self.db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)",
                            (session_id, _digest(token), address, expires))
            # oldest by rowid: SQLite gives a new row one more than the largest there, so
            # the live rows' rowids are in the order they were made
            self.db.execute("DELETE FROM sessions WHERE address = ? AND rowid NOT IN (SELECT rowid "
                            "FROM sessions WHERE address = ? ORDER BY rowid DESC LIMIT ?)",
                            (address, address, most))
        return token

    def _session(self, token: str) -> ApiKey:
        m = _SESSION.fullmatch(token)
        row = m and self.db.execute("SELECT sha256, address, expires FROM sessions WHERE id = ?",
                                    (m[1],)).fetchone()
        if not row or not hmac.compare_digest(row[0], _digest(token)):
            raise Unauthenticated("invalid session token")
        if row[2] < time.time():
            raise Unauthenticated("session expired: sign in again")
        wallet = self.wallet(row[1])
        if wallet is None or wallet.revoked is not None:
            raise Forbidden("this wallet's access has been revoked")
        return wallet

    def authenticate(self, token: str) -> ApiKey:
        """The key (or signed-in wallet) a token is, or :class:`Unauthenticated` /
        :class:`Forbidden` (revoked)."""
        if token.startswith("vs_"):
            return self._session(token)
        m = _TOKEN.fullmatch(token)
        if m is None:
            raise Unauthenticated("invalid API key")
        row = self.db.execute("SELECT id, tier, name, created, revoked, sha256 FROM api_keys "
                              "WHERE id = ?", (m[1],)).fetchone()
        if row is None or not hmac.compare_digest(row[5], _digest(token)):
            raise Unauthenticated("invalid API key")
        key = ApiKey(*row[:5])
        if key.revoked is not None:
            raise Forbidden("this API key has been revoked")
        return key


def _take(tokens: float | None, last: float | None, tier: Tier, now: float) -> tuple[float, float, int]:
    """A token bucket asked for one token at ``now``: its new (tokens, last), and 0 when the
    token was taken, else the seconds until there is one (``Retry-After``)."""
    if tokens is None or last is None:
        tokens, last = float(tier.burst), now
    now = max(now, last)  # another process may have refilled it a moment later than our clock read
    tokens = min(float(tier.burst), tokens + (now - last) * tier.rate_per_s)
    if tokens < 1.0:
        return tokens, now, max(1, int((1.0 - tokens) / tier.rate_per_s + 0.999))
    return tokens - 1.0, now, 0


class RateLimiter:
    """One token bucket per key id: in this process, or, with ``shared`` (``serve --workers``),
    in a file that every process of the server uses (:class:`server.shared.SharedBuckets`), so
    that N processes allow a key its tier's rate, not N times it."""

    def __init__(self, shared: SharedBuckets | None = None) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # id -> (tokens, last time)
        self.shared = shared

    def take(self, key_id: str, tier: Tier, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now  # one clock for every process (Linux)
        if self.shared is None:
            tokens, last, wait = _take(*self._buckets.get(key_id, (None, None)), tier, now)
            self._buckets[key_id] = (tokens, last)
        else:
            wait = self.shared.update(key_id, lambda tokens, last: _take(tokens, last, tier, now))
        if wait:
            raise RateLimited(f"rate limit of this API key's tier exceeded ({tier.rate_per_s:g}/s)",
                              retry_after=wait)


# The tier of the request being served (set by the HTTP gate; None: access control is off).
CURRENT_TIER: contextvars.ContextVar[Tier | None] = contextvars.ContextVar("verinfer_tier",
                                                                           default=None)
# Who is asking: the API key's id or "wallet:<address>" ("" with access control off: one client).
CURRENT_CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("verinfer_client", default="")
# The client name of the relayer's on-chain requests: they may use the reserved share of the proof queue.
RELAYER = "relayer"


def check_proofs_allowed() -> None:
    tier = CURRENT_TIER.get()
    if tier is not None and not tier.proofs:
        raise Forbidden("this API key's tier may not request proofs")


def max_rows(global_limit: int) -> int:
    tier = CURRENT_TIER.get()
    return global_limit if tier is None else min(global_limit, tier.max_rows)
