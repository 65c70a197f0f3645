"""``verinfer audit`` on saved inference responses (verifier/responses.py): the receipt a
response carries is verified, then the response's answer against it. Responses come from the
real app (its keys made here); the audit is the light CLI in a subprocess, offline."""

from __future__ import annotations

import base64
import copy
import json
import re

import pytest
from fastapi.testclient import TestClient

from server.http.app import create_app
from server.settings import ServerSettings
from tests.verifier.audit_support import verinfer

SAMPLE = [6.1, 2.8, 4.7, 1.2]  # iris_mlp: label 1


def _body(rows: list[list[float]], datatype: str = "FP32", nested: bool = False, **extra) -> dict:
    return {"inputs": [{"name": "input", "shape": [len(rows), 4], "datatype": datatype,
                        "data": rows if nested else [v for r in rows for v in r]}], **extra}


# what the clients sent (the answers' requests)
REQUESTS = {
    "one": _body([SAMPLE], id="client-7"),
    "other": _body([[5.1, 3.5, 1.4, 0.2]]),
    "label_only": _body([SAMPLE], outputs=[{"name": "label"}]),
    "two": _body([SAMPLE, [5.1, 3.5, 1.4, 0.2]]),
    # the same sample as FP64, nested lists: the receipt attests the input as sent
    "fp64_nested": _body([SAMPLE], datatype="FP64", nested=True),
    "int64": _body([[6, 3, 5, 1]], datatype="INT64"),
}


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    settings = ServerSettings(home=home, models=("iris_mlp",), proof_workers=0)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        def infer(body: dict) -> dict:
            r = client.post("/v2/models/iris_mlp/infer", json=body)
            assert r.status_code == 200, r.text
            return r.json()

        got = {name: infer(body) for name, body in REQUESTS.items()}
        keys = client.get("/.well-known/verinfer-log.json").text
        (home / "v1-keys.json").write_text(client.get("/v1/keys").text)  # what the README pins
    assert got["one"]["parameters"]["label"] == 1 and got["one"]["id"] == "client-7"
    return got, keys, home / "v1-keys.json"


def _audit(tmp_path, keys: str, files: dict[str, str]) -> tuple[int, dict[str, tuple[str, str | None]], str]:
    folder = tmp_path / "saved"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    (tmp_path / "keys.json").write_text(keys)
    r = verinfer("audit", folder, "--keys", tmp_path / "keys.json", "--json")
    report = json.loads(r.stdout)
    items = {it["item"].rsplit("/", 1)[1]: (it["outcome"], it.get("error")) for it in report["items"]}
    return r.returncode, items, r.stderr


def test_saved_responses_verify_with_their_answer(tmp_path, answers):
    got, keys, _ = answers
    files = {f"{k}.json": json.dumps(v) for k, v in got.items()}
    files["both.json"] = json.dumps([got["one"], got["two"]])  # a list of responses
    # one per line (curl ... >> answers.jsonl), beside the receipts of a receipts file
    files["lines.jsonl"] = "\n".join([json.dumps(got["one"]), got["other"]["parameters"]["receipt"]])
    code, items, err = _audit(tmp_path, keys, files)
    assert code == 0, err
    assert items == {name: ("ok", None) for name in
                     ("label_only.json", "one.json", "other.json", "two.json", "fp64_nested.json",
                      "int64.json", "both.json[0]", "both.json[1]", "lines.jsonl:1", "lines.jsonl:2")}
    assert re.search(r"\n  receipt +1 +0 +0\n  response +9 +0 +0\n", err), err  # the summary counts each kind
    r = verinfer("audit", tmp_path / "saved" / "one.json", "--keys", tmp_path / "keys.json")
    assert r.returncode == 0 and "one.json (response, iris_mlp, label 1)\n" in r.stderr, r.stderr


def _changed(doc: dict, edit) -> str:
    doc = copy.deepcopy(doc)
    edit(doc)
    return json.dumps(doc)


