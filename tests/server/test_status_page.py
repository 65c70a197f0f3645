"""The status page at ``/`` with a real server process, in headless Chromium (Debian's
``chromium``, driven by Playwright with the system browser: no browser download).

The receipt check runs in the page's JavaScript (WebCrypto Ed25519 and SHA-256): a real
answer's receipt is shown valid, the same receipt with one statement byte or one proof hash
flipped is shown invalid. A screenshot goes to the test's tmp dir, and to
``docs/status-page.png`` when ``VERINFER_STATUS_SCREENSHOT=1``.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
from pathlib import Path

import pytest

from testkit.server_process import REPO_ROOT
from tests.tlog_support import doc_block

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
DOC_NOTE_KEY = "example.com/verinfer/log+58a0695e+AUBKwP9djnvpI1WkzSnZ1cQWeHTGZhgm8HDhrOmKqUo1"
IRIS = [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]


def _flip_b64(text: str, at: int = 0) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[at] ^= 0x80
    return base64.b64encode(bytes(raw)).decode()


def _v1_receipt(home: Path, v2: dict) -> dict:
    """The v2 receipt's statement as a v1 receipt (a DSSE envelope), signed with the server's
    active key (in the test's data dir), checked by the Python verifier first; with the v2
    receipt's EIP-712 part, if it has one."""
    from server.receipts.keys import load_keys
    from server.settings import ServerSettings
    from verifier.receipts import Receipt, Statement, sign_envelope, verify_receipt

    keys = load_keys(ServerSettings(home=home), create=False)
    st = json.loads(base64.b64decode(v2["statement"]))
    pred = {k: v for k, v in st["predicate"].items() if k != "eip712"}
    statement = Statement.model_validate({**st, "predicateType": "https://verinfer.dev/receipt/v1",
                                          "predicate": {**pred, "keyId": keys.kid}})
    receipt = Receipt(id=v2["id"], envelope=sign_envelope(statement, keys.kid, keys.ed25519.sign),
                      eip712=v2.get("eip712"))
    verify_receipt(receipt, keys.jwks)
    return receipt.model_dump(mode="json")


def _flip_statement_byte(receipt: dict) -> dict:
    data = bytearray(base64.b64decode(receipt["statement"]))
    data[len(data) // 2] ^= 0x01
    return {**receipt, "statement": base64.b64encode(bytes(data)).decode()}


def _flip_proof_hash(receipt: dict) -> dict:
    return {**receipt, "proof": [_flip_b64(receipt["proof"][0]), *receipt["proof"][1:]]}


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:  # make test installs it first (make chromium): never a skip in CI
        pytest.fail("no chromium on PATH (make chromium installs Debian's with apt-get)")
    from playwright.sync_api import sync_playwright  # the dev extra's: missing is a set-up error

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _answer(server) -> dict:
    """Several answers (so the log has a tree with a non-empty proof), the last one's receipt."""
    for _ in range(3):
        status, body, _ = server.request("POST", "/v2/models/iris_mlp/infer", {"inputs": IRIS})
        assert status == 200, body
    return json.loads(body["parameters"]["receipt"])


def _verdict(page, receipt: dict | str) -> tuple[str, str]:
    page.fill("#receipt-input", receipt if isinstance(receipt, str) else json.dumps(receipt))
    page.click("#verify")
    v = page.locator("#verdict")
    _wait_verdict(page)
    return v.get_attribute("data-state"), v.inner_text()


def _wait_verdict(page) -> None:
    """Until the check has ended (selectors, not page JavaScript: the page's CSP forbids eval)."""
    page.locator("#verdict:not([data-state=checking]):not([data-state=none])").wait_for()


def test_status_page_and_in_browser_receipt_check(start_server, browser, tmp_path):
    server = start_server(tmp_path / "home")
    receipt = _answer(server)
    assert receipt["format"] == "verinfer.receipt/v2" and receipt["proof"], receipt

    page = browser.new_page(viewport={"width": 1280, "height": 1500})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.base + "/")
    # the status snapshot: the served models, the log's size, the recent receipts
    page.wait_for_selector("#receipts-body tr")
    models = page.locator("#models-body").inner_text()
    assert "iris_mlp" in models and "digits_cnn" in models
    assert page.locator("#logsize").inner_text().startswith("log: ")
    assert receipt["id"][:14] in page.locator("#receipts-body").inner_text()
    assert page.locator("#chart-status svg rect").count() >= 1  # 200s drawn

    state, text = _verdict(page, receipt)
    assert state == "valid", text
    steps = page.locator("#steps").inner_text()
    assert "checkpoint signed (Ed25519)" in steps and "inclusion proof" in steps, steps
    page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)
    if os.environ.get("VERINFER_STATUS_SCREENSHOT"):
        shutil.copy(tmp_path / "status-page.png", REPO_ROOT / "docs" / "status-page.png")

    state, text = _verdict(page, _flip_statement_byte(receipt))
    assert state == "invalid" and "not in the signed tree" in text, text
    state, text = _verdict(page, _flip_proof_hash(receipt))
    assert state == "invalid" and "not in the signed tree" in text, text
    state, text = _verdict(page, {**receipt, "id": "0x" + "11" * 32})
    assert state == "invalid" and "request id" in text, text
    note = receipt["checkpoint"]  # a signature byte changed: Ed25519 fails in WebCrypto
    sig_at = note.rindex(" ") + 12
    bad_sig = note[:sig_at] + ("A" if note[sig_at] != "A" else "B") + note[sig_at + 1:]
    state, text = _verdict(page, {**receipt, "checkpoint": bad_sig})
    assert state == "invalid" and "signature" in text, text
    page.screenshot(path=str(tmp_path / "status-page-invalid.png"), full_page=True)

    # a recent receipt's "check" button (fetches its bytes, checks them here), after an invalid one
    page.locator("#receipts-body button").first.click()
    page.locator("#verdict[data-state=valid]").wait_for()
    # the whole answer pasted also works
    state, text = _verdict(page, json.dumps({"parameters": {"receipt": json.dumps(receipt)}}))
    assert state == "valid", text
    # docs/formats.md's v2 vector, under its test note key typed in (not this server's keys)
    page.check("#own-keys")
    page.fill("#note-keys", DOC_NOTE_KEY)
    state, text = _verdict(page, doc_block("v2-receipt-vector"))
    assert state == "valid", text
    assert "1 output digest(s) recomputed" in page.locator("#steps").inner_text()
    state, text = _verdict(page, receipt)  # this server's receipt is not the test key's log
    assert state == "invalid" and "another log" in text, text
    page.uncheck("#own-keys")
    # a v1 receipt (DSSE, before the log), signed with this server's key: checked against its JWKS
    v1 = _v1_receipt(server.home, receipt)
    state, text = _verdict(page, v1)
    assert state == "valid" and "DSSE envelope signed" in page.locator("#steps").inner_text(), text
    sig = v1["envelope"]["signatures"][0]
    bad = {**sig, "sig": _flip_b64(sig["sig"])}
    state, text = _verdict(page, {**v1, "envelope": {**v1["envelope"], "signatures": [bad]}})
    assert state == "invalid" and "does not verify" in text, text
    # a field the v1 models have not, in the receipt, its envelope or a signature: refused as
    # by Receipt.parse (before: valid here)
    from verifier.errors import InputError
    from verifier.receipts import Receipt

    for where, changed in (("receipt", {**v1, "note": 1}),
                           ("envelope", {**v1, "envelope": {**v1["envelope"], "note": 1}}),
                           ("signature", {**v1, "envelope": {**v1["envelope"], "signatures": [{**sig, "note": 1}]}})):
        with pytest.raises(InputError, match="Extra inputs"):
            Receipt.parse(changed)
        state, text = _verdict(page, changed)
        assert state == "invalid" and f"the receipt's {where} holds a field a v1 {where} has not" in text, text
    # the log keys document marks this server's key revoked: before the statement, it vouches
    # for nothing after; after the statement, the receipt still verifies
    log_doc = server.get("/.well-known/verinfer-log.json")
    assert log_doc["revoked"] == {}
    for at, want in (("2000-01-01T00:00:00Z", "invalid"), ("2999-01-01T00:00:00Z", "valid")):
        doc = {**log_doc, "revoked": {log_doc["note_keys"][0]: at}}
        page.route("**/.well-known/verinfer-log.json", functools.partial(_fulfil_json, doc))
        state, text = _verdict(page, receipt)
        assert state == want and (want == "valid" or "revoked (2000-01-01" in text), text
        page.unroute("**/.well-known/verinfer-log.json")
    # no keys to check against: neither valid nor invalid
    page.route("**/.well-known/verinfer-log.json", lambda route: route.fulfill(status=503, body="{}"))
    state, text = _verdict(page, receipt)
    assert state == "error" and "CANNOT CHECK" in text and "HTTP 503" in text, text
    assert errors == []


