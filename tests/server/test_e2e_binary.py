"""The binary tensor data extension against the real server process, with the real
``tritonclient[http]`` on its defaults (binary inputs and outputs), mixed with JSON tensors,
and malformed binary bodies over plain HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from models import load_split, load_torch_model

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(url=server.url)
    yield c
    c.close()


def held_out(model: str, n: int) -> np.ndarray:
    return load_split(model)[1][:n]


def subjects(res) -> dict[str, str]:
    """The receipt's subject digests (the logged statement a v2 receipt carries)."""
    import base64

    receipt = json.loads(res.get_response()["parameters"]["receipt"])
    statement = json.loads(base64.b64decode(receipt["statement"]))
    return {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}


def infer(client, model: str, x: np.ndarray, binary_in: bool, binary_out: dict[str, bool] | None):
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    outs = None if binary_out is None else [
        httpclient.InferRequestedOutput(name, binary_data=b) for name, b in binary_out.items()]
    return client.infer(model, [inp], outputs=outs)


@pytest.mark.parametrize("model", ["iris_mlp", "digits_cnn"])
def test_tritonclient_defaults_round_trip(client, model):
    """tritonclient's defaults: binary input, no outputs named (so binary_data_output)."""
    x = held_out(model, 3)
    logits, labels = (t.detach().numpy() for t in load_torch_model(model)(torch.from_numpy(x)))
    for i in range(len(x)):
        res = infer(client, model, x[i : i + 1], binary_in=True, binary_out=None)
        np.testing.assert_allclose(res.as_numpy("logits"), logits[i : i + 1], rtol=1e-5, atol=1e-5)
        label = res.as_numpy("label")
        assert label.dtype == np.int64 and label.tolist() == [int(labels[i])]
        outputs = {o["name"]: o for o in res.get_response()["outputs"]}
        assert outputs["logits"]["parameters"]["binary_data_size"] == logits[i : i + 1].nbytes
        assert outputs["label"]["parameters"]["binary_data_size"] == 8
        assert "data" not in outputs["logits"]


def test_receipt_digests_do_not_depend_on_the_encoding(client):
    x = held_out("digits_cnn", 1)
    as_json = infer(client, "digits_cnn", x, binary_in=False, binary_out={"logits": False, "label": False})
    as_binary = infer(client, "digits_cnn", x, binary_in=True, binary_out=None)
    a, b = subjects(as_json), subjects(as_binary)
    for name in ("input/input", "output/logits", "output/label", "model/digits_cnn"):
        assert a[name] == b[name]
    assert as_binary.as_numpy("logits").tobytes() == np.array(
        as_json.as_numpy("logits"), np.float32).tobytes()


@pytest.mark.parametrize(("binary_in", "binary_out"), [
    (True, {"logits": False, "label": False}),   # binary input, JSON outputs
    (False, {"logits": True, "label": True}),    # JSON input, binary outputs
    (True, {"label": True, "logits": False}),    # one output of each kind
    (False, {"label": False, "logits": True}),
])
def test_mixed_binary_and_json_tensors(client, binary_in, binary_out):
    x = held_out("iris_mlp", 2)
    logits, labels = (t.detach().numpy() for t in load_torch_model("iris_mlp")(torch.from_numpy(x)))
    res = infer(client, "iris_mlp", x, binary_in, binary_out)
    assert [o["name"] for o in res.get_response()["outputs"]] == list(binary_out)
    for o in res.get_response()["outputs"]:
        assert ("parameters" in o) == binary_out[o["name"]]
    np.testing.assert_allclose(res.as_numpy("logits"), logits, rtol=1e-5, atol=1e-5)
    assert res.as_numpy("label").tolist() == labels.tolist()


def test_a_batch_of_many_rows_in_one_binary_request(client):
    x = held_out("digits_cnn", 200)  # 51 KB binary, under the fixture's 64 KiB body limit
    _, labels = (t.detach().numpy() for t in load_torch_model("digits_cnn")(torch.from_numpy(x)))
    res = infer(client, "digits_cnn", x, binary_in=True, binary_out=None)
    assert res.as_numpy("logits").shape == (200, 10)
    assert res.as_numpy("label").tolist() == labels.tolist()


def post(server, body: bytes, header_length: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/octet-stream"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    req = urllib.request.Request(server.base + "/v2/models/iris_mlp/infer", data=body,
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_malformed_binary_bodies_are_400(server):
    raw = np.array([[6.1, 2.8, 4.7, 1.2]], "<f4").tobytes()

    def header(size: int) -> bytes:
        return json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                       "parameters": {"binary_data_size": size}}]}).encode()

    good = header(16)
    assert post(server, good + raw, str(len(good)))[0] == 200
    cases = [
        (good + raw, str(len(good) + len(raw) + 5), "does not fit the body"),   # header past the end
        (good + raw, "abc", "is not an integer"),
        (good + raw, str(len(good) - 3), "malformed JSON"),                     # header cut short
        (header(12) + raw, str(len(header(12))), "binary_data_size is 12"),     # size != body
        (header(12) + raw[:12], str(len(header(12))), "needs 16"),              # size != shape
        (good + raw, None, "malformed JSON"),                                   # no header length
    ]
    for body, length, message in cases:
        status, answer = post(server, body, length)
        assert status == 400, (length, answer)
        assert message in answer["error"], answer


def test_a_tritonclient_answer_verifies_with_its_arrays(client, server):
    """verify_response(result.get_response(), keys, outputs=arrays, input=x): a tritonclient
    client on its defaults (binary input and outputs) checks its answer whole, the outputs as
    the arrays it got and the input as the array it sent (verifier/responses.py)."""
    from verifier.audit import load_trusted_keys
    from verifier.errors import DigestMismatch, InputError
    from verifier.responses import verify_response

    keys = load_trusted_keys(server.base + "/v1/keys")
    x, other = held_out("digits_cnn", 2)[:1], held_out("digits_cnn", 2)[1:]
    res = infer(client, "digits_cnn", x, binary_in=True, binary_out=None)
    doc, got = res.get_response(), {n: res.as_numpy(n) for n in ("logits", "label")}
    statement = verify_response(doc, keys, outputs=got, input=x)
    assert statement.predicate.label == int(got["label"][0])
    mixed = infer(client, "digits_cnn", x, binary_in=True, binary_out={"label": True, "logits": False})
    verify_response(mixed.get_response(), keys, outputs={"label": mixed.as_numpy("label")}, input=x)

    changed = {**got, "logits": got["logits"].copy()}
    changed["logits"][0, 0] += 0.25
    for outputs, sent, error in (
            (changed, x, DigestMismatch),  # an output not the attested one
            ({**got, "logits": got["logits"].astype(np.float64)}, x, DigestMismatch),  # another datatype
            (got, other, DigestMismatch),  # the answer to another input
            (got, x.astype(np.float64), DigestMismatch),
            ({"label": got["label"]}, x, InputError),  # a binary output without its array
            ({**got, "probabilities": got["logits"]}, x, InputError)):  # an array for no output
        with pytest.raises(error):
            verify_response(doc, keys, outputs=outputs, input=sent)
