"""Tampers an adversarial review of the trust root (verifier/) found: each was accepted, or
crashed where a typed error is due, before its fix. The section comments say what each shows.

Bundle tests use the golden corpus (tests/golden_corpus.py, built once per session, ~20 s);
the rest need nothing built.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import sqlite3
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.tlog_support import MemLog, statement
from verifier.errors import VerificationError, VerinferError

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _flip_unused_bits(b64: str) -> str:
    """Another spelling of the same bytes: flip the lowest (unused) bit of the last data char."""
    s = b64.rstrip("=")
    pad = b64[len(s):]
    assert pad, "needs a padded base64 string (it then has unused trailing bits)"
    return s[:-1] + ALPHABET[ALPHABET.index(s[-1]) ^ 1] + pad


# --- golden corpus helpers (bundles, v1 receipts) -------------------------------------


@pytest.fixture(scope="module")
def golden():
    from audit_support import GOLDEN

    from verifier.audit import load_trusted_keys

    index = json.loads((GOLDEN / "corpus.json").read_text())
    return {"root": GOLDEN, "pkg": next((GOLDEN / "packages").iterdir()),
            "jwks": load_trusted_keys(GOLDEN / "jwks.json"), "eth_signer": index["eth_signer"]}


def _verify_bundle_dict(golden, d: dict, tmp_path: Path):
    from verifier.bundle import ProofBundle
    from verifier.proofs import verify_signed_bundle

    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(d))
    return verify_signed_bundle(ProofBundle.load(path), golden["pkg"], golden["jwks"], allow_dev_srs=True)


def _signed_bundle(golden) -> dict:
    return json.loads((golden["root"] / "bundles" / "valid-signed" / "bundle.json").read_text())


# --- bundle logits are not bound to the proof when their count differs, or NaN ----------


@pytest.mark.parametrize("logits", [[], [1.0, 2.0], [9.0, 9.0, 9.0, 9.0]], ids=["empty", "short", "long"])
def test_bundle_logits_of_another_length_are_rejected(golden, tmp_path, logits):
    d = _signed_bundle(golden)
    assert len(d["outputs"]["logits"]) == 3  # iris_mlp: the logits package, 3 public logits
    d["outputs"]["logits"] = logits  # the proof and instances untouched: they still say the old logits
    with pytest.raises(VerificationError):
        _verify_bundle_dict(golden, d, tmp_path)


def test_bundle_nan_logit_is_rejected(golden, tmp_path):
    d = _signed_bundle(golden)
    d["outputs"]["logits"][2] = float("nan")  # json.dumps writes NaN; pydantic reads it
    with pytest.raises(VerificationError):
        _verify_bundle_dict(golden, d, tmp_path)


@pytest.mark.parametrize("felt", ["zz", "0x01", "01", " " + "0" * 63, "é" * 64])
def test_bundle_instance_that_is_not_felt_hex_is_rejected_not_a_crash(golden, tmp_path, felt):
    # a logit's instance (the proof's too, so they agree) spelt as no field element EZKL writes:
    # bytes.fromhex raised ValueError, a traceback from `verify` and an InternalError in `audit`
    d = _signed_bundle(golden)
    d["instances"][0][-2] = d["proof"]["instances"][0][-2] = felt
    with pytest.raises(VerificationError):
        _verify_bundle_dict(golden, d, tmp_path)


@pytest.mark.filterwarnings("error")  # numpy's overflow warning was printed by `verify` too
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e300, 1e30], ids=str)
def test_bundle_input_that_is_no_fixed_point_value_fails_not_a_usage_error(golden, tmp_path, value):
    # a tampered input of NaN, infinity or beyond FP32 (1e300): InputError, exit 2 as if the
    # user had typed something wrong, and in `audit` an unreadable item, not a failed one
    d = _signed_bundle(golden)
    d["input"]["data"][0] = value
    with pytest.raises(VerificationError):
        _verify_bundle_dict(golden, d, tmp_path)


# --- a manifest whose label_output is no output's index binds the bundle's label to nothing ---


def test_a_manifest_whose_label_output_names_no_output_is_refused(golden, tmp_path):
    import shutil

    from verifier.bundle import ProofBundle
    from verifier.digests import canonical_json, sha256_bytes
    from verifier.proofs import verify_signed_bundle

    pkg = shutil.copytree(golden["pkg"], tmp_path / "pkg")
    raw = json.loads((pkg / "manifest.json").read_text())
    assert raw["label_output"] == 1 and len(raw["outputs"]) == 2  # logits, label
    raw["label_output"] = 5  # no output is checked as the label any more
    (pkg / "manifest.json").write_bytes(canonical_json(raw))
    d = json.loads((golden["root"] / "bundles" / "valid-unsigned" / "bundle.json").read_text())
    d["model"]["package_id"] = sha256_bytes(canonical_json(raw))
    forged = (d["outputs"]["label"] + 1) % 3  # the proof still proves the old label
    d["outputs"]["label"] = forged
    d["agreement"] = {"float_label": forged, "circuit_label": forged, "agree": True}
    d["proof"].pop("pretty_public_inputs")
    (tmp_path / "bundle.json").write_text(json.dumps(d))
    with pytest.raises(VerinferError, match="label_output"):
        verify_signed_bundle(ProofBundle.load(tmp_path / "bundle.json"), pkg, None, allow_dev_srs=True)


def test_a_manifest_that_claims_another_scale_than_its_circuit_is_refused(golden, tmp_path):
    """The verifier reads a proof's input instances at the manifest's input scale. A package
    whose manifest says 2^14 of a circuit laid out at 2^13 (settings.json, hashed, which the vk
    is made from) would make the proof of x verify as a proof of x / 2."""
    import shutil

    from verifier.bundle import ProofBundle
    from verifier.digests import canonical_json, sha256_bytes
    from verifier.errors import LinkBroken
    from verifier.proofs import verify_signed_bundle
    from verifier.tensors import tensor_digest

    pkg = shutil.copytree(golden["pkg"], tmp_path / "pkg")
    raw = json.loads((pkg / "manifest.json").read_text())
    raw["input"]["scale"] += 1
    (pkg / "manifest.json").write_bytes(canonical_json(raw))
    d = json.loads((golden["root"] / "bundles" / "valid-unsigned" / "bundle.json").read_text())
    d["model"]["package_id"] = sha256_bytes(canonical_json(raw))
    half = np.asarray(d["input"]["data"], dtype=np.float32).reshape(d["input"]["shape"]) / 2
    d["input"]["data"] = half.ravel().tolist()  # the same fixed-point numbers at one scale up
    d["input"]["digest"] = tensor_digest(half, "FP32")
    d["proof"].pop("pretty_public_inputs", None)
    (tmp_path / "bundle.json").write_text(json.dumps(d))
    with pytest.raises(LinkBroken, match="input scale"):  # before: verified, as x / 2's proof
        verify_signed_bundle(ProofBundle.load(tmp_path / "bundle.json"), pkg, None, allow_dev_srs=True)


@pytest.mark.parametrize("mutate", [
    lambda m: m["input"].__setitem__("scale", 100000),  # was OverflowError (2**scale as a float)
    lambda m: m["outputs"][0].__setitem__("scale", -100000),  # OverflowError (2.0**-scale)
    lambda m: m["artifacts"].pop("vk.key"),  # KeyError
], ids=["input-scale", "output-scale", "no-vk-entry"])
def test_a_malformed_manifest_is_one_line_not_a_traceback(golden, tmp_path, mutate):
    import shutil

    from verifier.bundle import ProofBundle
    from verifier.digests import canonical_json, sha256_bytes
    from verifier.proofs import verify_signed_bundle

    pkg = shutil.copytree(golden["pkg"], tmp_path / "pkg")
    raw = json.loads((pkg / "manifest.json").read_text())
    mutate(raw)
    (pkg / "manifest.json").write_bytes(canonical_json(raw))
    d = json.loads((golden["root"] / "bundles" / "valid-unsigned" / "bundle.json").read_text())
    d["model"]["package_id"] = sha256_bytes(canonical_json(raw))
    (tmp_path / "bundle.json").write_text(json.dumps(d))
    with pytest.raises(VerinferError):
        verify_signed_bundle(ProofBundle.load(tmp_path / "bundle.json"), pkg, None, allow_dev_srs=True)


def test_bundle_that_names_another_model_is_rejected(golden, tmp_path):
    # the bundle's model name was read by nothing: one for iris_mlp's package could say it is
    # another model's answer (to whoever reads bundle.json) and still verify
    d = _signed_bundle(golden)
    d["model"]["name"] = "digits_cnn"
    with pytest.raises(VerificationError, match="names model"):
        _verify_bundle_dict(golden, d, tmp_path)


# --- the agreement section is not checked against its own labels / the signed label ----


def test_bundle_agreement_that_contradicts_its_labels_is_rejected(golden, tmp_path):
    d = _signed_bundle(golden)
    assert d["agreement"] == {"float_label": 2, "circuit_label": 2, "agree": True}
    # the receipt signs label 2; the bundle now claims the float model said 0, and still "agree"
    d["agreement"]["float_label"] = 0
    with pytest.raises(VerificationError):
        _verify_bundle_dict(golden, d, tmp_path)


def test_bundle_agree_flag_flipped_is_rejected(golden, tmp_path):
    d = _signed_bundle(golden)
    d["agreement"]["agree"] = False  # labels 2 and 2, "disagree": `verinfer verify` prints DISAGREES
    with pytest.raises(VerificationError):
        _verify_bundle_dict(golden, d, tmp_path)


# --- EZKL's readable copies of the public values inside the proof object are unbound ---


def test_bundle_proof_pretty_public_inputs_tampered_is_rejected(golden, tmp_path):
    d = _signed_bundle(golden)
    ppi = d["proof"]["pretty_public_inputs"]
    ppi["rescaled_outputs"] = [["9.0", "9.0", "-9.0"], ["0"]]  # the proof now "says" label 0
    ppi["rescaled_inputs"] = [["1.0", "1.0", "1.0", "1.0"]]
    with pytest.raises(VerificationError):
        _verify_bundle_dict(golden, d, tmp_path)


# --- a high-s (malleated) EIP-712 signature passes; the oracle contract refuses it ------


def test_high_s_eip712_signature_is_rejected(golden):
    from verifier.audit import Auditor, Item
    from verifier.eip712 import SECP256K1_N

    d = json.loads((golden["root"] / "receipts" / "valid.json").read_text())
    raw = bytes.fromhex(d["eip712"]["signature"][2:])
    s = int.from_bytes(raw[32:64], "big")
    assert s <= SECP256K1_N // 2
    # (r, n - s, v ^ 1) recovers to the same signer: the twin a contract's low-s rule refuses
    d["eip712"]["signature"] = "0x" + (raw[:32] + (SECP256K1_N - s).to_bytes(32, "big")
                                       + bytes([55 - raw[64]])).hex()
    auditor = Auditor(jwks=golden["jwks"], trusted_eth_signers={golden["eth_signer"]})
    result = auditor.check(Item("high-s", "receipt", json.dumps(d)))
    assert result.outcome == "fail" and result.error == "SignatureInvalid", result


# --- a v1 receipt whose text mentions "verinfer.receipt/v2" is parsed as v2 -------------


@pytest.mark.parametrize("where,expected", [
    (("eip712", "domain", "name"), "SignatureInvalid"),  # EIP-712 domain tampered
    (("envelope", "signatures", 0, "keyid"), "KeyUnknown"),  # unknown signer
    (("envelope", "payloadType"), "SignatureInvalid"),  # payload type tampered
])
def test_tampered_v1_receipt_gets_its_verification_error_not_input_error(golden, where, expected):
    from verifier.audit import Auditor, Item

    d = json.loads((golden["root"] / "receipts" / "valid.json").read_text())
    node = d
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = "verinfer.receipt/v2"
    auditor = Auditor(jwks=golden["jwks"])
    result = auditor.check(Item("v1", "receipt", json.dumps(d)))
    # before the fix: outcome "error", InputError "format: Input should be 'verinfer.receipt/v2'" (exit 2)
    assert (result.outcome, result.error) == ("fail", expected), result


@pytest.mark.parametrize("field", ["name", "version"])
def test_a_lone_surrogate_in_the_eip712_domain_is_a_bad_signature_not_a_crash(golden, field):
    from verifier.audit import Auditor, Item

    d = json.loads((golden["root"] / "receipts" / "valid.json").read_text())
    d["eip712"]["domain"][field] = "\ud800"  # outside the DSSE signature; JSON text can hold it
    result = Auditor(jwks=golden["jwks"]).check(Item("v1", "receipt", json.dumps(d)))
    # before the fix: UnicodeEncodeError, reported as InternalError (exit 2)
    assert (result.outcome, result.error) == ("fail", "SignatureInvalid"), result


# --- a checkpoint size of Unicode digits crashes (before any signature check) -----------


@pytest.mark.parametrize("size", ["\u00b2", "\u2460"])  # superscript two, circled one: isdigit()
def test_checkpoint_with_unicode_digit_size_is_a_clean_error(size):
    from verifier.audit import Auditor, Item
    from verifier.receipts_v2 import verify_receipt_v2

    log = MemLog()
    r = log.add(statement())
    lines = r.checkpoint.split("\n")
    lines[1] = size  # tampered, no key needed
    bad = r.model_copy(update={"checkpoint": "\n".join(lines)})
    with pytest.raises(VerinferError):  # before the fix: ValueError: invalid literal for int()
        verify_receipt_v2(bad, log.jwks)
    result = Auditor(jwks=log.jwks).check(Item("r", "receipt", bad.model_dump_json()))
    assert (result.outcome, result.error) == ("fail", "SignatureInvalid"), result  # before the fix: InternalError


def test_tampered_checkpoint_in_a_log_dir_does_not_crash_the_audit(tmp_path):
    from server.receipts.translog import LogWriter
    from verifier.cli import main
    from verifier.keys import ed25519_jwk
    from verifier.receipts_v2 import ReceiptV2
    from verifier.tlog import leaf_hash, signature_line

    origin, key = "review.test/log", Ed25519PrivateKey.generate()
    writer = LogWriter(tmp_path / "log.sqlite3", origin, lambda name, body: signature_line(name, key, body))
    st = statement()
    data = st.canonical_bytes()
    note, proof = writer.append([leaf_hash(data)])
    writer.close()
    r = ReceiptV2(id=st.predicate.requestId, statement=base64.b64encode(data).decode(), index=0,
                  proof=[base64.b64encode(h).decode() for h in proof(0)], checkpoint=note)
    (tmp_path / "r.json").write_text(r.model_dump_json())
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [ed25519_jwk(key.public_key())]}))
    with sqlite3.connect(tmp_path / "log.sqlite3") as db:  # the log dir is untrusted input
        (old,) = db.execute("SELECT note FROM checkpoints WHERE size = 0").fetchone()
        bad = old.split("\n")
        bad[1] = "\u00b2"  # an older stored checkpoint, its size line tampered
        db.execute("UPDATE checkpoints SET note = ? WHERE size = 0", ("\n".join(bad),))
    args = ["audit", str(tmp_path / "r.json"), "--keys", str(tmp_path / "jwks.json"), "--log", str(tmp_path), "-q"]
    assert main(args) == 1  # before the fix: ValueError traceback out of check_histories


# --- a log server's malformed consistency answer crashes the audit ----------------------


def test_http_log_with_malformed_consistency_answer_is_a_failed_log_item():
    from verifier.errors import ConsistencyInvalid
    from verifier.logcheck import HttpLog, check_histories

    log = MemLog()
    r_old = log.add(statement())
    log.tree.append(os.urandom(8))
    latest = log.checkpoint()

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = latest.encode() if self.path == "/v1/log/checkpoint" else b'{"from": 1}'
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        problems, _ = check_histories({r_old.checkpoint: "r"}, log.jwks,
                                      [HttpLog(f"http://127.0.0.1:{srv.server_port}")])
    except KeyError as exc:  # before the fix: KeyError 'proof' (a JSON body that is not JSON: ValueError)
        pytest.fail(f"crash instead of a failed log item: {exc!r}")
    finally:
        srv.shutdown()
    assert problems and problems[0].error == ConsistencyInvalid.__name__


# --- a v2 receipt inside a bundle skips --origin and the --log fork check ---------------


def _v2_receipt_for_bundle(bundle, manifest, log: MemLog):
    from verifier.fixedpoint import input_commitment, quantize
    from verifier.receipts import InputRef, ModelRef, OutputTensor, make_subjects
    from verifier.receipts_v2 import PredicateV2, StatementV2
    from verifier.tensors import tensor_digest

    x = bundle.input.array()
    model = ModelRef(name=manifest.name, version="1", sha256=manifest.model_sha256)
    inp = InputRef(name=bundle.input.name, datatype=bundle.input.datatype, shape=x.shape,
                   digest=tensor_digest(x, bundle.input.datatype), scale=manifest.input.scale,
                   commitment="0x" + input_commitment(quantize(x, manifest.input.scale)).hex())
    outs = []
    for i, spec in enumerate(manifest.outputs):
        arr = (np.asarray([bundle.outputs.label], dtype=np.int64) if i == manifest.label_output
               else np.asarray(bundle.outputs.logits, dtype=np.float32)).reshape(spec.shape)
        outs.append(OutputTensor(name=spec.name, datatype=spec.datatype, shape=arr.shape,
                                 digest=tensor_digest(arr, spec.datatype), data=arr.ravel().tolist()))
    outs = tuple(outs)
    rid = "0x" + os.urandom(32).hex()
    pred = PredicateV2(requestId=rid, model=model, input=inp, outputs=outs, label=bundle.outputs.label,
                       time=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                       device="cpu")
    return log.add(StatementV2(subject=make_subjects(model, inp, outs), predicate=pred))


def _bundle_with_v2(golden, tmp_path, log: MemLog) -> Path:
    from verifier.bundle import ProofBundle
    from verifier.manifest import Manifest

    unsigned = golden["root"] / "bundles" / "valid-unsigned" / "bundle.json"
    bundle = ProofBundle.load(unsigned)
    manifest = Manifest.load(golden["pkg"] / "manifest.json")
    receipt = _v2_receipt_for_bundle(bundle, manifest, log)
    d = json.loads(unsigned.read_text()) | {"receipt": receipt.model_dump(mode="json")}
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "bundle.json").write_text(json.dumps(d))
    return folder / "bundle.json"


def test_bundle_receipt_of_another_origin_fails_origin_check(golden, tmp_path):
    from verifier.audit import Auditor, Item, find_packages

    log = MemLog(origin="other.test/log")
    path = _bundle_with_v2(golden, tmp_path, log)
    auditor = Auditor(jwks=log.jwks, packages=find_packages(golden["pkg"]), allow_dev_srs=True,
                      origins=frozenset({"expected.test/log"}))
    receipt = json.loads(path.read_text())["receipt"]
    alone = auditor.check(Item("receipt", "receipt", json.dumps(receipt)))
    assert alone.error == "OriginMismatch"  # the receipt alone: refused (control)
    in_bundle = auditor.check(Item("bundle", "bundle", str(path)))
    assert in_bundle.outcome == "fail" and in_bundle.error == "OriginMismatch", in_bundle  # before the fix: ok


def test_bundle_receipt_from_a_forked_log_fails_the_log_check(golden, tmp_path):
    from server.receipts.translog import LogWriter
    from verifier.audit import Auditor, Item, check_log, find_packages, run_audit, summarize
    from verifier.logcheck import DirLog
    from verifier.tlog import leaf_hash, signature_line

    key, origin = Ed25519PrivateKey.generate(), "fork.test/log"
    honest = LogWriter(tmp_path / "log.sqlite3", origin, lambda name, body: signature_line(name, key, body))
    honest.append([leaf_hash(os.urandom(16)) for _ in range(12)])
    honest.close()
    fork = MemLog(origin=origin, key=key, fill=5)  # same key and origin, another history
    path = _bundle_with_v2(golden, tmp_path, fork)
    auditor = Auditor(jwks=fork.jwks, packages=find_packages(golden["pkg"]), allow_dev_srs=True)
    receipt = json.loads(path.read_text())["receipt"]

    def audit(items):
        results = run_audit(items, auditor, jobs=1)
        results += check_log(results, auditor, [DirLog(tmp_path)])
        return summarize(results, 0).exit_code, results

    code, _ = audit([Item("receipt", "receipt", json.dumps(receipt))])
    assert code == 1  # the receipt alone: the fork is found (control)
    code, results = audit([Item("bundle", "bundle", str(path))])
    assert code == 1, [r.line() for r in results]  # before the fix: 0, "one history"


# --- byte-level malleability: other spellings of the same bytes pass ---------------------


def test_v2_receipt_noncanonical_base64_is_rejected():
    from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2

    log = MemLog()
    r = log.add(statement())
    d = r.model_dump(mode="json")
    variants = {"proof hash": d | {"proof": [_flip_unused_bits(d["proof"][0]), *d["proof"][1:]]}}
    if d["statement"].endswith("="):
        variants["statement"] = d | {"statement": _flip_unused_bits(d["statement"])}
    lines = d["checkpoint"].split("\n")
    head, sig = lines[-2].rsplit(" ", 1)
    lines[-2] = f"{head} {_flip_unused_bits(sig)}"
    variants["checkpoint signature"] = d | {"checkpoint": "\n".join(lines)}
    variants["index as a string"] = d | {"index": str(d["index"])}
    variants["index as a float"] = d | {"index": float(d["index"])}
    accepted = []
    for name, v in variants.items():
        try:
            verify_receipt_v2(ReceiptV2.parse(json.dumps(v)), log.jwks)
            accepted.append(name)
        except VerinferError:
            pass
    assert not accepted, f"tampered v2 receipts accepted: {accepted}"


def test_v1_receipt_noncanonical_base64_and_duplicate_signature_are_rejected(golden):
    from verifier.audit import Auditor, Item

    base = json.loads((golden["root"] / "receipts" / "valid.json").read_text())
    variants = {}
    v = copy.deepcopy(base)
    v["envelope"]["signatures"][0]["sig"] = _flip_unused_bits(v["envelope"]["signatures"][0]["sig"])
    variants["sig"] = v
    if base["envelope"]["payload"].endswith("="):
        v = copy.deepcopy(base)
        v["envelope"]["payload"] = _flip_unused_bits(v["envelope"]["payload"])
        variants["payload"] = v
    v = copy.deepcopy(base)
    v["envelope"]["signatures"].append(v["envelope"]["signatures"][0])
    variants["duplicated signature"] = v
    auditor = Auditor(jwks=golden["jwks"])
    accepted = [n for n, v in variants.items() if auditor.check(Item(n, "receipt", json.dumps(v))).outcome == "ok"]
    assert not accepted, f"tampered v1 receipts accepted: {accepted}"


# --- review 2026-12-01: a hostile log server or log file crashed `audit --log` ----------------
# (http.client errors and non-object error bodies were uncaught; a BLOB note or a non-hash node
# raised TypeError; a dropped table sqlite3.OperationalError)


def _raw_server(answer: bytes):
    """A TCP server on loopback that answers every request with ``answer`` and closes."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                try:
                    conn.sendall(answer)
                except OSError:  # the client read what it reads and closed
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return srv, stop


