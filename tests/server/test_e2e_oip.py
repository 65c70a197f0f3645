"""The real server process, called with the real ``tritonclient[http]`` (JSON mode).

Receipts are checked here with only ``cryptography`` and the served JWKS, the
EIP-712 signature with ``eth-account``: no verinfer code in those checks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from eth_account import Account
from eth_account.messages import encode_typed_data

from models import load_split, load_torch_model
from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2

pytestmark = pytest.mark.e2e


# --- independent checks (cryptography / eth-account only) ------------------------------


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def check_receipt(receipt: dict, server) -> dict:
    """The standalone recipe of docs/formats.md (hashlib + cryptography only) with the
    server's active note key; returns the logged statement."""
    from tests.tlog_support import doc_recipe

    return doc_recipe()(receipt, server.get("/v1/keys")["log"]["note_keys"][0])


def tensor_digest(arr: np.ndarray, datatype: str) -> str:
    """The canonical tensor digest, recomputed from docs/formats.md."""
    a = np.ascontiguousarray(arr)
    head = b"verinfer.tensor.v1\x00" + datatype.encode() + b"\x00" + struct.pack("<I", a.ndim)
    head += b"".join(struct.pack("<Q", d) for d in a.shape)
    return hashlib.sha256(head + a.astype(a.dtype.newbyteorder("<")).tobytes()).hexdigest()


def digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    _, x_test, _, y_test = load_split("digits_cnn")
    return x_test[:n], y_test[:n]


def triton_infer(client, model: str, x: np.ndarray, **kw):
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    outs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("logits", "label")]
    return client.infer(model, [inp], outputs=outs, **kw)


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(url=server.url, concurrency=4)
    yield c
    c.close()


# --- the protocol -----------------------------------------------------------------------


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata()["name"] == "verinfer"
    for name in ("iris_mlp", "digits_cnn"):
        assert client.is_model_ready(name)
        assert client.is_model_ready(name, model_version="1")
        meta = client.get_model_metadata(name)
        assert meta["inputs"][0]["name"] == "input"
        assert [o["name"] for o in meta["outputs"]] == ["logits", "label"]
    assert client.get_model_metadata("digits_cnn", model_version="1")["inputs"][0]["shape"] == [-1, 1, 8, 8]


def test_infer_matches_torch_and_receipt_verifies(client, server):
    x, _y = digits(8)
    torch_logits, torch_label = (t.detach().numpy() for t in load_torch_model("digits_cnn")(__import__("torch").from_numpy(x)))
    jwks = server.get("/.well-known/jwks.json")
    for i in range(len(x)):
        res = triton_infer(client, "digits_cnn", x[i : i + 1], request_id=f"req-{i}")
        np.testing.assert_allclose(res.as_numpy("logits"), torch_logits[i : i + 1], rtol=1e-5, atol=1e-5)
        assert res.as_numpy("label").tolist() == [int(torch_label[i])]
        resp = res.get_response()
        assert resp["id"] == f"req-{i}"
        receipt = json.loads(resp["parameters"]["receipt"])
        st = check_receipt(receipt, server)
        assert ReceiptV2.parse(receipt) and verify_receipt_v2(ReceiptV2.parse(receipt), jwks)
        assert st["_type"] == "https://in-toto.io/Statement/v1"
        p = st["predicate"]
        assert p["requestId"] == receipt["id"] == resp["parameters"]["receipt_id"]
        assert p["clientRequestId"] == f"req-{i}"
        assert p["label"] == int(torch_label[i]) and p["device"] == "cpu"
        assert p["model"]["name"] == "digits_cnn"
        subjects = {s["name"]: s["digest"]["sha256"] for s in st["subject"]}
        assert subjects["input/input"] == tensor_digest(x[i : i + 1], "FP32")
        assert subjects["output/logits"] == tensor_digest(res.as_numpy("logits"), "FP32")
        assert subjects["output/label"] == tensor_digest(res.as_numpy("label"), "INT64")
        model_sha = hashlib.sha256(Path(__import__("models").get_reference_model("digits_cnn").onnx_path).read_bytes()).hexdigest()
        assert subjects["model/digits_cnn"] == model_sha
        # the stored copy is the same receipt
        assert server.get(f"/v1/receipts/{receipt['id']}") == receipt


def test_eip712_signer_recovers_with_eth_account(client, server):
    x, _ = digits(1)
    assert json.loads(triton_infer(client, "digits_cnn", x).get_response()["parameters"]["receipt"])["eip712"] is None
    res = triton_infer(client, "digits_cnn", x, parameters={"eip712": True})  # asked for
    receipt = json.loads(res.get_response()["parameters"]["receipt"])
    assert check_receipt(receipt, server)["predicate"]["eip712"]["signer"] == receipt["eip712"]["signer"]
    eip = receipt["eip712"]
    typed = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"},
            ],
            "Classification": [
                {"name": "modelId", "type": "bytes32"}, {"name": "inputCommitment", "type": "bytes32"},
                {"name": "label", "type": "uint256"}, {"name": "requestId", "type": "bytes32"},
                {"name": "deadline", "type": "uint256"},
            ],
        },
        "primaryType": "Classification",
        "domain": eip["domain"],
        "message": eip["message"],
    }
    signer = Account.recover_message(encode_typed_data(full_message=typed), signature=eip["signature"])
    assert signer == eip["signer"] == server.get("/v1/keys")["eip712"]["signer"]
    assert eip["domain"]["chainId"] == 31337
    assert eip["message"]["requestId"] == receipt["id"]
    assert eip["message"]["label"] == int(res.as_numpy("label")[0])
    # the commitment is over the fixed-point input at the default scale 13
    from verifier.fixedpoint import input_commitment, quantize

    assert eip["message"]["inputCommitment"] == "0x" + input_commitment(quantize(x, 13)).hex()


def test_concurrent_requests_get_their_own_answers(server):
    x, _ = digits(48)
    expected = load_torch_model("digits_cnn")(__import__("torch").from_numpy(x))[0].detach().numpy()
    def one(i: int):
        c = httpclient.InferenceServerClient(url=server.url)
        try:
            return i, triton_infer(c, "digits_cnn", x[i : i + 1])
        finally:
            c.close()

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(len(x))))
    for i, res in results:
        np.testing.assert_allclose(res.as_numpy("logits")[0], expected[i], rtol=1e-5, atol=1e-5)
        st = check_receipt(json.loads(res.get_response()["parameters"]["receipt"]), server)
        digests = {s["name"]: s["digest"]["sha256"] for s in st["subject"]}
        assert digests["input/input"] == tensor_digest(x[i : i + 1], "FP32")


def test_batch_request_and_iris(client):
    x, _ = digits(5)
    res = triton_infer(client, "digits_cnn", x)
    assert res.as_numpy("logits").shape == (5, 10)
    receipt = json.loads(res.get_response()["parameters"]["receipt"])
    assert receipt["eip712"] is None  # a contract checks one sample at a time
    iris = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    res = triton_infer(client, "iris_mlp", iris, model_version="1")
    assert res.as_numpy("label").tolist() == [0]


def test_docs_served(server):
    import urllib.request

    with urllib.request.urlopen(server.base + "/docs") as r:
        assert r.status == 200
    spec = server.get("/openapi.json")
    assert "/v2/models/{name}/infer" in spec["paths"]