def _relabel(doc: dict) -> None:
    receipt = json.loads(doc["parameters"]["receipt"])
    statement = base64.b64decode(receipt["statement"])
    assert statement.count(b'"label":1') == 1
    receipt["statement"] = base64.b64encode(statement.replace(b'"label":1', b'"label":2')).decode()
    doc["parameters"]["receipt"] = json.dumps(receipt)
    doc["parameters"]["label"] = 2
    doc["outputs"][1]["data"] = [2]


def test_a_response_that_is_not_the_attested_answer_fails(tmp_path, answers):
    got, keys, _ = answers
    one, other = got["one"], got["other"]

    def set_(path, value):
        def edit(doc):
            *head, last = path
            for k in head:
                doc = doc[k]
            doc[last] = value
        return edit

    logits = one["outputs"][0]
    assert logits["name"] == "logits"
    cases = {
        "logit.json": (set_(("outputs", 0, "data", 0), logits["data"][0] + 0.5), "DigestMismatch"),
        "label_output.json": (set_(("outputs", 1, "data"), [2]), "DigestMismatch"),
        "label.json": (set_(("parameters", "label"), 2), "LinkBroken"),
        "label_true.json": (set_(("parameters", "label"), True), "LinkBroken"),  # JSON true is not 1
        "model.json": (set_(("model_name",), "digits_cnn"), "LinkBroken"),
        "version.json": (set_(("model_version",), "2"), "LinkBroken"),
        "receipt_id.json": (set_(("parameters", "receipt_id"), other["parameters"]["receipt_id"]), "LinkBroken"),
        "client_id.json": (set_(("id",), "client-8"), "LinkBroken"),
        "shape.json": (set_(("outputs", 0, "shape"), [3]), "DigestMismatch"),
        "datatype.json": (set_(("outputs", 0, "datatype"), "FP64"), "DigestMismatch"),
        "unknown_output.json": (set_(("outputs", 0, "name"), "probabilities"), "LinkBroken"),
        "twice.json": (lambda d: d["outputs"].append(copy.deepcopy(d["outputs"][0])), "LinkBroken"),
        "strings.json": (set_(("outputs", 0, "data"), [str(v) for v in logits["data"]]), "DigestMismatch"),
        # another answer's intact receipt beside this answer
        "swapped.json": (set_(("parameters", "receipt"), other["parameters"]["receipt"]), "LinkBroken"),
        # the receipt itself altered (its statement's label, as the response's): its own checks fail
        "receipt.json": (_relabel, "InclusionInvalid"),
    }
    files = {name: _changed(one, edit) for name, (edit, _) in cases.items()}
    code, items, err = _audit(tmp_path, keys, files)
    assert code == 1, err
    for name, (_, kind) in cases.items():
        outcome, error = items[name]
        assert outcome == "fail", (name, items[name])
        assert error == kind, (name, items[name])


def test_a_response_that_cannot_be_checked_is_an_error(tmp_path, answers):
    got, keys, _ = answers
    one = got["one"]
    binary = copy.deepcopy(one)
    del binary["outputs"][0]["data"]
    binary["outputs"][0]["parameters"] = {"binary_data_size": 12}
    text = json.dumps(one)
    files = {
        "binary.json": json.dumps(binary),
        # two "outputs" keys: a reader that takes the first and one that takes the last disagree
        "dup_key.json": text[:-1] + ', "outputs": ' + json.dumps(got["other"]["outputs"]) + "}",
        "no_outputs.json": _changed(one, lambda d: d.__setitem__("outputs", [])),
    }
    code, items, err = _audit(tmp_path, keys, files)
    assert code == 2, err
    assert items == {name: ("error", "InputError") for name in files}, items


