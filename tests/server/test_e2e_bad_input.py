"""Every kind of bad input gets a 4xx with {"error": ...} from the real server, which keeps serving."""

from __future__ import annotations

import http.client
import json

import pytest

pytestmark = pytest.mark.e2e

GOOD = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}


def post(server, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def with_input(**changes) -> bytes:
    inp = {**GOOD["inputs"][0], **changes}
    inp = {k: v for k, v in inp.items() if v is not None}
    return json.dumps({"inputs": [inp]}).encode()


IRIS = "/v2/models/iris_mlp/infer"
CASES = [
    ("unknown model", "/v2/models/nope/infer", json.dumps(GOOD).encode(), 404, "unknown model 'nope'"),
    ("unknown version", "/v2/models/iris_mlp/versions/7/infer", json.dumps(GOOD).encode(), 404, "no version '7'"),
    ("malformed JSON", IRIS, b'{"inputs": [', 400, "malformed JSON"),
    ("not an object", IRIS, b"[1, 2]", 400, "JSON object"),
    ("missing inputs", IRIS, b"{}", 400, "missing field 'inputs'"),
    ("missing data", IRIS, with_input(data=None), 400, "missing field 'data'"),
    ("missing shape", IRIS, with_input(shape=None), 400, "missing field 'shape'"),
    ("missing datatype", IRIS, with_input(datatype=None), 400, "missing field 'datatype'"),
    ("wrong input name", IRIS, with_input(name="x"), 400, "unknown input 'x'"),
    ("wrong shape", IRIS, with_input(shape=[1, 5], data=[1, 2, 3, 4, 5]), 400, "does not match the model's"),
    ("wrong rank", IRIS, with_input(shape=[4]), 400, "does not match the model's"),
    ("data/shape count", IRIS, with_input(shape=[2, 4]), 400, "needs 8"),
    ("ragged data", IRIS, with_input(data=[[1, 2], [3]]), 400, "not a (nested) list of numbers"),
    ("strings in data", IRIS, with_input(data=["a", "b", "c", "d"]), 400, "not a (nested) list of numbers"),
    ("booleans among numbers", IRIS, with_input(data=[True, 2, 4, 1]), 400, "not a (nested) list of numbers"),
    ("a nested boolean", IRIS, with_input(data=[[6.1, 2.8, 4.7, False]]), 400, "not a (nested) list of numbers"),
    ("nesting against shape", IRIS, with_input(data=[[6.1, 2.8], [4.7, 1.2]]), 400, "nested as [2, 2], not as shape [1, 4]"),
    ("unknown datatype", IRIS, with_input(datatype="FLOAT"), 400, "unknown datatype 'FLOAT'"),
    ("BYTES datatype", IRIS, with_input(datatype="BYTES"), 400, "datatype BYTES not accepted (model expects FP32)"),
    ("FP16 datatype", IRIS, with_input(datatype="FP16"), 400, "datatype FP16 not accepted (model expects FP32)"),
    ("BOOL datatype", IRIS, with_input(datatype="BOOL"), 400, "not accepted"),
    ("fractional INT", IRIS, with_input(datatype="INT32", data=[1.5, 2, 3, 4]), 400, "must be integers"),
    ("INT8 overflow", IRIS, with_input(datatype="INT8", data=[300, 2, 3, 4]), 400, "out of range"),
    ("FP32 overflow", IRIS, with_input(data=[1e300, 2, 3, 4]), 400, "out of range for FP32"),
    ("too large to commit to", IRIS, with_input(data=[1e30, 2, 3, 4]), 400, "too large for the fixed-point"),
    ("NaN", IRIS, b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[NaN,1,2,3]}]}', 400, "NaN or infinity"),
    ("Infinity", IRIS, b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,Infinity,2,3]}]}', 400, "NaN or infinity"),
    ("-Infinity", IRIS, b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP64","data":[1,-Infinity,2,3]}]}', 400, "NaN or infinity"),
    ("zero batch", IRIS, with_input(shape=[0, 4], data=[]), 400, "batch size"),
    ("two inputs", IRIS, json.dumps({"inputs": GOOD["inputs"] * 2}).encode(), 400, "exactly 1 input"),
    ("unknown output", IRIS, json.dumps({**GOOD, "outputs": [{"name": "probs"}]}).encode(), 400, "unknown output 'probs'"),
    ("non-utf8", IRIS, b"\xff\xfe{", 400, "malformed JSON"),
]


