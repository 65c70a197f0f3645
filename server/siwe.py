"""Sign-In with Ethereum (EIP-4361): a wallet signs a message naming this server, a fresh
nonce and the chain; the server answers with a short-lived session token of the wallet's tier.

The message is parsed here by the EIP's grammar, field by field (its lines are fixed), and
its signature recovered with eth-account (EIP-191 ``personal_sign``). The ``siwe`` package
on PyPI pins web3 < 8 and eth-account < 0.14, older than ours, so it cannot be installed
next to them; this module is what we need of it. Contract wallets (EIP-1271) are not
accepted: a signature must recover to the address the message names.

What is checked (:func:`check_message`): the domain is this server's (``siwe_domain``, never the
request's ``Host``); the scheme before it, when the message names one, is the server's
(``siwe_scheme``, https unless set; a message naming none is taken as https, as wallets take
it); the URI is on that domain, with that scheme; version 1; the chain
id is the server's; the nonce is one this server issued, not expired and not used before
(single use: it is spent in the same transaction that checks it, see
:class:`server.auth.ApiKeyStore`); issued-at not in the future (beyond a clock skew) nor
older than a nonce lives; expiration time, when given, not passed; not-before passed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from server.errors import Unauthenticated
from verifier.errors import InputError

HEADER = " wants you to sign in with your Ethereum account:"
CLOCK_SKEW = timedelta(minutes=5)
NONCE = re.compile(r"[A-Za-z0-9]{8,}")
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
# optional fields after "Issued At", in the EIP's order
_OPTIONAL = ("Expiration Time", "Not Before", "Request ID")


@dataclass(frozen=True)
class SiweMessage:
    domain: str
    address: str
    statement: str | None
    uri: str
    version: str
    chain_id: int
    nonce: str
    issued_at: datetime
    expiration_time: datetime | None = None
    not_before: datetime | None = None
    request_id: str | None = None
    resources: tuple[str, ...] = ()
    scheme: str | None = None


def _time(text: str, field: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"SIWE message: {field} is not an RFC 3339 time") from None
    if t.tzinfo is None:
        raise InputError(f"SIWE message: {field} has no time zone")
    return t


def parse_message(text: str) -> SiweMessage:
    """An EIP-4361 message, or :class:`InputError` naming the first line that is wrong."""
    lines = text.split("\n")

    def take(prefix: str, i: int) -> str:
        if i >= len(lines) or not lines[i].startswith(prefix):
            raise InputError(f"SIWE message: line {i + 1} must start with {prefix!r}")
        return lines[i][len(prefix):]

    if not lines[0].endswith(HEADER):
        raise InputError(f"SIWE message: the first line must end with {HEADER.strip()!r}")
    origin = lines[0][: -len(HEADER)]
    scheme, _, domain = origin.rpartition("://")
    if not domain or any(c.isspace() for c in domain):
        raise InputError("SIWE message: no domain on the first line")
    if len(lines) < 4 or not ADDRESS.fullmatch(lines[1]) or lines[2] != "":
        raise InputError("SIWE message: line 2 must be the 0x address, line 3 empty")
    i, statement = 3, None
    if lines[3] != "":  # a statement, then an empty line
        statement, i = lines[3], 4
        if "\n" in statement or i >= len(lines) or lines[i] != "":
            raise InputError("SIWE message: the statement must be one line followed by an empty line")
    i += 1
    uri = take("URI: ", i)
    version = take("Version: ", i + 1)
    chain = take("Chain ID: ", i + 2)
    nonce = take("Nonce: ", i + 3)
    issued = take("Issued At: ", i + 4)
    i += 5
    optional: dict[str, str] = {}
    for name in _OPTIONAL:
        if i < len(lines) and lines[i].startswith(name + ": "):
            optional[name] = lines[i][len(name) + 2:]
            i += 1
    resources: list[str] = []
    if i < len(lines) and lines[i] == "Resources:":
        i += 1
        while i < len(lines) and lines[i].startswith("- "):
            resources.append(lines[i][2:])
            i += 1
    if i != len(lines):
        raise InputError(f"SIWE message: unexpected text on line {i + 1}")
    if not re.fullmatch(r"[0-9]+", chain):  # ASCII: str.isdigit also takes "²", which int() refuses
        raise InputError("SIWE message: Chain ID must be a number")
    if not NONCE.fullmatch(nonce):
        raise InputError("SIWE message: the nonce must be 8 or more letters and digits")
    return SiweMessage(
        domain=domain, address=lines[1], statement=statement, uri=uri, version=version,
        chain_id=int(chain), nonce=nonce, issued_at=_time(issued, "Issued At"),
        expiration_time=_time(optional["Expiration Time"], "Expiration Time") if "Expiration Time" in optional else None,
        not_before=_time(optional["Not Before"], "Not Before") if "Not Before" in optional else None,
        request_id=optional.get("Request ID"), resources=tuple(resources), scheme=scheme or None,
    )


def recover_signer(text: str, signature: str) -> str:
    """The checksummed address that signed ``text`` (EIP-191), or :class:`Unauthenticated`."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    try:
        return Account.recover_message(encode_defunct(text=text), signature=signature)
    except Exception:  # malformed hex, wrong length, bad v: no signer  # noqa: BLE001
        raise Unauthenticated("SIWE signature is not a valid Ethereum signature") from None


