"""``verinfer audit`` on v2 receipts, and ``--log DIR``: one history passes, a fork fails (exit 1)."""

from __future__ import annotations

import base64
import json

from audit_support import verinfer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.receipts.translog import LogWriter
from tests.tlog_support import statement
from verifier.keys import ed25519_jwk
from verifier.receipts_v2 import ReceiptV2
from verifier.tlog import leaf_hash, signature_line

ORIGIN = "audit.test/log"


def _log(path, key, n_batches: int, tag: bytes = b"", origin: str = ORIGIN) -> list[dict]:
    """A real log file (the server's writer) with v2 receipts for every leaf."""
    writer = LogWriter(path, origin, lambda name, body: signature_line(name, key, body))
    receipts = []
    for b in range(n_batches):
        stmts = [statement(logits=[0.5 * b, float(i), -1.0]) for i in range(3)]
        data = [s.canonical_bytes() for s in stmts]
        first = writer.size
        note, proof = writer.append([leaf_hash(d) for d in data])
        for j, (st, d) in enumerate(zip(stmts, data)):
            receipts.append(ReceiptV2(id=st.predicate.requestId, statement=base64.b64encode(d).decode(),
                                      index=first + j, proof=[base64.b64encode(h).decode() for h in proof(first + j)],
                                      checkpoint=note).model_dump(mode="json"))
        if tag:  # another history: an extra leaf only this log has
            writer.append([leaf_hash(tag + bytes([b]))])
    writer.close()
    return receipts


def _write(path, receipts):
    path.write_text("\n".join(json.dumps(r) for r in receipts) + "\n")
    return path


def test_v2_receipts_and_one_history_pass(tmp_path):
    key = Ed25519PrivateKey.generate()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [ed25519_jwk(key.public_key())]}))
    receipts = _log(tmp_path / "a" / "log.sqlite3", key, 4)
    items = _write(tmp_path / "r.jsonl", receipts)
    r = verinfer("audit", items, "--keys", tmp_path / "jwks.json", "--log", tmp_path / "a", "--json",
                 "--origin", ORIGIN)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["by_item_kind"] == {"receipt": {"ok": 12}, "log": {"ok": 1}}
    # a tampered receipt fails with its kind, and the log check still runs
    bad = dict(receipts[0], index=receipts[0]["index"] + 1)
    _write(tmp_path / "bad.jsonl", [bad, *receipts[1:]])
    r = verinfer("audit", tmp_path / "bad.jsonl", "--keys", tmp_path / "jwks.json", "--log", tmp_path / "a", "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["failures_by_kind"] == {"InclusionInvalid": 1}
    r = verinfer("audit", items, "--keys", tmp_path / "jwks.json", "--origin", "other.log/x")
    assert r.returncode == 1 and "OriginMismatch" in r.stderr


def test_a_forked_log_fails_the_audit_naming_both_checkpoints(tmp_path):
    key = Ed25519PrivateKey.generate()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [ed25519_jwk(key.public_key())]}))
    ours = _log(tmp_path / "a" / "log.sqlite3", key, 3)
    _log(tmp_path / "b" / "log.sqlite3", key, 3, tag=b"fork")  # same key and origin, another history
    items = _write(tmp_path / "r.jsonl", ours)
    r = verinfer("audit", items, "--keys", tmp_path / "jwks.json", "--log", tmp_path / "b", "--json")
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    forks = [i for i in report["items"] if i["kind"] == "log"]
    assert forks and all(i["error"] == "ConsistencyInvalid" for i in forks)
    assert report["by_item_kind"]["receipt"] == {"ok": 9}  # each receipt alone is fine
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("FAIL") and "fork" in ln]
    assert all(ln.count(f"checkpoint {ORIGIN} size") == 2 for ln in lines)
    assert any("no consistency proof joins" in ln and "latest of" in ln for ln in lines)
    # two receipts' checkpoints of one size and different roots: a fork even without --log
    theirs = _log(tmp_path / "c" / "log.sqlite3", key, 1, tag=b"x")
    both = _write(tmp_path / "both.jsonl", [ours[0], theirs[0]])
    r = verinfer("audit", both, "--keys", tmp_path / "jwks.json")
    assert r.returncode == 1 and "same size and different roots" in r.stderr


def test_log_usage_errors(tmp_path):
    key = Ed25519PrivateKey.generate()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [ed25519_jwk(key.public_key())]}))
    items = _write(tmp_path / "r.jsonl", _log(tmp_path / "a" / "log.sqlite3", key, 1))
    r = verinfer("audit", items, "--keys", tmp_path / "jwks.json", "--log", tmp_path / "nowhere")
    assert r.returncode == 2 and "no receipt log here" in r.stderr
    # a server given without its scheme is not taken for a folder in silence
    r = verinfer("audit", items, "--keys", tmp_path / "jwks.json", "--log", "localhost:8080")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "verinfer: error: localhost:8080: no receipt log here (a server data dir or its "
        "log.sqlite3, or a server's http(s):// URL)"], r.stderr


def test_an_unusable_log_is_refused_before_any_item_is_audited(tmp_path):
    """``--log`` that is not a log, or a server that cannot be reached: exit 2 with one line,
    before any receipt is checked or printed."""
    key = Ed25519PrivateKey.generate()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [ed25519_jwk(key.public_key())]}))
    items = _write(tmp_path / "r.jsonl", _log(tmp_path / "a" / "log.sqlite3", key, 1))
    for bad in (tmp_path / "nowhere", "http://127.0.0.1:9"):
        r = verinfer("audit", items, "--keys", tmp_path / "jwks.json", "--log", bad)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "OK:" not in r.stderr, r.stderr
