"""A development SRS never passes as production: ``verify``/``audit`` fail on a package whose
``kzg.srs`` is not the public ceremony file (pinned SHA-256) unless ``--allow-dev-srs``."""

from __future__ import annotations

import json
import re

import pytest
from audit_support import GOLDEN, corpus_args, verinfer

from verifier.errors import DigestMismatch, InsecureSRS
from verifier.manifest import MANIFEST_FILE, Manifest
from verifier.srs import CEREMONY_TABLE, check_package_srs, is_ceremony_srs, pinned_ceremony_hash

PKG = next((GOLDEN / "packages").iterdir())
MANIFEST = Manifest.load(PKG / MANIFEST_FILE)


def _with_srs(manifest: Manifest, *, sha256: str, artifact_sha256: str, source: str,
              insecure: bool) -> Manifest:
    raw = json.loads(manifest.model_dump_json())
    raw["srs"].update(sha256=sha256, source=source, insecure=insecure)
    raw["artifacts"]["kzg.srs"]["sha256"] = artifact_sha256
    return Manifest.model_validate(raw)


def test_pinned_table_cites_its_source_and_covers_the_projects_logrows():
    table = json.loads(CEREMONY_TABLE.read_text())
    assert "zkonduit/ezkl" in table["source"] and "srs_sha.rs" in table["source"]
    hashes = table["sha256_by_logrows"]
    assert sorted(map(int, hashes)) == list(range(1, 27))
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes.values())
    assert len(set(hashes.values())) == 26
    for k in (12, 15):  # iris_mlp, digits_cnn
        assert pinned_ceremony_hash(k) == hashes[str(k)]


def test_pinned_table_is_ezkls_own():
    """The pinned hashes checked against an independent source, not against the table itself:
    the pinned EZKL's native library holds its table of public SRS hashes (srs_sha.rs, read by
    its own get_srs) as 26 hex strings laid out in logrows order, 1 to 26; ours must be that
    block, hash for hash and logrows for logrows."""
    from pathlib import Path

    import ezkl

    (lib,) = Path(ezkl.__file__).parent.glob("ezkl*.so")
    data = lib.read_bytes()
    hashes = json.loads(CEREMONY_TABLE.read_text())["sha256_by_logrows"]
    ours = "".join(hashes[str(k)] for k in range(1, 27)).encode()
    at = data.find(hashes["1"].encode())
    assert at >= 0 and data[at:at + len(ours)] == ours
    assert data.count(hashes["1"].encode()) == 1


def test_dev_srs_package_is_insecure_unless_allowed():
    assert MANIFEST.srs.source == "development"
    with pytest.raises(InsecureSRS, match="development SRS"):
        check_package_srs(MANIFEST)
    check_package_srs(MANIFEST, allow_dev_srs=True)


def test_srs_claimed_as_ceremony_but_not_the_pinned_file_is_refused():
    k = MANIFEST.srs.logrows
    fake = _with_srs(MANIFEST, sha256=MANIFEST.srs.sha256, artifact_sha256=MANIFEST.srs.sha256,
                     source="ceremony", insecure=False)
    with pytest.raises(InsecureSRS, match=f"not the published ceremony file for logrows={k}"):
        check_package_srs(fake)
    # the manifest names the pinned hash, but its kzg.srs artifact is another file
    pinned = pinned_ceremony_hash(k)
    lying = _with_srs(MANIFEST, sha256=pinned, artifact_sha256=MANIFEST.srs.sha256,
                      source="ceremony", insecure=False)
    with pytest.raises(DigestMismatch):
        check_package_srs(lying, allow_dev_srs=True)
    # the pinned file itself passes
    real = _with_srs(MANIFEST, sha256=pinned, artifact_sha256=pinned, source="ceremony",
                     insecure=False)
    assert is_ceremony_srs(real)
    check_package_srs(real)


def test_verify_dev_srs_bundle_exits_1_and_passes_with_the_flag():
    args = [GOLDEN / "bundles" / "valid-signed", "--package", PKG, "--keys",
            GOLDEN / "jwks.json", "--json"]
    bad = verinfer("verify", *args)
    assert bad.returncode == 1, bad.stderr
    out = json.loads(bad.stdout)
    assert out["ok"] is False and out["error"] == "InsecureSRS" and out["dev_srs"] is True
    assert bad.stderr.startswith("FAIL:") and "--allow-dev-srs" in bad.stderr
    ok = verinfer("verify", *args, "--allow-dev-srs")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["dev_srs"] is True and "WARNING" in ok.stderr


def test_audit_dev_srs_bundle_exits_1_and_passes_with_the_flag():
    args = [GOLDEN / "bundles" / "valid-signed", *corpus_args(GOLDEN), "--json"]
    assert args[-2] == "--allow-dev-srs"
    bad = verinfer("audit", *args[:-2], "--json")
    assert bad.returncode == 1, bad.stderr
    (item,) = json.loads(bad.stdout)["items"]
    assert item["error"] == "InsecureSRS" and item["outcome"] == "fail"
    ok = verinfer("audit", *args)
    assert ok.returncode == 0, ok.stderr
    (item,) = json.loads(ok.stdout)["items"]
    assert item["outcome"] == "ok" and item["dev_srs"] is True
