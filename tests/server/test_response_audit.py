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


def _body(rows: list[list[float]], **extra) -> dict:
    return {"inputs": [{"name": "input", "shape": [len(rows), 4], "datatype": "FP32",
                        "data": [v for r in rows for v in r]}], **extra}


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    settings = ServerSettings(home=home, models=("iris_mlp",), proof_workers=0)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        def infer(body: dict) -> dict:
            r = client.post("/v2/models/iris_mlp/infer", json=body)
            assert r.status_code == 200, r.text
            return r.json()

        got = {
            "one": infer(_body([SAMPLE], id="client-7")),
            "other": infer(_body([[5.1, 3.5, 1.4, 0.2]])),
            "label_only": infer(_body([SAMPLE], outputs=[{"name": "label"}])),
            "two": infer(_body([SAMPLE, [5.1, 3.5, 1.4, 0.2]])),
        }
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
                     ("label_only.json", "one.json", "other.json", "two.json", "both.json[0]", "both.json[1]",
                      "lines.jsonl:1", "lines.jsonl:2")}
    assert re.search(r"\n  receipt +1 +0 +0\n  response +7 +0 +0\n", err), err  # the summary counts each kind
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

    def check(doc: dict) -> None:
        statement = recipe["check_receipt"](json.loads(doc["parameters"]["receipt"]), note_key)
        recipe["check_answer"](doc, statement)

    for doc in got.values():
        check(doc)
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