def _review_log(tmp_path, batches: int = 3):
    """A real log file (the server's writer) and the v2 receipts of every leaf; the receipts'
    older checkpoints need consistency proofs to the latest."""
    from test_audit_log import _log

    key = Ed25519PrivateKey.generate()
    from verifier.keys import ed25519_jwk

    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [ed25519_jwk(key.public_key())]}))
    receipts = _log(tmp_path / "log" / "log.sqlite3", key, batches)
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in receipts))
    return tmp_path / "log" / "log.sqlite3"


@pytest.mark.parametrize("answer, code, says", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\xff\xfe\xfd\n", 1, "SignatureInvalid"),  # not UTF-8
    (b"HTTP/1.1 500 Oops\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n[1,2]", 1, "HTTP 500"),
    (b'HTTP/1.1 404 No\r\nContent-Length: 6\r\n\r\n"nope"', 1, "HTTP 404"),
    (b"garbage\r\n\r\n", 2, "cannot reach the log"),  # not HTTP
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc", 2, "cannot reach the log"),  # cut short
    # an answer past the bound (it was read whole, however long): one line, exit 2
    (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (2 << 20), 2, "the log's answer is over 1 MiB"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1048577\r\n\r\n" + b"x" * (1 << 20) + b"\n", 2, "over 1 MiB"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n" + b"x" * (1 << 20), 1, "SignatureInvalid"),
    (b"HTTP/1.1 500 Oops\r\n\r\n" + b" " * (2 << 20), 1, "HTTP 500"),  # an error's body: its reason only
])
def test_a_hostile_log_server_is_a_failed_log_item_or_one_line_never_a_traceback(tmp_path, capsys, answer, code, says):
    from verifier.cli import main

    _review_log(tmp_path, batches=1)
    srv, stop = _raw_server(answer)
    try:
        rc = main(["audit", str(tmp_path / "r.jsonl"), "--keys", str(tmp_path / "jwks.json"), "-j", "1", "-q",
                   "--log", f"http://127.0.0.1:{srv.getsockname()[1]}"])
    finally:
        stop.set()
        srv.close()
    err = capsys.readouterr().err
    assert rc == code and says in err, err
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("answer", [
    b"garbage\r\n\r\n",
    # cut short of its Content-Length: a bounded read returned what came (a keys document cut
    # short then failed as JSON, or parsed if it was cut at a line end)
    b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{}",
])
def test_keys_from_a_server_that_does_not_speak_http_are_one_line_exit_2(tmp_path, capsys, answer):
    from verifier.cli import main

    _review_log(tmp_path, batches=1)
    srv, stop = _raw_server(answer)
    try:
        rc = main(["audit", str(tmp_path / "r.jsonl"), "--keys", f"http://127.0.0.1:{srv.getsockname()[1]}/k"])
    finally:
        stop.set()
        srv.close()
    err = capsys.readouterr().err
    assert rc == 2 and "cannot fetch keys" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("tamper, code, says", [
    ("DROP TABLE nodes", 1, "cannot read the log's hashes"),
    ("UPDATE nodes SET h = 7", 1, "is not 32 bytes"),
    ("UPDATE nodes SET h = zeroblob(31)", 1, "is not 32 bytes"),
    ("UPDATE checkpoints SET note = CAST(note AS BLOB)", 0, ""),  # the same signed bytes: still one history
    ("UPDATE checkpoints SET note = X'FF0A' WHERE size = (SELECT MAX(size) FROM checkpoints)", 1, "SignatureInvalid"),
    ("DROP TABLE checkpoints", 2, "not a receipt log"),
])
def test_a_tampered_log_file_fails_the_audit_never_crashes_it(tmp_path, capsys, tamper, code, says):
    from verifier.cli import main

    file = _review_log(tmp_path)
    with sqlite3.connect(file) as db:
        db.execute(tamper)
    rc = main(["audit", str(tmp_path / "r.jsonl"), "--keys", str(tmp_path / "jwks.json"), "-j", "1", "-q",
               "--log", str(file)])
    err = capsys.readouterr().err
    assert rc == code and says in err, err


