"""Trusted keys bound to log origins (``verinfer audit --keys`` given servers' key documents)."""

from __future__ import annotations

import json
import pickle

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier.audit import load_trusted_keys
from verifier.errors import InputError, KeyUnknown
from verifier.keys import ed25519_jwk
from verifier.receipts_v2 import OriginKeys, note_verifiers
from verifier.tlog import note_verifier_key


def _docs(tmp_path):
    ka, kb, kc = (Ed25519PrivateKey.generate().public_key() for _ in range(3))
    (tmp_path / "a.json").write_text(json.dumps(  # GET /v1/keys
        {"jwks": {"keys": [ed25519_jwk(ka)]}, "log": {"origin": "a.test/log", "note_keys": []}}))
    (tmp_path / "b.json").write_text(json.dumps(  # GET /.well-known/verinfer-log.json
        {"origin": "b.test/log", "note_keys": [note_verifier_key("b.test/log", kb)]}))
    (tmp_path / "c.json").write_text(json.dumps({"keys": [ed25519_jwk(kc)]}))  # a plain JWK Set
    return ka, kb, kc


def test_key_documents_bind_keys_to_their_origin(tmp_path):
    ka, kb, kc = _docs(tmp_path)
    trust = load_trusted_keys(tmp_path / "a.json", tmp_path / "b.json")
    assert isinstance(trust, OriginKeys)
    assert trust == {"keys": [ed25519_jwk(ka), ed25519_jwk(kb)]}  # the union: v1 receipts, bundles
    assert [v.key.public_bytes_raw() for v in note_verifiers(trust, "b.test/log")] == [kb.public_bytes_raw()]
    with pytest.raises(KeyUnknown, match="log 'c.test/log': no trusted key for that origin"):
        note_verifiers(trust, "c.test/log")
    again = pickle.loads(pickle.dumps(trust))  # into audit worker processes
    assert again == trust and again.by_origin == trust.by_origin and again.any_origin is None
    # keys with no origin vouch only for origins no document names
    trust = load_trusted_keys(tmp_path / "a.json", tmp_path / "c.json")
    assert [v.key.public_bytes_raw() for v in note_verifiers(trust, "c.test/log")] == [kc.public_bytes_raw()]
    assert [v.key.public_bytes_raw() for v in note_verifiers(trust, "a.test/log")] == [ka.public_bytes_raw()]
    # plain JWK Sets alone: one set, any origin (as before)
    assert load_trusted_keys(tmp_path / "c.json") == {"keys": [ed25519_jwk(kc)]}
    assert type(load_trusted_keys(tmp_path / "c.json")) is dict


def test_a_note_key_of_another_origin_is_refused(tmp_path):
    _docs(tmp_path)
    doc = json.loads((tmp_path / "b.json").read_text())
    doc["origin"] = "a.test/log"
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="is not a key of log 'a.test/log'"):
        load_trusted_keys(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps({"origin": "x\ny", "note_keys": doc["note_keys"]}))
    with pytest.raises(InputError, match="not a one-line string"):
        load_trusted_keys(tmp_path / "bad.json")


def test_a_fork_in_one_origin_fails_that_origin_only(tmp_path):
    from audit_support import verinfer
    from test_audit_log import _log, _write

    ka, kb = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    for name, key, origin in (("a", ka, "a.test/log"), ("b", kb, "b.test/log")):
        (tmp_path / f"keys-{name}.json").write_text(json.dumps(
            {"origin": origin, "note_keys": [note_verifier_key(origin, key.public_key())]}))
    ours = _log(tmp_path / "a" / "log.sqlite3", ka, 2, origin="a.test/log")
    theirs = _log(tmp_path / "b" / "log.sqlite3", kb, 2, origin="b.test/log")
    forked = _log(tmp_path / "a2" / "log.sqlite3", ka, 2, tag=b"fork", origin="a.test/log")  # a's key, another history
    items = _write(tmp_path / "r.jsonl", ours + theirs + forked[3:4])  # past a's latest
    args = ["audit", items, "--keys", tmp_path / "keys-a.json", "--keys", tmp_path / "keys-b.json", "--json"]
    r = verinfer(*args, "--log", tmp_path / "a", "--log", tmp_path / "b")
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert report["by_item_kind"] == {"receipt": {"ok": 13}, "log": {"fail": 1, "ok": 1}}
    (fork,) = [i for i in report["items"] if i["kind"] == "log" and i["outcome"] == "fail"]
    assert fork["error"] == "ConsistencyInvalid" and fork["reason"].count("checkpoint a.test/log size") == 2
    (ok,) = [i for i in report["items"] if i["kind"] == "log" and i["outcome"] == "ok"]
    assert ok["reason"].startswith("origin b.test/log: 2 checkpoint(s) seen")
    r = verinfer("audit", _write(tmp_path / "r2.jsonl", ours + theirs), *args[2:],
                 "--log", tmp_path / "a", "--log", tmp_path / "b")  # without the forked receipt
    assert r.returncode == 0, r.stderr


def test_a_revoked_note_key_in_a_log_keys_document_vouches_only_before_its_revocation(tmp_path, capsys):
    """``/.well-known/verinfer-log.json`` names when each revoked key was revoked: a receipt
    whose checkpoint that key signed fails with KeyRevoked when its statement is from after the
    revocation, and verifies when from before (as with the JWKS)."""
    from datetime import datetime, timedelta

    from tests.tlog_support import MemLog, statement
    from verifier.cli import main
    from verifier.keys import public_key_from_jwk

    log = MemLog()
    st = statement()
    (tmp_path / "r.json").write_text(log.add(st).model_dump_json())
    vkey = note_verifier_key(log.origin, public_key_from_jwk(log.jwks["keys"][0]))
    signed_at = datetime.fromisoformat(st.predicate.time.replace("Z", "+00:00"))

    def audit(revoked: dict) -> tuple[int, dict]:
        (tmp_path / "log.json").write_text(json.dumps({"origin": log.origin, "note_keys": [vkey], "revoked": revoked}))
        rc = main(["audit", str(tmp_path / "r.json"), "--keys", str(tmp_path / "log.json"), "--json", "-j", "1"])
        return rc, json.loads(capsys.readouterr().out)

    rc, report = audit({vkey: (signed_at - timedelta(seconds=1)).isoformat()})
    assert rc == 1 and report["items"][0]["error"] == "KeyRevoked", report
    rc, report = audit({vkey: (signed_at + timedelta(seconds=1)).isoformat()})
    assert rc == 0, report
    assert audit({})[0] == 0  # none revoked
    for bad, why in (([vkey], "is not an object"), ({vkey: 5}, "is not an object"),
                     ({vkey.replace("+", "+0", 1): "2026-01-01T00:00:00Z"}, "is not among its note keys")):
        (tmp_path / "log.json").write_text(json.dumps({"origin": log.origin, "note_keys": [vkey], "revoked": bad}))
        with pytest.raises(InputError, match=why):
            load_trusted_keys(tmp_path / "log.json")
