"""Fast tier: the job table's state machine, callback URL policy, the proof receipt
format (sign, verify, tamper), and the proof routes in-process (no prover runs)."""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from golden_corpus import golden

from server.proofs.callbacks import check_callback_url
from server.proofs.store import JobStore
from verifier.errors import DigestMismatch, InputError, KeyUnknown, LinkBroken, SignatureInvalid

GOLDEN = golden() / "bundles" / "valid-signed" / "bundle.json"  # tests/golden_corpus.py


def _submit(store: JobStore, digest: str, **kw):
    args = dict(model="m", package_id="p" * 64, model_sha256="a" * 64, input_digest=digest,
                input_json="{}", receipt_id=None, callback_url=None, max_active=3)
    args.update(kw)
    return store.submit(**args)


def test_job_store_lifecycle(tmp_path):
    store = JobStore(tmp_path / "db.sqlite3")
    j1, how = _submit(store, "1" * 64)
    assert how == "new" and j1.status == "queued"
    again, how = _submit(store, "1" * 64)
    assert how == "existing" and again.id == j1.id  # idempotent
    _submit(store, "2" * 64)
    _submit(store, "3" * 64)
    full, how = _submit(store, "4" * 64)
    assert full is None and how == "full"  # bounded
    # claim: oldest first, attempts counted, leased
    job, spec = store.claim("w1", lease_s=30)
    assert job.id == j1.id and job.status == "running" and job.attempts == 1 and spec == {}
    assert store.heartbeat(job.id, "w1", 30, stage="proving")
    assert not store.heartbeat(job.id, "w2", 30)  # not w2's job
    # a failing job is retried, then fails with the reason once attempts are used up
    for attempt in (1, 2, 3):
        if attempt > 1:
            job, _ = store.claim("w1", lease_s=30)
            assert job.id == j1.id and job.attempts == attempt
        state = store.retry_or_fail(job.id, "prover worker died (signal 9)", 3, expect_worker="w1")
        assert state == ("failed" if attempt == 3 else "queued")
    failed = store.get(j1.id)
    assert failed.status == "failed" and "signal 9" in failed.error and "attempt 3 of 3" in failed.error
    assert failed.public()["reason"] == failed.error
    # submitting a failed job again queues it afresh
    back, how = _submit(store, "1" * 64)
    assert how == "requeued" and back.id == j1.id and back.attempts == 0
    # finish -> done; then a cache hit; finish is not applied twice
    job, _ = store.claim("w1", 30)
    assert store.finish(job.id, "proven", '{"b": 1}')
    assert not store.finish(job.id, "proven", '{"b": 2}')
    hit, how = _submit(store, job.input_digest)
    assert how == "cached" and hit.status == "done" and store.bundle(job.id) == '{"b": 1}'
    pub = hit.public()
    assert pub["outcome"] == "proven" and pub["bundle_url"].endswith("/bundle")
    # an expired lease is found by the supervisor
    job, _ = store.claim("w9", lease_s=0.01)
    time.sleep(0.05)
    assert [j.id for j in store.expired(time.time())] == [job.id]
    store.close()


def test_callback_url_policy():
    for ok in ("http://127.0.0.1:9/x", "http://localhost/x", "https://[::1]:8443/cb",
               "http://127.5.6.7/x"):
        assert check_callback_url(ok, ()) == ok
    assert check_callback_url("https://hooks.example.org/p", ("hooks.example.org",))
    for bad in ("http://example.com/x", "http://10.1.2.3/", "ftp://127.0.0.1/", "127.0.0.1:80",
                "http://u:p@localhost/", "http://0.0.0.0/", "http://169.254.169.254/latest",
                "http://localhost.example.com/", 5):
        with pytest.raises(InputError):
            check_callback_url(bad, ("hooks.example.org",))