# --- review 2026-12-01: a logged statement that is not canonical JSON was accepted --------
# (with duplicate keys, a first-wins parser and this verifier read different labels)


def test_a_logged_statement_must_be_canonical_json():
    from verifier.receipts_v2 import verify_receipt_v2

    log = MemLog()
    st = statement()
    text = st.canonical_bytes().decode()
    label = f'"label":{st.predicate.label}'
    assert text.count(label) == 1
    variants = {
        "duplicate key": text.replace(label, f'"label":{1 - st.predicate.label},{label}'),
        "whitespace": json.dumps(json.loads(text), indent=1, sort_keys=True),
        "key order": json.dumps(dict(reversed(json.loads(text).items())), separators=(",", ":")),
        "an escaped letter": text.replace('"cpu"', '"\\u0063pu"'),
    }
    from tests.tlog_support import doc_recipe
    from verifier.tlog import note_verifier_key

    recipe, note_key = doc_recipe(), note_verifier_key(log.origin, log.key.public_key())
    for what, bad in variants.items():
        assert bad != text and json.loads(bad) == json.loads(text) or what == "duplicate key"
        receipt = log.add(st, data=bad.encode())
        with pytest.raises(VerificationError, match="not canonical JSON"):  # before the fix: accepted
            verify_receipt_v2(receipt, log.jwks)
        with pytest.raises(ValueError, match="not canonical JSON"):  # and the standalone recipe
            recipe(receipt.model_dump(mode="json"), note_key)
    # RFC 8785 spells an integral double without ".0": such an honest statement verifies
    honest = statement(logits=[2.0, 0.5, -1.0])
    assert b"[2,0.5,-1]" in honest.canonical_bytes()
    assert verify_receipt_v2(log.add(honest), log.jwks) == honest


