"""Audit pieces without EZKL proving: keys, collecting items, exit codes, usage errors."""

from __future__ import annotations

import json
import shutil

import pytest
from audit_support import GOLDEN, corpus_args, verinfer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier.audit import Result, collect, load_trusted_keys, summarize
from verifier.errors import InputError
from verifier.keys import ed25519_jwk


def test_trusted_keys_from_jwks_jwk_and_pem(tmp_path):
    key = Ed25519PrivateKey.generate()
    jwk = ed25519_jwk(key.public_key())
    (tmp_path / "set.json").write_text(json.dumps({"keys": [jwk]}))
    bare = {k: v for k, v in jwk.items() if k != "kid"}
    (tmp_path / "one.json").write_text(json.dumps(bare))
    (tmp_path / "k.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    for f in ("set.json", "one.json", "k.pem"):
        assert load_trusted_keys(tmp_path / f) == {"keys": [jwk]}


@pytest.mark.parametrize("content, why", [
    ("{", "neither JSON nor PEM"),
    ('{"keys": []}', "no keys"),
    ('{"kty": "RSA", "n": "x", "e": "AQAB"}', "OKP"),
    ('{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}', "32-byte"),
    ('{"format": "verinfer.receipt/v2", "statement": "e30="}', "OKP"),  # a receipt given as keys
])
def test_bad_keys_files_are_input_errors(tmp_path, content, why):
    (tmp_path / "k.json").write_text(content)
    with pytest.raises(InputError, match=why) as err:
        load_trusted_keys(tmp_path / "k.json")
    assert str(err.value).startswith(f"{tmp_path / 'k.json'}: ")  # names the file


def test_private_jwk_and_wrong_kid_refused(tmp_path):
    jwk = ed25519_jwk(Ed25519PrivateKey.generate().public_key())
    (tmp_path / "k.json").write_text(json.dumps({**jwk, "d": "secret"}))
    with pytest.raises(InputError, match="private"):
        load_trusted_keys(tmp_path / "k.json")
    (tmp_path / "k.json").write_text(json.dumps({**jwk, "kid": "mine"}))
    with pytest.raises(InputError, match="thumbprint"):
        load_trusted_keys(tmp_path / "k.json")


def test_collect_walks_folders_and_skips_known_non_items(tmp_path):
    shutil.copytree(GOLDEN, tmp_path / "g")
    items = collect([tmp_path / "g"])
    names = {i.name for i in items}
    assert not any(n.endswith(("jwks.json", "corpus.json")) for n in names)
    assert not any("/packages/" in n for n in names)
    assert sum(i.kind == "bundle" for i in items) == len(list((GOLDEN / "bundles").iterdir()))
    # named explicitly, a JWK Set is an (unreadable) item, not silently skipped
    (item,) = collect([tmp_path / "g" / "jwks.json"])
    assert item.kind == "unreadable"
    with pytest.raises(InputError, match="no such file"):
        collect([tmp_path / "nope"])


def test_exit_code_rules():
    def r(outcome):
        return Result("x", "receipt", outcome, None if outcome == "ok" else "E", "why")

    assert summarize([r("ok")], 0).exit_code == 0
    assert summarize([r("ok"), r("error")], 0).exit_code == 2
    assert summarize([r("fail"), r("error")], 0).exit_code == 1  # a failure outranks
    s = summarize([r("ok"), r("fail"), r("fail")], 0.5)
    assert s.failures_by_kind == {"E": 2} and "failures by kind" in s.table()


@pytest.mark.parametrize("args, why", [
    (["audit", "/nonexistent/x.json"], "no such file"),
    (["audit", GOLDEN / "receipts", "--keys", "/nonexistent/jwks.json"], "cannot read keys"),
    (["audit", GOLDEN / "receipts", "--jobs", "0"], "--jobs"),
    (["audit", GOLDEN / "receipts", "--eth-signer", "bob"], "not an address"),
    (["audit", GOLDEN / "receipts", "--models", "/nonexistent"], "no such models"),
    (["audit"], "required"),
])
def test_usage_errors_exit_2_with_one_line(args, why):
    proc = verinfer(*args)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) <= 2  # argparse adds its usage line
    assert why in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["audit", GOLDEN / "receipts"], ["models", "list"]])
def test_a_data_dir_that_is_a_file_exits_2_in_one_line(tmp_path, args):
    """VERINFER_HOME (any setting) that cannot be used: one line naming it, for every command."""
    (tmp_path / "home").write_text("not a folder")
    proc = verinfer(*args, home=tmp_path / "home", light=args[0] == "audit")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"verinfer: error: invalid setting home: Value error, {tmp_path / 'home'} "
                                   "is not a folder (VERINFER_HOME is the data directory)")


def test_receipts_without_keys_fail_closed():
    proc = verinfer("audit", GOLDEN / "receipts" / "valid.json", "--json")
    assert proc.returncode == 1
    (item,) = json.loads(proc.stdout)["items"]
    assert item["error"] == "KeyUnknown"


def test_bundle_for_an_unknown_package_is_an_input_error(tmp_path):
    from verifier.audit import Auditor, Item

    # --models holding no package at all is refused before any item
    proc = verinfer("audit", GOLDEN / "bundles" / "valid-unsigned", "--models", tmp_path)
    assert proc.returncode == 2 and "no circuit packages there" in proc.stderr
    # a bundle of a package the audited models do not hold: that item is an input error
    auditor = Auditor(jwks=load_trusted_keys(GOLDEN / "jwks.json"), packages={"0" * 64: tmp_path},
                      require_known_model=True)
    result = auditor.check(Item("b", "bundle", str(GOLDEN / "bundles" / "valid-unsigned" / "bundle.json")))
    assert (result.outcome, result.error) == ("error", "InputError") and "not among the audited models" in result.reason


def test_only_valid_items_pass_and_quiet_prints_the_table_only():
    proc = verinfer("audit", GOLDEN / "receipts" / "valid.json", GOLDEN / "receipts" /
                    "valid.jsonl", GOLDEN / "bundles" / "valid-signed", *corpus_args(GOLDEN),
                    "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "OK:" not in proc.stderr and "audit: 5 item(s)" in proc.stderr
