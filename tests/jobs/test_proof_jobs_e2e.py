"""Proof jobs through the real server process, real EZKL, iris_mlp: async, sync, cache,
idempotency, callbacks, a worker killed mid-proof, bad requests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from jobs_support import iris_input, package_dir, run_audit, tensor

pytestmark = [pytest.mark.e2e, pytest.mark.ezkl]


@pytest.fixture(scope="module")
def server(iris_home, tmp_path_factory, hook):
    import shutil

    from jobs_support import Server

    home = tmp_path_factory.mktemp("jobs-main-home")
    for part in ("packages", "names", "srs"):
        shutil.copytree(iris_home / part, home / part, dirs_exist_ok=True)
    # the hook's URL is allow-listed: loopback callbacks are refused otherwise
    allow = json.dumps([f"http://127.0.0.1:{hook.server_port}/done"])
    s = Server(home, {"VERINFER_PROOF_WORKERS": "1", "VERINFER_CALLBACK_BACKOFF_S": "0.2",
                      "VERINFER_PROOF_LEASE_S": "5", "VERINFER_CALLBACK_ALLOW": allow})
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def infer(server, values, **params) -> dict:
    body = {"inputs": tensor(values)}
    if params:
        body["parameters"] = params
    status, resp, _ = server.request("POST", "/v2/models/iris_mlp/infer", body)
    assert status == 200, resp
    return resp


def ezkl_verify_directly(bundle: dict, pkg: Path) -> bool:
    """EZKL's own verify on the bundle's proof, in a fresh interpreter: no project code."""
    with tempfile.TemporaryDirectory() as d:
        proof = Path(d) / "proof.json"
        proof.write_text(json.dumps(bundle["proof"]))
        code = ("import ezkl, sys; print(ezkl.verify(sys.argv[1], sys.argv[2], sys.argv[3], "
                "sys.argv[4]))")
        out = subprocess.run([sys.executable, "-c", code, str(proof), str(pkg / "settings.json"),
                              str(pkg / "vk.key"), str(pkg / "kzg.srs")],
                             capture_output=True, text=True, cwd=d)
    return out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "True"


def test_async_proof_done_and_verifies_with_ezkl(server, tmp_path):
    values = iris_input(0)
    status, job = server.submit(values)
    assert status == 202, job
    assert job["status"] in ("queued", "running", "done") and job["id"].startswith("job_")
    assert job["receipt_id"].startswith("0x")
    done = server.wait_job(job["id"])
    assert done["status"] == "done", done
    assert done["outcome"] == "proven" and done["attempts"] == 1
    status, bundle, _ = server.request("GET", f"/v1/proofs/{job['id']}/bundle")
    assert status == 200
    pkg = package_dir(server.home)
    assert ezkl_verify_directly(bundle, pkg)
    # the bundle links receipt and proof
    assert bundle["model"]["package_id"] == pkg.name
    assert bundle["receipt"]["id"] == job["receipt_id"]
    assert bundle["agreement"]["agree"] is True
    assert bundle["proof_receipt"]["id"] == job["id"]
    # and a proof with another input's instances is not this one
    bad = json.loads(json.dumps(bundle))
    bad["proof"]["instances"][0][0] = bad["proof"]["instances"][0][1]
    assert not ezkl_verify_directly(bad, pkg)
    # self-contained for an offline audit with the circuit package (project CLI too)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(bundle))
    jwks = server.request("GET", "/.well-known/jwks.json")[1]
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    audit = run_audit(tmp_path / "b", tmp_path / "jwks.json", server.home / "packages",
                      tmp_path)
    assert audit.returncode == 0, audit.stderr


def test_proof_receipt_tamper_fails_closed(server):
    from verifier.bundle import ProofBundle
    from verifier.errors import DigestMismatch, KeyUnknown, SignatureInvalid
    from verifier.proofs import verify_signed_bundle

    # its own job (a cache hit when test_async_proof_done_and_verifies_with_ezkl ran first on
    # this module's server; the cache is test_idempotent_resubmission_and_cache_hit's subject)
    status, job = server.submit(iris_input(0))
    assert (status, job["cached"]) in ((200, True), (202, False)), (status, job)
    assert server.wait_job(job["id"])["outcome"] == "proven"
    bundle = server.request("GET", f"/v1/proofs/{job['id']}/bundle")[1]
    jwks = server.request("GET", "/.well-known/jwks.json")[1]
    pkg = package_dir(server.home)
    verify_signed_bundle(ProofBundle.model_validate(bundle), pkg, jwks, allow_dev_srs=True)
    with pytest.raises(KeyUnknown):
        verify_signed_bundle(ProofBundle.model_validate(bundle), pkg, None, allow_dev_srs=True)
    other = json.loads(json.dumps(bundle))
    other["receipt"]["index"] += 1  # another receipt than the signed one
    with pytest.raises(DigestMismatch):
        verify_signed_bundle(ProofBundle.model_validate(other), pkg, jwks, allow_dev_srs=True)
    forged = json.loads(json.dumps(bundle))
    sig = forged["proof_receipt"]["envelope"]["signatures"][0]
    sig["sig"] = sig["sig"][:10] + ("A" if sig["sig"][10] != "A" else "B") + sig["sig"][11:]
    with pytest.raises(SignatureInvalid):
        verify_signed_bundle(ProofBundle.model_validate(forged), pkg, jwks, allow_dev_srs=True)


def test_sync_proof_on_infer(server, tmp_path):
    from verifier.bundle import ProofBundle
    from verifier.proofs import verify_signed_bundle

    resp = infer(server, iris_input(1), proof="sync")
    p = resp["parameters"]
    assert p["proof_status"] == "done" and p["proof_outcome"] == "proven"
    bundle = ProofBundle.model_validate_json(p["proof_bundle"])
    assert bundle.receipt["id"] == p["receipt_id"]
    jwks = server.request("GET", "/.well-known/jwks.json")[1]
    _, statement = verify_signed_bundle(bundle, package_dir(server.home), jwks, allow_dev_srs=True)
    assert statement.predicate.label == p["label"] == bundle.outputs.label

    # the whole answer audited: receipt, answer, and the proof it carries
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    (tmp_path / "answer.json").write_text(json.dumps(resp))
    audit = run_audit(tmp_path / "answer.json", tmp_path / "jwks.json", server.home / "packages", tmp_path)
    assert audit.returncode == 0 and f"(response, iris_mlp, label {p['label']}, and its proof)" in audit.stderr, \
        audit.stderr
    # another input's proof beside this answer; a proof altered
    other = infer(server, iris_input(11), proof="sync")["parameters"]["proof_bundle"]
    altered = json.loads(p["proof_bundle"])
    altered["proof"]["instances"][0][0] = altered["proof"]["instances"][0][1]  # another input's
    cases = {"another_input.json": (other, "LinkBroken"), "altered.json": (json.dumps(altered), "")}
    for name, (text, _) in cases.items():
        (tmp_path / "bad").mkdir(exist_ok=True)
        (tmp_path / "bad" / name).write_text(json.dumps({**resp, "parameters": {**p, "proof_bundle": text}}))
    audit = run_audit(tmp_path / "bad", tmp_path / "jwks.json", server.home / "packages", tmp_path)
    assert audit.returncode == 1, audit.stderr
    for name, (_, kind) in cases.items():
        assert f"FAIL: {tmp_path / 'bad' / name}: {kind}" in audit.stderr, audit.stderr
    # no package for the proof (a data dir without it): it cannot be checked (exit 2), never OK
    audit = subprocess.run([sys.executable, "-m", "verifier.cli", "audit", str(tmp_path / "answer.json"),
                            "--keys", str(tmp_path / "jwks.json")], capture_output=True, text=True,
                           env={**os.environ, "VERINFER_HOME": str(tmp_path / "empty-home")})
    assert audit.returncode == 2 and "ERROR" in audit.stderr and "not among the audited models" in audit.stderr, \
        audit.stderr


def test_a_proof_the_circuit_cannot_compute_fails_at_once_saying_why(server):
    """1e10 is a fine FP32 answer for the float model but beyond the circuit's range checks:
    the job fails on its first attempt (an input that can never be proven is not retried)."""
    resp = infer(server, [1e10, 2.8, 4.7, 1.2], proof="sync")
    p = resp["parameters"]
    assert p["proof_status"] == "failed", p
    assert "the circuit cannot compute this input" in p["proof_error"] and "decomposition" in p["proof_error"], p
    assert "worker" not in p["proof_error"], p  # EZKL's words, not the worker's log prefix
    job = server.request("GET", f"/v1/proofs/{p['proof_job_id']}")[1]
    assert job["attempts"] == 1, job


def test_async_param_on_infer_and_by_receipt_id(server):
    resp = infer(server, iris_input(2), proof="async")
    p = resp["parameters"]
    assert p["proof_status"] in ("queued", "running", "done") and "proof_bundle" not in p
    done = server.wait_job(p["proof_job_id"])
    assert done["status"] == "done" and done["receipt_id"] == p["receipt_id"]
    # the same receipt again: the same job, a cache hit
    status, again, _ = server.request("POST", "/v1/proofs", {"receipt_id": p["receipt_id"]})
    assert status == 200 and again["id"] == p["proof_job_id"] and again["cached"] is True
    # an answer without a proof, proven later by its receipt id
    plain = infer(server, iris_input(3))["parameters"]
    status, job, headers = server.request("POST", "/v1/proofs", {"receipt_id": plain["receipt_id"]})
    assert status == 202 and headers["Location"] == f"/v1/proofs/{job['id']}"
    assert server.wait_job(job["id"])["status"] == "done"
    bundle = server.request("GET", f"/v1/proofs/{job['id']}/bundle")[1]
    assert bundle["receipt"]["id"] == plain["receipt_id"]


def test_idempotent_resubmission_and_cache_hit(server, tmp_path):
    values = iris_input(4)
    s1, j1 = server.submit(values)
    _s2, j2 = server.submit(values)  # while queued or running: the same job, no new proof
    assert s1 == 202 and j1["id"] == j2["id"] and j2["cached"] is False
    # another receipt for the same input: still the same job
    other = infer(server, values)["parameters"]
    _s3, j3, _ = server.request("POST", "/v1/proofs", {"receipt_id": other["receipt_id"]})
    assert j3["id"] == j1["id"]
    done = server.wait_job(j1["id"])
    assert done["status"] == "done" and done["attempts"] == 1
    t = time.perf_counter()
    s4, j4 = server.submit(values)
    hit_s = time.perf_counter() - t
    assert s4 == 200 and j4["cached"] is True and j4["status"] == "done" and j4["id"] == j1["id"]
    print(f"cache hit answered in {hit_s * 1000:.1f} ms")
    # infer with proof=sync on a proven input answers from the cache
    resp = infer(server, values, proof="sync")
    p = resp["parameters"]
    assert p["proof_job_id"] == j1["id"] and p["proof_status"] == "done"
    # its bundle is the first answer's (another receipt), and proves this answer's claim too
    assert json.loads(p["proof_bundle"])["receipt"]["id"] != p["receipt_id"]
    (tmp_path / "jwks.json").write_text(json.dumps(server.request("GET", "/.well-known/jwks.json")[1]))
    (tmp_path / "answer.json").write_text(json.dumps(resp))
    audit = run_audit(tmp_path / "answer.json", tmp_path / "jwks.json", server.home / "packages", tmp_path)
    assert audit.returncode == 0 and "(response, iris_mlp" in audit.stderr, audit.stderr


class _Hook(BaseHTTPRequestHandler):
    got: list = []  # (headers, raw body) of each delivered callback
    fail_first = True

    def do_POST(self):
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        if _Hook.fail_first:
            _Hook.fail_first = False
            self.send_response(503)  # the server must retry
        else:
            _Hook.got.append((dict(self.headers), raw))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hook():
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_callback_delivered_with_retry_and_signed(server, hook):
    import base64

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    url = f"http://127.0.0.1:{hook.server_port}/done"
    status, job = server.submit(iris_input(5), callback_url=url)
    assert status == 202
    server.wait_job(job["id"])
    end = time.monotonic() + 30
    while not _Hook.got and time.monotonic() < end:
        time.sleep(0.05)
    assert _Hook.got, server.output()
    headers, raw = _Hook.got[0]
    note = json.loads(raw)
    assert note["id"] == job["id"] and note["status"] == "done" and note["outcome"] == "proven"
    # the body is signed by the server's key, checked here against the published JWKS only
    (jwk,) = [k for k in server.get("/.well-known/jwks.json")["keys"]
              if k["kid"] == headers["Verinfer-Key-Id"]]
    key = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk["x"] + "=="))
    signed = b"verinfer-callback/v1\n" + headers["Verinfer-Timestamp"].encode() + b"\n" + raw
    key.verify(base64.b64decode(headers["Verinfer-Signature"]), signed)  # raises if forged
    with pytest.raises(InvalidSignature):
        key.verify(base64.b64decode(headers["Verinfer-Signature"]), signed.replace(b"done", b"dome"))
    end = time.monotonic() + 10
    while server.job(job["id"])["callback"]["state"] != "delivered" and time.monotonic() < end:
        time.sleep(0.05)
    assert server.job(job["id"])["callback"]["state"] == "delivered"
    # never to an arbitrary host, nor to loopback or private addresses that are not listed
    for bad in ("http://10.0.0.1/x", "file:///etc/passwd", "http://user:pw@127.0.0.1/",
                f"http://127.0.0.1:{hook.server_port}/elsewhere", "http://localhost/x",
                f"http://127.0.0.1:{hook.server_port + 1}/done", "http://169.254.169.254/latest"):
        status, body = server.submit(iris_input(6), callback_url=bad)
        assert status == 400, (bad, body)
        assert "callback_url" in body["error"]


def test_worker_killed_mid_proof_is_retried(server):
    for attempt in range(5):  # an iris proof takes ~1 s: catch one while it runs
        status, job = server.submit(iris_input(20 + attempt))
        assert status == 202
        running = server.wait_running(job["id"])
        pids = server.worker_pids()
        if running["status"] != "running" or not pids:
            continue
        os.kill(pids[0], signal.SIGKILL)
        done = server.wait_job(job["id"])
        if done["attempts"] < 2:
            continue  # the proof finished before the kill landed
        assert done["status"] == "done", done
        assert done["attempts"] == 2 and done["outcome"] == "proven"
        end = time.monotonic() + 20
        while (not server.worker_pids() or server.worker_pids()[0] == pids[0]) \
                and time.monotonic() < end:
            time.sleep(0.1)
        assert server.worker_pids() and server.worker_pids()[0] != pids[0]  # a new worker
        return
    pytest.fail("never caught a proof while it was running")


def test_bad_requests(server):
    assert server.request("GET", "/v1/proofs/job_nope")[0] == 404
    assert server.request("GET", "/v1/proofs/job_nope/bundle")[0] == 404
    status, body, _ = server.request("POST", "/v1/proofs", {"model": "digits_cnn", "inputs": [
        {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]})
    assert status == 409 and "verinfer models add digits_cnn" in body["error"]
    assert server.request("POST", "/v1/proofs", {"model": "nope", "inputs": []})[0] == 404
    assert server.request("POST", "/v1/proofs", {"receipt_id": "0x" + "00" * 32})[0] == 404
    assert server.request("POST", "/v1/proofs", {"whatever": 1})[0] == 400
    status, body, _ = server.request("POST", "/v2/models/iris_mlp/infer", {
        "inputs": tensor(iris_input(0)), "parameters": {"proof": "later"}})
    assert status == 400 and "parameters.proof" in body["error"]
    status, body, _ = server.request("POST", "/v2/models/iris_mlp/infer", {
        "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [5.0] * 8}],
        "parameters": {"proof": "async"}})
    assert status == 400 and "one sample" in body["error"]
    status, body, _ = server.request("POST", "/v2/models/digits_cnn/infer", {
        "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}],
        "parameters": {"proof": "sync"}})
    assert status == 409
