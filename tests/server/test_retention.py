"""Retention (issue 15): stored receipts and inputs are pruned by age or count, by the receipt
writer and by `verinfer receipts prune`; a pruned receipt a client kept still verifies against
the log (its inclusion proof, and a fresh one from the log API)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

from fastapi.testclient import TestClient

from server.http.app import create_app
from server.receipts.store import ReceiptStore
from server.settings import ServerSettings
from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2
from verifier.tlog import NoteVerifier, leaf_hash, verify_checkpoint, verify_inclusion

IRIS = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}


def test_prune_by_age_and_count_takes_the_inputs_along(tmp_path):
    store = ReceiptStore(tmp_path / "r.sqlite3")
    rows = [(f"0x{i:064x}", "m", float(i), "BODY") for i in range(10)]
    store.put_many(rows, [(rid, "FP32", "[1,4]", b"x") for rid, *_ in rows])
    assert store.prune(before=3.0) == 3 and store.count() == 7
    assert store.get_input(rows[2][0]) is None and store.get_input(rows[3][0]) is not None
    assert store.prune(keep=2) == 5 and store.count() == 2
    assert [store.get(rid) for rid, *_ in rows[8:]] == ["BODY", "BODY"]
    assert store.get_input(rows[7][0]) is None and store.get_input(rows[9][0]) is not None
    assert store.prune(before=0.0, keep=5) == 0
    store.close()


def _answer(client) -> tuple[str, dict]:
    params = client.post("/v2/models/iris_mlp/infer", json=IRIS).json()["parameters"]
    return params["receipt_id"], json.loads(params["receipt"])


def test_pruned_receipts_still_verify_against_the_log(tmp_path):
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), receipt_retention_max=1,
                              receipt_prune_interval_s=0, log_origin="test.verinfer/log")
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        kept = [_answer(client) for _ in range(3)]
        keys = client.get("/v1/keys").json()
        note_keys = client.get("/.well-known/verinfer-log.json").json()["note_keys"]
        # the writer keeps the newest only (pruning right after its answers go out): the older
        # two are no longer served by id
        end = time.monotonic() + 20
        while (codes := [client.get(f"/v1/receipts/{rid}").status_code for rid, _ in kept]) != [404, 404, 200]:
            assert time.monotonic() < end, codes
            time.sleep(0.05)
        r = client.post("/v1/proofs", json={"receipt_id": kept[0][0]})
        assert r.status_code == 404, r.text  # no stored receipt to prove from
        # the kept one is found, and goes on to the next check (this home has no package):
        # a 409 alone would not tell a pruned receipt from a kept one
        r = client.post("/v1/proofs", json={"receipt_id": kept[2][0]})
        assert r.status_code == 409 and "no circuit package" in r.json()["error"], r.text
        latest = client.get("/v1/log/checkpoint").text
        for _rid, doc in kept:  # what the clients kept verifies, now and against the latest tree
            receipt = ReceiptV2.parse(doc)
            verify_receipt_v2(receipt, keys["jwks"], origin="test.verinfer/log")
            cp = verify_checkpoint(latest, [NoteVerifier.parse(k) for k in note_keys])
            fresh = client.get("/v1/log/proof/inclusion", params={"index": receipt.index, "size": cp.size}).json()
            verify_inclusion(receipt.index, cp.size, leaf_hash(base64.b64decode(receipt.statement)),
                             [base64.b64decode(h) for h in fresh["proof"]], cp.root)
    env = {**os.environ, "VERINFER_HOME": str(tmp_path)}
    cli = [sys.executable, "-m", "verifier.cli", "receipts", "prune"]
    done = subprocess.run([*cli, "--older-than", "0"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "1 stored receipts pruned, 0 kept" in done.stderr, done.stderr
    bad = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--older-than" in bad.stderr
    for what in ("receipts", "proofs"):  # nan (and inf) pruned nothing and said OK
        for value in ("nan", "inf", "-1"):
            bad = subprocess.run([*cli[:-2], what, "prune", "--older-than", value], env=env,
                                 capture_output=True, text=True, timeout=120)
            assert bad.returncode == 2 and bad.stderr.count("\n") == 1, (what, value, bad.stderr)
            assert "--older-than must be a number of seconds >= 0" in bad.stderr, bad.stderr


def test_prune_vacuum_gives_the_space_back_with_the_server_stopped(tmp_path):
    """A prune frees pages that SQLite keeps for reuse: the file stays as large. ``--vacuum``
    gives them back, and is refused while a server holds the data dir (the rewrite would stall
    its answers)."""
    from server.receipts.translog import writer_lock

    settings = ServerSettings(home=tmp_path)
    store = ReceiptStore(settings.receipts_path)
    store.put_many([(f"0x{i:064x}", "m", float(i), "x" * 3000) for i in range(3000)])
    store.checkpoint()
    store.close()

    def on_disk() -> int:
        path = settings.receipts_path
        return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())

    env = {**os.environ, "VERINFER_HOME": str(tmp_path)}
    cli = [sys.executable, "-m", "verifier.cli", "receipts", "prune"]
    full = on_disk()
    assert full > 8 * 2**20
    done = subprocess.run([*cli, "--keep", "10"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "2990 stored receipts pruned, 10 kept" in done.stderr, done.stderr
    assert on_disk() >= full  # freed, not given back
    settings.log_path.parent.mkdir(parents=True, exist_ok=True)
    settings.log_path.touch()
    lock = writer_lock(settings.log_path, 0.0)  # as a running server's receipt writer holds it
    try:
        busy = subprocess.run([*cli, "--vacuum"], env=env, capture_output=True, text=True, timeout=120)
    finally:
        lock.close()
    assert busy.returncode == 2 and busy.stderr.count("\n") == 1 and "stop the server first" in busy.stderr
    assert on_disk() >= full
    done = subprocess.run([*cli, "--vacuum"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "0 stored receipts pruned, 10 kept; store " in done.stderr, done.stderr
    assert on_disk() < full / 10
    store = ReceiptStore(settings.receipts_path)  # what was kept is still there
    assert store.count() == 10 and store.get(f"0x{2999:064x}") == "x" * 3000
    store.close()
