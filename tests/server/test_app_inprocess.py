"""The app in process (no server process): ONNX-only models, error mapping, settings."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from models import get_reference_model
from server.errors import HTTP_STATUS, PayloadTooLarge, status_for
from server.http.app import create_app
from server.settings import ServerSettings
from verifier.errors import InputError, NotFound, SignatureInvalid, VerinferError

IRIS = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2]]}]}


@pytest.fixture
def client(tmp_path):
    settings = ServerSettings(
        home=tmp_path,
        models=("iris_mlp",),
        onnx_models={"digits_onnx": get_reference_model("digits_cnn").onnx_path},
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        yield c


def test_onnx_only_model_served_by_onnxruntime(client):
    meta = client.get("/v2/models/digits_onnx").json()
    assert meta["platform"] == "onnxruntime"
    body = {"inputs": [{"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP64", "data": [0.0] * 128}]}
    r = client.post("/v2/models/digits_onnx/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["logits"]["shape"] == [2, 10] and out["label"]["shape"] == [2]
    receipt = json.loads(r.json()["parameters"]["receipt"])
    assert receipt["eip712"] is None  # two samples


def test_nested_data_and_int_datatype(client):
    r = client.post("/v2/models/iris_mlp/infer", json=IRIS)
    assert r.status_code == 200 and r.json()["parameters"]["label"] == 0
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT32", "data": [6, 3, 5, 2]}],
            "outputs": [{"name": "label"}]}
    r = client.post("/v2/models/iris_mlp/versions/1/infer", json=body)
    assert r.status_code == 200
    assert [o["name"] for o in r.json()["outputs"]] == ["label"]


def test_receipt_store_round_trip(client):
    r = client.post("/v2/models/iris_mlp/infer", json=IRIS).json()
    rid = r["parameters"]["receipt_id"]
    assert client.get(f"/v1/receipts/{rid}").json() == json.loads(r["parameters"]["receipt"])


def test_framework_errors_are_error_bodies(client):
    r = client.get("/no/such/route")
    assert r.status_code == 404 and set(r.json()) == {"error"}
    r = client.put("/v2/health/live")
    assert r.status_code == 405 and set(r.json()) == {"error"}


def test_head_is_get_without_a_body(client):
    """HEAD (load balancers' health checks, ``curl -I``) to every GET route: GET's status and
    headers, no body; it was a 405 on each."""
    client.post("/v2/models/iris_mlp/infer", json=IRIS)  # a checkpoint to serve
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/iris_mlp",
                 "/v2/models/iris_mlp/ready", "/.well-known/jwks.json", "/v1/log/checkpoint",
                 "/", "/static/status.js", "/docs", "/docs/static/swagger-ui.css", "/v2/models/nope"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code and head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
        assert head.headers["content-length"] == str(len(get.content)), path
    r = client.head("/v2/models/iris_mlp/infer")  # a POST route: still 405, and says so
    assert r.status_code == 405 and r.content == b"" and r.headers["allow"] == "POST"
    r = client.put("/v2/health/live")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


def test_docs(client):
    page = client.get("/docs")
    assert page.status_code == 200
    # Swagger UI from this server, not a CDN: every script, style and icon is a local path
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) >= 3 and all(a.startswith("/docs/static/") for a in assets), assets
    for a in assets:
        assert client.get(a).status_code == 200, a
    assert "/openapi.json" in page.text and "https://" not in page.text
    assert client.get("/redoc").status_code == 404  # FastAPI's CDN-backed ReDoc page is off
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["required"] == ["inputs"]


def test_error_table():
    assert status_for(NotFound("x")) == 404
    assert status_for(PayloadTooLarge("x")) == 413
    assert status_for(InputError("x")) == 400
    assert status_for(SignatureInvalid("x")) == 400
    assert status_for(VerinferError("x")) == 500
    assert status_for(RuntimeError("x")) == 500
    kinds = [k for k, _ in HTTP_STATUS]
    for i, k in enumerate(kinds):  # no entry is shadowed by a base class listed before it
        assert not any(issubclass(k, base) for base in kinds[:i])


def test_settings_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VERINFER_HOME", str(tmp_path))
    monkeypatch.setenv("VERINFER_MODEL_BATCHING", '{"digits_cnn": {"max_batch_size": 4, "max_queue_delay_ms": 1}}')
    monkeypatch.setenv("VERINFER_ETH_KEY", "0x" + "11" * 32)
    s = ServerSettings()
    assert s.policy_for("digits_cnn").max_batch_size == 4
    assert s.policy_for("iris_mlp").max_batch_size == 64
    assert "11" * 32 not in repr(s) and "11" * 32 not in str(s.model_dump())  # secrets do not show


def test_ordinary_bad_and_binary_requests_log_no_warnings(client):
    """An FP64 value past FP32 (refused) and a binary tensor (a read-only view of the body)
    warned in the server's log before (numpy's overflow in cast, torch's non-writable array)."""
    import struct
    import warnings

    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [1e300, 2.8, 4.7, 1.2]}]}
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the request, and so this test
        r = client.post("/v2/models/iris_mlp/infer", json=body)
        assert r.status_code == 400 and "too large for the fixed-point commitment" in r.json()["error"], r.text
        r = client.post("/v2/models/iris_mlp/infer", content=header + struct.pack("<4f", 5.1, 3.5, 1.4, 0.2),
                        headers={"Inference-Header-Content-Length": str(len(header)),
                                 "Content-Type": "application/octet-stream"})
        assert r.status_code == 200 and r.json()["parameters"]["label"] == 0, r.text
