"""Proof-job callbacks: POST the job's status to a ``callback_url`` when it ends, without
letting a client aim the server at something it should not reach (SSRF).

* A URL that matches an entry of the ``callback_allow`` setting (scheme, host and port, and
  the entry's path as a prefix) may be posted to, whatever its host resolves to. That is how
  an operator allows a hook on loopback or on the private network.
* Any other URL must name a host whose addresses are all public: loopback, private,
  link-local, shared, reserved and multicast addresses are refused (an IP literal at once,
  with a 400; a name when it is resolved).
* The host is resolved once, checked, and the connection goes to that checked address (no
  second lookup that DNS rebinding could answer differently); no proxy from the environment,
  no redirects, no credentials in the URL.
* Each body is signed with the server's Ed25519 receipt key (header ``Verinfer-Signature``,
  docs/server.md "Callbacks"), so the receiver can check it against the published JWKS.

Tries ``callback_attempts`` times with exponential backoff; a 2xx answer counts as delivered.
"""

from __future__ import annotations

import base64
import heapq
import http.client
import ipaddress
import itertools
import logging
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import SplitResult, urlsplit

from verifier.digests import compact_json
from verifier.errors import InputError

log = logging.getLogger("verinfer.server")

SIGNATURE_CONTEXT = b"verinfer-callback/v1\n"
DEFAULT_PORTS = {"http": 80, "https": 443}

# (bytes to sign) -> (key id, Ed25519 signature)
CallbackSigner = Callable[[bytes], tuple[str, bytes]]


class CallbackRefused(InputError):
    """A callback URL the server will not post to."""


def _parse(url: object) -> SplitResult:
    if not isinstance(url, str) or len(url) > 2048:
        raise CallbackRefused("callback_url must be a URL string")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800"): no store or socket takes it
        raise CallbackRefused("callback_url is not valid text (a lone surrogate)") from None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise CallbackRefused(f"callback_url {url!r} is not a valid URL") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise CallbackRefused("callback_url must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise CallbackRefused("callback_url must not carry credentials")
    return parts


def _port(parts: SplitResult) -> int:
    return parts.port or DEFAULT_PORTS[parts.scheme]


def allowed(url: str, allow: tuple[str, ...] | list[str]) -> bool:
    """Whether ``url`` matches an allow-list entry: same scheme, host and port, and the
    URL's path under the entry's path, if any (:func:`_under`). Compared parsed, not as strings,
    so ``http://127.0.0.1:9000@evil/`` does not pass as ``http://127.0.0.1:9000``."""
    parts = _parse(url)
    for entry in allow:
        e = urlsplit(entry)
        if (e.scheme == parts.scheme and (e.hostname or "") == parts.hostname
                and (e.port or DEFAULT_PORTS.get(e.scheme)) == _port(parts)
                and _under(parts.path, e.path)):
            return True
    return False


def _under(path: str, prefix: str) -> bool:
    """Whether ``path`` lies under an allow-list entry's path: whole segments (``/hooks`` does
    not admit ``/hooks-admin``), and no segment the receiver could resolve elsewhere (``..``,
    ``.``, a percent-encoded dot, slash or backslash, a backslash: ``/hooks/../admin``)."""
    if not prefix or prefix == "/":
        return True
    if not (path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/")):
        return False
    lowered = path.lower()
    if "\\" in path or any(code in lowered for code in ("%2e", "%2f", "%5c")):
        return False
    return not any(segment in (".", "..") for segment in path.split("/"))


# IPv6 prefixes that carry an IPv4 address in their last 32 bits and reach it (NAT64's well-known
# prefix, RFC 6052: on a network with NAT64, 64:ff9b::a9fe:a9fe is 169.254.169.254), or did
# (IPv4-compatible, ::/96): Python 3.11 counts them global whatever IPv4 address they carry
_EMBEDDING = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "::/96"))
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: a network's own translator


def public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:  # 2002:WWXX:YYZZ::/48, 6to4: the IPv4 address in bits 16-48
            ip = ip.sixtofour
        elif ip in _LOCAL_NAT64:
            return False
        elif any(ip in net for net in _EMBEDDING):
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not ip.is_multicast


def _inet_aton_spelling(host: str) -> str | None:
    """The dotted IPv4 address of a host the resolver reads as one though ``ipaddress`` does
    not (``2130706433``, ``0x7f.1``, ``017700000001``, ``127.1``: all 127.0.0.1); else None."""
    if not re.fullmatch(r"[0-9a-fx.]+", host) or not host[0].isdigit():
        return None
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


