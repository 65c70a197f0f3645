"""Receipts v2 and the log API, with the app in process (the receipt worker is a real child)."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi.testclient import TestClient

from server.http.app import create_app
from server.settings import ServerSettings
from verifier.errors import SignatureInvalid
from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2
from verifier.tlog import (
    NoteVerifier,
    leaf_hash,
    verify_checkpoint,
    verify_consistency,
    verify_inclusion,
)

IRIS = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2]]}]}


@pytest.fixture
def client(tmp_path):
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), log_origin="test.verinfer/log")
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        yield c


def _b64s(items: list[str]) -> list[bytes]:
    return [base64.b64decode(h) for h in items]


def test_answers_carry_v2_receipts_that_verify(client):
    keys = client.get("/v1/keys").json()
    assert keys["log"]["origin"] == "test.verinfer/log"
    assert client.get("/.well-known/verinfer-log.json").json() == keys["log"]
    note_keys = [NoteVerifier.parse(k) for k in keys["log"]["note_keys"]]
    jwks = keys["jwks"]
    seen = []
    for k in range(5):
        r = client.post("/v2/models/iris_mlp/infer", json={**IRIS, "id": f"c{k}"}).json()
        receipt = ReceiptV2.parse(r["parameters"]["receipt"])
        assert receipt.eip712 is None  # not asked for
        st = verify_receipt_v2(receipt, jwks, origin="test.verinfer/log")
        assert verify_receipt_v2(receipt, note_keys) == st
        assert st.predicate.clientRequestId == f"c{k}" and st.predicate.label == r["parameters"]["label"]
        assert st.predicate.eip712 is None
        # the response's numbers are the logged statement's
        assert r["outputs"][0]["data"] == st.predicate.outputs[0].data
        with pytest.raises(SignatureInvalid):
            verify_receipt_v2(receipt, jwks, trusted_eth_signers={keys["eip712"]["signer"]})
        seen.append(receipt)
    assert [r.index for r in seen] == sorted({r.index for r in seen})

    # the log API: latest checkpoint, proofs by index, consistency between checkpoints
    note = client.get("/v1/log/checkpoint").text
    latest = verify_checkpoint(note, note_keys, "test.verinfer/log")
    assert latest.size >= 5
    for receipt in seen:
        got = client.get(f"/v1/log/proof/inclusion?index={receipt.index}&size={latest.size}").json()
        verify_inclusion(receipt.index, latest.size, leaf_hash(receipt.statement_bytes()), _b64s(got["proof"]),
                         latest.root)
        old = verify_checkpoint(receipt.checkpoint, note_keys)
        cons = client.get(f"/v1/log/proof/consistency?from={old.size}&to={latest.size}").json()
        verify_consistency(old.size, latest.size, old.root, latest.root, _b64s(cons["proof"]))
        stored = client.get(f"/v1/receipts/{receipt.id}").json()
        assert ReceiptV2.parse(stored) == receipt
        fresh = ReceiptV2.parse(client.get(f"/v1/receipts/{receipt.id}?fresh=1").json())
        assert fresh.checkpoint == note and fresh.statement == receipt.statement
        verify_receipt_v2(fresh, jwks, origin="test.verinfer/log")


def test_eip712_only_on_request_and_named_in_the_statement(client):
    keys = client.get("/v1/keys").json()
    r = client.post("/v2/models/iris_mlp/infer", json={**IRIS, "parameters": {"eip712": True}}).json()
    receipt = ReceiptV2.parse(r["parameters"]["receipt"])
    signer = keys["eip712"]["signer"]
    st = verify_receipt_v2(receipt, keys["jwks"], trusted_eth_signers={signer})
    assert receipt.eip712.signer == st.predicate.eip712.signer == signer
    assert st.predicate.eip712.domain.model_dump() == keys["eip712"]["domain"]
    r = client.post("/v2/models/iris_mlp/infer", json={**IRIS, "parameters": {"eip712": "yes"}})
    assert r.status_code == 400 and "eip712" in r.json()["error"]
    # an attestation names one label: a request of two samples that asks for one is refused, and
    # nothing of it reaches the log
    size = client.get("/v1/log/checkpoint").text.split("\n")[1]
    two = {"inputs": [{**IRIS["inputs"][0], "shape": [2, 4], "data": [[5.1, 3.5, 1.4, 0.2]] * 2}],
           "parameters": {"eip712": True}}
    r = client.post("/v2/models/iris_mlp/infer", json=two)
    assert r.status_code == 400 and r.json()["error"].startswith("parameters.eip712 needs a request of one sample")
    assert client.get("/v1/log/checkpoint").text.split("\n")[1] == size


def test_statement_bytes_are_rfc8785(client):
    """The server's fast writer gives the bytes rfc8785 gives, odd client ids and batches included."""
    import rfc8785

    from verifier.receipts_v2 import StatementV2

    batch = {"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP64",
                         "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3, 1e-7, -0.0, 3.0, 2.5e-5]}]}
    for body in ({**IRIS, "id": 'ünï"c\\ode\n\u2028 ☃'}, {**batch, "id": "b"}, {**IRIS, "parameters": {"eip712": True}}):
        r = client.post("/v2/models/iris_mlp/infer", json=body).json()
        data = ReceiptV2.parse(r["parameters"]["receipt"]).statement_bytes()
        assert rfc8785.dumps(json.loads(data)) == data
        assert StatementV2.model_validate_json(data).canonical_bytes() == data


def test_log_api_bad_input(client):
    client.post("/v2/models/iris_mlp/infer", json=IRIS)
    size = int(client.get("/v1/log/checkpoint").text.split("\n")[1])
    # docs/server.md: no such leaf or signed size is a 404; a query parameter of the wrong type
    # (or missing) is FastAPI's 422, the same {"error"} body naming the parameter
    for url, status, words in (
            (f"/v1/log/proof/inclusion?index={size}&size={size}", 404, f"not in a tree of size {size}"),
            (f"/v1/log/proof/inclusion?index=0&size={size + 10}", 404, "not a size the log has signed"),
            ("/v1/log/proof/inclusion?index=-1", 422, "query.index"),
            (f"/v1/log/proof/consistency?from={size + 1}&to={size}", 404, "to the smaller size"),
            ("/v1/log/proof/inclusion?index=x", 422, "query.index"),
            ("/v1/log/proof/consistency", 422, "query.from"),
            ("/v1/receipts/0x" + "00" * 32 + "?fresh=maybe", 422, "query.fresh")):
        r = client.get(url)
        assert r.status_code == status and set(r.json()) == {"error"}, (url, r.text)
        assert words in r.json()["error"], (url, r.text)
    assert client.get("/v1/receipts/0x" + "00" * 32).status_code == 404
    r = client.get(f"/v1/log/proof/consistency?from={size}&to={size - 1}")  # no such proof (not a 400: ST202)
    assert r.status_code == 404 and "to the smaller size" in r.json()["error"]
    assert json.loads(client.get("/v1/log/proof/consistency?from=0").text)["proof"] == []


def test_swapped_eip712_parts_are_refused(client):
    """Issue 16: an answer's Ed25519-logged statement and another answer's EIP-712 signature do not
    combine: each EIP-712 part must sign this statement's request, model, input and label, by the
    signer and domain the statement names; nor can one be added to a statement that names none."""
    from verifier.errors import LinkBroken

    keys = client.get("/v1/keys").json()
    signer = {keys["eip712"]["signer"]}
    other = {**IRIS, "inputs": [{**IRIS["inputs"][0], "data": [[6.7, 3.0, 5.2, 2.3]]}]}
    first, second = (json.loads(client.post("/v2/models/iris_mlp/infer", json={**b, "parameters": {"eip712": True}})
                                .json()["parameters"]["receipt"]) for b in (IRIS, other))
    plain = json.loads(client.post("/v2/models/iris_mlp/infer", json=IRIS).json()["parameters"]["receipt"])
    for doc in (first, second):
        verify_receipt_v2(ReceiptV2.parse(doc), keys["jwks"], trusted_eth_signers=signer)
    for target, part in ((first, second["eip712"]), (second, first["eip712"]), (plain, first["eip712"])):
        with pytest.raises(LinkBroken):
            verify_receipt_v2(ReceiptV2.parse({**target, "eip712": part}), keys["jwks"], trusted_eth_signers=signer)
    with pytest.raises(SignatureInvalid):  # and a statement with its EIP-712 part removed lacks it
        verify_receipt_v2(ReceiptV2.parse({**first, "eip712": None}), keys["jwks"], trusted_eth_signers=signer)
