"""A plain, non-editable ``pip install .`` into a fresh venv serves, signs and proves, run
from a folder outside the checkout: nothing assumes the repository is on the path or is the
working folder.

To stay fast the fresh venv sees this test venv's site-packages for the dependencies (a
``.pth`` line, which does not run that folder's own ``.pth`` files, so this checkout's
editable install stays invisible), and the project itself is installed with
``pip install --no-deps --no-build-isolation`` from a copy of the source tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
import urllib.request
import venv
from pathlib import Path

import pytest

from testkit.server_process import REPO_ROOT, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.ezkl]

SOURCE_IGNORE = shutil.ignore_patterns(".git", ".venv", "node_modules", "build", "dist",
                                       "*.egg-info", "__pycache__", ".pytest_cache", "results")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("installed")
    src = base / "src"
    shutil.copytree(REPO_ROOT, src, ignore=SOURCE_IGNORE)
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "test_venv_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = base / "elsewhere"  # the working folder: not the checkout, not the source copy
    work.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(base / "user"),
           "VERINFER_HOME": str(base / "home"),
           # an installed verinfer has no checkout: solcjs is where `npm ci` put it
           "VERINFER_SOLCJS": str(REPO_ROOT / "node_modules" / "solc")}
    proc = subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--no-build-isolation", "--disable-pip-version-check", str(src)],
                          capture_output=True, text=True, cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"py": py, "bin": env_dir / "bin", "site": Path(site), "work": work, "env": env,
            "home": base / "home", "user": base / "user"}


def test_the_installed_package_is_the_one_that_runs(installed):
    """verinfer's packages come from the fresh venv, not from the checkout or the copy."""
    code = ("import json, verifier, prover, server, contracts, models\n"
            "from verifier.cli import commands\n"
            "print(json.dumps({'files': [m.__file__ for m in (verifier, prover, server, "
            "contracts, models)], 'commands': sorted(commands())}))")
    proc = subprocess.run([installed["py"], "-c", code], capture_output=True, text=True,
                          cwd=installed["work"], env=installed["env"], check=True)
    out = json.loads(proc.stdout)
    assert all(Path(f).is_relative_to(installed["site"]) for f in out["files"]), out
    assert {"serve", "models", "verify", "audit", "chain", "relay"} <= set(out["commands"])


def test_installed_serves_with_a_receipt_and_proves(installed):
    from verifier.bundle import ProofBundle
    from verifier.proofs import verify_signed_bundle
    from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2

    verinfer = str(installed["bin"] / "verinfer")
    add = subprocess.run([verinfer, "models", "add", "iris_mlp"], capture_output=True, text=True,
                         cwd=installed["work"], env=installed["env"], timeout=600)
    assert add.returncode == 0, add.stderr
    home = installed["home"]
    pkg = home / "packages" / (home / "names" / "iris_mlp").read_text().strip()
    # EZKL's cache is in the data dir, not in ~/.ezkl
    assert (home / "ezkl").is_dir() and not (installed["user"] / ".ezkl").exists()

    server = ServerProcess(home, env={k: v for k, v in installed["env"].items()
                                      if k != "VERINFER_HOME"},
                           command=[verinfer], cwd=installed["work"])
    try:
        server.wait_ready(timeout=300)
        x = [6.1, 2.8, 4.7, 1.2]
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": x}]}
        status, resp, _ = server.request("POST", "/v2/models/iris_mlp/infer", body)
        assert status == 200, resp
        jwks = server.get("/.well-known/jwks.json")
        for page in ("/", "/static/status.js", "/static/receipt_check.js", "/static/vendor/noble-secp256k1.js",
                     "/static/vendor/noble-hashes/sha3.js"):  # the status page is package data
            with urllib.request.urlopen(server.base + page, timeout=30) as r:
                assert r.status == 200 and len(r.read()) > 1000, page
        receipt = ReceiptV2.parse(resp["parameters"]["receipt"])
        statement = verify_receipt_v2(receipt, jwks)
        assert statement.predicate.label == resp["parameters"]["label"]

        body["parameters"] = {"proof": "sync"}
        status, resp, _ = server.request("POST", "/v2/models/iris_mlp/infer", body, timeout=600)
        assert status == 200, resp
        p = resp["parameters"]
        assert p["proof_status"] == "done" and p["proof_outcome"] == "proven", \
            (p, server.output())
        bundle = ProofBundle.model_validate_json(p["proof_bundle"])
        _, signed = verify_signed_bundle(bundle, pkg, jwks, allow_dev_srs=True)  # a dev SRS here
        assert signed.predicate.label == p["label"] == bundle.outputs.label
    finally:
        server.stop()
