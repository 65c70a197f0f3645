"""Access control: API keys with tiers (server/auth.py, server/http/auth.py), in process;
the ``verinfer apikeys`` commands in a subprocess."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from server.auth import ApiKeyStore, RateLimiter, Tier
from server.errors import RateLimited
from server.http.app import create_app
from server.settings import ServerSettings

IRIS = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}


def rows(n: int) -> dict:
    return {"inputs": [{"name": "input", "shape": [n, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2] * n}]}


TIERS = {"small": Tier(rate_per_s=0.01, burst=3, proofs=False, max_rows=2),
         "big": Tier(rate_per_s=1000, burst=1000, proofs=True, max_rows=100)}


@pytest.fixture
def world(tmp_path):
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), auth="on", tiers=TIERS,
                              max_rows_per_request=8, proof_workers=0)
    store = ApiKeyStore(settings.apikeys_path)
    small = store.create("small", "alice")
    big = store.create("big", "bob")
    with TestClient(create_app(settings)) as client:
        yield client, store, small, big
    store.close()


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_public_routes_need_no_key(world):
    client, *_ = world
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/iris_mlp",
                 "/v2/models/iris_mlp/ready", "/.well-known/jwks.json", "/v1/keys", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_no_key_unknown_key_revoked_key(world):
    client, store, _small, (big, big_token) = world
    r = client.post("/v2/models/iris_mlp/infer", json=IRIS)
    assert r.status_code == 401 and "API key is required" in r.json()["error"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    forged = big_token[:-4] + ("AAAA" if not big_token.endswith("AAAA") else "BBBB")
    for bad in ("nonsense", forged):
        r = client.post("/v2/models/iris_mlp/infer", json=IRIS, headers=auth(bad))
        assert r.status_code == 401 and r.json() == {"error": "invalid API key"}
    assert client.post("/v2/models/iris_mlp/infer", json=IRIS, headers=auth(big_token)).status_code == 200
    assert client.post("/v2/models/iris_mlp/infer", json=IRIS,
                       headers={"X-API-Key": big_token}).status_code == 200
    store.revoke(big.id)
    r = client.post("/v2/models/iris_mlp/infer", json=IRIS, headers=auth(big_token))
    assert r.status_code == 403 and "revoked" in r.json()["error"]
    assert client.get("/v1/proofs", headers=auth(big_token)).status_code == 403


def test_over_rate_is_429_with_retry_after(world):
    client, _store, (_, small_token), (_, big_token) = world
    codes = [client.post("/v2/models/iris_mlp/infer", json=IRIS, headers=auth(small_token)).status_code
             for _ in range(3)]
    assert codes == [200, 200, 200]  # the burst
    r = client.post("/v2/models/iris_mlp/infer", json=IRIS, headers=auth(small_token))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "rate limit" in r.json()["error"]
    # one key's limit is its own
    assert client.post("/v2/models/iris_mlp/infer", json=IRIS, headers=auth(big_token)).status_code == 200


def test_over_tier_is_403_and_over_the_server_limit_400(world):
    client, _store, (_, small_token), (_, big_token) = world
    r = client.post("/v2/models/iris_mlp/infer", json=rows(3), headers=auth(small_token))
    assert r.status_code == 403 and "at most 2" in r.json()["error"]
    r = client.post("/v2/models/iris_mlp/infer", json={**IRIS, "parameters": {"proof": "async"}},
                    headers=auth(small_token))
    assert r.status_code == 403 and "may not request proofs" in r.json()["error"]
    r = client.post("/v1/proofs", json={"model": "iris_mlp", "inputs": IRIS["inputs"]},
                    headers=auth(small_token))
    assert r.status_code == 403
    assert client.post("/v2/models/iris_mlp/infer", json=rows(8), headers=auth(big_token)).status_code == 200
    r = client.post("/v2/models/iris_mlp/infer", json=rows(9), headers=auth(big_token))
    assert r.status_code == 400 and "at most 8" in r.json()["error"]


def test_auth_is_off_on_loopback_by_default_and_on_elsewhere(tmp_path):
    assert not ServerSettings(home=tmp_path).auth_enabled
    assert not ServerSettings(home=tmp_path, host="::1").auth_enabled
    assert ServerSettings(home=tmp_path, host="0.0.0.0").auth_enabled
    assert ServerSettings(home=tmp_path, host="10.1.2.3").auth_enabled
    assert not ServerSettings(home=tmp_path, host="127.0.0.2").auth_enabled
    # a host name is resolved when the server binds, to any address: only "localhost" is loopback
    assert ServerSettings(home=tmp_path, host="127.attacker.example").auth_enabled
    assert not ServerSettings(home=tmp_path, host="0.0.0.0", auth="off").auth_enabled
    assert ServerSettings(home=tmp_path, auth="on").auth_enabled


def test_rate_limiter_refills():
    limiter, tier = RateLimiter(), Tier(rate_per_s=2, burst=2)
    limiter.take("k", tier, now=0.0)
    limiter.take("k", tier, now=0.0)
    with pytest.raises(RateLimited):
        limiter.take("k", tier, now=0.1)
    limiter.take("k", tier, now=0.6)  # 1 token back after 0.5 s


def test_apikeys_cli(tmp_path):
    env = {**os.environ, "VERINFER_HOME": str(tmp_path)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "verifier.cli", "apikeys", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    made = cli("create", "--tier", "prover", "--name", "ci", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["tier"] == "prover" and key["key"].startswith(f"vk_{key['id']}_")
    db = tmp_path / "apikeys.sqlite3"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert key["key"].encode() not in db.read_bytes()  # stored hashed
    listed = json.loads(cli("list", "--json").stdout)["keys"]
    assert [(k["id"], k["revoked"]) for k in listed] == [(key["id"], None)]
    assert "key" not in listed[0]
    plain = cli("list")  # the listing is the command's product: stdout, as `models list`
    assert plain.returncode == 0 and plain.stdout.split()[:3] == [key["id"], "prover", "active"], plain
    assert cli("revoke", key["id"]).returncode == 0
    assert json.loads(cli("list", "--json").stdout)["keys"][0]["revoked"] is not None
    again = cli("revoke", key["id"])
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already revoked" in again.stderr
    bad = cli("create", "--tier", "gold")
    assert bad.returncode == 2 and "unknown tier 'gold'" in bad.stderr


def test_without_keys_on_loopback_no_other_host_name_and_no_other_sites_page_is_served(tmp_path):
    """auth=auto on a loopback bind (no keys): a web page the user opens can still reach the
    server. Any site can POST a text/plain body (no preflight) to 127.0.0.1 and have it infer
    and sign; one that rebinds its own name to 127.0.0.1 reads the answers (Host: its name).
    Both are refused (403); local clients and pages on a loopback host are served."""
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), proof_workers=0)  # auto, 127.0.0.1
    assert not settings.auth_enabled
    body = json.dumps(IRIS)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8080") as client:
        def infer(**headers):
            return client.post("/v2/models/iris_mlp/infer", content=body,
                               headers={"Content-Type": "text/plain", **headers})

        assert infer().status_code == 200  # curl, a script: no Origin
        for origin in ("https://evil.example", "null", "http://127.0.0.1.evil.example:8080"):
            r = infer(Origin=origin)
            assert r.status_code == 403 and "web page" in r.json()["error"], origin
        for origin in ("http://127.0.0.1:8080", "http://localhost:3000", "http://[::1]:8080"):
            assert infer(Origin=origin).status_code == 200, origin
        for host in ("evil.example:8080", "127.0.0.1.nip.io:8080", "localhost.evil.example"):
            r = client.get("/v1/status", headers={"Host": host})  # a rebound name
            assert r.status_code == 403 and "loopback" in r.json()["error"], host
            assert infer(Host=host).status_code == 403
        for host in ("localhost:8080", "LOCALHOST", "127.0.0.2", "[::1]:8080"):
            assert client.get("/v1/status", headers={"Host": host}).status_code == 200, host
    # access control on (keys), or off by choice: no such rule
    for auth_mode in ("on", "off"):
        with TestClient(create_app(settings.model_copy(update={"auth": auth_mode}))) as client:
            assert client.get("/v2/health/live", headers={"Origin": "https://evil.example"}).status_code == 200