def check_callback_url(url: object, allow: tuple[str, ...] | list[str]) -> str:
    """``url`` if the server may post to it as far as can be told without a lookup; else
    :class:`CallbackRefused` (a 400). Names are checked again when resolved."""
    parts = _parse(url)
    if allowed(url, allow):
        return url
    host = parts.hostname
    try:
        literal = public_address(_inet_aton_spelling(host) or host)
    except ValueError:  # a name, resolved and checked at delivery
        if host == "localhost" or host.endswith(".localhost"):
            literal = False
        else:
            return url
    if not literal:
        raise CallbackRefused(f"callback_url host {host!r} is not a public address and not in "
                              f"the server's callback_allow list")
    return url


class _Clock:
    """One thread for every timed event of the callbacks (an exchange's deadline, a try due
    after its backoff): a timer is an entry in a heap, not a thread. ``fn`` must be quick."""

    def __init__(self) -> None:
        self._heap: list[list] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_at(self, when: float, fn: Callable[[], None]) -> list:
        """Run ``fn`` at ``when`` (``time.monotonic()``); the entry to :meth:`cancel`."""
        entry = [when, next(self._seq), fn]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="verinfer-callback-clock",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        return entry

    @staticmethod
    def cancel(entry: list) -> None:
        entry[2] = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                fn = heapq.heappop(self._heap)[2]
            if fn is not None:
                try:
                    fn()
                except Exception:  # the clock outlives any one event
                    log.exception("callback timer")


CLOCK = _Clock()