def test_the_standalone_recipe_checks_the_answer_too(answers):
    """docs/formats.md's recipe (hashlib and cryptography only): check_receipt, then
    check_answer on the whole response."""
    from tests.tlog_support import doc_block

    got, keys, _ = answers
    recipe: dict = {}
    exec(compile(doc_block("recipe"), "docs/formats.md#recipe", "exec"), recipe)
    note_key = json.loads(keys)["note_keys"][0]

    def check(doc: dict, request: dict | None = None) -> None:
        statement = recipe["check_receipt"](json.loads(doc["parameters"]["receipt"]), note_key)
        recipe["check_answer"](doc, statement)
        if request is not None:
            recipe["check_request"](request, statement)

    for name, doc in got.items():
        check(doc, REQUESTS[name])  # FP32, FP64 nested, INT64: the digest as the server took it
    for response, request in ((got["one"], REQUESTS["other"] | {"id": "client-7"}),  # another input
                              (got["label_only"], REQUESTS["one"]),  # the same input, another id
                              (got["one"], json.loads(_changed(REQUESTS["one"], lambda d: d["inputs"][0].__setitem__(
                                  "datatype", "FP64"))))):
        with pytest.raises(ValueError, match="the receipt attests an answer to another"):
            check(response, request)
    one, logits = got["one"], got["one"]["outputs"][0]["data"]
    for edit in (lambda d: d["outputs"][0]["data"].__setitem__(0, logits[0] + 0.5),
                 lambda d: d["outputs"][1].__setitem__("data", [True]),  # JSON true, not 1
                 lambda d: d["parameters"].__setitem__("label", 2),
                 lambda d: d["outputs"][0].__setitem__("shape", [3]),
                 lambda d: d["outputs"][0].__setitem__("name", "probabilities"),
                 lambda d: d["parameters"].__setitem__("receipt", got["other"]["parameters"]["receipt"])):
        with pytest.raises(ValueError):
            check(json.loads(_changed(one, edit)))


def test_verify_response_for_python_clients(answers):
    """The README's client check: keys pinned from a saved GET /v1/keys, then verify_response."""
    from verifier.audit import load_trusted_keys
    from verifier.errors import DigestMismatch, LinkBroken
    from verifier.responses import verify_response

    got, _, saved_keys = answers
    keys = load_trusted_keys(saved_keys)
    statement = verify_response(got["one"], keys)
    assert statement.predicate.label == 1 and statement.predicate.requestId == got["one"]["parameters"]["receipt_id"]
    with pytest.raises(DigestMismatch):
        verify_response(json.loads(_changed(got["one"], lambda d: d["outputs"][0]["data"].reverse())), keys)
    with pytest.raises(LinkBroken):
        verify_response(json.loads(_changed(got["one"], lambda d: d["parameters"].__setitem__(
            "receipt", got["other"]["parameters"]["receipt"]))), keys)


def test_an_answer_is_held_to_the_request_it_answers(answers):
    """verify_response(..., request=): the receipt attests this request's input (name, datatype,
    shape, tensor digest of its data, flat or nested, FP32 or FP64 as sent) and id; an answer
    made for another input or another client's id fails, though its receipt is valid."""
    from verifier.audit import load_trusted_keys
    from verifier.errors import DigestMismatch, InputError, LinkBroken
    from verifier.responses import verify_response

    got, _, saved_keys = answers
    keys = load_trusted_keys(saved_keys)
    for name, request in REQUESTS.items():
        assert verify_response(got[name], keys, request=request).predicate.requestId == \
            got[name]["parameters"]["receipt_id"]
    one = REQUESTS["one"]

    def request(edit) -> dict:
        return json.loads(_changed(one, edit))

    failing = {
        # the same sample, the answer to another request: the ids differ
        "another id": (got["label_only"], one, LinkBroken),
        "no id sent": (got["one"], request(lambda d: d.pop("id")), LinkBroken),
        "another input": (got["one"], request(lambda d: d["inputs"][0].__setitem__("data", [5.1, 3.5, 1.4, 0.2])),
                          DigestMismatch),
        "one value changed": (got["one"], request(lambda d: d["inputs"][0]["data"].__setitem__(0, 6.2)),
                              DigestMismatch),
        "another datatype": (got["one"], request(lambda d: d["inputs"][0].__setitem__("datatype", "FP64")),
                             DigestMismatch),
        "another shape": (got["one"], request(lambda d: d["inputs"][0].__setitem__("shape", [4, 1])),
                          DigestMismatch),
        "another input name": (got["one"], request(lambda d: d["inputs"][0].__setitem__("name", "x")),
                               LinkBroken),
        "sent as binary data": (got["one"], request(lambda d: d["inputs"][0].update(
            data=None, parameters={"binary_data_size": 16}) or d["inputs"][0].pop("data")), InputError),
        "data that is not numbers": (got["one"], request(lambda d: d["inputs"][0].__setitem__(
            "data", ["6.1", 2.8, 4.7, 1.2])), InputError),
        "two inputs": (got["one"], request(lambda d: d["inputs"].append(d["inputs"][0])), InputError),
    }
    for why, (response, sent, error) in failing.items():
        with pytest.raises(error):
            verify_response(response, keys, request=sent)
            pytest.fail(why)