def test_in_browser_check_holds_a_whole_answer_to_its_receipt(start_server, browser, tmp_path):
    """Pasted whole, an answer passes only if its outputs and label are those its receipt
    attests (as verinfer audit holds a saved response: verifier/responses.py)."""
    server = start_server(tmp_path / "home")
    answers = []
    for data in ([6.1, 2.8, 4.7, 1.2], [5.1, 3.5, 1.4, 0.2]):
        status, body, _ = server.request("POST", "/v2/models/iris_mlp/infer",
                                         {"inputs": [{**IRIS[0], "data": data}], "id": "c-1"})
        assert status == 200, body
        answers.append(body)
    one, other = answers
    assert one["parameters"]["label"] == 1
    page = browser.new_page()
    page.goto(server.base + "/#check")
    state, text = _verdict(page, one)
    assert state == "valid", text
    assert "the answer is the attested one" in page.locator("#steps").inner_text()

    def changed(edit) -> dict:
        doc = json.loads(json.dumps(one))
        edit(doc)
        return doc

    logit = one["outputs"][0]["data"][0]
    for edit, words in (
            (lambda d: d["outputs"][0]["data"].__setitem__(0, logit + 0.5), "not the output the receipt attests"),
            (lambda d: d["outputs"][1].__setitem__("data", [2]), "not the output the receipt attests"),
            (lambda d: d["parameters"].__setitem__("label", True), "label"),  # JSON true is not 1
            (lambda d: d.__setitem__("model_name", "digits_cnn"), "model_name"),
            (lambda d: d.__setitem__("id", "c-2"), "client request id"),
            (lambda d: d["outputs"][0].__setitem__("shape", [3]), "the receipt attests FP32 [1,3]"),
            (lambda d: d["outputs"].append(d["outputs"][0]), "twice"),
            (lambda d: d["parameters"].__setitem__("receipt", other["parameters"]["receipt"]), "receipt_id")):
        state, text = _verdict(page, changed(edit))
        assert state == "invalid" and words in text, (words, text)
    # a sync proof's bundle beside it: said not checked here, not silently passed over
    state, text = _verdict(page, changed(lambda d: d["parameters"].__setitem__("proof_bundle", "{}")))
    assert state == "valid" and "proof (parameters.proof_bundle) is not checked here" in page.locator("#steps").inner_text()
    binary = changed(lambda d: d["outputs"][0].pop("data"))
    state, text = _verdict(page, binary)
    assert state == "error" and "binary data" in text, text