# --- review 2026-12-01: signed-note leniencies (each needed the key, or was harmless; closed) --


def test_signed_note_leniencies_are_refused():
    from verifier.errors import ConsistencyInvalid, KeyUnknown, SignatureInvalid
    from verifier.tlog import (
        EMPTY_ROOT,
        NoteVerifier,
        checkpoint_body,
        sign_note,
        verify_checkpoint,
        verify_consistency,
    )

    key = Ed25519PrivateKey.generate()
    trusted = [NoteVerifier.from_key("a.test/log", key.public_key())]
    note = sign_note(checkpoint_body("a.test/log", 3, os.urandom(32)), "a.test/log", key).decode()
    assert verify_checkpoint(note, trusted).size == 3
    sig_line = note.rstrip("\n").rsplit("\n", 1)[1] + "\n"
    with pytest.raises(SignatureInvalid, match="two signatures by one key"):  # a second spelling of one note
        verify_checkpoint(note + sig_line, trusted)
    others = "".join(sign_note(b"x\n", f"w{i}.test", Ed25519PrivateKey.generate()).decode().split("\n\n")[1]
                     for i in range(100))
    with pytest.raises(SignatureInvalid, match="more than 100 signatures"):
        verify_checkpoint(note + others, trusted)
    # a log's key vouches for checkpoints of its own origin only, even with no origin asked for
    other_origin = sign_note(checkpoint_body("b.test/log", 3, os.urandom(32)), "a.test/log", key).decode()
    with pytest.raises(KeyUnknown):
        verify_checkpoint(other_origin, trusted)
    # the empty tree has one root
    empty = sign_note(checkpoint_body("a.test/log", 0, os.urandom(32)), "a.test/log", key).decode()
    with pytest.raises(SignatureInvalid, match="empty tree"):
        verify_checkpoint(empty, trusted)
    good_empty = sign_note(checkpoint_body("a.test/log", 0, EMPTY_ROOT), "a.test/log", key).decode()
    assert verify_checkpoint(good_empty, trusted).size == 0
    for new in (0, 5):
        with pytest.raises(ConsistencyInvalid, match="empty tree"):
            verify_consistency(0, new, os.urandom(32), os.urandom(32) if new else None, [])
    verify_consistency(0, 5, EMPTY_ROOT, os.urandom(32), [])


