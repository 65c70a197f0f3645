"""The receipt worker process (server/receipts/worker.py), with the real server process.

Receipts are signed and stored off the event loop; these tests check that every answer
still carries a valid receipt that was stored before the answer was sent, and that a
killed worker fails only what it held (503, never a hang or a 5xx traceback) and is
replaced.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.tlog_support import check_history
from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2

pytestmark = pytest.mark.e2e

DIGITS = [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.25] * 64}]


def _post(base: str, k: int) -> tuple[int, dict]:
    body = json.dumps({"id": f"c{k}", "inputs": DIGITS}).encode()
    req = urllib.request.Request(base + "/v2/models/digits_cnn/infer", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _concurrently(base: str, n: int) -> list[tuple[int, dict]]:
    out: list = [None] * n

    def one(k: int) -> None:
        out[k] = _post(base, k)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(o is not None for o in out), "a request hung"
    return out


def _check(server, status: int, resp: dict, jwks: dict) -> None:
    assert status == 200, resp
    receipt = ReceiptV2.parse(resp["parameters"]["receipt"])
    st = verify_receipt_v2(receipt, jwks)
    assert st.predicate.clientRequestId == resp["id"]
    assert resp["parameters"]["receipt_id"] == receipt.id
    assert st.predicate.label == resp["parameters"]["label"]


def _get(s):
    """GET a server path: JSON, or the text of a text/plain answer (a checkpoint)."""
    def get(path: str):
        with urllib.request.urlopen(s.base + path, timeout=30) as r:
            body = r.read().decode()
            return body if r.headers.get_content_type() == "text/plain" else json.loads(body)
    return get


@pytest.fixture
def worker_server(tmp_path, start_server):
    return start_server(tmp_path / "home", "--max-batch-size", "16")


def test_every_answer_is_signed_and_stored_before_it_is_sent(worker_server):
    s = worker_server
    jwks = s.get("/.well-known/jwks.json")
    for status, resp in [_post(s.base, 0)] + _concurrently(s.base, 48):  # alone, then in batches
        _check(s, status, resp, jwks)
        stored = s.get(f"/v1/receipts/{resp['parameters']['receipt_id']}")  # no wait: already committed
        assert stored == json.loads(resp["parameters"]["receipt"])


def test_a_killed_receipt_worker_fails_what_it_held_and_is_replaced(worker_server):
    s = worker_server
    jwks = s.get("/.well-known/jwks.json")
    (worker,) = s.children(b"server.receipts.worker")
    results: list = []

    async def client(k: int, stop: float) -> None:  # keep-alive HTTP/1.1, as fast as it answers
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        body = json.dumps({"id": f"c{k}", "inputs": DIGITS}).encode()
        request = (b"POST /v2/models/digits_cnn/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        while time.monotonic() < stop:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            results.append((int(head[9:12]), json.loads(await reader.readexactly(length))))
        writer.close()

    async def load_and_kill() -> None:  # keeps requests in flight through the kill
        stop = time.monotonic() + 2.5
        clients = [asyncio.create_task(client(k, stop)) for k in range(64)]
        await asyncio.sleep(0.5)
        os.kill(worker, signal.SIGSTOP)  # freeze it with chunks in flight (they wait)...
        await asyncio.sleep(0.5)
        os.kill(worker, signal.SIGKILL)  # ...then kill it: those chunks must fail, not hang
        await asyncio.wait_for(asyncio.gather(*clients), 90)  # none hangs

    asyncio.run(load_and_kill())
    refused = [resp for status, resp in results if status != 200]
    assert refused, "no request was in flight at the kill: the test did not test it"
    for status, resp in results:  # each one either answered with a receipt or refused cleanly
        if status == 200:
            _check(s, status, resp, jwks)
        else:
            assert status == 503 and "receipt signer" in resp["error"], (status, resp)
    # the replacement writer carries on the same log: every receipt handed out still verifies
    # against the log's latest checkpoint, and each of its checkpoints is consistent with it

    end = time.monotonic() + 60
    while True:  # a new worker comes up and answers are signed again
        status, resp = _post(s.base, 999)
        if status == 200 or time.monotonic() > end:
            break
        time.sleep(0.2)
    _check(s, status, resp, jwks)
    for status, resp in _concurrently(s.base, 32):
        _check(s, status, resp, jwks)
    (replacement,) = s.children(b"server.receipts.worker")
    answered = [resp["parameters"]["receipt"] for status, resp in results if status == 200]
    assert check_history(_get(s), jwks, answered) > 1
    assert replacement != worker
    assert "receipt signer exited" in s.output()


def test_a_script_without_a_main_guard_serves_once(tmp_path):
    """The worker is `python -m server.receipts.worker`, not multiprocessing's spawn, which would
    re-run an importing script's top level (and so start a second app) in the child."""
    import subprocess
    import sys

    script = tmp_path / "embed.py"
    script.write_text(
        "import json\n"
        "from fastapi.testclient import TestClient\n"
        "from server.http.app import create_app\n"
        "from server.settings import ServerSettings\n"
        "print('top level ran', flush=True)\n"
        "with TestClient(create_app(ServerSettings(models=('iris_mlp',))), base_url='http://127.0.0.1') as client:\n"
        "    r = client.post('/v2/models/iris_mlp/infer', json={'inputs': [{'name': 'input', 'shape': [1, 4],\n"
        "        'datatype': 'FP32', 'data': [6.7, 3.0, 5.2, 2.3]}]})\n"
        "    print(r.status_code, 'receipt' in r.json()['parameters'], flush=True)\n"
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "VERINFER_HOME": str(tmp_path / "home")}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["top level ran", "200 True"], r.stdout