def _fulfil_json(doc, route) -> None:
    route.fulfill(status=200, json=doc)


def _eip712_variants(receipt: dict) -> dict[str, tuple[dict, str]]:
    """A receipt's EIP-712 part altered (the log does not cover it): what the page must say."""
    from verifier.eip712 import SECP256K1_N

    att = receipt["eip712"]
    sig = bytes.fromhex(att["signature"][2:])
    s = int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])  # (r, n - s), v flipped
    flipped = sig[:5] + bytes([sig[5] ^ 1]) + sig[6:]
    msg = att["message"]

    def with_(**part) -> dict:
        return {**receipt, "eip712": {**att, **part}}

    return {
        "a signature byte flipped": (with_(signature="0x" + flipped.hex()), "recover"),
        "another label": (with_(message={**msg, "label": (msg["label"] + 1) % 3}), "recovers to 0x"),
        "another deadline": (with_(message={**msg, "deadline": msg["deadline"] + 1}), "recovers to 0x"),
        "the high-s twin of the signature": (with_(signature="0x" + twin.hex()), "high s"),
        "v = 29": (with_(signature="0x" + (sig[:64] + bytes([29])).hex()), "v is not 27 or 28"),
        "another signer": (with_(signer="0x" + "11" * 20), "another signer or domain"),
        "another chain": (with_(domain={**att["domain"], "chainId": att["domain"]["chainId"] + 1}),
                          "another signer or domain"),
        "a field no EIP-712 part has": (with_(extra=1), "EIP-712 part"),
    }


def test_in_browser_check_verifies_an_eip712_signature(start_server, browser, tmp_path):
    """A receipt whose request asked for an EIP-712 signature: the page recovers its secp256k1
    signer (@noble's, vendored) and holds it, its domain and its message to the logged
    statement, as verify_receipt_v2 does; each alteration of that part (which the log does not
    cover) is refused here and by the Python verifier. Before, the page said it was not checked."""
    from verifier.errors import VerinferError
    from verifier.receipts import Receipt, verify_receipt
    from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2

    server = start_server(tmp_path / "home")
    status, body, _ = server.request("POST", "/v2/models/iris_mlp/infer",
                                     {"inputs": IRIS, "parameters": {"eip712": True}})
    assert status == 200, body
    receipt = json.loads(body["parameters"]["receipt"])
    assert receipt["eip712"] is not None
    jwks = server.get("/.well-known/jwks.json")
    verify_receipt_v2(ReceiptV2.parse(json.dumps(receipt)), jwks)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.base + "/")
    state, text = _verdict(page, receipt)
    assert state == "valid", text
    steps = page.locator("#steps").inner_text()
    assert f"EIP-712 signature (secp256k1) recovers to {receipt['eip712']['signer']}" in steps, steps
    assert "not checked here" not in steps
    for what, (bad, says) in _eip712_variants(receipt).items():
        with pytest.raises(VerinferError):  # (ReceiptV2.parse raises its own for a bad shape)
            verify_receipt_v2(ReceiptV2.parse(json.dumps(bad)), jwks)
        state, text = _verdict(page, bad)
        assert state == "invalid" and says in text, (what, text)
    # a v1 receipt (its statement names no signer): the signature against the signer it gives
    v1 = _v1_receipt(server.home, receipt)
    assert v1["eip712"] == receipt["eip712"]
    state, text = _verdict(page, v1)
    assert state == "valid", text
    assert "a v1 statement names none" in page.locator("#steps").inner_text()
    other = {**v1, "eip712": _eip712_variants(receipt)["another label"][0]["eip712"]}
    with pytest.raises(VerinferError):
        verify_receipt(Receipt.parse(json.dumps(other)), jwks)
    state, text = _verdict(page, other)
    assert state == "invalid" and "recovers to 0x" in text, text
    assert errors == []


