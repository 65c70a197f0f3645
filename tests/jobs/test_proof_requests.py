"""Proof requests per client (proof job store v2), in process with the real iris_mlp package and
access control on: a second client asking for the same proof gets its own handle, receipt and
callback; per-key quotas; the relayer's reserved share of the queue; a bound on sync waiters.
No prover runs (proof_workers=0): jobs stay queued, or are finished by hand."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.auth import RELAYER, ApiKeyStore, Tier
from server.http.app import create_app
from server.settings import ServerSettings
from server.shared import Shared

pytestmark = [pytest.mark.ezkl]

TIERS = {"p": Tier(rate_per_s=1000, burst=1000, proofs=True, max_queued_proofs=2)}
HOOK = "http://127.0.0.1:9/hooks/"  # allow-listed; never called here (no job ends by a worker)


def body(x: list[float], callback: str | None = None) -> dict:
    b = {"model": "iris_mlp", "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": x}]}
    return {**b, "callback_url": callback} if callback else b


A, B, C, D = ([5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3], [5.0, 3.4, 1.5, 0.2])


@pytest.fixture
def world(new_home):
    home = new_home()
    settings = ServerSettings(home=home, models=("iris_mlp",), auth="on", tiers=TIERS, proof_workers=0,
                              max_queued_proofs=4, callback_allow=(HOOK,), max_sync_proof_waiters=0)
    assert settings.public_proof_queue == 3  # one of four kept for the relayer
    store = ApiKeyStore(settings.apikeys_path)
    keys = {name: {"Authorization": f"Bearer {store.create('p', name)[1]}"} for name in ("alice", "bob", "carol")}
    with TestClient(create_app(settings)) as client:
        yield client, keys, client.app.state.jobs
    store.close()


def test_a_second_client_gets_its_own_handle_receipt_and_callback(world):
    client, keys, jobs = world
    a = client.post("/v1/proofs", json=body(A, HOOK + "alice"), headers=keys["alice"])
    b = client.post("/v1/proofs", json=body(A, HOOK + "bob"), headers=keys["bob"])
    assert a.status_code == b.status_code == 202
    a, b = a.json(), b.json()
    assert a["id"] != b["id"] and a["input_digest"] == b["input_digest"]  # one proof, two handles
    assert a["receipt_id"] != b["receipt_id"]  # each its own answer and receipt
    assert a["callback"]["url"].endswith("alice") and b["callback"]["url"].endswith("bob")
    seen_by_bob = client.get(f"/v1/proofs/{b['id']}", headers=keys["bob"]).json()
    assert a["receipt_id"] not in str(seen_by_bob) and "alice" not in str(seen_by_bob)
    assert jobs.store.job_of(a["id"]) == jobs.store.job_of(b["id"]) == a["id"]  # the first handle is the job
    assert client.get("/v1/proofs", headers=keys["bob"]).json()["jobs"] == {"queued": 1}
    again = client.post("/v1/proofs", json=body(A), headers=keys["alice"]).json()
    assert again["id"] == a["id"] and again["receipt_id"] == a["receipt_id"]  # alice's own, no new receipt
    # the job ends: each request's callback is due, with what that client may see
    jobs.store.claim("w", 30)
    assert jobs.store.finish(a["id"], "proven", '{"bundle": 1}')
    due = {v.id: v for v, _ in jobs.store.callbacks_due()}
    assert set(due) == {a["id"], b["id"]}
    assert due[b["id"]].receipt_id == b["receipt_id"] and due[b["id"]].callback_url.endswith("bob")
    assert due[b["id"]].public()["bundle_url"] == f"/v1/proofs/{b['id']}/bundle"
    assert client.get(f"/v1/proofs/{b['id']}/bundle", headers=keys["bob"]).json() == {"bundle": 1}


def test_per_key_quota_public_share_and_the_relayers_reserve(world):
    client, keys, jobs = world
    for x in (A, B):
        assert client.post("/v1/proofs", json=body(x), headers=keys["alice"]).status_code == 202
    r = client.post("/v1/proofs", json=body(C), headers=keys["alice"])
    assert r.status_code == 429 and "its tier's limit" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
    assert client.post("/v1/proofs", json=body(C), headers=keys["bob"]).status_code == 202  # bob's own quota
    r = client.post("/v1/proofs", json=body(D), headers=keys["carol"])  # three active: the public share
    assert r.status_code == 429 and "queue is full (3 jobs" in r.json()["error"]
    # the relayer's on-chain request still finds room (the reserved fourth)
    view, how = jobs.submit_x("iris_mlp", np.asarray([D], dtype=np.float32), None, None, client=RELAYER)
    assert how == "new" and view.status == "queued"
    assert client.get("/v1/proofs", headers=keys["bob"]).json()["jobs"] == {"queued": 4}
    # joining a job already queued takes no place in the queue, only in the client's quota
    assert client.post("/v1/proofs", json=body(A), headers=keys["bob"]).status_code == 202  # bob: C and A
    assert client.post("/v1/proofs", json=body(B), headers=keys["bob"]).status_code == 429  # a third: over
    # once jobs end, their clients may queue others (A and B end: alice's two, one public place)
    for _ in range(2):
        job, _spec = jobs.store.claim("w", 30)
        jobs.store.finish(job.id, "proven", "{}")
    assert client.post("/v1/proofs", json=body([4.9, 3.0, 1.4, 0.2]), headers=keys["alice"]).status_code == 202


def test_a_proof_refused_for_room_costs_no_answer_and_no_receipt(world):
    """A full queue or a spent quota is a 429 before the answer is signed: nothing is logged
    for it (before, each refused retry added a receipt nobody saw to the store and the log).
    A proof the queue already holds takes no room: joining it is no refusal."""
    client, keys, _jobs = world

    def logged() -> int:
        return int(client.get("/v1/log/checkpoint", headers=keys["bob"]).text.split("\n")[1])

    def infer(x, who):
        return client.post("/v2/models/iris_mlp/infer", headers=keys[who],
                           json={"inputs": body(x)["inputs"], "parameters": {"proof": "async"}})

    for x in (A, B):
        assert client.post("/v1/proofs", json=body(x), headers=keys["alice"]).status_code == 202
    n = logged()
    for r in (client.post("/v1/proofs", json=body(C), headers=keys["alice"]), infer(C, "alice")):
        assert r.status_code == 429 and "its tier's limit" in r.json()["error"], r.text
    assert client.post("/v1/proofs", json=body(C), headers=keys["bob"]).status_code == 202
    for r in (client.post("/v1/proofs", json=body(D), headers=keys["carol"]), infer(D, "carol")):
        assert r.status_code == 429 and "queue is full" in r.json()["error"], r.text
    assert logged() == n + 1  # bob's answer alone
    joined = infer(A, "carol")  # queued already: carol's own answer and handle, no room taken
    assert joined.status_code == 200 and joined.json()["parameters"]["proof_status"] == "queued"
    assert logged() == n + 2


def test_sync_waiters_are_bounded(world):
    """Past the waiters' bound a sync request is refused before it is answered: no receipt
    signed, no job queued that the client was given no id of."""
    client, keys, _jobs = world
    before = client.get("/v1/log/checkpoint", headers=keys["alice"]).text
    r = client.post("/v2/models/iris_mlp/infer", json={"inputs": body(A)["inputs"], "parameters": {"proof": "sync"}},
                    headers=keys["alice"])
    assert r.status_code == 429 and "already wait" in r.json()["error"]
    assert client.get("/v1/log/checkpoint", headers=keys["alice"]).text == before
    assert client.get("/v1/proofs", headers=keys["alice"]).json()["jobs"] == {}


def test_sync_waiters_are_bounded_for_the_whole_server(new_home):
    """serve --workers: a place taken by a request waiting in another process counts here too;
    once it leaves, a request here may wait (and answers with its job when the proof is not ready)."""
    home = new_home()
    settings = ServerSettings(home=home, models=("iris_mlp",), proof_workers=0, max_sync_proof_waiters=1,
                              sync_proof_timeout_s=0.5)
    (home / "run").mkdir()
    other = Shared(home / "run", 1, 2).waiters()  # process 1 of 2
    assert other.enter(1)  # a request there waits for its proof
    sync = {"inputs": body(A)["inputs"], "parameters": {"proof": "sync"}}
    with TestClient(create_app(settings, shared=Shared(home / "run", 0, 2)), base_url="http://127.0.0.1") as client:
        r = client.post("/v2/models/iris_mlp/infer", json=sync)
        assert r.status_code == 429 and "already wait" in r.json()["error"]
        other.leave()
        r = client.post("/v2/models/iris_mlp/infer", json=sync)
        assert r.status_code == 200 and r.json()["parameters"]["proof_job_id"], r.json()
    assert other.total() == 0


def test_a_proof_asked_with_an_escaped_key_is_a_proof_asked(world):
    """JSON may spell a key with escapes (``"pro\\u006ff"`` is ``"proof"``). The cheap look for
    ``"proof"`` in the body missed it: the answer came without its job, the proof silently not
    asked for (and the proofs check not run). Any ``\\u`` escape now sends the body to the parser."""
    client, keys, _jobs = world
    import json

    raw = json.dumps({"inputs": body(B)["inputs"], "parameters": {"proof": "async"}}).replace(
        '"proof"', '"pro\\u006ff"')
    r = client.post("/v2/models/iris_mlp/infer", content=raw, headers={**keys["alice"],
                                                                       "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    params = r.json()["parameters"]
    assert params["proof_status"] == "queued" and params["proof_job_id"], params
