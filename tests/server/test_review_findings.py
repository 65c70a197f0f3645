"""Flaws an adversarial review of the server found (each failed before its fix)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from fastapi.testclient import TestClient

from server.auth import ApiKeyStore, Tier
from server.http.app import create_app
from server.proofs.jobs import Circuit
from server.settings import ServerSettings
from server.siwe import make_message

IRIS_IN = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
IRIS = {"inputs": [IRIS_IN]}


def _assert_client_error(r):
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert set(r.json()) == {"error"}


@pytest.fixture
def open_client(tmp_path):
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), proof_workers=0)
    with TestClient(create_app(settings), base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def auth_client(tmp_path):
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), auth="on", proof_workers=0,
                              max_body_bytes=1024, tiers={"small": Tier()}, siwe_domain="testserver")
    wallet = Account.create()
    store = ApiKeyStore(settings.apikeys_path)
    store.add_wallet(wallet.address, "small", "alice")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c, store, wallet
    store.close()


@pytest.fixture
def prover_world(tmp_path):
    """Access control on, two prover-tier keys, and a stand-in circuit package for iris_mlp
    (jobs.circuit replaced: no EZKL, no prover runs; jobs stay queued)."""
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), auth="on", proof_workers=0,
                              tiers={"p": Tier(rate_per_s=1000, burst=1000, proofs=True)})
    store = ApiKeyStore(settings.apikeys_path)
    keys = {n: {"Authorization": f"Bearer {store.create('p', n)[1]}"} for n in ("alice", "bob")}
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        jobs = c.app.state.jobs
        jobs.circuit = lambda model: Circuit("ab" * 32, jobs.service.model(model).sha256, "FP32", (1, 4))
        yield c, keys, jobs
    store.close()


def _siwe(client, wallet, *, domain="testserver", uri=None, chain="31337", sign=False):
    nonce = client.get("/v1/auth/nonce").json()["nonce"]
    now = datetime.now(UTC)
    text = make_message(domain, wallet.address, uri or f"http://{domain}/", 31337, nonce, now,
                        statement="Sign in.", expiration_time=now + timedelta(minutes=5))
    text = text.replace("Chain ID: 31337", f"Chain ID: {chain}")
    sig = wallet.sign_message(encode_defunct(text=text)).signature.hex() if sign else "00" * 65
    return {"message": text, "signature": "0x" + sig.removeprefix("0x")}


# --- SIWE ------------------------------------------------------------------------------

def test_siwe_chain_id_with_a_unicode_digit_is_a_4xx_not_a_500(auth_client):
    client, _, wallet = auth_client
    r = client.post("/v1/auth/siwe", json=_siwe(client, wallet, chain="\u00b2"))  # '²'.isdigit(), int('²') raises
    _assert_client_error(r)


def test_siwe_uri_that_urlsplit_refuses_is_a_4xx_not_a_500(auth_client):
    client, _, wallet = auth_client
    r = client.post("/v1/auth/siwe", json=_siwe(client, wallet, uri="http://[testserver/"))  # Invalid IPv6 URL
    _assert_client_error(r)


def test_siwe_message_for_another_site_is_refused_whatever_the_host_header(auth_client):
    """Phishing relay: evil.example gets the victim to sign a SIWE message naming evil.example
    (the wallet shows no warning: it is evil's own origin) with a nonce evil fetched from this
    server, then posts it here with 'Host: evil.example'. The domain check compares the
    message with the request's own Host header, so it passes and evil gets a session."""
    client, _, victim = auth_client
    body = _siwe(client, victim, domain="evil.example", sign=True)
    r = client.post("/v1/auth/siwe", json=body, headers={"Host": "evil.example"})
    assert r.status_code == 401, r.text


def test_siwe_body_is_bounded_by_max_body_bytes(auth_client):
    """The one unauthenticated POST route reads and parses a body of any size (FastAPI's own
    body reading): max_body_bytes is only applied on the infer and /v1/proofs routes."""
    client, _, _ = auth_client
    big = json.dumps({"message": "x" * 200_000, "signature": "0x"})
    r = client.post("/v1/auth/siwe", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, (r.status_code, r.text[:200])


# --- infer: outputs ------------------------------------------------------------------------

def test_duplicate_output_names_are_refused_not_amplified(open_client):
    rows, copies = 64, 2000
    body = {"inputs": [{**IRIS_IN, "shape": [rows, 4], "data": [1.0, 2.0, 3.0, 4.0] * rows}],
            "outputs": [{"name": "logits"}] * copies}
    sent = len(json.dumps(body))
    r = open_client.post("/v2/models/iris_mlp/infer", json=body)
    assert r.status_code == 400, f"{sent} bytes in, {len(r.content)} bytes out ({r.status_code})"


# --- infer without signing: a value cast past the model's datatype ---------------------------

def test_fp64_value_past_fp32_range_is_refused_without_signing(tmp_path):
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), proof_workers=0, signing=False)
    with TestClient(create_app(settings), base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        body = {"inputs": [{**IRIS_IN, "datatype": "FP64", "data": [1e39, 1.0, 1.0, 1.0]}]}
        r = client.post("/v2/models/iris_mlp/infer", json=body)
        # today: 200 with "data":[-Infinity,NaN,NaN], which is not JSON
        assert r.status_code == 400, r.text[:300]


def test_receipt_and_log_routes_without_signing_are_409_as_proofs_are(tmp_path):
    # the request is well formed; this server keeps no receipts (400 said the request was bad)
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), proof_workers=0, signing=False)
    with TestClient(create_app(settings), base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        for path in ("/v1/receipts/0x" + "ab" * 32, "/v1/log/checkpoint",
                     "/v1/log/proof/inclusion?index=0", "/v1/log/proof/consistency?from=0"):
            r = client.get(path)
            assert r.status_code == 409 and "--no-signing" in r.json()["error"], (path, r.text)


# --- proofs API ---------------------------------------------------------------------------

def test_proof_receipt_id_with_a_lone_surrogate_is_a_4xx(open_client):
    r = open_client.post("/v1/proofs", content=b'{"receipt_id": "\\ud800"}',
                         headers={"Content-Type": "application/json"})
    _assert_client_error(r)


@pytest.mark.parametrize("url", ["https://\\ud800.example/", "https://hooks.example/\\ud800"])
def test_proof_callback_url_with_a_lone_surrogate_is_a_4xx(prover_world, url):
    client, keys, _ = prover_world
    body = ('{"model": "iris_mlp", "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", '
            '"data": [1, 2, 3, 4]}], "callback_url": "' + url + '"}').encode()  # the escape as JSON text
    r = client.post("/v1/proofs", content=body, headers={**keys["alice"], "Content-Type": "application/json"})
    _assert_client_error(r)
    infer = ('{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 5]}], '
             '"parameters": {"proof": "async", "callback_url": "' + url + '"}}').encode()
    r = client.post("/v2/models/iris_mlp/infer", content=infer, headers=keys["alice"])
    _assert_client_error(r)


def test_a_client_cannot_read_another_clients_proof_request(prover_world):
    """Bob asks for the same proof as Alice and shares her job. The job's id is Alice's
    request id, and it is in the bundle Bob gets (proof_receipt.id / predicate jobId,
    server/proofs/worker.py sign_bundle). GET /v1/proofs/{id} is not scoped to the client,
    so Bob reads Alice's handle: her callback URL (with its secret) and her receipt id."""
    client, keys, jobs = prover_world
    secret_hook = "https://hooks.example.org/alice?token=s3cret"
    a = client.post("/v1/proofs", json={**IRIS, "model": "iris_mlp", "callback_url": secret_hook},
                    headers=keys["alice"])
    b = client.post("/v1/proofs", json={**IRIS, "model": "iris_mlp"}, headers=keys["bob"])
    assert a.status_code == b.status_code == 202
    alice_id = a.json()["id"]
    assert jobs.store.job_of(b.json()["id"]) == alice_id  # the job id Bob's bundle will carry
    seen = client.get(f"/v1/proofs/{alice_id}", headers=keys["bob"])
    assert seen.status_code == 404, seen.text


def test_receipt_workers_over_one_is_refused_not_ignored(tmp_path):
    """The receipt log has one writer, so ``--receipt-workers 4`` used to start one and say
    nothing: a setting that silently does nothing. It is now a usage error (exit 2, one line)."""
    import subprocess
    import sys

    env = {**os.environ, "VERINFER_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "verifier.cli", "serve", "--receipt-workers", "4",
                           "--port", "0"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("verinfer: error: invalid setting receipt_workers")
    assert "Traceback" not in proc.stderr
