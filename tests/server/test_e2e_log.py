"""The receipt log with the real server process: kill -9 under load and restart, and a fork."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import pytest

from testkit.server_process import REPO_ROOT, ServerProcess
from tests.tlog_support import check_history, doc_recipe
from verifier.receipts_v2 import ReceiptV2

pytestmark = pytest.mark.e2e

DIGITS = [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.25] * 64}]


def _get(s: ServerProcess):
    def get(path: str):
        with urllib.request.urlopen(s.base + path, timeout=30) as r:
            body = r.read().decode()
            return body if r.headers.get_content_type() == "text/plain" else json.loads(body)
    return get


async def _load(port: int, seconds: float, clients: int, results: list, on_start=None) -> None:
    """Keep-alive clients posting as fast as answered; (status, body) into ``results``; a
    connection that breaks (the server was killed) ends its client."""
    async def client(k: int, stop: float) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        body = json.dumps({"id": f"c{k}", "inputs": DIGITS}).encode()
        request = (b"POST /v2/models/digits_cnn/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        try:
            while time.monotonic() < stop:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                results.append((int(head[9:12]), json.loads(await reader.readexactly(length))))
        except (OSError, asyncio.IncompleteReadError):
            pass
        writer.close()

    stop = time.monotonic() + seconds
    tasks = [asyncio.create_task(client(k, stop)) for k in range(clients)]
    if on_start is not None:
        await on_start()
    await asyncio.wait_for(asyncio.gather(*tasks), seconds + 60)


def test_kill9_under_load_then_restart_keeps_every_receipt_and_one_history(tmp_path):
    home = tmp_path / "home"
    s = ServerProcess(home, "--max-batch-size", "16").wait_ready()
    results: list = []

    async def kill_soon() -> None:
        # once enough answers are out (not after a fixed time: a loaded machine answers fewer
        # in any given second), with requests still in flight
        end = time.monotonic() + 50
        while sum(status == 200 for status, _ in results) <= 60 and time.monotonic() < end:
            await asyncio.sleep(0.02)
        s.kill9()  # the server process; its receipt worker sees the socket close and exits

    try:
        asyncio.run(_load(s.port, 60.0, 32, results, kill_soon))  # the kill ends every client
    finally:
        s.kill9()
    received = [body["parameters"]["receipt"] for status, body in results if status == 200]
    assert len(received) > 50, "too few answers before the kill: the test did not test it"

    s2 = ServerProcess(home, "--max-batch-size", "16").wait_ready()
    try:
        get = _get(s2)
        jwks = get("/.well-known/jwks.json")
        after: list = []
        asyncio.run(_load(s2.port, 1.0, 8, after))
        assert after and all(status == 200 for status, _ in after)
        # every receipt a client received verifies, is stored, and every checkpoint handed out
        # before the kill is consistent with the log after it (consistency proofs from s2)
        n = check_history(get, jwks, received + [b["parameters"]["receipt"] for _, b in after])
        assert n > 1
        for text in received[:: max(1, len(received) // 20)]:
            r = ReceiptV2.parse(text)
            assert ReceiptV2.parse(get(f"/v1/receipts/{r.id}")) == r
        last_before = max(ReceiptV2.parse(t).index for t in received)
        assert min(ReceiptV2.parse(b["parameters"]["receipt"]).index for _, b in after) > last_before
        # and the standalone recipe agrees
        recipe, key = doc_recipe(), get("/v1/keys")["log"]["note_keys"][0]
        recipe(get(f"/v1/receipts/{ReceiptV2.parse(received[0]).id}?fresh=1"), key)
    finally:
        s2.stop()


def test_a_server_showing_another_history_fails_the_audit(tmp_path):
    """The same keys and origin, another log file: what a fork looks like to an auditor."""
    home = tmp_path / "home"
    env = {"VERINFER_LOG_ORIGIN": "fork.test/log"}
    s = ServerProcess(home, env=env).wait_ready()
    try:
        ours: list = []
        asyncio.run(_load(s.port, 0.5, 4, ours))
        jwks = _get(s)("/.well-known/jwks.json")
    finally:
        s.stop()
    receipts = tmp_path / "receipts.jsonl"
    receipts.write_text("".join(b["parameters"]["receipt"] + "\n" for status, b in ours if status == 200))
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))

    def audit(base: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "verifier.cli", "audit", str(receipts), "--keys",
                               str(tmp_path / "jwks.json"), "--log", base, "--origin", "fork.test/log"],
                              capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)

    s2 = ServerProcess(home, env=env).wait_ready()  # the same log: one history
    try:
        asyncio.run(_load(s2.port, 0.3, 2, []))
        r = audit(s2.base)
        assert r.returncode == 0, r.stderr
    finally:
        s2.stop()
    forked = ServerProcess(home, env={**env, "VERINFER_LOG_DB": str(tmp_path / "other.sqlite3")}).wait_ready()
    try:
        asyncio.run(_load(forked.port, 0.5, 4, []))  # it grows past what the receipts saw
        r = audit(forked.base)
        assert r.returncode == 1, r.stderr
        fork = [ln for ln in r.stderr.splitlines() if ln.startswith("FAIL") and "fork" in ln]
        assert fork and all(ln.count("checkpoint fork.test/log size") == 2 for ln in fork), r.stderr
    finally:
        forked.stop()