def authority(text: str) -> str:
    """An RFC 3986 authority (a SIWE domain, a URI's) as compared: its host's letters are
    case-insensitive (browsers, and so wallets, write them in lowercase); userinfo and port as
    written (another port is another site)."""
    userinfo, at, hostport = text.rpartition("@")
    return userinfo + at + hostport.lower()


def check_message(msg: SiweMessage, signature: str, text: str, *, domain: str, chain_id: int,
                  nonce_ttl: timedelta, scheme: str = "https", now: datetime | None = None) -> str:
    """Every check but the nonce's being ours and unused (the store does that, atomically).
    Returns the signing address (lowercase)."""
    now = now or datetime.now(UTC)
    if authority(msg.domain) != authority(domain):
        raise Unauthenticated(f"SIWE message is for domain {msg.domain!r}, not this server ({domain!r})")
    # The wallet compares the message's scheme (https when it names none) with the page asking:
    # a page on http://<domain> (a network attacker's copy of the site) gets a message naming
    # http://<domain> signed without a warning; this server is reached with `scheme` only.
    if (msg.scheme or "https").lower() != scheme:
        raise Unauthenticated(f"SIWE message is for {msg.scheme or 'https'}://{msg.domain}, not {scheme}://{domain}")
    try:
        uri = urlsplit(msg.uri)
        uri_host = uri.netloc
    except ValueError:  # e.g. "http://[host/": an unclosed IPv6 bracket
        raise Unauthenticated(f"SIWE message URI {msg.uri!r} is not a URL") from None
    if authority(uri_host) != authority(domain) or uri.scheme.lower() != scheme:
        raise Unauthenticated(f"SIWE message URI {msg.uri!r} is not on this server ({scheme}://{domain})")
    if msg.version != "1":
        raise Unauthenticated("SIWE message version must be 1")
    if msg.chain_id != chain_id:
        raise Unauthenticated(f"SIWE message is for chain {msg.chain_id}, not {chain_id}")
    if msg.issued_at > now + CLOCK_SKEW:
        raise Unauthenticated("SIWE message is issued in the future")
    if msg.issued_at < now - nonce_ttl - CLOCK_SKEW:
        raise Unauthenticated("SIWE message was issued too long ago; ask for a new nonce")
    if msg.expiration_time is not None and msg.expiration_time <= now:
        raise Unauthenticated("SIWE message has expired")
    if msg.not_before is not None and msg.not_before > now:
        raise Unauthenticated("SIWE message is not valid yet (Not Before)")
    signer = recover_signer(text, signature)
    if signer.lower() != msg.address.lower():
        raise Unauthenticated("SIWE signature is not by the message's address")
    return signer.lower()


def make_message(domain: str, address: str, uri: str, chain_id: int, nonce: str, issued_at: datetime,
                 statement: str | None = None, expiration_time: datetime | None = None,
                 scheme: str | None = None) -> str:
    """An EIP-4361 message (what a wallet would show and sign): for clients and tests.
    ``scheme``: named before the domain (none: https, as wallets read it)."""
    def rfc3339(t: datetime) -> str:
        return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    lines = [(f"{scheme}://" if scheme else "") + domain + HEADER, address, ""]
    if statement is not None:
        lines.append(statement)
    lines += ["", f"URI: {uri}", "Version: 1", f"Chain ID: {chain_id}", f"Nonce: {nonce}",
              f"Issued At: {rfc3339(issued_at)}"]
    if expiration_time is not None:
        lines.append(f"Expiration Time: {rfc3339(expiration_time)}")
    return "\n".join(lines)
