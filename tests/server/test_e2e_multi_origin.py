"""``verinfer audit`` over receipts of two real servers, each with its own log (origin and key):
audited together they pass, each checkpoint against its own origin's key and each origin's
history against its own log; a checkpoint re-signed by the other server's key, an origin with no
trusted key, and a log of the wrong origin fail, naming the origin."""

from __future__ import annotations

import json
import urllib.request

import pytest

from server.receipts.keys import stored_keys
from server.settings import ServerSettings
from testkit.server_process import ServerProcess
from tests.server.conftest import verinfer
from verifier.tlog import note_verifier_key, signature_line

pytestmark = pytest.mark.e2e

ORIGINS = {"a": "a.verinfer.test/log", "b": "b.verinfer.test/log"}
DIGITS = [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.25] * 64}]


def _get(base: str, path: str):
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return json.loads(r.read())


def _receipts(base: str, n: int) -> list[str]:
    out = []
    for k in range(n):
        req = urllib.request.Request(base + "/v2/models/digits_cnn/infer", method="POST",
                                     data=json.dumps({"id": f"r{k}", "inputs": DIGITS}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            out.append(json.loads(r.read())["parameters"]["receipt"])
    return out


@pytest.fixture(scope="module")
def two_origins(tmp_path_factory):
    """Two servers on separate homes, their receipts and their /v1/keys documents."""
    root = tmp_path_factory.mktemp("origins")
    servers = {name: ServerProcess(root / name, env={"VERINFER_LOG_ORIGIN": origin})
               for name, origin in ORIGINS.items()}
    try:
        out = {}
        for name, s in servers.items():
            s.wait_ready()
            keys = _get(s.base, "/v1/keys")
            (root / f"keys-{name}.json").write_text(json.dumps(keys))
            receipts = _receipts(s.base, 6)
            (root / f"{name}.jsonl").write_text("\n".join(receipts) + "\n")
            out[name] = {"server": s, "keys": root / f"keys-{name}.json", "receipts": receipts,
                         "items": root / f"{name}.jsonl", "doc": keys}
        (root / "both.jsonl").write_text("\n".join(out["a"]["receipts"] + out["b"]["receipts"]) + "\n")
        yield root, out
    finally:
        for s in servers.values():
            s.stop()


def _audit(root, *args):
    return verinfer(root, "audit", *map(str, args), "--json")


def test_metadata_lists_each_servers_origin_and_note_key(two_origins):
    _, srv = two_origins
    for name, origin in ORIGINS.items():
        s = srv[name]["server"]
        log = _get(s.base, "/.well-known/verinfer-log.json")
        assert log == srv[name]["doc"]["log"] and log["origin"] == origin
        from verifier.keys import public_key_from_jwk

        jwk = srv[name]["doc"]["jwks"]["keys"][0]
        assert log["note_keys"][0] == note_verifier_key(origin, public_key_from_jwk(jwk))
    assert srv["a"]["doc"]["jwks"] != srv["b"]["doc"]["jwks"]


def test_receipts_of_two_origins_audit_together_against_their_own_logs(two_origins):
    root, srv = two_origins
    a, b = srv["a"], srv["b"]
    for logs in ([a["server"].base, b["server"].base], [root / "a", root / "b"]):  # URLs, data dirs
        r = _audit(root, root / "both.jsonl", "--keys", a["keys"], "--keys", b["keys"],
                   "--log", logs[0], "--log", logs[1])
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["by_item_kind"] == {"receipt": {"ok": 12}, "log": {"ok": 2}}
        reasons = sorted(i["reason"] for i in report["items"] if i["kind"] == "log")
        assert [x.split(":")[0] for x in reasons] == [f"origin {ORIGINS['a']}", f"origin {ORIGINS['b']}"]
    # the server's note-key document works as well, and --origin takes both
    (root / "log-b.json").write_text(json.dumps(b["doc"]["log"]))
    r = _audit(root, root / "both.jsonl", "--keys", a["keys"], "--keys", root / "log-b.json",
               "--origin", ORIGINS["a"], "--origin", ORIGINS["b"])
    assert r.returncode == 0, r.stderr


def test_keys_given_as_the_servers_urls(two_origins):
    """``--keys URL`` fetches the server's /v1/keys (bound to its origin) as a saved copy
    would be read; an unreachable one is an input error in one line (exit 2)."""
    root, srv = two_origins
    a, b = srv["a"]["server"].base, srv["b"]["server"].base
    r = _audit(root, root / "both.jsonl", "--keys", a + "/v1/keys", "--keys", b + "/v1/keys",
               "--log", a, "--log", b)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["by_item_kind"] == {"receipt": {"ok": 12}, "log": {"ok": 2}}
    r = _audit(root, root / "both.jsonl", "--keys", a + "/v1/keys")  # b's key: not trusted
    assert r.returncode == 1, r.stderr
    gone = "http://127.0.0.1:9/v1/keys"
    r = _audit(root, root / "both.jsonl", "--keys", gone)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and f"{gone}: cannot fetch keys" in lines[0], r.stderr


def test_a_checkpoint_resigned_by_the_other_origins_key_fails(two_origins):
    root, srv = two_origins
    a, b = srv["a"], srv["b"]
    key_b = next(iter(stored_keys(ServerSettings(home=root / "b")).values()))
    forged = []
    for text in a["receipts"]:  # a's checkpoints, signed by b's key under a's name
        receipt = json.loads(text)
        body = receipt["checkpoint"].split("\n\n", 1)[0].encode() + b"\n"
        receipt["checkpoint"] = (body + b"\n" + signature_line(ORIGINS["a"], key_b, body)).decode()
        forged.append(json.dumps(receipt))
    (root / "forged.jsonl").write_text("\n".join(forged + b["receipts"]) + "\n")
    r = _audit(root, root / "forged.jsonl", "--keys", a["keys"], "--keys", b["keys"])
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert report["by_item_kind"]["receipt"] == {"fail": 6, "ok": 6}
    assert report["failures_by_kind"] == {"KeyUnknown": 6}
    assert all(ORIGINS["a"] in i["reason"] for i in report["items"] if i["outcome"] == "fail")
    # without the origins (the two JWK Sets as one, any key for any log) it would pass
    merged = {"keys": a["doc"]["jwks"]["keys"] + b["doc"]["jwks"]["keys"]}
    (root / "merged.json").write_text(json.dumps(merged))
    r = _audit(root, root / "forged.jsonl", "--keys", root / "merged.json")
    assert r.returncode == 0, r.stderr


def test_an_unknown_origin_and_a_log_of_the_wrong_origin_fail_naming_it(two_origins):
    root, srv = two_origins
    a, b = srv["a"], srv["b"]
    r = _audit(root, root / "both.jsonl", "--keys", a["keys"])  # no key trusted for b's log
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["by_item_kind"]["receipt"] == {"ok": 6, "fail": 6}
    failed = [i for i in report["items"] if i["outcome"] == "fail"]
    assert {i["error"] for i in failed} == {"KeyUnknown"}
    assert all(f"log {ORIGINS['b']!r}: no trusted key for that origin" in i["reason"] for i in failed)
    # b's receipts checked against a's log: no log of their origin
    r = _audit(root, b["items"], "--keys", a["keys"], "--keys", b["keys"], "--log", root / "a")
    assert r.returncode == 1
    logs = [i for i in json.loads(r.stdout)["items"] if i["kind"] == "log"]
    assert [i["outcome"] for i in logs] == ["fail", "ok"]
    assert logs[0]["error"] == "OriginMismatch"
    assert f"log {ORIGINS['b']!r} and no --log of that origin" in logs[0]["reason"]
    assert f"{ORIGINS['a']!r} ({root / 'a' / 'log.sqlite3'})" in logs[0]["reason"]
    # a log whose origin no key is trusted for, or not of --origin
    r = _audit(root, a["items"], "--keys", a["keys"], "--log", root / "b")
    assert r.returncode == 1 and "the log's latest checkpoint" in r.stderr and ORIGINS["b"] in r.stderr
    r = _audit(root, a["items"], "--keys", a["keys"], "--keys", b["keys"], "--log", root / "b",
               "--origin", ORIGINS["a"])
    assert r.returncode == 1 and f"the log is of origin {ORIGINS['b']!r}" in r.stderr
    # two logs of one origin: a usage error
    r = _audit(root, a["items"], "--keys", a["keys"], "--log", root / "a", "--log", a["server"].base)
    assert r.returncode == 2 and "both logs of origin" in r.stderr