def test_an_answer_piped_in(tmp_path, answers):
    """``curl ... | verinfer audit - --keys K``: one JSON document, or JSON lines."""
    got, keys, _ = answers
    (tmp_path / "keys.json").write_text(keys)

    def audit(text: str):
        return verinfer("audit", "-", "--keys", tmp_path / "keys.json", stdin=text)

    r = audit(json.dumps(got["one"]))
    assert r.returncode == 0 and "OK: <stdin> (response, iris_mlp, label 1)" in r.stderr, r.stderr
    r = audit(json.dumps(got["one"]) + "\n" + got["two"]["parameters"]["receipt"] + "\n")
    assert r.returncode == 0 and "OK: <stdin>:1 (response" in r.stderr and "OK: <stdin>:2 (receipt" in r.stderr, r.stderr
    r = audit(_changed(got["one"], lambda d: d["parameters"].__setitem__("label", 2)))
    assert r.returncode == 1 and "FAIL: <stdin>: LinkBroken" in r.stderr, r.stderr
    r = audit("")
    assert r.returncode == 2 and "nothing to audit" in r.stderr, r.stderr
    r = audit("not json\n")
    assert r.returncode == 2 and "ERROR: <stdin>:1" in r.stderr, r.stderr


def test_audit_holds_a_saved_answer_to_the_request_sent(tmp_path, answers):
    """``verinfer audit RESPONSE --request REQUEST``: the light CLI, offline."""
    got, keys, _ = answers
    (tmp_path / "keys.json").write_text(keys)
    (tmp_path / "one.json").write_text(json.dumps(got["one"]))
    (tmp_path / "req.json").write_text(json.dumps(REQUESTS["one"]))
    (tmp_path / "other-req.json").write_text(json.dumps(REQUESTS["other"] | {"id": "client-7"}))

    def audit(*args, stdin=None):
        return verinfer("audit", *args, "--keys", tmp_path / "keys.json", stdin=stdin)

    r = audit(tmp_path / "one.json", "--request", tmp_path / "req.json")
    assert r.returncode == 0, r.stderr
    assert f"(response, iris_mlp, label 1), the answer to the request in {tmp_path / 'req.json'}\n" in r.stderr
    r = audit("-", "--request", tmp_path / "req.json", stdin=json.dumps(got["one"]))  # curl ... | audit -
    assert r.returncode == 0 and "OK: <stdin> (response" in r.stderr, r.stderr
    r = audit(tmp_path / "one.json", "--request", tmp_path / "other-req.json")
    assert r.returncode == 1 and "FAIL: " in r.stderr and "DigestMismatch: the receipt attests an answer to " \
        "another input than the request's" in r.stderr, r.stderr

    (tmp_path / "two.json").write_text(json.dumps([got["one"], got["two"]]))
    (tmp_path / "not-json.json").write_text("{")
    for args, why in (((tmp_path / "two.json", "--request", tmp_path / "req.json"),
                       "--request goes with one saved response; the paths hold 2 item(s)"),
                      ((tmp_path / "one.json", "--request", tmp_path / "missing.json"), "cannot read it"),
                      ((tmp_path / "one.json", "--request", tmp_path / "not-json.json"), "the request is not JSON"),
                      ((tmp_path / "one.json", "--request", tmp_path / "keys.json"), "not an inference request")):
        r = audit(*args)
        assert r.returncode == 2 and why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