def test_the_vendored_javascript_is_the_pinned_npm_packages():
    """server/http/static/vendor/ holds @noble's files as package.json pins them (``make vendor-js``
    copies them from node_modules, which ``make setup`` installs from package-lock.json)."""
    from server.http.status import STATIC, VENDORED

    node_modules = REPO_ROOT / "node_modules"
    for name, source in VENDORED.items():
        assert (REPO_ROOT / "server" / "http" / "static" / name).read_bytes() == (node_modules / source).read_bytes(), name
    assert {n for n in STATIC if n.startswith("vendor/")} == {n for n in VENDORED if n.endswith(".js")}


def test_api_docs_render_with_no_network_but_this_server(start_server, browser, tmp_path):
    """/docs draws the API from this server's own Swagger UI files: the browser may reach
    nothing but the server (a CDN request is aborted), and the operations still render."""
    server = start_server(tmp_path / "home")
    page = browser.new_page()
    outside: list[str] = []

    def only_this_server(route):
        if route.request.url.startswith(server.base):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.base + "/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    assert "/v2/models/{name}/infer" in page.locator(".swagger-ui").inner_text()
    assert not outside and not errors, (outside, errors)


def test_status_json_and_static_files(start_server, tmp_path):
    server = start_server(tmp_path / "home")
    _answer(server)
    status = server.get("/v1/status")
    assert {m["name"] for m in status["models"]} >= {"iris_mlp", "digits_cnn"}
    assert status["log"]["size"] >= 1 and status["recent_receipts"][0]["model"] == "iris_mlp"
    assert status["metrics"]["requests_by_status"]["200"] >= 3
    assert status["metrics"]["verinfer_request_duration_seconds"]["p50"] is not None
    assert status["proof_queue"]["jobs"]["queued"] == 0
    for path, kind in (("/", "text/html"), ("/static/status.js", "text/javascript"), ("/static/receipt_check.js", "text/javascript"),
                       ("/static/status.css", "text/css")):
        s, _, headers = _raw(server, path)
        assert s == 200 and headers["content-type"].startswith(kind)
        assert headers["content-security-policy"].startswith("default-src 'self'")
    assert _raw(server, "/static/nope.js")[0] == 404


def _raw(server, path: str):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(server.base + path, timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def test_page_is_public_and_its_data_needs_a_key_under_auth(tmp_path):
    """In process, auth on: ``/`` and ``/static/*`` answer without a key, ``/v1/status``
    (recent receipt ids) only with one."""
    from fastapi.testclient import TestClient

    from server.auth import ApiKeyStore
    from server.http.app import create_app
    from server.settings import ServerSettings

    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), auth="on", proof_workers=0)
    store = ApiKeyStore(settings.apikeys_path)
    _, token = store.create("basic", "alice")
    try:
        with TestClient(create_app(settings)) as client:
            for path in ("/", "/static/status.js", "/static/status.css"):
                assert client.get(path).status_code == 200, path
            assert client.get("/v1/status").status_code == 401
            r = client.get("/v1/status", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and r.json()["models"][0]["name"] == "iris_mlp"
            assert r.json()["recent_receipts"] == [] and r.json()["log"]["size"] == 0
    finally:
        store.close()


def test_under_auth_the_status_data_gives_no_key_another_clients_receipt_ids(tmp_path):
    """In process, auth on: alice's answer is listed to bob (any key reads ``/v1/status``)
    without its receipt id, a capability that would open alice's receipt (its outputs) to him."""
    from fastapi.testclient import TestClient

    from server.auth import ApiKeyStore
    from server.http.app import create_app
    from server.settings import ServerSettings

    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), auth="on", proof_workers=0)
    store = ApiKeyStore(settings.apikeys_path)
    (_, alice), (_, bob) = store.create("basic", "alice"), store.create("basic", "bob")
    iris = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
    try:
        with TestClient(create_app(settings)) as client:
            answer = client.post("/v2/models/iris_mlp/infer", json=iris, headers={"X-API-Key": alice})
            receipt_id = answer.json()["parameters"]["receipt_id"]
            r = client.get("/v1/status", headers={"X-API-Key": bob})
            assert r.status_code == 200 and receipt_id not in r.text
            assert [(x["id"], x["model"]) for x in r.json()["recent_receipts"]] == [(None, "iris_mlp")]
    finally:
        store.close()


