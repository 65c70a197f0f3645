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
The server's callbacks go through a :class:`Dispatcher`: a few threads, each host's and each
client's share of them bounded, waits between tries on one clock thread.
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
        if exc.errno == socket.EAI_AGAIN:  # the name server failed for now: a failed try, tried again
            raise
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


# The longest wait between two tries: the waits double from callback_backoff_s
MAX_BACKOFF_S = 60.0


def backoff(i: int, backoff_s: float) -> float:
    """The wait after the ``i``-th failed try (0 first): doubling from ``backoff_s``, at most
    :data:`MAX_BACKOFF_S` (20 tries of 0.5 s doubling would wait days)."""
    return min(backoff_s * 2 ** min(i, 64), MAX_BACKOFF_S)


def try_once(url: str, body: bytes, allow: tuple[str, ...] | list[str], sign: CallbackSigner | None,
             timeout_s: float) -> str | None:
    """One signed POST of ``body``: None when delivered (a 2xx), else why the try failed;
    :class:`CallbackRefused` when the URL may not be posted to (no try will do)."""
    headers = {"Content-Type": "application/json", "User-Agent": "verinfer-callback/1",
               **signature_headers(body, int(time.time()), sign)}
    try:
        status = post_once(url, body, headers, allow, timeout_s)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None if 200 <= status < 300 else f"HTTP {status}"


class _Delivery:
    def __init__(self, key: str, url: str, body: bytes, client: str, token: object) -> None:
        self.key, self.url, self.body, self.client, self.token = key, url, body, client, token
        self.tries = 0
        self.shares: list = []  # the dispatcher's shares its try under way holds
        try:
            parts = _parse(url)
            self.host: tuple[str, int] = (parts.hostname or "", _port(parts))  # as looked up
        except CallbackRefused:
            self.host = (url, 0)  # refused at its first try


# hosts remembered as failing, and as answering (the oldest forgotten first)
MAX_FAILING_HOSTS = 1024
MAX_ANSWERING_HOSTS = 1024


