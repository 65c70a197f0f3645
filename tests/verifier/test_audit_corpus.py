"""The full tamper corpus, regenerated from fresh proofs (real EZKL), and hashed inputs."""

from __future__ import annotations

import json

import pytest
from audit_support import corpus_args, outcomes, verinfer

from testkit.corpus import Signer, sign_receipt, write_corpus
from verifier.audit import Auditor, collect, find_packages, load_trusted_keys, run_audit
from verifier.bundle import ProofBundle
from verifier.errors import KeyUnknown, LinkBroken
from verifier.proofs import verify_bundle, verify_signed_bundle

pytestmark = pytest.mark.ezkl


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, iris_proven, hashed_proven):
    pkg, bundles = iris_proven
    root = tmp_path_factory.mktemp("corpus")
    index = write_corpus(root, bundles, pkg.manifest, other_package=hashed_proven[0].manifest)
    # packages: the two real ones (the swapped-package variant needs the other)
    return root, index, pkg.dir.parent


def test_full_corpus_every_item_gets_its_kind(corpus):
    root, index, packages = corpus
    kinds = set(index["items"].values())
    assert {"ok", "SignatureInvalid", "KeyUnknown", "DigestMismatch", "LinkBroken",
            "ProofInvalid", "InputError"} <= kinds
    for name in ("input-of-other-receipt", "label-differs", "swapped-package",
                 "receipt-swapped-key", "instances-bitflip", "instances-forged-logit"):
        assert f"bundles/{name}" in index["items"]
    args = [*corpus_args(root)[:2], "--models", packages, *corpus_args(root)[4:]]
    proc = verinfer("audit", root, *args, "--json", "--jobs", "2")
    assert proc.returncode == 1, proc.stderr
    assert outcomes(json.loads(proc.stdout), root) == index["items"]


def test_valid_items_alone_exit_0(corpus):
    root, index, packages = corpus
    valid = [root / i.split(":")[0] for i, k in index["items"].items() if k == "ok"]
    proc = verinfer("audit", *sorted(set(valid)), "--keys", root / "jwks.json",
                    "--models", packages, "--eth-signer", index["eth_signer"], "--allow-dev-srs")
    assert proc.returncode == 0, proc.stderr


def test_parallel_audit_equals_serial(corpus, monkeypatch):
    import verifier.audit

    monkeypatch.setattr(verifier.audit, "POOL_WORTH_S", 0.0)  # always use the pool here
    root, _index, packages = corpus
    items = collect([root])
    lines = (root / "receipts" / "valid.jsonl").read_text().splitlines()
    many = root.parent / "many.jsonl"
    many.write_text("\n".join(lines * 700) + "\n")  # several batches
    items += collect([many])
    auditor = Auditor(jwks=load_trusted_keys(root / "jwks.json"),
                      packages=find_packages(packages), require_known_model=True,
                      allow_dev_srs=True)
    seen = []
    parallel = run_audit(items, auditor, jobs=2, on_result=seen.append)
    serial = run_audit(items, auditor, jobs=1)
    assert parallel == serial
    assert len(seen) == len(items)
    assert [r.item for r in parallel] == [i.name for i in items]


def test_hashed_input_bundle_and_its_poseidon_link(hashed_proven, iris_proven):
    pkg, (bundle,) = hashed_proven
    assert pkg.manifest.input_visibility == "hashed"
    verify_bundle(bundle, pkg.dir)
    signer = Signer()
    jwks = {"keys": [signer.jwk]}
    signed = bundle.model_copy(update={"receipt": sign_receipt(bundle, pkg.manifest, signer)
                                       .model_dump(mode="json")})
    verify_signed_bundle(signed, pkg.dir, jwks, allow_dev_srs=True)
    with pytest.raises(KeyUnknown):
        verify_signed_bundle(signed, pkg.dir, None)
    # another input, consistently restated (digest too): only the hash link catches it
    other = iris_proven[1][1].input
    moved = bundle.model_copy(update={"input": other})
    with pytest.raises(LinkBroken, match="Poseidon"):
        verify_bundle(moved, pkg.dir)
    raw = json.loads(bundle.model_dump_json())
    raw["instances"][0][0] = raw["proof"]["instances"][0][0] = "00" * 32
    with pytest.raises(LinkBroken, match="Poseidon"):
        verify_bundle(ProofBundle.model_validate(raw), pkg.dir)


def test_verify_cli_with_package_by_home(audit_home, iris_proven, tmp_path):
    pkg, bundles = iris_proven
    signer = Signer()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [signer.jwk]}))
    signed = bundles[0].model_copy(update={"receipt": sign_receipt(
        bundles[0], pkg.manifest, signer).model_dump(mode="json")})
    path = signed.write(tmp_path / "b")
    ok = verinfer("verify", path, "--keys", tmp_path / "jwks.json", "--allow-dev-srs",
                  home=audit_home)
    assert ok.returncode == 0, ok.stderr
    # audit with the data dir's packages as the default --models
    ok = verinfer("audit", tmp_path / "b", "--keys", tmp_path / "jwks.json", "--allow-dev-srs",
                  home=audit_home)
    assert ok.returncode == 0, ok.stderr