@pytest.mark.parametrize("what,path,body,status,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_4xx(server, what, path, body, status, needle):
    got, reply = post(server, path, body)
    assert got == status, reply
    assert set(reply) == {"error"} and needle in reply["error"], reply
    assert "Traceback" not in reply["error"]


MAX_BODY = 65536  # the `server` fixture's VERINFER_MAX_BODY_BYTES


def big_body() -> bytes:
    data = [1.0] * (MAX_BODY // 4)
    return json.dumps({"inputs": [{"name": "input", "shape": [len(data) // 4, 4], "datatype": "FP32", "data": data}]}).encode()


def test_body_over_limit_is_413(server):
    body = big_body()
    assert len(body) > MAX_BODY
    status, reply = post(server, IRIS, body)
    assert status == 413 and "over the limit" in reply["error"]


def test_chunked_body_over_limit_is_413(server):
    body = big_body()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    chunks = (body[i : i + 8192] for i in range(0, len(body), 8192))
    try:
        conn.request("POST", IRIS, body=chunks, encode_chunked=True,
                     headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before the last chunk
    r = conn.getresponse()
    assert r.status == 413 and "over the limit" in json.loads(r.read())["error"]
    conn.close()


def test_bad_input_does_not_fail_its_batch(server):
    """An input the receipt cannot commit to is refused alone, before batching: the
    requests batched with it still get their receipts."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [with_input(data=[1e30, 2, 3, 4]) if k == 5 else json.dumps(GOOD).encode() for k in range(16)]
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda body: post(server, IRIS, body), bodies))
    assert [status for status, _ in replies] == [400 if k == 5 else 200 for k in range(16)], replies
    assert all("receipt" in reply["parameters"] for status, reply in replies if status == 200)


def test_server_keeps_serving_after_bad_input(server):
    """Self-contained: every bad input of CASES sent here first (before, this test relied on
    running after test_bad_input_gets_4xx on the shared server, and alone it checked nothing
    about bad input)."""
    for what, path, body, status, _ in CASES:
        assert post(server, path, body)[0] == status, what
    status, reply = post(server, IRIS, json.dumps(GOOD).encode())
    assert status == 200 and reply["outputs"][1]["data"] == [0]


def test_unknown_route_and_method(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/v2/models/iris_mlp/infer")
    r = conn.getresponse()
    assert r.status == 405 and "error" in json.loads(r.read())
    conn.request("GET", "/v1/receipts/0xdead")
    r = conn.getresponse()
    assert r.status == 404 and "no receipt" in json.loads(r.read())["error"]
    conn.request("HEAD", "/v2/health/ready")  # a load balancer's check: GET's headers, no body
    r = conn.getresponse()
    assert r.status == 200 and r.read() == b"" and r.getheader("content-length") == str(len(b'{"ready":true}'))
    conn.request("GET", "/v2/health/live")  # the connection is still in step after it
    assert json.loads(conn.getresponse().read()) == {"live": True}
    conn.close()


def test_a_second_server_on_a_busy_port_or_a_written_log_exits_2_in_one_line(server, cli, tmp_path):
    """``verinfer serve`` (one process) where it cannot run: a port in use, or a data dir whose
    receipt log another server writes. One line, exit 2, no "serving" line; the first keeps serving."""
    from testkit.server_process import free_port

    r = cli(tmp_path / "other-home", "serve", "--port", str(server.port))
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = cli(server.home, "serve", "--port", str(free_port()))
    assert r.returncode == 2 and "another verinfer server writes the receipt log" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert post(server, IRIS, json.dumps(GOOD).encode())[0] == 200


def test_a_refused_start_with_json_logs_is_one_json_log_line(server, cli, tmp_path):
    """With ``VERINFER_LOG_FORMAT=json`` a start refused for a port in use is, like every other
    line of the server, a JSON log record (level error), with or without ``--workers``; it was
    the plain ``verinfer: error: ...`` line that a log shipper reading JSON could not parse."""
    for workers in ("1", "2"):
        r = cli(tmp_path / f"other-home-{workers}", "serve", "--port", str(server.port),
                "--workers", workers, env={"VERINFER_LOG_FORMAT": "json"})
        (line,) = r.stderr.strip().splitlines()
        record = json.loads(line)
        assert r.returncode == 2 and record["level"] == "error", (workers, r.stderr)
        assert "cannot listen on 127.0.0.1" in record["message"], (workers, r.stderr)


def test_serve_workers_on_a_home_whose_log_a_one_process_server_writes_exits_2_in_one_line(server, cli):
    """``serve --workers 2`` on the home of a running one-process server (which holds no
    ``run/supervisor.lock``): refused before its writer waits a minute for the log's lock and
    dies with a traceback (exit 1)."""
    from testkit.server_process import free_port

    r = cli(server.home, "serve", "--workers", "2", "--port", str(free_port()))
    assert r.returncode == 2 and "another verinfer server writes the receipt log" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert post(server, IRIS, json.dumps(GOOD).encode())[0] == 200


def test_a_log_origin_other_than_the_logs_exits_2_in_one_line(start_server, cli, tmp_path):
    """``VERINFER_LOG_ORIGIN`` other than the existing log's (fixed when it was made): refused
    at start in one line, exit 2, with or without ``--workers``; before, the receipt writer
    failed the start with a traceback (uvicorn's exit 3; exit 1 with ``--workers``)."""
    from testkit.server_process import free_port

    home = tmp_path / "home"
    start_server(home, env={"VERINFER_LOG_ORIGIN": "example.com/first"}).stop()
    for workers in ("1", "2"):
        r = cli(home, "serve", "--port", str(free_port()), "--workers", workers,
                env={"VERINFER_LOG_ORIGIN": "example.com/second"})
        assert r.returncode == 2 and "has origin 'example.com/first'" in r.stderr, (workers, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_relayer_rpc_without_its_oracle_exits_2_in_one_line(cli, tmp_path):
    """``VERINFER_RELAY_RPC`` without ``VERINFER_RELAY_ORACLE`` (or the other way round): the
    server started with no relayer and said nothing, so on-chain requests went unanswered."""
    for env in ({"VERINFER_RELAY_RPC": "http://127.0.0.1:8545"},
                {"VERINFER_RELAY_ORACLE": "0x" + "11" * 20}):
        r = cli(tmp_path / "home", "serve", "--port", "0", env=env, timeout=60)  # else: it serves
        assert r.returncode == 2 and "relay_rpc and relay_oracle go together" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_ray_address_without_the_ray_executor_exits_2_in_one_line(cli, tmp_path):
    """``--ray-address`` (``VERINFER_RAY_ADDRESS``) without ``--prover-executor ray``: the
    server proved on local workers, joined no cluster, and said nothing."""
    r = cli(tmp_path / "home", "serve", "--port", "0", "--ray-address", "127.0.0.1:6379", timeout=60)
    assert r.returncode == 2 and "ray_address is for prover_executor 'ray'" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_store_path_that_cannot_be_made_exits_2_in_one_line(cli, tmp_path):
    """``VERINFER_RECEIPTS_DB`` / ``VERINFER_LOG_DB`` under a file (or anywhere a folder cannot
    be made): one line naming the path, exit 2, with or without ``--workers``; before, a
    traceback and exit 1."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for workers in ("1", "2"):
        for var in ("VERINFER_RECEIPTS_DB", "VERINFER_LOG_DB"):
            r = cli(tmp_path / "home", "serve", "--port", "0", "--workers", workers,
                    env={var: str(blocker / "store.sqlite3")}, timeout=60)
            assert r.returncode == 2 and f"cannot start: {blocker}" in r.stderr, (workers, var, r.stderr)
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