class Dispatcher:
    """Delivers a server's callbacks, each client's and each host's share bounded: a receiver
    that hangs until every deadline, or fails and is tried again, must not delay the others.

    * ``workers`` threads make the tries, one at a time each; a try takes at most
      ``2 * timeout_s`` (:func:`post_once`).
    * At most ``per_host`` tries to one host (name and port) run at once, and ``per_client``
      of one client's (an API key; none when the server has no keys). A try whose host's
      lookup outlived it keeps its share until that lookup ends (:class:`_Resolver`), and at
      most ``held`` tries and such lookups are under way in all.
    * Tries to a host whose last try failed (it hangs, refuses, answers an error) take at most
      half of the threads in all (``per_failing``): with no API keys there is no client's
      share, and a few hanging hosts (2 tries each) held every thread through all their
      retries, while the callbacks to hosts that answer waited. A host leaves that set when a
      try to it is delivered.
    * Tries to hosts not known to answer (none delivered to yet, or their last try failed)
      leave a quarter of the threads (``reserved``, at least one) to hosts that do: a few new
      hosts that hang (a client's fresh callback URLs) held every thread through their first
      tries, up to ``2 * timeout_s``, and the receivers known to answer waited.
    * A callback waiting for its next try is an entry of the one :data:`CLOCK`, not a thread.

    ``done(key, delivered, token)`` is called once a callback is delivered, refused or out of
    tries; never after :meth:`stop` (a callback still pending is the store's, sent again by the
    next server)."""

    def __init__(self, *, attempts: int, backoff_s: float, allow: tuple[str, ...] | list[str] = (),
                 sign: CallbackSigner | None = None, done: Callable[[str, bool, object], None],
                 timeout_s: float = 5.0, workers: int = 8, per_host: int = 2, per_client: int = 4,
                 held: int = 16, per_failing: int | None = None, reserved: int | None = None) -> None:
        self.attempts, self.backoff_s, self.allow, self.sign = attempts, backoff_s, allow, sign
        self.done, self.timeout_s = done, timeout_s
        self.per_host, self.per_client, self.held, self.workers = per_host, per_client, held, workers
        self.per_failing = per_failing if per_failing is not None else max(1, workers // 2)
        self.per_unproven = max(1, workers - (reserved if reserved is not None else max(1, workers // 4)))
        self._failing: dict[tuple[str, int], None] = {}  # hosts whose last try failed, oldest first
        self._answering: dict[tuple[str, int], None] = {}  # hosts whose last try was delivered
        self._cond = threading.Condition()
        self._pending: dict[str, _Delivery] = {}  # every callback not done yet, by key
        self._ready: list[_Delivery] = []  # those due now, oldest first
        self._busy: dict[object, int] = {}  # tries under way by host and by client, and in all
        self._threads: list[threading.Thread] = []
        self._stopped = False
        self._ending = threading.Lock()  # held while done() records a callback's end

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"verinfer-callback-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        with self._ending:  # a done() under way ends before stop returns (and the store closes)
            pass

    def submit(self, key: str, url: str, payload: dict, *, client: str = "", token: object = None) -> bool:
        """Deliver ``payload`` to ``url`` (False: ``key`` is pending already)."""
        with self._cond:
            if key in self._pending or self._stopped:
                return False
            d = self._pending[key] = _Delivery(key, url, compact_json(payload), client, token)
            self._ready.append(d)
            self._cond.notify()
        return True

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def _shares(self, d: _Delivery) -> list:
        return ["all", ("host", d.host), *([("client", d.client)] if d.client else []),
                *(["failing"] if d.host in self._failing else []),
                *(["unproven"] if d.host not in self._answering else [])]

    def _may_start(self, d: _Delivery) -> bool:
        busy = self._busy.get
        return (busy("all", 0) < self.held and busy(("host", d.host), 0) < self.per_host
                and (not d.client or busy(("client", d.client), 0) < self.per_client)
                and (d.host not in self._failing or busy("failing", 0) < self.per_failing)
                and (d.host in self._answering or busy("unproven", 0) < self.per_unproven))

    def _take(self) -> _Delivery | None:
        for i, d in enumerate(self._ready):
            if self._may_start(d):
                del self._ready[i]
                d.shares = self._shares(d)  # (released as taken: the host may fail meanwhile)
                for share in d.shares:
                    self._busy[share] = self._busy.get(share, 0) + 1
                return d
        return None

    def _host_failed(self, d: _Delivery, failed: bool) -> None:
        with self._cond:
            self._failing.pop(d.host, None)
            self._answering.pop(d.host, None)
            # (names come from clients: both bounded, the oldest forgotten first)
            seen, most = (self._failing, MAX_FAILING_HOSTS) if failed else (self._answering, MAX_ANSWERING_HOSTS)
            seen[d.host] = None
            if len(seen) > most:
                del seen[next(iter(seen))]

    def _release(self, d: _Delivery) -> None:
        with self._cond:
            for share in d.shares:
                self._busy[share] -= 1
                if not self._busy[share]:
                    del self._busy[share]
            self._cond.notify_all()

    def _due(self, d: _Delivery) -> None:  # on the clock's thread: its wait is over
        with self._cond:
            if not self._stopped:
                self._ready.append(d)
                self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (d := self._take()) is None:
                    self._cond.wait()
                if self._stopped:
                    return
            try:
                self._try(d)
            except Exception:  # the worker outlives any one callback
                log.exception("callback %s", d.key)
            finally:
                lookup = RESOLVER.running(*d.host)
                if lookup is None:
                    self._release(d)
                else:  # the host's lookup outlived the try: it keeps the try's share until it ends
                    lookup.add_done_callback(lambda _, d=d: self._release(d))

    def _try(self, d: _Delivery) -> None:
        d.tries += 1
        try:
            why = try_once(d.url, d.body, self.allow, self.sign, self.timeout_s)
        except CallbackRefused as exc:
            log.warning("callback %s refused: %s", d.key, exc)
            return self._end(d, False)
        self._host_failed(d, why is not None)
        if why is None:
            return self._end(d, True)
        log.warning("callback %s, try %d of %d: %s", d.key, d.tries, self.attempts, why)
        if d.tries >= self.attempts:
            return self._end(d, False)
        CLOCK.call_at(time.monotonic() + backoff(d.tries - 1, self.backoff_s), lambda: self._due(d))

    def _end(self, d: _Delivery, delivered: bool) -> None:
        try:
            with self._ending:
                if not self._stopped:  # recorded while still pending: not submitted again meanwhile
                    self.done(d.key, delivered, d.token)
        finally:
            with self._cond:
                del self._pending[d.key]