def test_recent_receipts_and_proof_requests_from_the_real_stores(tmp_path):
    """The status page's read-only queries against the receipt and proof-job stores' own
    schema: a second client's request for the same proof is listed with its own id and
    receipt, and each receipt shows its own request's job state."""
    from server.http.status import recent_proofs, recent_receipts
    from server.proofs.store import JobStore
    from server.receipts.store import ReceiptStore

    path = tmp_path / "receipts.sqlite3"
    receipts, jobs = ReceiptStore(path), JobStore(path)
    try:
        bodies = [json.dumps({"format": "verinfer.receipt/v2", "id": f"0x{i:064x}", "index": i})
                  for i in range(3)]
        receipts.put_many([(f"0x{i:064x}", "iris_mlp", 1000.0 + i, b) for i, b in enumerate(bodies)])
        args = dict(model="iris_mlp", package_id="p" * 64, model_sha256="m" * 64, input_digest="d" * 64,
                    input_json="{}", callback_url=None, max_active=10)
        first, _ = jobs.submit(**args, receipt_id=f"0x{0:064x}", client="alice")
        second, how = jobs.submit(**args, receipt_id=f"0x{1:064x}", client="bob")
        assert how == "existing" and second.id != first.id
        claimed = jobs.claim("w1", 60)
        assert claimed is not None
        jobs.finish(claimed[0].id, "proven", "{}")

        listed = recent_receipts(path, log_size=2)
        assert [r["index"] for r in listed] == [2, 1, 0]  # newest first
        assert [r["status"] for r in listed] == ["logged", "in a checkpoint", "in a checkpoint"]
        by_id = {r["id"]: r["proof"] for r in listed}
        assert by_id[f"0x{0:064x}"] == {"id": first.id, "status": "done", "outcome": "proven"}
        assert by_id[f"0x{1:064x}"]["id"] == second.id and by_id[f"0x{2:064x}"] is None
        proofs = recent_proofs(path)
        assert {p["id"] for p in proofs} == {first.id, second.id}
        assert {p["job_id"] for p in proofs} == {first.id} and {p["outcome"] for p in proofs} == {"proven"}
        assert recent_proofs(tmp_path / "absent.sqlite3") == []
        # access control on: a client sees its own proof requests only, and no receipt id
        assert [p["id"] for p in recent_proofs(path, "bob")] == [second.id]
        assert recent_proofs(path, "carol") == []
        mine = recent_receipts(path, log_size=2, client="bob")
        assert [r["id"] for r in mine] == [None, None, None]
        assert [r["proof"] and r["proof"]["id"] for r in mine] == [None, second.id, None]
    finally:
        jobs.close()
        receipts.close()


def _forged_identity_log_receipt() -> tuple[str, dict]:
    """A note key that is the identity point (small order: R = identity, S = 0 is a valid
    signature of every message under it) and a receipt whose checkpoint nobody signed."""
    import hashlib

    from tests.tlog_support import MemLog, statement
    from verifier.tlog import checkpoint_body

    origin, raw = "forged.test/log", bytes([1]) + bytes(31)
    kid = hashlib.sha256(origin.encode() + b"\n\x01" + raw).digest()[:4]
    vkey = f"{origin}+{kid.hex()}+{base64.b64encode(bytes([1]) + raw).decode()}"
    log = MemLog(origin=origin)
    receipt = log.add(statement()).model_dump(mode="json")
    body = checkpoint_body(origin, log.tree.size, log.tree.root(log.tree.size))
    forged_sig = bytes([1]) + bytes(31) + bytes(32)  # R = the identity, S = 0
    receipt["checkpoint"] = (body + b"\n\xe2\x80\x94 " + origin.encode() + b" "
                             + base64.b64encode(kid + forged_sig) + b"\n").decode()
    return vkey, receipt


