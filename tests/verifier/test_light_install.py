"""The auditor's install: ``pip install verinfer`` (base, no extras) into a clean venv has
no torch, fastapi or onnxruntime, and ``verinfer audit`` / ``verify`` still work there."""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest
from audit_support import GOLDEN, corpus_args, outcomes

REPO = Path(__file__).resolve().parents[2]
INDEX = json.loads((GOLDEN / "corpus.json").read_text())

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("light-venv")
    venv.EnvBuilder(with_pip=True).create(d)
    py = d / "bin" / "python"
    # a regular (non-editable) install of the base distribution, as an auditor would
    proc = subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           str(REPO)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"pip install of the base package failed:\n{proc.stderr[-2000:]}")
    return d


def test_base_install_has_no_heavy_dependencies(light_venv):
    py = light_venv / "bin" / "python"
    for module in ("torch", "fastapi", "onnxruntime", "uvicorn", "sklearn"):
        proc = subprocess.run([py, "-c", f"import {module}"], capture_output=True, text=True)
        assert proc.returncode != 0, f"{module} is importable in the light install"
    help_text = subprocess.run([light_venv / "bin" / "verinfer", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "    verify" in help_text and "    audit" in help_text
    # a command of an optional part says which extra it needs: one line, exit 2
    serve = subprocess.run([light_venv / "bin" / "verinfer", "serve"], capture_output=True,
                           text=True)
    assert serve.returncode == 2, serve.stderr
    assert serve.stderr.strip().endswith("pip install 'verinfer[serve]'"), serve.stderr  # serve's own extra
    assert len(serve.stderr.strip().splitlines()) == 1 and "Traceback" not in serve.stderr


def test_audit_and_verify_run_in_the_light_install(light_venv, tmp_path):
    exe = str(light_venv / "bin" / "verinfer")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "VERINFER_HOME": str(tmp_path / "h")}
    proc = subprocess.run([exe, "audit", str(GOLDEN), *map(str, corpus_args(GOLDEN)), "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # the corpus holds tampered items
    assert outcomes(json.loads(proc.stdout), GOLDEN) == INDEX["items"]
    pkg = next((GOLDEN / "packages").iterdir())
    ok = subprocess.run([exe, "verify", str(GOLDEN / "bundles" / "valid-signed"), "--package",
                         str(pkg), "--keys", str(GOLDEN / "jwks.json"), "--allow-dev-srs"],
                        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([exe, "verify", str(GOLDEN / "bundles" / "proof-bitflip"), "--package",
                          str(pkg), "--keys", str(GOLDEN / "jwks.json"), "--allow-dev-srs"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith("FAIL:"), bad.stderr
