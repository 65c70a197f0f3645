"""A package of the rewritten graph (``models add --max-ops range-checks``) under its own name,
served and proven by a real server process: the server answers from the package's
``model.onnx`` (the rewritten graph), the proof of that answer is EZKL's, and the bundle
verifies offline with the audit CLI, naming the model the receipt names."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from jobs_support import REPO_ROOT, VERINFER, iris_input, package_dir, run_audit

from models import load_split
from verifier.manifest import Manifest

pytestmark = pytest.mark.ezkl


def test_a_rewritten_package_is_served_proven_and_audited(servers, tmp_path_factory, tmp_path):
    home = tmp_path_factory.mktemp("rewritten-home")
    env = {**os.environ, "VERINFER_HOME": str(home)}
    proc = subprocess.run([*VERINFER, "models", "add", "iris_mlp", "--name", "iris_fast",
                           "--max-ops", "range-checks"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    pkg = package_dir(home, "iris_fast")
    manifest = Manifest.load(pkg / "manifest.json")
    assert manifest.preflight["rewritten_from_sha256"] != manifest.model_sha256
    server = servers(home)
    status, meta, _ = server.request("GET", "/v2/models/iris_fast")
    assert status == 200, meta
    _, _, _, y_test = load_split("iris_mlp")
    status, job = server.submit(iris_input(2), model="iris_fast")
    assert status == 202, job
    done = server.wait_job(job["id"])
    assert done["status"] == "done" and done["outcome"] == "proven", done
    status, bundle, _ = server.request("GET", f"/v1/proofs/{job['id']}/bundle")
    assert status == 200
    # the answer is the rewritten graph's (the package's model), and it is the right class
    assert bundle["model"]["model_sha256"] == manifest.model_sha256
    assert bundle["outputs"]["label"] == int(y_test[2])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(bundle))
    jwks = server.request("GET", "/.well-known/jwks.json")[1]
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    audit = run_audit(tmp_path / "b", tmp_path / "jwks.json", home / "packages", tmp_path)
    assert audit.returncode == 0, audit.stderr
    # a bundle whose proof claims another label is refused
    bad = json.loads(json.dumps(bundle))
    inst = bad["proof"]["instances"][0]
    inst[-1] = inst[-2] if inst[-1] != inst[-2] else inst[0]
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(bad))
    audit = run_audit(tmp_path / "b", tmp_path / "jwks.json", home / "packages", tmp_path)
    assert audit.returncode == 1, audit.stdout + audit.stderr