def test_in_browser_check_refuses_what_the_python_verifier_refuses(start_server, browser, tmp_path):
    """The page's check holds a logged statement to RFC 8785 (JSON.parse keeps the last of two
    equal keys, so a statement with a duplicate label read one way here and another way in a
    first-wins parser) and refuses a note key of small order, as verifier/keys.py does."""
    from tests.tlog_support import MemLog, statement
    from verifier.tlog import note_verifier_key

    server = start_server(tmp_path / "home")
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.base + "/")
    page.check("#own-keys")

    log = MemLog()
    page.fill("#note-keys", note_verifier_key(log.origin, log.key.public_key()))
    st = statement()
    honest = st.canonical_bytes().decode()
    label = f'"label":{st.predicate.label}'
    state, text = _verdict(page, log.add(st).model_dump(mode="json"))
    assert state == "valid", text
    for bad in (honest.replace(label, f'"label":{1 - st.predicate.label},{label}'),  # duplicate key
                json.dumps(json.loads(honest), indent=1, sort_keys=True)):  # whitespace
        state, text = _verdict(page, log.add(st, data=bad.encode()).model_dump(mode="json"))
        assert state == "invalid" and "not canonical JSON" in text, text  # before: valid
    # a number in orjson's spelling ("2.0", "1e+16" where RFC 8785 writes 2, 10000000000000000):
    # refused here as by the Python verifier (whose fast path took it before)
    import orjson

    from verifier.errors import SignatureInvalid
    from verifier.receipts_v2 import verify_receipt_v2

    for logits in ([2.0, 0.5, -1.0], [0.5, 3e16, 1.5]):
        other = statement(logits=logits)
        data = orjson.dumps(other.model_dump(mode="json", by_alias=True), option=orjson.OPT_SORT_KEYS)
        assert data != other.canonical_bytes()
        receipt = log.add(other, data=data)
        with pytest.raises(SignatureInvalid, match="not canonical JSON"):
            verify_receipt_v2(receipt, log.jwks)
        state, text = _verdict(page, receipt.model_dump(mode="json"))
        assert state == "invalid" and "not canonical JSON" in text, text
    # a lone surrogate (I-JSON, so RFC 8785, has none; JSON.stringify writes "\ud800" back as it
    # came): refused here as by the Python verifier (before: valid here)
    lone = honest.replace('"device":"cpu"', '"device":"\\ud800"')
    assert lone != honest
    receipt = log.add(st, data=lone.encode())
    with pytest.raises(SignatureInvalid, match="not canonical JSON"):
        verify_receipt_v2(receipt, log.jwks)
    state, text = _verdict(page, receipt.model_dump(mode="json"))
    assert state == "invalid" and "lone surrogate" in text, text
    # RFC 8785's digits for an FP32 output past 2^53 (30000000817692670): valid here and there
    big = statement(logits=[0.5, 3e16, 1.5])
    assert b"30000000817692670" in big.canonical_bytes()
    receipt = log.add(big)
    assert verify_receipt_v2(receipt, log.jwks) == big  # before: not canonical JSON
    state, text = _verdict(page, receipt.model_dump(mode="json"))
    assert state == "valid", text

    vkey, forged = _forged_identity_log_receipt()
    page.fill("#note-keys", vkey)
    state, text = _verdict(page, forged)
    assert state == "invalid" and "small order" in text, text
    assert errors == []


def _wrapper_variants(log) -> dict[str, tuple[dict, bool]]:
    """A logged receipt with its unsigned parts spelt otherwise (what anyone can do to one), and
    a checkpoint with an extension line (C2SP allows them): what the Python verifier finds of
    each (True: valid)."""
    from tests.tlog_support import statement
    from tests.verifier.test_tamper_review import _flip_unused_bits
    from verifier.tlog import checkpoint_body, sign_note

    r = log.add(statement()).model_dump(mode="json")
    cp = r["checkpoint"]
    sig_line = cp.split("\n\n")[1]
    body = checkpoint_body(log.origin, log.tree.size, log.tree.root(log.tree.size)) + b"an extension\n"
    assert r["statement"].endswith("=") and r["proof"][0].endswith("=")
    return {
        "as written": (r, True),
        "statement's base64 with its unused bits set": ({**r, "statement": _flip_unused_bits(r["statement"])}, False),
        "a proof hash's base64 with its unused bits set":
            ({**r, "proof": [_flip_unused_bits(r["proof"][0]), *r["proof"][1:]]}, False),
        "a field no v2 receipt has": ({**r, "note": "hi"}, False),
        "a signature line of 3 bytes": ({**r, "checkpoint": cp + "\u2014 other.test AAAA\n"}, False),
        "the key's signature line twice": ({**r, "checkpoint": cp + sig_line}, False),
        "a signature line with a tab": ({**r, "checkpoint": cp + "\u2014 other\t.test AAAAAAA=\n"}, False),
        "a name with U+0085 (Python's isspace)": ({**r, "checkpoint": cp + "\u2014 o\x85 AAAAAAA=\n"}, False),
        "no newline at the end": ({**r, "checkpoint": cp[:-1]}, False),
        "an extension line": ({**r, "checkpoint": sign_note(body, log.origin, log.key).decode()}, True),
    }


def test_in_browser_check_reads_a_receipts_wrapper_as_the_python_verifier_does(start_server, browser, tmp_path):
    """Before: the page took each of these variants for VALID (and refused the extension line),
    while verifier/ refused them (unsigned parts in another spelling: anyone can make them)."""
    from tests.tlog_support import MemLog
    from verifier.errors import VerinferError
    from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2
    from verifier.tlog import note_verifier_key

    server = start_server(tmp_path / "home")
    page = browser.new_page()
    page.goto(server.base + "/")
    page.check("#own-keys")
    log = MemLog()
    page.fill("#note-keys", note_verifier_key(log.origin, log.key.public_key()))
    for what, (receipt, valid) in _wrapper_variants(log).items():
        try:
            verify_receipt_v2(ReceiptV2.parse(receipt), log.jwks)
            python = True
        except VerinferError:
            python = False
        state, text = _verdict(page, receipt)
        assert (python, state) == (valid, "valid" if valid else "invalid"), (what, text)


def _logged(log, mutate) -> str:
    """A receipt (JSON text) for the test statement's JSON value as ``mutate`` changes it, in its
    RFC 8785 form, logged under ``log``'s key: what a buggy or malicious server can log."""
    import rfc8785

    from tests.tlog_support import statement

    st = statement()
    value = json.loads(st.canonical_bytes())
    mutate(value["predicate"], value)
    return json.dumps(log.add(st, data=rfc8785.dumps(value)).model_dump(mode="json"))


