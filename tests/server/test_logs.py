"""Structured logs (issue 15): with VERINFER_LOG_FORMAT=json a real server writes one JSON object
per line, request lines carry the request id the client sent (or one made for it, sent back in
X-Request-Id), and no input or output values appear in its log or error bodies."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from server.logs import REQUEST_ID, JsonFormatter
from testkit.server_process import ServerProcess

pytestmark = [pytest.mark.e2e]

SECRET_INPUT = [5.123456, 3.654321, 1.4, 0.2]  # values to look for in the log: they must not be there


def _post(port: int, body: dict, request_id: str | None = None) -> tuple[int, dict, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/iris_mlp/infer", json.dumps(body).encode(),
                                 {"Content-Type": "application/json", **({"X-Request-Id": request_id} if request_id else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_json_log_lines_with_request_ids_and_no_data(tmp_path):
    server = ServerProcess(tmp_path, "--log-level", "info", env={"VERINFER_LOG_FORMAT": "json",
                                                                "VERINFER_MODELS": '["iris_mlp"]'}).wait_ready()
    try:
        good = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": SECRET_INPUT}]}
        status, headers, answer = _post(server.port, good, "client-req-42")
        assert status == 200 and headers["x-request-id"] == "client-req-42"
        bad = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": SECRET_INPUT[:3]}]}
        status, headers, err = _post(server.port, bad)
        made = headers["x-request-id"]
        assert status == 400 and len(made) == 16 and set(err) == {"error"}
        assert "5.123456" not in err["error"]
        status, headers, _ = _post(server.port, good, "bad id with spaces")
        assert status == 200 and headers["x-request-id"] != "bad id with spaces"
    finally:
        server.stop()
    lines = [ln for ln in server.log.read_text().splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # every line, the "serving" line too
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["message"].startswith("serving iris_mlp on") for r in records)
    by_id = {r.get("request_id"): r for r in records}
    assert "client-req-42" in by_id and made in by_id  # the access lines of both requests
    text = server.log.read_text()
    logits = answer["outputs"][0]["data"]
    assert "5.123456" not in text and "3.654321" not in text and repr(logits[0]) not in text


def test_formatter_fields():
    import logging

    rec = logging.LogRecord("verinfer.server", logging.ERROR, __file__, 1, "failed %s", ("x",), None)
    token = REQUEST_ID.set("abc")
    try:
        out = json.loads(JsonFormatter().format(rec))
    finally:
        REQUEST_ID.reset(token)
    assert out["message"] == "failed x" and out["level"] == "error" and out["request_id"] == "abc"
    assert out["time"].endswith("Z") and "request_id" not in json.loads(JsonFormatter().format(rec))