# --- review 2026-12-02: statement fields the schema read loosely (each needs the log's key) ---


def _logged_variant(log: MemLog, edit) -> object:
    """A receipt for the test statement with its JSON value edited by ``edit`` and written in
    the sorted compact form (the canonical check's fast path), signed into ``log``."""
    import orjson

    st = statement()
    value = json.loads(st.canonical_bytes())
    edit(value)
    return log.add(st, data=orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


def _set(path, v):
    def edit(value):
        node = value
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = v
    return edit


def _big_int_logits(value):
    from verifier.tensors import tensor_digest

    out = value["predicate"]["outputs"][0]
    out["data"] = [2**53 + 1, 0, 1]
    out["digest"] = tensor_digest(np.asarray([[2**53 + 1, 0, 1]]), "FP32")
    value["subject"][2]["digest"]["sha256"] = out["digest"]


@pytest.mark.parametrize("what, edit, says", [
    # numpy's reshape took -1 as "the rest": the digest of [1, 3] passed for a shape [-1, 3]
    ("a negative dimension", _set(["predicate", "outputs", 0, "shape"], [-1, 3]), "not a verinfer v2 statement"),
    ("a boolean scale", _set(["predicate", "input", "scale"], True), "not a verinfer v2 statement"),
    # ("1.0" is no RFC 8785 spelling: the canonical check refuses it before the schema)
    ("a float dimension", _set(["predicate", "input", "shape"], [1.0, 4]), "not canonical JSON"),
    ("a negative label", _set(["predicate", "label"], -1), "not a verinfer v2 statement"),
    ("a time that is no RFC 3339 time", _set(["predicate", "time"], "yesterday"), "not a verinfer v2 statement"),
    # RFC 8785 reads a number as a double: 2^53 + 1 has no form (a JavaScript verifier reads
    # 2^53), the fast path took orjson's spelling
    ("an integer past 2^53 no double holds", _big_int_logits, "not canonical JSON"),
])
def test_a_logged_statement_with_loosely_typed_fields_is_refused(what, edit, says):
    from verifier.receipts_v2 import verify_receipt_v2

    log = MemLog()
    receipt = _logged_variant(log, edit)
    with pytest.raises(VerificationError, match=says):  # before the fix: each verified
        verify_receipt_v2(receipt, log.jwks)
    # the unedited statement, written the same way, verifies: the edit is what is refused
    honest = _logged_variant(log, lambda value: None)
    assert verify_receipt_v2(honest, log.jwks).predicate.requestId == honest.id


# --- review 2026-12-02: the canonical check's fast path took orjson's spelling of a number -
# (2.0, -0.0, 1.5e-06, 1e+16 where RFC 8785 writes 2, 0, 0.0000015, 10000000000000000: this
# verifier accepted a statement every strict JCS verifier, the status page's included, refuses)

ORJSON_SPELLINGS = {  # FP32 logits -> a token orjson writes for one of them, not RFC 8785's
    "an integral double": ([2.0, 0.5, -1.0], b"2.0,"),
    "minus zero": ([-0.0, 0.5, 1.5], b"-0.0,"),
    "an exponent of -6": ([1.5e-6, 0.5, 1.5], b"e-6,"),
    "an exponent of +16": ([0.5, 3e16, 1.5], b"e+16,"),
    "an exponent of +20": ([0.5, 1.5, 1e20], b"e+20]"),
}


def _orjson_spelled(st) -> bytes:
    import orjson

    return orjson.dumps(st.model_dump(mode="json", by_alias=True), option=orjson.OPT_SORT_KEYS)


@pytest.mark.parametrize("what", ORJSON_SPELLINGS)
def test_a_number_in_orjsons_spelling_is_not_canonical(what):
    from tests.tlog_support import doc_recipe
    from verifier.receipts_v2 import verify_receipt_v2
    from verifier.tlog import note_verifier_key

    logits, token = ORJSON_SPELLINGS[what]
    log, st = MemLog(), statement(logits=logits)
    data = _orjson_spelled(st)
    as_doubles = functools.partial(json.loads, parse_int=float)  # JCS's reading: every number a double
    assert token in data and data != st.canonical_bytes() and as_doubles(data) == as_doubles(st.canonical_bytes())
    receipt = log.add(st, data=data)
    with pytest.raises(VerificationError, match="not canonical JSON"):  # before the fix: verified
        verify_receipt_v2(receipt, log.jwks)
    recipe, note_key = doc_recipe(), note_verifier_key(log.origin, log.key.public_key())
    with pytest.raises(ValueError, match="not canonical JSON"):  # the recipe too (before: took any spelling)
        recipe(receipt.model_dump(mode="json"), note_key)
    honest = log.add(st)
    assert recipe(honest.model_dump(mode="json"), note_key) == json.loads(st.canonical_bytes())


def test_keys_in_code_point_order_are_not_canonical():
    """RFC 8785 sorts keys by UTF-16 code units: U+10000 (D800 DC00) before U+E000, which
    orjson's sort (code points) puts the other way round."""
    import orjson

    from verifier.errors import SignatureInvalid
    from verifier.receipts_v2 import canonical_value

    value = {"\ue000": 1, "\U00010000": 2, "a": [2.5]}
    jcs = "{\"a\":[2.5],\"\U00010000\":2,\"\ue000\":1}".encode()
    assert canonical_value(jcs) == value
    assert orjson.dumps(value, option=orjson.OPT_SORT_KEYS) != jcs
    with pytest.raises(SignatureInvalid, match="not canonical JSON"):  # before the fix: accepted
        canonical_value(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


def test_the_canonical_fast_path_takes_only_rfc8785_bytes():
    """Over FP32 bit patterns, every binary exponent of a double and the edge values: a list of
    numbers passes the check exactly when its bytes are rfc8785's (orjson's spelling otherwise)."""
    import math

    import orjson
    import rfc8785

    from verifier.errors import SignatureInvalid
    from verifier.receipts_v2 import canonical_value

    rng = np.random.default_rng(8785)
    fp32 = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    fp32 = fp32[np.isfinite(fp32)].astype(float).tolist()
    doubles = [math.ldexp(m, e) for e in range(-1074, 1024) for m in (1.0, 1.5, 1.2345678901234567)]
    edges = [0.0, -0.0, 2.0, 1e-6, 1e-7, 1e15, 1e16, 1e20, 1e21, 5e-324, 1.7976931348623157e308]
    values = [v for v in [*fp32, *doubles, *edges] if math.isfinite(v)]
    differ = 0
    for chunk in (values[i:i + 7] for i in range(0, len(values), 7)):
        doc = {"x": chunk[1:], "y": chunk[0]}  # a number before "]", "," and "}"
        jcs, fast = rfc8785.dumps(doc), orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        assert canonical_value(jcs) == doc
        if fast != jcs:
            differ += 1
            with pytest.raises(SignatureInvalid):
                canonical_value(fast)
    assert differ > 1000


# --- review 2026-12-02: an FP32 output from 2^53 to 1e21 failed the server's own receipt ----
# (RFC 8785 writes such a double in digits, 30000000817692670 for 3e16; orjson read them as an
# integer past 2^53, which the check took for one with no JCS form: SignatureInvalid, where the
# status page and any JCS verifier, reading numbers as doubles, found the receipt valid)


def test_an_output_written_in_digits_past_2_53_verifies():
    from tests.tlog_support import doc_recipe
    from verifier.receipts_v2 import canonical_value, verify_receipt_v2
    from verifier.tlog import note_verifier_key

    log = MemLog()
    recipe, note_key = doc_recipe(), note_verifier_key(log.origin, log.key.public_key())
    for logits, digits in (([0.5, 3e16, 1.5], b"[0.5,30000000817692670,1.5]"),
                           ([-1e20, 2.0**60, 9.5e15], b"[-100000002004087730000,1152921504606847000,9499999507316736]"),
                           ([2.0**53, 1.0, 0.0], b"[9007199254740992,1,0]")):
        st = statement(logits=logits)
        assert digits in st.canonical_bytes()
        receipt = log.add(st)
        assert verify_receipt_v2(receipt, log.jwks) == st  # before the fix: not canonical JSON
        assert recipe(receipt.model_dump(mode="json"), note_key)["predicate"]["requestId"] == st.predicate.requestId
    assert canonical_value(b'{"a":[30000000817692670,-1e+21]}') == {"a": [3.000000081769267e16, -1e21]}
    # (not the shortest digits of the double they read as: JSON.stringify writes those)
    for not_a_double in (b'{"a":9007199254740993}', b'{"a":30000000817692672}', b'{"a":1152921504606846976}',
                         b'{"a":18446744073709551615}'):
        with pytest.raises(VerificationError, match="not canonical JSON"):
            canonical_value(not_a_double)


# --- review 2026-12-02: the standalone recipe (docs/formats.md) took a statement in any spelling
# (it checked for duplicate keys only: whitespace, key order, "2.0", a lone surrogate, NaN passed
# it, which the verifier and the status page refuse)


def test_the_recipe_writes_rfc8785_as_the_rfc8785_package_does():
    import math

    import rfc8785

    from tests.tlog_support import doc_block

    scope: dict = {}
    exec(compile(doc_block("recipe"), "docs/formats.md#recipe", "exec"), scope)
    rng = np.random.default_rng(8785)
    fp32 = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    doubles = rng.integers(0, 2**64, 20000, dtype=np.uint64).view(np.float64)
    values = [float(v) for v in [*fp32, *doubles] if math.isfinite(v)]
    values += [math.ldexp(m, e) for e in range(-1074, 1024) for m in (1.0, 1.5)]
    values += [0.0, -0.0, 2.0, 1e-6, 1e-7, 1e16, 1e20, 1e21, 5e-324, 1.7976931348623157e308]
    for v in values:
        assert scope["_number"](v) == rfc8785.dumps(v).decode(), v
    doc = {"\ue000": 1, "\U00010000": [2.0, -0.0, "x\n\x1f\"\\\x7f\u2028é"], "a": None, "b": [True, False], "": 7}
    assert scope["_jcs"](doc).encode() == rfc8785.dumps(doc)


def test_the_recipe_refuses_a_statement_the_verifier_refuses_as_not_canonical():
    from tests.tlog_support import doc_recipe
    from verifier.receipts_v2 import verify_receipt_v2
    from verifier.tlog import note_verifier_key

    log = MemLog()
    recipe, note_key = doc_recipe(), note_verifier_key(log.origin, log.key.public_key())
    st = statement()
    text = st.canonical_bytes().decode()
    for bad in (text.replace('"device":"cpu"', '"device":"\\ud800"'),  # a lone surrogate
                text.replace('"data":[', '"data":[NaN,').replace('"shape":[1,3]}', '"shape":[1,4]}'),
                text.replace('"scale":7', '"scale":7.0')):
        assert bad != text
        receipt = log.add(st, data=bad.encode())
        with pytest.raises(VerificationError):
            verify_receipt_v2(receipt, log.jwks)
        with pytest.raises(ValueError):  # before the fix: the recipe returned the statement
            recipe(receipt.model_dump(mode="json"), note_key)


def test_the_recipe_refuses_a_note_key_the_verifier_refuses():
    """Under a note key of small order a checkpoint nobody signed verified in the recipe (OpenSSL
    checks no key's order), which verifier/keys.py and the status page refuse."""
    import hashlib

    from tests.server.test_status_page import _forged_identity_log_receipt
    from tests.tlog_support import doc_recipe
    from verifier.errors import InputError
    from verifier.keys import _SMALL_ORDER, ed25519_public_key

    recipe = doc_recipe()
    vkey, forged = _forged_identity_log_receipt()
    with pytest.raises(ValueError, match="small order"):  # before the fix: the statement came back
        recipe(forged, vkey)
    p = 2**255 - 19
    keys = [*_SMALL_ORDER, *(bytes([*k[:31], k[31] | 0x80]) for k in _SMALL_ORDER),
            (p + 1).to_bytes(32, "little"), (2**255 - 1).to_bytes(32, "little")]
    for raw in keys:
        with pytest.raises(InputError):
            ed25519_public_key(raw)
        kid = hashlib.sha256(b"a.test/log\n\x01" + raw).digest()[:4]
        with pytest.raises(ValueError, match="small order"):
            recipe(forged, f"a.test/log+{kid.hex()}+{base64.b64encode(bytes([1]) + raw).decode()}")