def _output(datatype: str, shape: list, data: list, digest_of=None, as_v1: bool = False):
    """A mutation: the statement's output as these, its digest (and subject) from ``digest_of``'s
    data (``as_v1``: ``data``) as the Python verifier hashes it, v2's or v1's way (None: the
    digest left as it was)."""
    import numpy as np

    from verifier.tensors import list_digest, tensor_digest

    def mutate(p, value):
        o = p["outputs"][0]
        o.update(datatype=datatype, shape=shape, data=data)
        if as_v1:
            digest = tensor_digest(np.asarray(data).reshape(shape), datatype)
        elif digest_of is not None:
            digest = list_digest(digest_of, tuple(shape), datatype)
        else:
            return
        o["digest"] = value["subject"][2]["digest"]["sha256"] = digest
    return mutate


def _set(where, **fields):
    return lambda p, value: (value if where == "statement" else p[where] if where else p).update(fields)


def _statement_variants(log) -> dict[str, tuple[str, str | None, bool]]:
    """Statements (and one index) the page read otherwise than the Python verifier before: the
    receipt's text, when the log's key was revoked (None: it is not), what verify_receipt_v2
    finds (True: valid)."""
    honest = _logged(log, lambda p, value: None)
    index = json.loads(honest)["index"]
    return {
        "a negative label": (_logged(log, _set(None, label=-1)), None, False),
        "a string label": (_logged(log, _set(None, label="1")), None, False),
        "a list label holding true": (_logged(log, _set(None, label=[1, True])), None, False),
        "a boolean scale": (_logged(log, _set("input", scale=True)), None, False),
        "a scale past 1000": (_logged(log, _set("input", scale=1001)), None, False),
        'time "yesterday"': (_logged(log, _set(None, time="yesterday")), None, False),
        "an extra predicate field": (_logged(log, _set(None, note="hi")), None, False),
        "an extra statement field": (_logged(log, _set("statement", note="hi")), None, False),
        "another _type": (_logged(log, _set("statement", _type="https://example.com/x")), None, False),
        "no device": (_logged(log, lambda p, value: p.pop("device")), None, False),
        "a number as clientRequestId": (_logged(log, _set(None, clientRequestId=5)), None, False),
        "an upper-case model digest": (_logged(log, lambda p, value: (
            p["model"].update(sha256="AB" * 32), value["subject"][0]["digest"].update(sha256="AB" * 32))), None, False),
        "an eip712 reference with no domain": (_logged(log, _set(None, eip712={"signer": "0x" + "11" * 20})), None, False),
        "a shape [true, 3] (hashed as [1, 3] here)": (_logged(log, _output("FP32", [True, 3], [0.5, 1.0, 2.0],
                                                                          [0.5, 1.0, 2.0])), None, False),
        "subjects out of order": (_logged(log, lambda p, value: value["subject"].reverse()), None, False),
        "a subject digest with a second entry": (_logged(log, lambda p, value: value["subject"][2]["digest"].update(
            sha512="ab" * 32)), None, False),
        "an FP16 output (no digest recomputed here)": (_logged(log, _output("FP16", [1, 3], [0.5, 1.0, 2.0])), None, False),
        'an output holding "1.5" (numpy reads 1.5)': (_logged(log, _output("FP32", [1, 3], ["1.5", 1.0, 2.0],
                                                                           [1.5, 1.0, 2.0])), None, False),
        "index 8.0, not 8": (honest.replace(f'"index": {index},', f'"index": {index}.0,'), None, False),
        # the Python verifier takes these
        "no predicateType (v2 by default)": (_logged(log, lambda p, value: value.pop("predicateType")), None, True),
        "an INT64 output of doubles (numpy truncates)": (_logged(log, _output("INT64", [1, 3], [1.5, -2.5, 3],
                                                                             [1.5, -2.5, 3])), None, True),
        "an output as nested lists (numpy reads them)": (_logged(log, _output("FP32", [1, 3], [[0.5, 1.0, 2.0]],
                                                                             [[0.5, 1.0, 2.0]])), None, True),
        "an FP32 output holding null (numpy's NaN)": (_logged(log, _output("FP32", [1, 3], [None, 1.0, 2.0],
                                                                           [None, 1.0, 2.0])), None, True),
        "a BOOL output of shape [] (hashed with shape [])": (_logged(log, _output("BOOL", [], [5], [5])), None, True),
        "logged 400 µs before the key's revocation (the same millisecond)": (
            _logged(log, _set(None, time="2026-11-30T20:00:00.0001Z")), "2026-11-30T20:00:00.0005Z", True),
    }