def _signed_proof_receipt(bundle, key, kid, **overrides):
    from verifier.proof_receipts import (
        ProofPredicate,
        ProofReceipt,
        make_proof_statement,
        sha256_json,
    )
    from verifier.receipts import sign_envelope

    fields = dict(
        jobId="job_1", receiptId=bundle.receipt["id"], receiptSha256=sha256_json(bundle.receipt),
        proofSha256=sha256_json(bundle.proof), packageId=bundle.model.package_id,
        modelSha256=bundle.model.model_sha256, inputDigest=bundle.input.digest,
        circuitLabel=bundle.outputs.label, signedLabel=bundle.outputs.label, status="proven",
        time="2026-01-01T00:00:00.000Z", keyId=kid)
    fields.update(overrides)
    env = sign_envelope(make_proof_statement(ProofPredicate(**fields)), kid, key.sign)
    return ProofReceipt(id=fields["jobId"], envelope=env).model_dump(mode="json")


def test_proof_receipt_sign_verify_and_tamper():
    from verifier.bundle import ProofBundle
    from verifier.keys import ed25519_jwk
    from verifier.proof_receipts import verify_proof_receipt

    bundle = ProofBundle.load(GOLDEN)
    assert bundle.receipt is not None
    key = Ed25519PrivateKey.generate()
    jwk = ed25519_jwk(key.public_key())
    jwks = {"keys": [jwk]}
    good = _signed_proof_receipt(bundle, key, jwk["kid"])
    st = verify_proof_receipt(good, bundle, jwks)
    assert st.predicate.status == "proven"
    with pytest.raises(KeyUnknown):
        verify_proof_receipt(good, bundle, {"keys": []})
    other_key = Ed25519PrivateKey.generate()
    with pytest.raises(SignatureInvalid):  # signed by another key under this kid
        verify_proof_receipt(_signed_proof_receipt(bundle, other_key, jwk["kid"]), bundle, jwks)
    with pytest.raises(DigestMismatch):
        verify_proof_receipt(_signed_proof_receipt(bundle, key, jwk["kid"], proofSha256="0" * 64),
                             bundle, jwks)
    with pytest.raises(DigestMismatch):
        verify_proof_receipt(_signed_proof_receipt(bundle, key, jwk["kid"], receiptSha256="0" * 64),
                             bundle, jwks)
    with pytest.raises(LinkBroken):  # says proven while the labels differ
        verify_proof_receipt(_signed_proof_receipt(
            bundle, key, jwk["kid"], signedLabel=bundle.outputs.label + 1), bundle, jwks)
    with pytest.raises(LinkBroken):
        verify_proof_receipt(_signed_proof_receipt(bundle, key, jwk["kid"], inputDigest="0" * 64),
                             bundle, jwks)
    # a payload swapped under a valid signature does not verify
    forged = json.loads(json.dumps(good))
    payload = json.loads(base64.b64decode(forged["envelope"]["payload"]))
    payload["predicate"]["status"] = "mismatch"
    forged["envelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(SignatureInvalid):
        verify_proof_receipt(forged, bundle, jwks)
    # old bundles (no proof receipt) still parse; the field is optional
    assert ProofBundle.load(GOLDEN).proof_receipt is None


def test_proof_routes_in_process_without_package(home, monkeypatch):
    from fastapi.testclient import TestClient

    from server.http.app import create_app
    from server.settings import ServerSettings

    settings = ServerSettings(home=home, models=("iris_mlp",), proof_workers=0)
    with TestClient(create_app(settings)) as client:
        body = {"model": "iris_mlp", "inputs": [
            {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
        r = client.post("/v1/proofs", json=body)
        assert r.status_code == 409
        assert r.json() == {"error": "no circuit package for model iris_mlp: run "
                                     "'verinfer models add iris_mlp'"}
        r = client.post("/v2/models/iris_mlp/infer", json={**body, "parameters": {"proof": "sync"}})
        assert r.status_code == 409
        r = client.post("/v2/models/iris_mlp/infer", json=body)  # no proof asked: plain answer
        assert r.status_code == 200 and "proof_job_id" not in r.json()["parameters"]
        assert client.get("/v1/proofs").json()["jobs"] == {}
        assert client.get("/v1/proofs/job_x").status_code == 404
