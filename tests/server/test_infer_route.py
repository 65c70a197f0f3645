"""The infer endpoint served in front of FastAPI (server/http/infer_route.py): it answers exactly as
FastAPI's declared route does, good input and bad, and leaves every other request to FastAPI."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.errors import HTTP_STATUS, ClientGone, Overloaded, QueueFull, RateLimited
from server.http.app import _install_error_handlers, create_app
from server.http.infer_route import InferRoute, read_body
from server.settings import ServerSettings
from verifier.errors import InputError, SignatureInvalid, VerinferError

IRIS = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}


def _requests() -> list[tuple[str, str, dict]]:
    """(method, path, TestClient keyword arguments): answers and every kind of refusal."""
    two = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP64", "data": [[5.1, 3.5, 1.4, 0.2]] * 2}],
           "outputs": [{"name": "label"}], "id": "client-7"}
    return [
        ("POST", "/v2/models/iris_mlp/infer", {"json": IRIS}),
        ("POST", "/v2/models/iris_mlp/versions/1/infer", {"json": two}),
        ("POST", "/v2/models/nope/infer", {"json": IRIS}),  # 404 unknown model
        ("POST", "/v2/models/iris_mlp/versions/9/infer", {"json": IRIS}),  # 404 unknown version
        ("POST", "/v2/models/iris_mlp/infer", {"content": b"{not json"}),  # 400
        ("POST", "/v2/models/iris_mlp/infer", {"json": {"inputs": [{**IRIS["inputs"][0], "shape": [1, 3]}]}}),
        ("POST", "/v2/models/iris_mlp/infer", {"json": {"inputs": []}}),
        ("POST", "/v2/models/iris_mlp/infer", {"content": b"x" * 5000}),  # 413 over max_body_bytes
        ("POST", "/v2/models/iris_mlp/infer", {"json": {**IRIS, "parameters": {"proof": "sync"}}}),  # 409
        ("GET", "/v2/models/iris_mlp/infer", {}),  # 405, FastAPI's answer
        ("POST", "/v2/models/iris_mlp/infer/", {"json": IRIS}),  # not the route: FastAPI's redirect
    ]


def _answers(tmp_path, infer_route: bool) -> list[tuple[int, dict]]:
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), signing=False, max_body_bytes=4096)
    out = []
    with TestClient(create_app(settings, infer_route=infer_route), follow_redirects=False,
                    base_url="http://127.0.0.1") as client:
        for method, path, kwargs in _requests():
            r = client.request(method, path, **kwargs)
            out.append((r.status_code, r.json() if r.content else None, r.headers.get("content-type")))
    return out


def test_same_answers_as_fastapi_routing(tmp_path):
    fast = _answers(tmp_path / "fast", infer_route=True)
    routed = _answers(tmp_path / "routed", infer_route=False)
    assert [a[0] for a in fast] == [200, 200, 404, 404, 400, 400, 400, 413, 409, 405, 307]
    for (method, path, _), a, b in zip(_requests(), fast, routed):
        assert a == b, (method, path)
    assert fast[0][1]["outputs"][1]["name"] == "label" and fast[1][1]["id"] == "client-7"
    assert "nope" in fast[2][1]["error"] and "over the limit" in fast[7][1]["error"]


def test_the_route_is_served_in_front_of_fastapi(tmp_path):
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), signing=False)
    assert any(m.cls is InferRoute for m in create_app(settings).user_middleware)
    assert not any(m.cls is InferRoute for m in create_app(settings, infer_route=False).user_middleware)


# --- the ASGI layer on its own ----------------------------------------------------------


def _call(route: InferRoute, method: str, path: str, messages: list[dict], headers=()) -> list[dict]:
    sent, inbox = [], list(messages)

    async def receive():
        return inbox.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
    asyncio.run(route(scope, receive, send))
    return sent


def _downstream_app(seen: list):
    async def app(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    return app


def test_other_requests_go_on_to_the_app():
    seen = []

    async def handler(*args):
        raise AssertionError("not the infer route")

    route = InferRoute(_downstream_app(seen), handler)
    for method, path in [("GET", "/v2/models/m/infer"), ("POST", "/v2/models/m/ready"),
                         ("POST", "/v2/models/a/b/infer"), ("POST", "/v2/models/m/infer/")]:
        assert _call(route, method, path, [])[0]["status"] == 204
    assert len(seen) == 4


def test_errors_are_error_bodies_with_their_headers(caplog):
    async def queue_full(*args):
        raise QueueFull("proof queue is full", retry_after=7)

    async def bug(*args):
        raise KeyError("oops")

    sent = _call(InferRoute(None, queue_full), "POST", "/v2/models/m/infer", [])
    assert sent[0]["status"] == 429 and (b"retry-after", b"7") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {"error": "proof queue is full"}
    sent = _call(InferRoute(None, bug), "POST", "/v2/models/m/versions/2/infer", [])
    assert sent[0]["status"] == 500 and json.loads(sent[1]["body"]) == {"error": "internal server error"}
    assert "internal error on POST /v2/models/m/versions/2/infer" in caplog.text


def _each_error() -> list[BaseException]:
    """One of every kind in the HTTP table, a subclass it reaches through a base, and two not ours."""
    out = [kind("over a limit", retry_after=3) if kind in (QueueFull, RateLimited, Overloaded)
           else kind(f"a {kind.__name__}") for kind, _ in HTTP_STATUS]
    return [*out, SignatureInvalid("bad sig"), KeyError("secret detail"), RuntimeError("another")]


def _through_fastapi(exc: BaseException) -> tuple[int, bytes, list]:
    app = FastAPI()
    _install_error_handlers(app)

    @app.post("/raise")
    async def _raise():
        raise exc

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/raise")
    return r.status_code, r.content, sorted((k.lower(), v) for k, v in r.headers.items())


def _through_infer_route(exc: BaseException) -> tuple[int, bytes, list]:
    async def handler(*args):
        raise exc

    start, body = _call(InferRoute(None, handler), "POST", "/v2/models/m/infer", [])
    return start["status"], body["body"], sorted((k.decode(), v.decode()) for k, v in start["headers"])


def test_each_error_kind_answers_the_same_on_both_paths():
    """The FastAPI handlers and the bare infer route answer every error with the same bytes."""
    seen = set()
    for exc in _each_error():
        fast, routed = _through_infer_route(exc), _through_fastapi(exc)
        assert fast == routed, type(exc).__name__
        status, body, headers = fast
        seen.add(status)
        assert json.loads(body) == {"error": "internal server error" if status == 500 and not
                                    isinstance(exc, VerinferError) else str(exc)}
        assert ("retry-after", "3") in headers if isinstance(exc, (QueueFull, RateLimited, Overloaded)) else \
            all(k != "retry-after" for k, _ in headers)
    assert seen == {404, 410, 401, 403, 413, 409, 429, 400, 503, 500}


def test_client_gone_is_ours_and_gets_no_answer():
    async def gone(*args):
        raise ClientGone

    assert issubclass(ClientGone, VerinferError)
    assert _call(InferRoute(None, gone), "POST", "/v2/models/m/infer", []) == []


def test_handler_gets_the_path_and_content_length():
    got = []

    async def handler(name, version, receive, content_length, header_length):
        got.append((name, version, content_length, header_length,
                    await read_body(receive, content_length, 100)))
        return b"{}", None

    route = InferRoute(None, handler)
    body = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"c"}]
    sent = _call(route, "POST", "/v2/models/m/versions/v 1/infer", body, [(b"content-length", b"3")])
    assert got == [("m", "v 1", b"3", None, b"abc")]
    assert sent[0]["status"] == 200 and (b"content-length", b"2") in sent[0]["headers"]
    assert (b"content-type", b"application/json") in sent[0]["headers"]


def test_binary_answers_say_where_their_json_header_ends():
    """The binary data extension: the request's Inference-Header-Content-Length reaches the
    handler; an answer with binary outputs is octet-stream with its JSON header's length."""
    got = []

    async def handler(name, version, receive, content_length, header_length):
        got.append(header_length)
        return b'{"outputs":[]}' + b"\x00" * 8, 14

    sent = _call(InferRoute(None, handler), "POST", "/v2/models/m/infer",
                 [{"type": "http.request", "body": b"{}"}], [(b"inference-header-content-length", b"2")])
    assert got == [b"2"]
    assert sent[0]["status"] == 200
    assert (b"inference-header-content-length", b"14") in sent[0]["headers"]
    assert (b"content-type", b"application/octet-stream") in sent[0]["headers"]
    assert sent[1]["body"] == b'{"outputs":[]}' + b"\x00" * 8


def _read(messages: list[dict], content_length=None, limit: int = 10) -> bytes:
    inbox = list(messages)

    async def receive():
        return inbox.pop(0)

    return asyncio.run(read_body(receive, content_length, limit))


def test_read_body_limits():
    chunk = {"type": "http.request", "body": b"123456", "more_body": True}
    assert _read([{"type": "http.request", "body": b"", "more_body": False}]) == b""
    with pytest.raises(InputError, match="over the limit of 10 bytes"):  # streamed past the limit
        _read([chunk, chunk])
    with pytest.raises(InputError, match="of 11 bytes is over"):  # refused before reading
        _read([], content_length=b"11")
    with pytest.raises(InputError, match="invalid Content-Length"):
        _read([], content_length="ten")
    with pytest.raises(ClientGone):
        _read([chunk, {"type": "http.disconnect"}])