def test_in_browser_check_reads_a_statement_as_the_python_verifier_does(start_server, browser, tmp_path):
    """A statement the log's key signed (the page's user does not trust the server) is read by
    the page as verify_receipt_v2 reads it: its schema (types, ranges, formats, required and extra
    fields), subjects in order, every output digest recomputed, the revocation time to the
    microsecond, the receipt's index a JSON integer. Before, each variant had another verdict
    on the page than in Python."""
    from tests.tlog_support import MemLog
    from verifier.errors import VerinferError
    from verifier.receipts import Receipt, verify_receipt
    from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2
    from verifier.tlog import note_verifier_key

    server = start_server(tmp_path / "home")
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    log = MemLog()
    vkey = note_verifier_key(log.origin, log.key.public_key())
    doc = {"origin": log.origin, "note_keys": [vkey], "revoked": {}}
    page.route("**/.well-known/verinfer-log.json", lambda route: route.fulfill(status=200, json=doc))
    page.goto(server.base + "/")
    for what, (text, revoked_at, valid) in _statement_variants(log).items():
        jwks = {"keys": [{**log.jwks["keys"][0], **({"revoked_at": revoked_at} if revoked_at else {})}]}
        doc["revoked"] = {vkey: revoked_at} if revoked_at else {}
        _agree(page, what, text, valid, lambda r, jwks=jwks: verify_receipt_v2(ReceiptV2.parse(r), jwks))
    # a v1 receipt's signed statement is held to the same rules (verifier/receipts.py's Statement)
    page.route("**/.well-known/jwks.json", lambda route: route.fulfill(status=200, json=log.jwks))
    for what, (receipt, valid) in _v1_variants(log.key).items():
        _agree(page, what, receipt, valid, lambda r: verify_receipt(Receipt.parse(r), log.jwks))
    # a v1 integer past 2^53 (JSON.parse rounds it): the page cannot decide, so INVALID, also
    # where Python, reading it exactly, finds it valid (before, the page found VALID the one
    # hashed as JavaScript rounds it, which Python refuses)
    exact, rounded = _v1_past_2_53(log.key)
    verify_receipt(Receipt.parse(exact), log.jwks)  # Python: valid
    with pytest.raises(VerinferError):
        verify_receipt(Receipt.parse(rounded), log.jwks)
    for receipt in (exact, rounded):
        state, message = _verdict(page, receipt)
        assert state == "invalid" and "past 2^53" in message, message
    assert errors == []


def _agree(page, what: str, receipt, valid: bool, python_check) -> None:
    """The page's verdict on ``receipt`` is the Python verifier's (``python_check`` returns or
    raises), and that is ``valid``."""
    from verifier.errors import VerinferError

    try:
        python_check(receipt)
        python = True
    except VerinferError:
        python = False
    state, message = _verdict(page, receipt)
    assert (python, state) == (valid, "valid" if valid else "invalid"), (what, message)


def _v1_past_2_53(key) -> tuple[dict, dict]:
    """v1 receipts with an INT64 output holding 2^53 + 1: hashed as the integer it is (valid in
    Python), and as 2^53, the double JSON.parse reads (invalid in Python)."""
    import numpy as np

    from verifier.tensors import tensor_digest

    def output(hashed: int):
        def mutate(p, value):
            p["outputs"][0].update(datatype="INT64", shape=[1, 1], data=[2**53 + 1])
            digest = tensor_digest(np.asarray([[hashed]], dtype=np.int64), "INT64")
            p["outputs"][0]["digest"] = value["subject"][2]["digest"]["sha256"] = digest
        return mutate

    signed = _v1_signer(key)
    return signed(output(2**53 + 1)), signed(output(2**53))


def _v1_signer(key):
    """``signed(mutate)``: a v1 receipt (DSSE, signed with ``key``) of the test statement as v1,
    changed by ``mutate(predicate, statement)``."""
    from tests.tlog_support import statement
    from verifier.keys import ed25519_jwk
    from verifier.receipts import PAYLOAD_TYPE, pae

    st = statement()
    kid = ed25519_jwk(key.public_key())["kid"]

    def signed(mutate) -> dict:
        value = json.loads(st.canonical_bytes())
        value["predicateType"] = "https://verinfer.dev/receipt/v1"
        value["predicate"].pop("eip712", None)
        value["predicate"]["keyId"] = kid
        mutate(value["predicate"], value)
        payload = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        sig = base64.b64encode(key.sign(pae(PAYLOAD_TYPE, payload))).decode()
        return {"format": "verinfer.receipt/v1", "id": st.predicate.requestId,
                "envelope": {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
                             "signatures": [{"keyid": kid, "sig": sig}]}}
    return signed


def _v1_variants(key) -> dict[str, tuple[dict, bool]]:
    """v1 receipts (DSSE, signed with ``key``) of the test statement as v1, changed as named."""
    signed = _v1_signer(key)
    return {
        "a negative label": (signed(_set(None, label=-1)), False),
        "a boolean scale": (signed(_set("input", scale=True)), False),
        "a number as device": (signed(_set(None, device=5)), False),
        "an FP16 output": (signed(_output("FP16", [1, 3], [0.5, 1.0, 2.0])), False),
        # valid: v1's outputs are hashed through numpy, with shape [] as v2's are
        "an FP32 output of shape []": (signed(_output("FP32", [], [0.5], as_v1=True)), True),
    }
