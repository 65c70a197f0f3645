"""Fast tier: proof-job callbacks (server/proofs/callbacks.py): the URL policy (SSRF), the
signature, and the Dispatcher's bounds: hanging, failing, slow-to-resolve and dripping
receivers cannot hold the threads that other receivers' callbacks need."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jobs_support import submit_job

from server.proofs import callbacks
from server.proofs.callbacks import check_callback_url
from verifier.errors import InputError


def deliver(url: str, payload: dict, *, attempts: int, backoff_s: float, allow=(), sign=None,
            timeout_s: float = 5.0) -> bool:
    """One callback through the server's own :class:`callbacks.Dispatcher`, waited for: True
    when it was delivered, False when refused or out of tries."""
    ended, result = threading.Event(), []

    def done(key, delivered, token):
        result.append(delivered)
        ended.set()

    dispatcher = callbacks.Dispatcher(attempts=attempts, backoff_s=backoff_s, allow=allow, sign=sign,
                                      done=done, timeout_s=timeout_s)
    dispatcher.start()
    try:
        assert dispatcher.submit("k", url, payload)
        assert ended.wait(120), "the callback neither ended nor was given up in 120 s"
    finally:
        dispatcher.stop()
    return result == [True]



def test_callback_url_policy():
    allow = ("http://127.0.0.1:9000/hooks/", "https://hooks.internal.example")
    for ok in ("https://hooks.example.org/p", "http://93.184.216.34/x", "https://[2606:4700::1]/cb",
               "http://127.0.0.1:9000/hooks/job", "https://hooks.internal.example/any/path"):
        assert check_callback_url(ok, allow) == ok
    for bad in ("http://127.0.0.1:9/x", "http://localhost/x", "https://[::1]:8443/cb",
                "http://10.1.2.3/", "http://192.168.1.1/", "http://100.64.0.1/", "ftp://127.0.0.1/",
                "127.0.0.1:80", "http://u:p@localhost/", "http://0.0.0.0/",
                "http://169.254.169.254/latest", "http://[::ffff:127.0.0.1]/", "http://224.0.0.1/",
                "http://127.0.0.1:9000/other", "http://127.0.0.1:9001/hooks/",
                "https://127.0.0.1:9000/hooks/", "http://127.0.0.1:9000@10.0.0.1/hooks/",
                "http://a.localhost/", 5):
        with pytest.raises(InputError):
            check_callback_url(bad, allow)


class _Recorder(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):
        self.seen.append((self.headers["Host"], self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    _Recorder.seen = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_a_name_that_resolves_to_loopback_is_refused_unless_listed(recorder, monkeypatch):
    """Names pass the submit-time check; the lookup at delivery is what refuses them. The
    host is looked up once and the connection goes to the address that was checked."""
    port = recorder.server_port
    lookups, real_dns = [], socket.getaddrinfo

    def fake_dns(host, *args, **kwargs):  # hook.test -> 127.0.0.1 (no DNS on this machine)
        if host == "127.0.0.1":  # the connection to the checked address: not a lookup
            return real_dns(host, *args, **kwargs)
        lookups.append(host)
        return real_dns("127.0.0.1", *args, **kwargs)

    url = f"http://hook.test:{port}/cb"
    assert check_callback_url(url, ()) == url
    monkeypatch.setattr(callbacks.socket, "getaddrinfo", fake_dns)
    assert not deliver(url, {"id": "j1"}, attempts=2, backoff_s=0)
    assert _Recorder.seen == [] and lookups == ["hook.test"]  # refused, never retried
    lookups.clear()
    assert deliver(url, {"id": "j2"}, attempts=2, backoff_s=0, allow=(f"http://hook.test:{port}",))
    assert lookups == ["hook.test"]
    assert _Recorder.seen == [(f"hook.test:{port}", b'{"id":"j2"}')]


def test_callbacks_are_signed_and_never_follow_redirects(recorder):
    key = Ed25519PrivateKey.generate()
    url = f"http://127.0.0.1:{recorder.server_port}/cb"

    def sign(data: bytes) -> tuple[str, bytes]:
        return "k1", key.sign(data)

    headers = callbacks.signature_headers(b'{"id":"j"}', 1700000000, sign)
    assert headers["Verinfer-Key-Id"] == "k1" and headers["Verinfer-Timestamp"] == "1700000000"
    key.public_key().verify(base64.b64decode(headers["Verinfer-Signature"]),
                            b'verinfer-callback/v1\n1700000000\n{"id":"j"}')
    assert deliver(url, {"id": "j"}, attempts=1, backoff_s=0, allow=(url,), sign=sign)

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(307)
            self.send_header("Location", url)
            self.end_headers()

        def log_message(self, *args):
            pass

    redirector = HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=redirector.serve_forever, daemon=True).start()
    try:
        there = f"http://127.0.0.1:{redirector.server_port}/"
        assert not deliver(there, {"id": "r"}, attempts=1, backoff_s=0, allow=(there, url))
    finally:
        redirector.shutdown()
    assert [body for _, body in _Recorder.seen] == [b'{"id":"j"}']  # the redirect was not followed


def test_an_allow_list_path_admits_only_urls_under_it(recorder):
    """An entry's path was a string prefix of the URL's path: with ``/hooks`` allowed on a
    loopback receiver, a client's ``/hooks/../admin`` (or ``/hooks-admin``) was posted to,
    reaching what the operator did not allow on that host. Now whole segments, and no dot
    segment or encoded dot, slash or backslash that the receiver could resolve elsewhere."""
    base = f"http://127.0.0.1:{recorder.server_port}"
    allow = (f"{base}/hooks",)
    for bad in ("/hooks/../admin", "/hooks/./../admin", "/hooks-admin", "/hooks/%2e%2e/admin",
                "/hooks/%2E%2E%2Fadmin", "/hooks/..%5cadmin", "/hooks\\..\\admin"):
        with pytest.raises(InputError):
            check_callback_url(base + bad, allow)
        assert not deliver(base + bad, {"id": bad}, attempts=1, backoff_s=0, allow=allow)
    assert _Recorder.seen == []  # not one of them reached the receiver
    for ok in ("/hooks", "/hooks/job/1", "/hooks/v1..2"):
        assert check_callback_url(base + ok, allow) == base + ok
        assert deliver(base + ok, {"id": ok}, attempts=1, backoff_s=0, allow=allow)
    assert len(_Recorder.seen) == 3


def test_ipv6_spellings_of_a_private_ipv4_address_are_refused(monkeypatch):
    """NAT64 (64:ff9b::/96), 6to4 (2002::/16) and IPv4-compatible (::/96) addresses carry an
    IPv4 address that a network with NAT64 or 6to4 reaches; Python counts them global whatever
    they carry, so http://[64:ff9b::a9fe:a9fe]/ (169.254.169.254, cloud metadata) and a name
    resolving to it were posted to. Now the IPv4 address they carry is what is checked."""
    for host in ("64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::a00:1",
                 "2002:a9fe:a9fe::1", "2002:7f00:1::", "::127.0.0.1", "::a00:1"):
        with pytest.raises(InputError):
            check_callback_url(f"http://[{host}]/latest", ())
    for host in ("64:ff9b::808:808", "2002:808:808::1"):  # they carry 8.8.8.8: public
        assert check_callback_url(f"http://[{host}]/cb", ()) == f"http://[{host}]/cb"
    real_dns = socket.getaddrinfo

    def fake_dns(host, port, *args, **kwargs):  # meta.test -> NAT64 of 169.254.169.254
        if host == "meta.test":
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("64:ff9b::a9fe:a9fe", port, 0, 0))]
        return real_dns(host, port, *args, **kwargs)

    monkeypatch.setattr(callbacks.socket, "getaddrinfo", fake_dns)
    url = "http://meta.test/latest/meta-data"
    assert check_callback_url(url, ()) == url  # a name: checked when it is resolved
    with pytest.raises(callbacks.CallbackRefused, match="non-public"):
        callbacks.resolve_checked(url, ())
    assert not deliver(url, {"id": "j"}, attempts=2, backoff_s=0)


def test_other_spellings_of_an_ipv4_literal_are_refused_at_submission():
    """``http://2130706433/``, ``0x7f.1``, ``017700000001``, ``127.1`` are 127.0.0.1 to the
    resolver but not to ``ipaddress``: they passed the submit check as names (202, then a
    callback refused at delivery and never sent). An IP literal is refused at once (400)."""
    for host in ("2130706433", "0x7f.1", "0x7f000001", "017700000001", "127.1", "0", "10.1",
                 "0xa9.0xfe.0xa9.0xfe", "0251.0376.0251.0376"):
        with pytest.raises(InputError, match="not a public address"):
            check_callback_url(f"http://{host}/cb", ())
    for ok in ("134744072", "0x8.0x8.0x8.0x8", "8.8.2056", "1e100.net", "0day.example"):  # 8.8.8.8; names
        assert check_callback_url(f"http://{ok}/cb", ()) == f"http://{ok}/cb"


class _Dripper:
    """A receiver that answers a byte every 50 ms, for as long as the caller keeps reading:
    after the status line in its headers (``part="headers"``), or after complete headers in
    a body it announces as 1 GB (``part="body"``). Each byte comes well within any per-read
    timeout."""

    def __init__(self, part: str) -> None:
        self.part, self.stop, self.cut = part, threading.Event(), threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/cb"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            seen = b""
            while b"\r\n\r\n" not in seen:
                seen += conn.recv(4096)
            head = b"HTTP/1.1 200 OK\r\n"
            head += b"X-Drip: " if self.part == "headers" else b"Content-Length: 1000000000\r\n\r\n"
            try:
                conn.sendall(head)
                while not self.stop.wait(0.05):
                    conn.sendall(b"a")
            except OSError:  # the caller hung up
                self.cut.set()


@pytest.mark.parametrize("part,delivered", [("headers", False), ("body", True)])
def test_a_receiver_dripping_its_answer_cannot_hold_a_callback_thread(part, delivered):
    """timeout_s bounded each read only: an answer dripped a byte at a time held the callback
    thread (one of 4, for every client's callbacks) for days. Now it bounds the whole
    exchange, and the body of an answer is not read at all (its status is what counts)."""
    dripper = _Dripper(part)
    result: list = []
    caller = threading.Thread(target=lambda: result.append(
        deliver(dripper.url, {"id": "j"}, attempts=1, backoff_s=0, allow=(dripper.url,), timeout_s=0.5)))
    caller.start()
    caller.join(60)  # a bound for the test, not a measurement: the fix ends it in about 0.5 s
    stuck = caller.is_alive()
    hung_up = dripper.cut.wait(30)  # the dripper's next bytes find the connection closed
    dripper.stop.set()
    caller.join()
    assert not stuck, "the callback was still reading the dripped answer after 60 s"
    assert result == [delivered] and hung_up


def test_callback_waits_between_tries_are_capped():
    """The waits double from callback_backoff_s up to MAX_BACKOFF_S: with 20 tries from 0.5 s they
    reached 0.5 * 2^18 s (three days) while holding a thread every client's callbacks share."""
    waits = [callbacks.backoff(i, 0.5) for i in range(19)]  # the Dispatcher's, after each failed try
    assert waits[:3] == [0.5, 1.0, 2.0] and max(waits) == callbacks.MAX_BACKOFF_S == 60.0
    assert waits[-1] == callbacks.MAX_BACKOFF_S  # before the cap: 0.5 * 2**18 s
    assert callbacks.backoff(10_000, 0.5) == callbacks.MAX_BACKOFF_S  # no overflow past 2**64


def _slow_dns(monkeypatch) -> tuple[threading.Event, list[str]]:
    """The OS resolver, for names in .slow.test waiting on a name server that answers
    (127.0.0.1) once the event is set; the names it was asked for."""
    answer, lookups, real_dns = threading.Event(), [], socket.getaddrinfo

    def slow_dns(host, port, *args, **kwargs):
        if host.rstrip(".").endswith(".slow.test"):
            lookups.append(host)
            answer.wait()
            host = "127.0.0.1"
        return real_dns(host, port, *args, **kwargs)

    monkeypatch.setattr(callbacks.socket, "getaddrinfo", slow_dns)
    return answer, lookups


def test_a_slow_lookup_of_a_callback_host_is_a_failed_try_at_the_deadline(monkeypatch, recorder):
    """The host's lookup (getaddrinfo, the OS resolver's, with no timeout a caller sets) ran
    before the try's deadline began: a name server that never answered held the callback
    thread for as long as it liked. Now the lookup shares the deadline with the connection,
    and past it the try has failed; the next try of that host waits on the same lookup."""
    answer, lookups = _slow_dns(monkeypatch)
    url = f"http://h.slow.test:{recorder.server_port}/cb"
    result: list = []
    caller = threading.Thread(target=lambda: result.append(
        deliver(url, {"id": "j"}, attempts=2, backoff_s=0, allow=(url,), timeout_s=0.5)))
    caller.start()
    caller.join(30)  # a bound for the test, not a measurement: the fix ends it in about 1 s
    stuck = caller.is_alive()
    answer.set()
    caller.join()
    assert not stuck, "the callback was still waiting for the lookup after 30 s"
    assert result == [False] and lookups == ["h.slow.test"]  # two tries, one lookup
    assert _Recorder.seen == []
    # the name resolves again: the next delivery goes through
    assert deliver(url, {"id": "k"}, attempts=1, backoff_s=0, allow=(url,), timeout_s=5)
    assert [body for _, body in _Recorder.seen] == [b'{"id":"k"}']


class _Hanger:
    """Receivers (``ports`` of them, one port each) that take connections and never answer;
    counts those open at once, and those the caller hung up."""

    def __init__(self, wanted: int, ports: int = 1) -> None:
        self.listeners = [socket.create_server(("127.0.0.1", 0), backlog=64) for _ in range(ports)]
        self.urls = [f"http://127.0.0.1:{s.getsockname()[1]}/cb" for s in self.listeners]
        self.url = self.urls[0]
        self.conns: list[socket.socket] = []
        self.open = self.most = self.hangups = 0
        self.lock, self.reached = threading.Lock(), threading.Event()
        self.wanted = wanted
        for listener in self.listeners:
            threading.Thread(target=self._serve, args=(listener,), daemon=True).start()

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
                self.open += 1
                self.most = max(self.most, self.open)
                if self.open >= self.wanted:
                    self.reached.set()
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        try:
            while conn.recv(4096):  # read the request, answer nothing; b"": the caller hung up
                pass
        except OSError:
            pass
        with self.lock:
            self.open -= 1
            self.hangups += 1

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()
        with self.lock:
            for conn in self.conns:
                conn.close()


def test_a_hanging_receiver_does_not_delay_other_receivers_callbacks(home, recorder):
    """Callbacks ran on 4 threads shared by every client, each callback holding one for all its
    tries and the waits between them: 4 callbacks to a receiver that hangs until each deadline
    held them all, and everyone else's waited until those had used up every try. Now at most 2
    tries to one host run at once, on 8 threads, and a callback waiting for its next try holds
    none: the other receiver gets its callback while the hanging one's are still being tried."""
    from server.proofs.jobs import ProofJobs
    from server.settings import ServerSettings

    hanger = _Hanger(wanted=2)
    good = f"http://127.0.0.1:{recorder.server_port}/cb"
    settings = ServerSettings(home=home, models=("iris_mlp",), proof_workers=0, callback_attempts=5,
                              callback_backoff_s=0, callback_allow=(hanger.url, good))
    jobs = ProofJobs(settings, service=None, receipts=None)

    def ended(digest: str, url: str) -> str:
        job, _ = submit_job(jobs.store, digest, callback_url=url, max_active=64)
        claimed, _ = jobs.store.claim("w", 30)
        assert claimed.id == job.id and jobs.store.finish(job.id, "proven", "{}")
        return job.id

    stuck = [ended(f"{i:064x}", hanger.url) for i in range(9)]
    jobs.start()
    try:
        assert hanger.reached.wait(60), "no callback reached the hanging receiver"
        done = ended("f" * 64, good)
        for _ in range(600):  # a bound for the test, not a measurement
            if jobs.store.request(done).callback_state != "pending":
                break
            time.sleep(0.1)
        states = {j: jobs.store.request(j).callback_state for j in stuck}
        assert jobs.store.request(done).callback_state == "delivered"
        assert [json.loads(body)["id"] for _, body in _Recorder.seen] == [done]
        assert set(states.values()) == {"pending"}, states  # still being tried
        assert hanger.most == 2  # at most 2 tries to one host at a time
        # the deadlines of the tries under way are the clock's entries, not a thread each
        assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
    finally:
        jobs.stop()
        hanger.close()


def test_one_clients_callbacks_to_many_hanging_hosts_do_not_delay_another_clients(recorder):
    """Past each host's share, one client's share bounds it: an API key whose callbacks name
    as many hanging hosts as there are threads would otherwise hold them all."""
    hanger = _Hanger(wanted=2, ports=4)  # four hosts (ports) of client a, none answering
    got, ended = threading.Event(), {}

    def done(key, delivered, token):
        ended[key] = delivered
        if key == "b":
            got.set()

    url = f"http://127.0.0.1:{recorder.server_port}/cb"
    dispatcher = callbacks.Dispatcher(attempts=2, backoff_s=0, allow=(*hanger.urls, url), done=done,
                                      timeout_s=30, workers=4, per_host=2, per_client=2)
    dispatcher.start()
    try:
        for i, there in enumerate(hanger.urls):
            assert dispatcher.submit(f"a{i}", there, {"id": f"a{i}"}, client="a")
        assert hanger.reached.wait(60), "no callback reached the hanging receivers"
        assert dispatcher.submit("b", url, {"id": "b"}, client="b")
        assert got.wait(60), "client b's callback was not delivered"
        assert ended == {"b": True} and dispatcher.pending() == 4
        assert hanger.most == 2 and hanger.hangups == 0  # a's first tries are still under way
    finally:
        dispatcher.stop()
        hanger.close()


def test_hosts_that_failed_take_at_most_half_the_threads(recorder):
    """With no API keys there is no client's share: 4 hanging hosts (2 tries each allowed) held
    all 4 threads with their retries, and a callback to a host that answers waited for a whole
    round of them. Now a host whose last try failed retries on at most ``per_failing`` threads
    (2 of 8 here): the good callback is delivered while the second round to the hanging hosts
    is under way."""
    hanger = _Hanger(wanted=4, ports=4)
    got, seen = threading.Event(), {}

    def done(key, delivered, token):
        if key == "b":
            with hanger.lock:
                seen["hangups"], seen["open"] = hanger.hangups, hanger.open
            got.set()

    url = f"http://127.0.0.1:{recorder.server_port}/cb"
    dispatcher = callbacks.Dispatcher(attempts=3, backoff_s=0, allow=(*hanger.urls, url), done=done,
                                      timeout_s=1.5, workers=8, per_host=2, per_failing=2)
    dispatcher.start()
    try:
        for i, there in enumerate(hanger.urls):  # no client: the server has no API keys
            assert dispatcher.submit(f"a{i}", there, {"id": f"a{i}"})
        assert hanger.reached.wait(60), "the first tries did not reach the hanging receivers"
        for _ in range(600):  # the first round timed out: their retries are due now
            with hanger.lock:
                if hanger.hangups >= 4:
                    break
            time.sleep(0.01)
        assert dispatcher.submit("b", url, {"id": "b"})
        assert got.wait(60), "the good callback was not delivered"
        # delivered before any try of the second round to the hanging hosts ended, and beside
        # at most two of them (before: after the round, which held all 4 threads)
        assert seen["hangups"] == 4 and seen["open"] <= 2, seen
    finally:
        dispatcher.stop()
        hanger.close()


def test_new_hosts_leave_threads_to_the_hosts_known_to_answer(recorder):
    """Hosts no try was delivered to yet take at most 3 of 4 threads: 4 new hosts that hang
    (a client's fresh callback URLs, no API keys) held all 4 threads through their first tries,
    and a callback to a receiver that had answered before waited for one of them to time out.
    Now it is delivered while those tries are under way."""
    hanger = _Hanger(wanted=3, ports=4)
    delivered = {}
    known = threading.Event()

    def done(key, ok, token):
        with hanger.lock:
            delivered[key] = (ok, hanger.hangups)
        if key.startswith("g"):
            known.set()

    url = f"http://127.0.0.1:{recorder.server_port}/cb"
    dispatcher = callbacks.Dispatcher(attempts=1, backoff_s=0, allow=(*hanger.urls, url), done=done,
                                      timeout_s=1.5, workers=4, per_host=2)
    dispatcher.start()
    try:
        assert dispatcher.submit("g0", url, {"id": "g0"})  # the receiver answers once: known now
        assert known.wait(60) and delivered["g0"][0]
        known.clear()
        for i, there in enumerate(hanger.urls):
            assert dispatcher.submit(f"a{i}", there, {"id": f"a{i}"})
        assert hanger.reached.wait(60), "the first tries did not reach the hanging receivers"
        assert dispatcher.submit("g1", url, {"id": "g1"})
        assert known.wait(60), "the callback to the known receiver was not delivered"
        with hanger.lock:
            most = hanger.most
        # delivered before any try to a hanging host ended, beside at most 3 of them
        assert delivered["g1"] == (True, 0) and most == 3, (delivered, most)
    finally:
        dispatcher.stop()
        hanger.close()


def test_a_stop_waits_for_a_callbacks_end_being_recorded(recorder):
    """A try that ends as the server stops records its end (``done``, a store write) before
    ``stop`` returns: ProofJobs.stop closes the store right after, and a write to it then was a
    traceback at every such stop. (An event, not a timing, holds ``done`` under way.)"""
    entered, release, recorded = threading.Event(), threading.Event(), []

    def done(key, delivered, token):
        entered.set()
        release.wait(30)
        recorded.append((key, delivered))

    url = f"http://127.0.0.1:{recorder.server_port}/cb"
    dispatcher = callbacks.Dispatcher(attempts=1, backoff_s=0, allow=(url,), done=done)
    dispatcher.start()
    assert dispatcher.submit("k", url, {"id": "k"})
    assert entered.wait(60), "the callback was not delivered"
    stopping = threading.Thread(target=dispatcher.stop)
    stopping.start()
    stopping.join(1)
    stopped_early = not stopping.is_alive()  # before: stop returned with done() still under way
    release.set()
    stopping.join(30)
    assert not stopped_early and not stopping.is_alive() and recorded == [("k", True)]


def test_a_lookup_that_outlives_its_try_keeps_the_clients_share(monkeypatch, recorder):
    """A try gives up on a slow lookup at its deadline, but the lookup runs on (the OS resolver
    cannot be stopped): were the try's share released then, a client naming one slow host after
    another would start a lookup every few seconds, each holding a resolver thread for as long
    as the name server liked. The share is released when the lookup ends."""
    answer, lookups = _slow_dns(monkeypatch)
    good = f"http://127.0.0.1:{recorder.server_port}/cb"
    # named as written (a trailing dot too: the share is the looked-up name's)
    slow = [f"http://h{i}.slow.test.:{recorder.server_port}/cb" for i in range(4)]
    ended, events = {}, {key: threading.Event() for key in ("a0", "a1", "a2", "a3", "b")}

    def done(key, delivered, token):
        ended[key] = delivered
        events[key].set()

    dispatcher = callbacks.Dispatcher(attempts=1, backoff_s=0, allow=(*slow, good), done=done,
                                      timeout_s=3, workers=4, per_client=2)
    dispatcher.start()
    try:
        for i, url in enumerate(slow):
            dispatcher.submit(f"a{i}", url, {"id": f"a{i}"}, client="a")
        assert events["a0"].wait(60) and events["a1"].wait(60)  # their tries gave up on the lookups
        dispatcher.submit("b", good, {"id": "b"}, client="b")
        assert events["b"].wait(60)
        assert ended == {"a0": False, "a1": False, "b": True}
        assert sorted(lookups) == ["h0.slow.test.", "h1.slow.test."]  # a2, a3 wait for a's share
        answer.set()  # the name server answers: a's share is free again
        assert events["a2"].wait(60) and events["a3"].wait(60)
        assert ended["a2"] and ended["a3"]
    finally:
        answer.set()
        dispatcher.stop()


def _receiver(answer) -> tuple[ThreadingHTTPServer, str, list[dict]]:
    """A callback receiver on 127.0.0.1: (server, URL, the callbacks it got); ``answer(note)``
    gives the status of each answer (and may wait)."""
    got: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(answer(got[-1]))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/cb", got


def test_a_job_queued_again_while_its_callback_is_sent_tells_its_next_end_too(home):
    """A client that submits a failed job again has its callback due again; but the delivery
    of the failure, still under way (a slow receiver, a retry), then set the request's state
    to delivered, so the end of the new attempt was never sent. Now the state is set only
    for the end that was sent."""
    from server.proofs.jobs import ProofJobs
    from server.settings import ServerSettings

    gate, first = threading.Event(), threading.Event()

    def slow(note: dict) -> int:
        first.set()
        gate.wait()
        return 204

    receiver, url, got = _receiver(slow)
    settings = ServerSettings(home=home, models=("iris_mlp",), proof_workers=0, callback_attempts=1,
                              callback_allow=(url,))
    jobs = ProofJobs(settings, service=None, receipts=None)
    job, _ = submit_job(jobs.store, "1" * 64, callback_url=url)
    jobs.store.claim("w", 30)
    jobs.store.fail_now(job.id, "boom", worker="w")
    jobs.start()
    try:
        assert first.wait(60), "the failure's callback was not sent"
        again, how = submit_job(jobs.store, "1" * 64, callback_url=url)  # while it is being sent
        assert how == "requeued" and again.id == job.id
        gate.set()
        for _ in range(600):  # a bound for the test, not a measurement
            if not jobs._callbacks.pending():
                break
            time.sleep(0.1)
        assert jobs._callbacks.pending() == 0
        assert jobs.store.request(job.id).callback_state == "pending"  # the next end is still to tell
        jobs.store.claim("w", 30)
        assert jobs.store.finish(job.id, "proven", "{}", worker="w")
        for _ in range(600):
            if jobs.store.request(job.id).callback_state != "pending":
                break
            time.sleep(0.1)
        assert jobs.store.request(job.id).callback_state == "delivered"
        assert [(n["id"], n["status"]) for n in got] == [(job.id, "failed"), (job.id, "done")]
    finally:
        gate.set()
        jobs.stop()
        receiver.shutdown()


def test_a_callback_waiting_for_its_next_try_when_the_server_stops_is_sent_by_the_next(home):
    """docs/server.md: pending callbacks are sent again after a restart. A stop while a callback
    waits out its backoff leaves it pending in the store (not failed, not lost)."""
    from server.proofs.jobs import ProofJobs
    from server.settings import ServerSettings

    answers = [503]
    receiver, url, got = _receiver(lambda note: answers.pop() if answers else 204)
    settings = ServerSettings(home=home, models=("iris_mlp",), proof_workers=0, callback_attempts=5,
                              callback_backoff_s=3600, callback_allow=(url,))
    jobs = ProofJobs(settings, service=None, receipts=None)
    job, _ = submit_job(jobs.store, "1" * 64, callback_url=url)
    jobs.store.claim("w", 30)
    assert jobs.store.finish(job.id, "proven", "{}", worker="w")
    jobs.start()
    try:
        for _ in range(600):  # a bound for the test, not a measurement
            if got:
                break
            time.sleep(0.1)
        assert len(got) == 1  # the first try failed (503); the next is an hour away
    finally:
        jobs.stop()
    jobs = ProofJobs(settings, service=None, receipts=None)
    try:
        assert jobs.store.request(job.id).callback_state == "pending"
        jobs.start()
        for _ in range(600):
            if jobs.store.request(job.id).callback_state != "pending":
                break
            time.sleep(0.1)
        assert jobs.store.request(job.id).callback_state == "delivered"
        assert [n["id"] for n in got] == [job.id, job.id]
    finally:
        jobs.stop()
        receiver.shutdown()


def test_a_name_server_failing_for_now_is_a_failed_try_and_a_name_that_does_not_exist_is_refused(
        monkeypatch, recorder):
    """Any lookup error refused the callback at once, never tried again: a name server out for
    a moment (EAI_AGAIN, "temporary failure in name resolution") lost every callback due then.
    It is now a failed try; a name that does not exist (EAI_NONAME) is still refused."""
    real_dns, asked = socket.getaddrinfo, []

    def flaky_dns(host, port, *args, **kwargs):
        if host in ("flaky.test", "nowhere.test"):
            asked.append(host)
            if host == "nowhere.test":
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            if asked.count(host) == 1:
                raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
            host = "127.0.0.1"
        return real_dns(host, port, *args, **kwargs)

    monkeypatch.setattr(callbacks.socket, "getaddrinfo", flaky_dns)
    url = f"http://flaky.test:{recorder.server_port}/cb"
    assert deliver(url, {"id": "j"}, attempts=2, backoff_s=0, allow=(url,))
    assert asked == ["flaky.test", "flaky.test"] and len(_Recorder.seen) == 1
    gone = f"http://nowhere.test:{recorder.server_port}/cb"
    assert not deliver(gone, {"id": "k"}, attempts=3, backoff_s=0, allow=(gone,))
    assert asked[2:] == ["nowhere.test"]  # refused, not tried again
