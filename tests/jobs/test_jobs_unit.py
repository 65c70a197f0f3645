"""Fast tier: the job table's state machine, the proof receipt format (sign, verify, tamper),
and the proof routes in-process (no prover runs). Callbacks: test_callbacks_unit.py."""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from golden_corpus import golden
from jobs_support import submit_job

from server.proofs.store import JobStore
from verifier.errors import DigestMismatch, KeyUnknown, LinkBroken, SignatureInvalid

GOLDEN = golden() / "bundles" / "valid-signed" / "bundle.json"  # tests/golden_corpus.py


def test_job_store_lifecycle(tmp_path):
    store = JobStore(tmp_path / "db.sqlite3")
    j1, how = submit_job(store, "1" * 64)
    assert how == "new" and j1.status == "queued"
    again, how = submit_job(store, "1" * 64)
    assert how == "existing" and again.id == j1.id  # idempotent
    submit_job(store, "2" * 64)
    submit_job(store, "3" * 64)
    full, how = submit_job(store, "4" * 64)
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
    back, how = submit_job(store, "1" * 64)
    assert how == "requeued" and back.id == j1.id and back.attempts == 0
    # finish -> done; then a cache hit; finish is not applied twice
    job, _ = store.claim("w1", 30)
    assert store.finish(job.id, "proven", '{"b": 1}')
    assert not store.finish(job.id, "proven", '{"b": 2}')
    hit, how = submit_job(store, job.input_digest)
    assert how == "cached" and hit.status == "done" and store.bundle(job.id) == '{"b": 1}'
    pub = hit.public()
    assert pub["outcome"] == "proven" and pub["bundle_url"].endswith("/bundle")
    # an expired lease is found by the supervisor
    job, _ = store.claim("w9", lease_s=0.01)
    time.sleep(0.05)
    assert [j.id for j in store.expired(time.time())] == [job.id]
    store.close()


def test_a_result_of_an_attempt_given_up_on_is_dropped(tmp_path):
    """A prover's finish/fail_now name the worker: once its attempt was given up on (the lease
    ran out, the job went to another worker, or failed), what it brings back changes nothing.
    (Before: a job failed by its lease ended done, and a job proven twice took the late bundle.)"""
    store = JobStore(tmp_path / "db.sqlite3")
    job, _ = submit_job(store, "1" * 64)
    store.claim("w1", lease_s=30)
    assert store.retry_or_fail(job.id, "lease expired", 3, expect_worker="w1") == "queued"
    store.claim("w2", lease_s=30)
    assert not store.finish(job.id, "proven", '{"from": "w1"}', worker="w1")
    store.fail_now(job.id, "w1's late error", worker="w1")
    assert store.get(job.id).status == "running"
    assert store.finish(job.id, "proven", '{"from": "w2"}', worker="w2")
    assert store.bundle(job.id) == '{"from": "w2"}'
    # the last attempt failed by its lease: the late result does not make it done
    other, _ = submit_job(store, "2" * 64)
    store.claim("w3", lease_s=30)
    assert store.retry_or_fail(other.id, "lease expired", 1, expect_worker="w3") == "failed"
    assert not store.finish(other.id, "proven", "{}", worker="w3")
    assert store.get(other.id).status == "failed"
    store.close()


def test_a_failed_job_submitted_again_links_to_the_new_receipt(tmp_path):
    """Its first receipt may be gone (retention prunes receipts, and a job whose receipt is
    missing fails at once): queued again, it proves against the receipt just signed."""
    store = JobStore(tmp_path / "db.sqlite3")
    job, _ = submit_job(store, "1" * 64, receipt_id="0x" + "01" * 32)
    store.claim("w1", lease_s=30)
    store.fail_now(job.id, "no receipt with id '0x0101…'", worker="w1")
    _, how = submit_job(store, "1" * 64, receipt_id="0x" + "02" * 32)
    assert how == "requeued" and store.get(job.id).receipt_id == "0x" + "02" * 32
    store.close()


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


def test_a_mismatch_is_signed_only_for_the_receipts_input():
    """A proof whose circuit label differs from the signed one is signed as a ``mismatch``:
    the server's word that this answer is wrong. It must be of the receipt's model and input
    (a job's stored input that is not the receipt's would make it a false accusation); the
    label check alone is skipped. Before, a mismatch skipped the whole link check."""
    from types import SimpleNamespace

    from server.proofs.worker import sign_bundle
    from verifier.bundle import ProofBundle
    from verifier.keys import ed25519_jwk
    from verifier.proofs import load_manifest_checked
    from verifier.receipts_v2 import parse_any_receipt, verify_any_receipt

    bundle = ProofBundle.load(GOLDEN)
    statement = verify_any_receipt(parse_any_receipt(bundle.receipt),
                                   json.loads((golden() / "jwks.json").read_text()))
    manifest = load_manifest_checked(golden() / "packages" / bundle.model.package_id)
    key = Ed25519PrivateKey.generate()
    jwk = ed25519_jwk(key.public_key())
    keys = SimpleNamespace(kid=jwk["kid"], ed25519=key, jwks={"keys": [jwk]})
    job = SimpleNamespace(id="job_1", receipt_id=bundle.receipt["id"])
    p = statement.predicate
    wrong_label = statement.model_copy(update={"predicate": p.model_copy(
        update={"label": bundle.outputs.label + 1})})
    status, _ = sign_bundle(job, manifest, bundle, bundle.receipt, wrong_label, keys)
    assert status == "mismatch"
    other_input = wrong_label.model_copy(update={"predicate": wrong_label.predicate.model_copy(
        update={"input": p.input.model_copy(update={"commitment": "0x" + "00" * 32})})})
    with pytest.raises(LinkBroken, match="not the receipt's input"):
        sign_bundle(job, manifest, bundle, bundle.receipt, other_input, keys)


def test_proof_routes_in_process_without_package(home, monkeypatch):
    from fastapi.testclient import TestClient

    from server.http.app import create_app
    from server.settings import ServerSettings

    settings = ServerSettings(home=home, models=("iris_mlp",), proof_workers=0)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
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
