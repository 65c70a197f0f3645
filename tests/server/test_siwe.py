"""Sign-In with Ethereum (EIP-4361, server/siwe.py, server/http/siwe_api.py): a wallet made in
the test signs in through the real app and gets a session token of its tier; replays, other
domains, chains, expired or foreign nonces and forged signatures are refused."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from fastapi.testclient import TestClient

from server.auth import ApiKeyStore, NonceMinter, Tier
from server.http.app import create_app
from server.settings import ServerSettings
from server.siwe import make_message, parse_message
from verifier.errors import InputError

IRIS = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
TIERS = {"small": Tier(rate_per_s=0.01, burst=2, proofs=False, max_rows=2),
         "big": Tier(rate_per_s=1000, burst=1000, proofs=True, max_rows=100)}
HOST = "testserver"  # TestClient's Host header, and the domain the server is configured with


@pytest.fixture
def world(tmp_path):
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), auth="on", tiers=TIERS, proof_workers=0,
                              siwe_domain=HOST)
    wallet = Account.create()  # made by the test, never printed
    store = ApiKeyStore(settings.apikeys_path)
    store.add_wallet(wallet.address, "small", "alice")
    with TestClient(create_app(settings)) as client:
        yield client, store, wallet
    store.close()


def sign_in_body(client, wallet, *, domain=HOST, chain_id=31337, nonce=None, issued=None, expires=None,
                 signer=None, uri=None, scheme=None):
    if nonce is None:
        got = client.get("/v1/auth/nonce").json()
        assert got["domain"] == HOST and got["chain_id"] == 31337
        nonce = got["nonce"]
    now = datetime.now(UTC)
    text = make_message(domain, wallet.address, uri or f"https://{domain}/", chain_id, nonce, issued or now,
                        statement="Sign in to verinfer.", expiration_time=expires or now + timedelta(minutes=5),
                        scheme=scheme)
    sig = (signer or wallet).sign_message(encode_defunct(text=text)).signature.hex()
    return {"message": text, "signature": "0x" + sig.removeprefix("0x")}


def test_full_sign_in_gives_a_session_of_the_wallets_tier_and_replay_is_refused(world):
    client, store, wallet = world
    assert client.post("/v2/models/iris_mlp/infer", json=IRIS).status_code == 401
    body = sign_in_body(client, wallet)
    r = client.post("/v1/auth/siwe", json=body)
    assert r.status_code == 200, r.text
    session = r.json()
    assert session["address"] == wallet.address.lower() and session["tier"] == "small"
    token = session["token"]
    assert token.startswith("vs_") and token.encode() not in store.path.read_bytes()  # stored hashed
    head = {"Authorization": f"Bearer {token}"}
    assert client.post("/v2/models/iris_mlp/infer", json=IRIS, headers=head).status_code == 200
    # the wallet's tier applies: no proofs, two rows at most, its rate
    r = client.post("/v2/models/iris_mlp/infer", json={**IRIS, "parameters": {"proof": "async"}}, headers=head)
    assert r.status_code == 403
    assert client.post("/v2/models/iris_mlp/infer", json=IRIS, headers=head).status_code == 429
    # the same message and signature again: the nonce is spent
    again = client.post("/v1/auth/siwe", json=body)
    assert again.status_code == 401 and "already used" in again.json()["error"]
    # a revoked wallet's session ends at once
    store.revoke(wallet.address)
    r = client.post("/v2/models/iris_mlp/infer", json=IRIS, headers=head)
    assert r.status_code in (401, 403)
    assert client.post("/v1/auth/siwe", json=sign_in_body(client, wallet)).status_code == 403


@pytest.mark.parametrize("change, status, words", [
    ({"domain": "evil.example"}, 401, "domain"),
    ({"uri": "http://evil.example/"}, 401, "URI"),
    # signed on a plain-http copy of the site (a network attacker's): the wallet saw http://testserver
    ({"scheme": "http", "uri": "http://testserver/"}, 401, "is for http://testserver, not https://testserver"),
    ({"uri": "http://testserver/"}, 401, "URI"),
    ({"chain_id": 1}, 401, "chain 1"),
    ({"nonce": "abcdef0123456789"}, 401, "not issued"),
    ({"expires": datetime(2020, 1, 1, tzinfo=UTC)}, 401, "expired"),
    ({"issued": datetime.now(UTC) + timedelta(hours=1)}, 401, "future"),
    ({"signer": Account.create()}, 401, "not by the message's address"),
])
def test_refused_sign_ins(world, change, status, words):
    client, _store, wallet = world
    r = client.post("/v1/auth/siwe", json=sign_in_body(client, wallet, **change))
    assert r.status_code == status and words in r.json()["error"], r.text


def test_the_scheme_is_https_unless_the_server_says_http(world, tmp_path):
    client, _store, wallet = world
    assert client.get("/v1/auth/nonce").json()["scheme"] == "https"
    r = client.post("/v1/auth/siwe", json=sign_in_body(client, wallet, scheme="https"))
    assert r.status_code == 200, r.text
    settings = ServerSettings(home=tmp_path / "plain", models=("iris_mlp",), auth="on", tiers=TIERS,
                              proof_workers=0, siwe_domain=HOST, siwe_scheme="http")
    keys = ApiKeyStore(settings.apikeys_path)
    keys.add_wallet(wallet.address, "small")
    keys.close()
    with TestClient(create_app(settings)) as plain:
        for scheme, status in ((None, 401), ("https", 401), ("http", 200)):  # none: https
            body = sign_in_body(plain, wallet, scheme=scheme, uri=f"http://{HOST}/")
            assert plain.post("/v1/auth/siwe", json=body).status_code == status, scheme


def test_the_domain_is_compared_as_a_host_is_without_regard_to_case(tmp_path):
    """RFC 3986: a host's letters are case-insensitive. Browsers lowercase the page's host, and
    the wallet writes the message's domain from it: a server configured with capitals must still
    accept it. The port is not a host: another port is another site."""
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), auth="on", tiers=TIERS, proof_workers=0,
                              siwe_domain="Verinfer.Example:8443")
    wallet = Account.create()
    keys = ApiKeyStore(settings.apikeys_path)
    keys.add_wallet(wallet.address, "small")
    keys.close()
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/auth/nonce").json()["domain"] == "verinfer.example:8443"
        for domain, uri, status in (("verinfer.example:8443", "https://verinfer.example:8443/login", 200),
                                    ("VERINFER.example:8443", "https://Verinfer.EXAMPLE:8443/", 200),
                                    ("verinfer.example:8444", "https://verinfer.example:8444/", 401),
                                    ("verinfer.example:8443", "https://verinfer.example/", 401)):
            nonce = client.get("/v1/auth/nonce").json()["nonce"]
            body = sign_in_body(client, wallet, domain=domain, uri=uri, nonce=nonce)
            r = client.post("/v1/auth/siwe", json=body)
            assert r.status_code == status, (domain, uri, r.text)


def test_the_public_nonce_route_writes_nothing(world):
    """Nonces are minted, not stored: a client asking for them in a loop costs no disk."""
    client, store, _wallet = world
    nonces = {client.get("/v1/auth/nonce").json()["nonce"] for _ in range(50)}
    assert len(nonces) == 50 and all(len(n) == 64 for n in nonces)
    assert store.db.execute("SELECT count(*) FROM siwe_nonces").fetchone()[0] == 0


def test_forged_foreign_and_expired_nonces_are_refused(world):
    client, store, wallet = world
    good = client.get("/v1/auth/nonce").json()["nonce"]
    forged = good[:-1] + ("0" if good[-1] != "0" else "1")  # its tag no longer matches
    foreign = NonceMinter(secrets.token_bytes(32)).mint(time.time())  # another server's key
    # minted with this server's key (read from the shared store, as another process would)
    # longer ago than a nonce lives
    expired = store._nonces().mint(time.time() - 601)
    for nonce, words in ((forged, "not issued"), (foreign, "not issued"), (expired, "expired")):
        r = client.post("/v1/auth/siwe", json=sign_in_body(client, wallet, nonce=nonce))
        assert r.status_code == 401 and words in r.json()["error"], (nonce, r.text)
    # a nonce minted by another process on the same store signs in, once
    body = sign_in_body(client, wallet, nonce=store._nonces().mint(time.time()))
    assert client.post("/v1/auth/siwe", json=body).status_code == 200
    assert store.db.execute("SELECT count(*) FROM siwe_nonces").fetchone()[0] == 1  # spent, kept till expiry
    r = client.post("/v1/auth/siwe", json=body)
    assert r.status_code == 401 and "already used" in r.json()["error"]


def test_unregistered_wallet_bad_signature_and_malformed_message(world):
    client, _store, _wallet = world
    stranger = Account.create()
    r = client.post("/v1/auth/siwe", json=sign_in_body(client, stranger))
    assert r.status_code == 403 and "not registered" in r.json()["error"]
    body = sign_in_body(client, _wallet)
    r = client.post("/v1/auth/siwe", json={**body, "signature": "0x1234"})
    assert r.status_code == 401 and "not a valid Ethereum signature" in r.json()["error"]
    # a failed try does not burn the nonce: the right signature still signs in
    assert client.post("/v1/auth/siwe", json=body).status_code == 200
    r = client.post("/v1/auth/siwe", json={"message": "hello", "signature": "0x00"})
    assert r.status_code == 400 and "SIWE message" in r.json()["error"]
    r = client.post("/v1/auth/siwe", json={"message": body["message"]})  # no signature: a schema error
    assert r.status_code == 422 and "signature" in r.json()["error"]


def test_session_tokens_are_checked_like_keys(world):
    client, _store, _wallet = world
    for bad in ("vs_0123456789abcdef_" + "A" * 43, "vs_short"):
        r = client.post("/v2/models/iris_mlp/infer", json=IRIS, headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401 and r.json() == {"error": "invalid session token"}


def test_message_grammar():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    for statement in (None, "I accept."):
        text = make_message("a.example:8080", "0x" + "ab" * 20, "https://a.example:8080/login", 5, "n0nce1234", now,
                            statement=statement, expiration_time=now + timedelta(hours=1))
        m = parse_message(text)
        assert (m.domain, m.statement, m.chain_id, m.nonce, m.issued_at) == ("a.example:8080", statement, 5,
                                                                             "n0nce1234", now)
        assert m.expiration_time == now + timedelta(hours=1)
        for broken in (text.replace("Version: 1", "Versio: 1"), text + "\nextra", text.replace("n0nce1234", "n0!"),
                       text.replace("Chain ID: 5", "Chain ID: five"), text.replace("2026-12-01T12:00:00Z", "noon")):
            with pytest.raises(InputError):
                parse_message(broken)
    m = parse_message(make_message("h", "0x" + "cd" * 20, "http://h/", 1, "abcdefgh", now) + "\nResources:\n- ipfs://x")
    assert m.resources == ("ipfs://x",)


def test_an_api_key_store_of_version_1_migrates_and_keeps_its_keys(tmp_path):
    """Wallets and sessions came in version 2 of the API key store, minted nonces in 3: a
    version-1 file gains them and its keys still work."""
    from server import auth
    from server.sqlite import Schema, connect, version_of

    path = tmp_path / "apikeys.sqlite3"
    v1 = Schema(auth.SCHEMA.name, auth.SCHEMA.slot, auth.SCHEMA.steps[:1])
    old = auth.SCHEMA
    try:
        auth.SCHEMA = v1
        store = ApiKeyStore(path)
        key, token = store.create("big", "old key")
        store.close()
    finally:
        auth.SCHEMA = old
    store = ApiKeyStore(path)
    assert version_of(store.db, auth.SCHEMA) == 3 == auth.SCHEMA.version
    assert store.authenticate(token).id == key.id
    store.add_wallet("0x" + "ab" * 20, "small")
    assert [w.id for w in store.wallets()] == ["wallet:0x" + "ab" * 20]
    nonce = store.new_nonce(600)
    store.spend_nonce(nonce, 600)
    store.close()
    assert version_of(connect(path, auth.SCHEMA), auth.SCHEMA) == 3


def test_without_a_configured_domain_sign_in_is_off(tmp_path):
    """The domain a message must name is configured (VERINFER_SIWE_DOMAIN), never taken from
    the request's Host header (a phishing site posts its own domain's message with its own Host:
    tests/server/test_review_findings.py). Without it, no nonce and no sign-in: 409, saying why."""
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), auth="on", tiers=TIERS, proof_workers=0)
    with TestClient(create_app(settings)) as client:
        for r in (client.get("/v1/auth/nonce"), client.post("/v1/auth/siwe", json={"message": "m", "signature": "0x"})):
            assert r.status_code == 409 and "VERINFER_SIWE_DOMAIN" in r.json()["error"]


SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def test_a_lowercase_address_signs_in_and_a_high_s_twin_of_a_spent_message_is_refused(world):
    """Two leniencies, on purpose: the address need not be in EIP-55 form (the signature binds
    it; the checksum guards people copying addresses), and a high-s signature recovers as
    eth-account recovers it. Replay is refused by the nonce, whatever the signature's bytes."""
    client, _store, wallet = world
    nonce = client.get("/v1/auth/nonce").json()["nonce"]
    now = datetime.now(UTC)
    text = make_message(HOST, wallet.address.lower(), f"https://{HOST}/", 31337, nonce, now)
    sig = bytes(wallet.sign_message(encode_defunct(text=text)).signature)
    r = client.post("/v1/auth/siwe", json={"message": text, "signature": "0x" + sig.hex()})
    assert r.status_code == 200 and r.json()["address"] == wallet.address.lower(), r.text
    s = int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])  # v 27 <-> 28
    r = client.post("/v1/auth/siwe", json={"message": text, "signature": "0x" + twin.hex()})
    assert r.status_code == 401 and "already used" in r.json()["error"], r.text


