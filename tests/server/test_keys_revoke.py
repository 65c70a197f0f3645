"""``verinfer keys revoke KID``: the key stays in the JWKS marked revoked (with the time),
receipts it signs after that time fail verification, its private key file is gone."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import UTC, datetime

import pytest

from verifier.errors import KeyRevoked
from verifier.keys import check_not_revoked
from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2
from verifier.tlog import parse_checkpoint

IRIS = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                               "data": [6.7, 3.0, 5.2, 2.3]}]}).encode()


def test_revocation_time_bounds_the_key(tmp_path):
    from server.receipts.keys import load_keys, new_ed25519, revoke_ed25519
    from server.settings import ServerSettings

    settings = ServerSettings(home=tmp_path / "home")
    first = load_keys(settings).kid
    second = new_ed25519(settings)
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    done = revoke_ed25519(settings, first, now=at)
    assert done == {"kid": first, "revoked_at": "2026-01-02T03:04:05.000+00:00", "active": second}
    assert not (settings.keys_dir / "ed25519" / f"{first}.pem").exists()
    jwks = load_keys(settings, create=False).jwks
    assert [k["kid"] for k in jwks["keys"]] == [second, first]
    assert jwks["keys"][1]["revoked_at"] == done["revoked_at"] and "d" not in jwks["keys"][1]
    check_not_revoked(jwks, first, "2026-01-02T03:04:04.999Z")  # before: fine
    check_not_revoked(jwks, second, "2030-01-01T00:00:00Z")  # another key: fine
    for late in ("2026-01-02T03:04:05Z", "2026-01-02T03:34:05+00:30", "2027-01-01T00:00:00Z"):
        with pytest.raises(KeyRevoked):
            check_not_revoked(jwks, first, late)
    with pytest.raises(KeyRevoked, match="cannot be read"):
        check_not_revoked(jwks, first, "yesterday")
    # revoking the active key makes a new one active
    third = revoke_ed25519(settings, second)["active"]
    assert third not in (first, second) and load_keys(settings, create=False).kid == third


def test_a_key_id_that_begins_with_a_dash_is_revoked_as_written(home, capsys):
    """One key id in 64 begins with '-': 'verinfer keys revoke -qwM4…', as 'keys list' prints
    it, failed with 'the following arguments are required: KID' (argparse took it for an
    option). An option that is not a key id is still refused."""
    from server.receipts.keys import load_keys, new_ed25519
    from server.settings import ServerSettings
    from verifier.cli import main

    settings = ServerSettings()
    kid = load_keys(settings).kid
    for _ in range(2000):  # (63/64)^2000 < 1e-13
        if kid.startswith("-"):
            break
        kid = new_ed25519(settings)
    assert kid.startswith("-") and len(kid) == 43
    assert main(["keys", "revoke", kid, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kid"] == kid
    assert main(["keys", "list", "--json"]) == 0
    (listed,) = [k for k in json.loads(capsys.readouterr().out)["keys"] if k["kid"] == kid]
    assert "revoked_at" in listed
    with pytest.raises(SystemExit) as exit_:
        main(["keys", "revoke", "-x"])
    assert exit_.value.code == 2 and "KID" in capsys.readouterr().err


@pytest.mark.e2e
def test_keys_revoke_cli_and_receipts_around_it(tmp_path, start_server, cli):
    home = tmp_path / "home"
    s1 = start_server(home)
    req = urllib.request.Request(s1.base + "/v2/models/iris_mlp/infer", data=IRIS,
                                 method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        before = json.loads(json.loads(r.read())["parameters"]["receipt"])
    kid = s1.get("/v1/keys")["active_kid"]  # it signed the checkpoint of that v2 receipt
    s1.stop()
    pem = home / "keys" / "ed25519" / f"{kid}.pem"

    unknown = cli(home, "keys", "revoke", "nosuchkid")
    assert unknown.returncode == 2 and "no signing key" in unknown.stderr
    r = cli(home, "keys", "revoke", kid, "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["kid"] == kid and done["active"] != kid and not pem.exists()
    assert cli(home, "keys", "revoke", kid).returncode == 2  # already revoked

    s2 = start_server(home)
    jwks = s2.get("/.well-known/jwks.json")
    (listed,) = [k for k in jwks["keys"] if k["kid"] == kid]
    assert listed["revoked_at"] == done["revoked_at"]
    # logged before the revocation: still verifies
    verify_receipt_v2(ReceiptV2.parse(before), jwks)
    # the log keys document says when the key was revoked, so it cannot vouch for later statements
    log_doc = s2.get("/.well-known/verinfer-log.json")
    (revoked_key,) = log_doc["revoked"]
    assert log_doc["revoked"][revoked_key] == done["revoked_at"] and revoked_key in log_doc["note_keys"]
    assert revoked_key.split("+")[1] == parse_checkpoint(before["checkpoint"])[2][0][1].hex()
    assert s2.get("/v1/keys")["log"] == log_doc
    # the standalone recipe of docs/formats.md, given that time as the server writes it, agrees
    from tests.tlog_support import doc_recipe

    recipe, data = doc_recipe(), ReceiptV2.parse(before).statement_bytes()
    assert recipe(before, revoked_key, log_doc["revoked"][revoked_key])["predicate"]["requestId"] == before["id"]
    logged_at = json.loads(data)["predicate"]["time"]
    with pytest.raises(ValueError, match="revoked"):
        recipe(before, revoked_key, logged_at.replace("Z", "+00:00"))
    # (a receipt logged by the revoked key after its revocation fails: the unit tests above for
    # v1, tests/verifier/test_tlog.py for v2)
    # new answers are logged under checkpoints of the new active key and verify
    assert s2.get("/v1/keys")["active_kid"] == done["active"]
    with urllib.request.urlopen(urllib.request.Request(
            s2.base + "/v2/models/iris_mlp/infer", data=IRIS, method="POST"), timeout=30) as r:
        after = json.loads(json.loads(r.read())["parameters"]["receipt"])
    verify_receipt_v2(ReceiptV2.parse(after), jwks)
    only_new = {"keys": [k for k in jwks["keys"] if k["kid"] == done["active"]]}
    verify_receipt_v2(ReceiptV2.parse(after), only_new)


@pytest.mark.e2e
def test_revoking_a_key_while_a_server_runs_takes_effect_without_a_restart(tmp_path, start_server, cli):
    """The running server follows the key folder (server.receipts.keys.LiveKeys): after `keys
    revoke` of its active key, its next answer is logged under a checkpoint of the new active
    key, and the JWKS and log keys it serves mark the old key revoked. (It kept the keys it
    started with before: what it signed after the revocation failed verification until a
    restart.)"""
    home = tmp_path / "home"
    s1 = start_server(home)

    def infer() -> dict:
        req = urllib.request.Request(s1.base + "/v2/models/iris_mlp/infer", data=IRIS, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(json.loads(resp.read())["parameters"]["receipt"])

    before = infer()
    kid = s1.get("/v1/keys")["active_kid"]
    r = cli(home, "keys", "revoke", kid, "--json")
    assert r.returncode == 0 and f"OK: key {kid} revoked" in r.stderr and "no restart" in r.stderr, r.stderr
    done = json.loads(r.stdout)
    # with no answer in between, the idle writer signs the log's head again with the new key
    new_note_key = s1.get("/.well-known/verinfer-log.json")["note_keys"][0]
    deadline = time.monotonic() + 20
    while True:
        with urllib.request.urlopen(s1.base + "/v1/log/checkpoint", timeout=10) as resp:
            head = resp.read().decode()
        if parse_checkpoint(head)[2][0][1].hex() == new_note_key.split("+")[1]:
            break
        assert time.monotonic() < deadline, f"the head is still signed by the revoked key: {head}"
        time.sleep(0.2)
    assert parse_checkpoint(head)[1] == parse_checkpoint(before["checkpoint"])[1], (head, before["checkpoint"])  # the same tree
    after = infer()
    keys = s1.get("/v1/keys")
    jwks = s1.get("/.well-known/jwks.json")
    assert keys["active_kid"] == done["active"] and keys["jwks"] == jwks
    assert [(k["kid"], k.get("revoked_at")) for k in jwks["keys"]] == [(done["active"], None),
                                                                      (kid, done["revoked_at"])]
    verify_receipt_v2(ReceiptV2.parse(after), jwks)
    verify_receipt_v2(ReceiptV2.parse(after), {"keys": jwks["keys"][:1]})  # the new key signed it
    verify_receipt_v2(ReceiptV2.parse(before), jwks)  # logged before the revocation
    log_doc = s1.get("/.well-known/verinfer-log.json")
    (revoked_key,) = log_doc["revoked"]
    assert revoked_key.split("+")[1] == parse_checkpoint(before["checkpoint"])[2][0][1].hex()
    assert parse_checkpoint(after["checkpoint"])[2][0][1].hex() == log_doc["note_keys"][0].split("+")[1]
    # the answer before, refreshed, is proven in the tree the new key signed
    verify_receipt_v2(ReceiptV2.parse(s1.get(f"/v1/receipts/{before['id']}?fresh=1")), {"keys": jwks["keys"][:1]})
    s1.stop()
    active = json.loads(cli(home, "keys", "list", "--json").stdout)["active"]
    r = cli(home, "keys", "revoke", active)  # no server runs
    assert r.returncode == 0, r.stderr


def test_live_keys_follow_rotation_and_revocation(tmp_path, caplog):
    """LiveKeys.current(): the same keys while the folder is unchanged; the new ones after
    `keys rotate` and `keys revoke`; a folder half changed keeps the keys held, never a key
    revoked meanwhile."""
    import os

    from server.receipts.keys import LiveKeys, load_keys, new_ed25519, revoke_ed25519
    from server.settings import ServerSettings
    from verifier.errors import InputError

    settings = ServerSettings(home=tmp_path / "home")
    first = load_keys(settings)
    live = LiveKeys(settings, first)
    assert live.current() is first and live.current() is first
    second = new_ed25519(settings)
    now = live.current()
    assert now.kid == second and [k["kid"] for k in now.jwks["keys"]] == [second, first.kid]
    assert live.current() is now
    revoke_ed25519(settings, second)
    third = live.current()
    assert third.kid not in (first.kid, second)
    assert [(k["kid"], "revoked_at" in k) for k in third.jwks["keys"]] == [
        (third.kid, False), (first.kid, False), (second, True)]

    # a key file being written (here: one that is no key) does not stop the keys held
    folder = settings.keys_dir / "ed25519"
    broken = folder / "broken.pem"
    fd = os.open(broken, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not yet a key")
    os.close(fd)
    with caplog.at_level("WARNING", logger="server.receipts.keys"):
        assert live.current() is third
    assert "could not be loaded again" in caplog.text
    # ... unless the key held was revoked meanwhile: no signing with it
    broken.unlink()
    revoke_ed25519(settings, third.kid)
    broken.write_bytes(b"not yet a key")
    with pytest.raises(InputError, match=f"the signing key {third.kid} was revoked"):
        live.current()
    broken.unlink()
    fourth = live.current()
    assert fourth.kid not in (first.kid, second, third.kid)


def test_a_revoked_keys_file_is_not_read(tmp_path):
    """`keys revoke` records the revocation, then overwrites the key file with zeros and deletes
    it: a server loading the keys in between must not stumble on that file."""
    from server.receipts.keys import load_keys, new_ed25519, revoked_keys
    from server.settings import ServerSettings

    settings = ServerSettings(home=tmp_path / "home")
    old = load_keys(settings).kid
    new = new_ed25519(settings)
    path = settings.keys_dir / "ed25519" / "revoked.json"
    jwk = load_keys(settings, create=False).jwks["keys"][1]
    path.write_text(json.dumps({"keys": [{**jwk, "revoked_at": "2026-01-01T00:00:00.000+00:00"}]}))
    (settings.keys_dir / "ed25519" / f"{old}.pem").write_bytes(b"\0" * 119)  # half way through the revocation
    keys = load_keys(settings, create=False)
    assert keys.kid == new and old in revoked_keys(settings)
    assert [k["kid"] for k in keys.jwks["keys"]] == [new, old]
