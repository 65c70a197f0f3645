"""Keys: generated 0600 on first start, unsafe key files refused, rotation keeps old keys verifiable."""

from __future__ import annotations

import json
import os
import stat
import urllib.request

import pytest

from verifier.keys import ed25519_jwk
from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2
from verifier.tlog import parse_checkpoint

pytestmark = pytest.mark.e2e

IRIS = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [6.7, 3.0, 5.2, 2.3]}]}
).encode()


def infer(server, eip712: bool = False) -> dict:
    body = IRIS if not eip712 else IRIS[:-1] + b', "parameters": {"eip712": true}}'
    req = urllib.request.Request(server.base + "/v2/models/iris_mlp/infer", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(json.loads(r.read())["parameters"]["receipt"])


def test_rotate_keeps_old_receipts_verifiable(tmp_path, start_server, cli):
    home = tmp_path / "home"
    s1 = start_server(home)
    for f in (home / "keys").rglob("*"):
        if f.is_file() and f.name != "active":
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    old = infer(s1)
    old_kid = s1.get("/v1/keys")["active_kid"]
    s1.stop()

    r = cli(home, "keys", "rotate", "--json")
    assert r.returncode == 0, r.stderr
    new_kid = json.loads(r.stdout)["kid"]
    assert new_kid != old_kid

    s2 = start_server(home)
    jwks = s2.get("/.well-known/jwks.json")
    assert [k["kid"] for k in jwks["keys"]] == [new_kid, old_kid]
    new = infer(s2)
    assert s2.get("/v1/keys")["log"]["note_keys"][0].split("+")[1] == parse_checkpoint(new["checkpoint"])[2][0][1].hex()
    # the old receipt, fetched from the store, still verifies with the old key from the JWKS
    stored = s2.get(f"/v1/receipts/{old['id']}")
    assert stored == old
    verify_receipt_v2(ReceiptV2.parse(stored), jwks)
    verify_receipt_v2(ReceiptV2.parse(new), jwks)
    with pytest.raises(Exception, match="no trusted note key"):  # the old key alone does not sign the new
        verify_receipt_v2(ReceiptV2.parse(new), {"keys": jwks["keys"][1:]})
    # and the old receipt, refreshed, is proven in the tree the new key signed
    verify_receipt_v2(ReceiptV2.parse(s2.get(f"/v1/receipts/{old['id']}?fresh=1")), {"keys": jwks["keys"][:1]})

    listed = cli(home, "keys", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["active"] == new_kid
    plain = cli(home, "keys", "list")
    assert f"{new_kid}  Ed25519 (active)" in plain.stdout.splitlines() and "EIP-712 signer: 0x" in plain.stdout


def test_rotate_while_serving_needs_no_restart(tmp_path, start_server, cli):
    """`keys rotate` while a server runs: its next answer is logged under a checkpoint of the
    new key, the JWKS it serves lists both, and a prover worker started before signs with the new
    key too (every process follows the key folder: server.receipts.keys.LiveKeys)."""
    from server.proofs.worker import Worker
    from server.settings import ServerSettings

    home = tmp_path / "home"
    s1 = start_server(home)
    old = infer(s1)
    old_kid = s1.get("/v1/keys")["active_kid"]
    prover = Worker(ServerSettings(home=home), home / "receipts.sqlite3", "w-test", 30.0, 3)
    assert prover.keys.kid == old_kid
    r = cli(home, "keys", "rotate", "--json")
    assert r.returncode == 0 and "no restart" in r.stderr, r.stderr
    new_kid = json.loads(r.stdout)["kid"]
    new = infer(s1)
    jwks = s1.get("/.well-known/jwks.json")
    assert [k["kid"] for k in jwks["keys"]] == [new_kid, old_kid] and s1.get("/v1/keys")["active_kid"] == new_kid
    verify_receipt_v2(ReceiptV2.parse(new), {"keys": jwks["keys"][:1]})
    with pytest.raises(Exception, match="no trusted note key"):
        verify_receipt_v2(ReceiptV2.parse(new), {"keys": jwks["keys"][1:]})
    verify_receipt_v2(ReceiptV2.parse(old), jwks)
    assert prover.keys.kid == new_kid and prover.keys.jwks == jwks


def test_rotate_eip712_while_serving_needs_no_restart(tmp_path, start_server, cli):
    """`keys rotate --eip712` while a server runs: its next EIP-712 answer is the new key's (the
    statement names the new signer), the old key is kept (0600) for the relayer, and both
    signers are published; receipts of each verify only against their own signer."""
    from verifier.errors import KeyUnknown

    home = tmp_path / "home"
    s1 = start_server(home)
    old = infer(s1, eip712=True)
    old_signer = old["eip712"]["signer"]
    r = cli(home, "keys", "rotate", "--eip712", "--json")
    assert r.returncode == 0 and "no restart" in r.stderr and "chain update-signer" in r.stderr, r.stderr
    rotated = json.loads(r.stdout)
    new_signer = rotated["signer"]
    assert rotated["retired"] == old_signer and new_signer != old_signer
    for f in (home / "keys" / "eth.key", home / "keys" / "eth-retired" / f"{old_signer}.key"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert not (home / "keys" / "eth.key.tmp").exists()

    new = infer(s1, eip712=True)
    assert new["eip712"]["signer"] == new_signer
    jwks = s1.get("/.well-known/jwks.json")
    statement = verify_receipt_v2(ReceiptV2.parse(new), jwks, trusted_eth_signers={new_signer})
    assert statement.predicate.eip712.signer == new_signer
    verify_receipt_v2(ReceiptV2.parse(old), jwks, trusted_eth_signers={old_signer})
    with pytest.raises(KeyUnknown):
        verify_receipt_v2(ReceiptV2.parse(new), jwks, trusted_eth_signers={old_signer})
    assert s1.get("/v1/keys")["eip712"]["signer"] == new_signer
    assert s1.get("/v1/keys")["eip712"]["retired_signers"] == [old_signer]
    listed = cli(home, "keys", "list")
    assert f"EIP-712 signer: {new_signer}" in listed.stdout.splitlines()
    assert f"EIP-712 signer: {old_signer} (retired)" in listed.stdout.splitlines()

    # a second rotation keeps both earlier keys
    again = json.loads(cli(home, "keys", "rotate", "--eip712", "--json").stdout)
    assert again["retired"] == new_signer
    assert set(json.loads(cli(home, "keys", "list", "--json").stdout)["eip712_retired"]) == {old_signer, new_signer}
    assert infer(s1, eip712=True)["eip712"]["signer"] == again["signer"]


def test_rotate_eip712_refuses_a_key_from_the_environment(tmp_path, cli):
    home = tmp_path / "home"
    env = {"VERINFER_ETH_KEY": "0x" + os.urandom(32).hex()}
    assert cli(home, "keys", "rotate", env=env).returncode == 0  # the Ed25519 keys exist
    r = cli(home, "keys", "rotate", "--eip712", env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "VERINFER_ETH_KEY" in r.stderr and not (home / "keys" / "eth-retired").exists()


def test_refuses_world_readable_key(tmp_path, cli):
    home = tmp_path / "home"
    assert cli(home, "keys", "rotate").returncode == 0  # creates the keys
    (key,) = (home / "keys" / "ed25519").glob("*.pem")
    os.chmod(key, 0o644)
    r = cli(home, "serve", "--port", "1", timeout=120)
    assert r.returncode == 2
    assert "refusing to use private key" in r.stderr and "chmod 600" in r.stderr


def test_key_from_path(tmp_path, start_server, cli):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    path = tmp_path / "signing.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)
    eth = "0x" + "42" * 32
    s = start_server(tmp_path / "home", env={"VERINFER_SIGNING_KEY_PATH": str(path), "VERINFER_ETH_KEY": eth})
    receipt = infer(s, eip712=True)
    verify_receipt_v2(ReceiptV2.parse(receipt), {"keys": [ed25519_jwk(key.public_key())]})
    from eth_account import Account

    assert receipt["eip712"]["signer"] == Account.from_key(eth).address