def test_one_nonce_raced_by_eight_connections_is_spent_once(world):
    """Sign-ins racing with one nonce (as several server processes would, each with its own
    connection to the store): exactly one spends it, the others are told it was used."""
    import threading

    from server.errors import Unauthenticated

    _client, store, _wallet = world
    stores = [ApiKeyStore(store.path) for _ in range(8)]
    nonce, outcomes, start = store.new_nonce(600), [], threading.Barrier(8)

    def spend(s: ApiKeyStore) -> None:
        start.wait()
        try:
            s.spend_nonce(nonce, 600)
            outcomes.append("spent")
        except Unauthenticated as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=spend, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert outcomes.count("spent") == 1 and sum("already used" in o for o in outcomes) == 7, outcomes


def test_a_wallet_signing_in_in_a_loop_keeps_its_newest_sessions_only(tmp_path):
    """Past siwe_max_sessions live sessions, a sign-in ends the wallet's oldest ones: a wallet
    signing in in a loop cannot grow the store, and another wallet's session is untouched."""
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), auth="on", tiers=TIERS, proof_workers=0,
                              siwe_domain=HOST, siwe_max_sessions=3)
    alice, bob = Account.create(), Account.create()  # made by the test, never printed
    store = ApiKeyStore(settings.apikeys_path)
    for who in (alice, bob):
        store.add_wallet(who.address, "big")
    with TestClient(create_app(settings)) as client:
        def sign_in(wallet) -> dict:
            r = client.post("/v1/auth/siwe", json=sign_in_body(client, wallet))
            assert r.status_code == 200, r.text
            return {"Authorization": f"Bearer {r.json()['token']}"}

        def infer(head: dict) -> int:
            return client.post("/v2/models/iris_mlp/infer", json=IRIS, headers=head).status_code

        bobs = sign_in(bob)
        alices = [sign_in(alice) for _ in range(5)]
        assert [infer(h) for h in alices] == [401, 401, 200, 200, 200]
        assert infer(bobs) == 200
        rows = dict(store.db.execute("SELECT address, COUNT(*) FROM sessions GROUP BY address").fetchall())
        assert rows == {alice.address.lower(): 3, bob.address.lower(): 1}
    store.close()


def test_sign_ins_go_at_the_wallets_rate_from_a_bucket_of_their_own(world):
    """Each sign-in stores its spent nonce until the nonce would expire: a wallet signs in at
    its tier's rate (small: burst 2), then 429 with Retry-After; the refused try spends no
    nonce, and the sign-ins took none of the requests' tokens."""
    client, store, wallet = world
    heads = []
    for _ in range(2):
        r = client.post("/v1/auth/siwe", json=sign_in_body(client, wallet))
        assert r.status_code == 200, r.text
        heads.append({"Authorization": f"Bearer {r.json()['token']}"})
    body = sign_in_body(client, wallet)
    r = client.post("/v1/auth/siwe", json=body)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0, r.text
    nonce = parse_message(body["message"]).nonce
    assert store.db.execute("SELECT 1 FROM siwe_nonces WHERE nonce = ?", (nonce,)).fetchone() is None
    assert [client.post("/v2/models/iris_mlp/infer", json=IRIS, headers=h).status_code for h in heads] == [200, 200]