class _Resolver:
    """``getaddrinfo`` on threads of its own (at most ``threads``, started when needed), so
    that a try gives up on a lookup at its deadline: the OS resolver has no timeout a caller
    sets, and a slow name server would hold the try (and its thread) as long as it liked.
    One lookup per host and port at a time: a try for a host whose lookup still runs waits
    on that one instead of taking another thread."""

    def __init__(self, threads: int) -> None:
        self._max = threads
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = self._idle = self._waiting = 0
        self._running: dict[tuple[str, int], Future] = {}

    def running(self, host: str, port: int) -> Future | None:
        """The lookup of ``host`` still running, if any."""
        with self._lock:
            return self._running.get((host, port))

    def lookup(self, host: str, port: int, timeout_s: float) -> list:
        key = (host, port)
        with self._lock:
            future = self._running.get(key)
            if future is None:
                future = self._running[key] = Future()
                self._queue.put((key, future))
                self._waiting += 1
                if self._waiting > self._idle and self._threads < self._max:
                    self._threads += 1
                    threading.Thread(target=self._run, name="verinfer-callback-dns", daemon=True).start()
        try:
            return future.result(timeout=max(timeout_s, 0))
        except FutureTimeout:
            raise TimeoutError(f"the lookup of {host!r} took more than {timeout_s:g}s") from None

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            (host, port), future = self._queue.get()
            with self._lock:
                self._idle -= 1
                self._waiting -= 1
            try:
                future.set_result(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            except Exception as exc:  # noqa: BLE001  (handed to the try that waits)
                future.set_exception(exc)
            finally:
                with self._lock:
                    del self._running[(host, port)]


RESOLVER = _Resolver(threads=16)


def resolve_checked(url: str, allow: tuple[str, ...] | list[str], timeout_s: float | None = None) -> str:
    """The one address the callback will connect to: the host resolved once (within
    ``timeout_s``, else TimeoutError); unless the URL is allow-listed, every address it
    resolves to must be public."""
    parts = _parse(url)
    try:
        if timeout_s is None:
            infos = socket.getaddrinfo(parts.hostname, _port(parts), type=socket.SOCK_STREAM)
        else:
            infos = RESOLVER.lookup(parts.hostname, _port(parts), timeout_s)
    except socket.gaierror as exc:
        raise CallbackRefused(f"callback host {parts.hostname!r} does not resolve: {exc}") from None
    addresses = [info[4][0] for info in infos]
    if not allowed(url, allow):
        bad = [a for a in addresses if not public_address(a)]
        if bad:
            raise CallbackRefused(f"callback host {parts.hostname!r} resolves to a non-public "
                                  f"address ({bad[0]}) and is not in callback_allow")
    return addresses[0]


class _Pinned:
    """Connects to the checked address, never a second lookup, within ``connect_s``; from the
    moment the connection is made, ``timeout`` bounds the whole exchange as well as each socket
    operation: a receiver that drips its answer a byte at a time, each within the per-read
    timeout, would otherwise hold a callback thread for as long as it liked. The deadline is
    an entry of the one :data:`CLOCK`, not a thread of its own."""

    _address: str
    connect_s: float
    _deadline: list | None = None
    expired = False  # the deadline cut the exchange: what was read of the answer counts for nothing

    def _connect_pinned(self) -> socket.socket:
        sock = socket.create_connection((self._address, self.port), self.connect_s)
        sock.settimeout(self.timeout)
        self.sock = sock
        self._deadline = CLOCK.call_at(time.monotonic() + self.timeout, self._cut)
        return sock

    def _cut(self) -> None:
        self.expired = True
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once
            except OSError:
                pass

    def close(self) -> None:
        if self._deadline is not None:
            CLOCK.cancel(self._deadline)
        super().close()


class _PinnedHTTP(_Pinned, http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float, connect_s: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address, self.connect_s = address, connect_s

    def connect(self) -> None:
        self._connect_pinned()


class _PinnedHTTPS(_Pinned, http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float, connect_s: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address, self.connect_s = address, connect_s

    def connect(self) -> None:  # the certificate is checked against the URL's host name
        sock = self._connect_pinned()
        # the handshake once self.sock is the TLS socket, so that the deadline covers it too
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
        self.sock.do_handshake()


def signature_headers(body: bytes, timestamp: int, sign: CallbackSigner | None) -> dict[str, str]:
    if sign is None:
        return {}
    kid, sig = sign(SIGNATURE_CONTEXT + str(timestamp).encode() + b"\n" + body)
    return {"Verinfer-Timestamp": str(timestamp), "Verinfer-Key-Id": kid,
            "Verinfer-Signature": base64.b64encode(sig).decode()}


def post_once(url: str, body: bytes, headers: dict[str, str], allow: tuple[str, ...] | list[str],
              timeout_s: float) -> int:
    """One POST to the checked address; the HTTP status (redirects are not followed, the
    body is not read). ``timeout_s`` bounds the lookup and the connection together, then the
    whole exchange (see :class:`_Pinned`): past either, TimeoutError."""
    parts = _parse(url)
    start = time.monotonic()
    address = resolve_checked(url, allow, timeout_s)
    left = timeout_s - (time.monotonic() - start)
    if left <= 0:
        raise TimeoutError(f"no connection within {timeout_s:g}s")
    kind = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    conn = kind(parts.hostname, _port(parts), address, timeout_s, left)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body, headers=headers)
        status = conn.getresponse().status
        if conn.expired:
            raise TimeoutError(f"no complete answer within {timeout_s:g}s")
        return status
    finally:
        conn.close()


# The longest wait between two tries: the waits double from callback_backoff_s, and a wait
# holds one of the callback threads every client shares (20 tries of 0.5 s doubling: days)
MAX_BACKOFF_S = 60.0


def deliver(url: str, payload: dict, *, attempts: int, backoff_s: float,
            allow: tuple[str, ...] | list[str] = (), sign: CallbackSigner | None = None,
            timeout_s: float = 5.0, stop=None) -> bool:
    """POST ``payload`` as signed JSON until a 2xx answer; False when every try failed or
    the URL is refused."""
    body = compact_json(payload)
    delay = min(backoff_s, MAX_BACKOFF_S)
    for i in range(attempts):
        headers = {"Content-Type": "application/json", "User-Agent": "verinfer-callback/1",
                   **signature_headers(body, int(time.time()), sign)}
        try:
            status = post_once(url, body, headers, allow, timeout_s)
            if 200 <= status < 300:
                return True
            why = f"HTTP {status}"
        except CallbackRefused as exc:
            log.warning("callback for job %s refused: %s", payload.get("id"), exc)
            return False
        except (OSError, http.client.HTTPException, ValueError) as exc:
            why = str(exc) or type(exc).__name__
        log.warning("callback for job %s, try %d of %d: %s", payload.get("id"), i + 1, attempts, why)
        if i + 1 < attempts:
            if stop is not None:
                if stop.wait(delay):
                    return False
            else:
                time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
    return False
