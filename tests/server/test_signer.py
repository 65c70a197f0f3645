"""The server's fast receipt builder against the format's definition (verifier.receipts).

The signer writes the statement's canonical JSON from a template; these tests hold it to
the pydantic model's bytes, byte for byte, over awkward values, and verify every receipt
with the verifier (Ed25519, EIP-712, digests and the input commitment).
"""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest

from server.inference.oip import OutputChoice
from verifier.errors import InputError
from verifier.fixedpoint import input_commitment, quantize
from verifier.receipts import Receipt, Statement, verify_receipt
from verifier.tensors import tensor_digest


@pytest.fixture
def signer(tmp_path, monkeypatch):
    monkeypatch.setenv("VERINFER_HOME", str(tmp_path))
    from server.receipts.keys import load_keys
    from server.receipts.signer import ReceiptSigner
    from server.settings import ServerSettings

    keys = load_keys(ServerSettings())
    return ReceiptSigner(keys, ServerSettings()), keys


def _info(name="digits_cnn", version="1", input_name="input", device="cpu"):
    from server.receipts.signer import ModelInfo

    return ModelInfo(name, version, "ab" * 32, input_name, "FP32", 13,
                     (("logits", "FP32"), ("label", "INT64")), device)


def _job(info, xs_sent: list[np.ndarray], client_ids, datatypes):
    from server.receipts.signer import BatchJob, new_request_id

    x_model = np.concatenate([x.astype(np.float32) for x in xs_sent])
    rows = [len(x) for x in xs_sent]
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(sum(rows), 3)).astype(np.float32)
    labels_all = logits.argmax(1).astype(np.int64)
    labels, start = [], 0
    for n in rows:
        part = labels_all[start:start + n].tolist()
        labels.append(part[0] if n == 1 else part)
        start += n
    return BatchJob(model=info.name, request_ids=[new_request_id() for _ in rows], client_ids=client_ids,
                    wanted=[None] * len(rows), datatypes=datatypes,
                    x_sent=[x if x.dtype != np.float32 else None for x in xs_sent], x_model=x_model,
                    outputs={"logits": logits, "label": labels_all}, rows=rows, labels=labels, time=time.time())


CASES = {
    "plain": (_info(), [None, "c1"], ["FP32", "FP32"]),
    "non-ASCII and quotes": (_info(name='net "ü" ✓', version="v\\1", input_name="x\n"),
                             ['id "ünï" \\ ✓', None], ["FP32", "FP64"]),
    "cuda device name": (_info(device="cuda:0 (NVIDIA H200)"), ["a", "b"], ["FP64", "FP32"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_statement_bytes_equal_the_model_and_verify(signer, case):
    sign, keys = signer
    info, client_ids, datatypes = CASES[case]
    rng = np.random.default_rng(0)
    dtypes = {"FP32": np.float32, "FP64": np.float64}
    # one single-sample answer and one of three samples
    xs = [rng.normal(size=(1, 1, 8, 8)).astype(dtypes[datatypes[0]]),
          rng.normal(size=(3, 1, 8, 8)).astype(dtypes[datatypes[1]])]
    job = _job(info, xs, client_ids, datatypes)
    bodies = sign.sign_batch(info, job)
    assert len(bodies) == 2
    for i, body in enumerate(bodies):
        receipt = Receipt.parse(body)
        payload = base64.b64decode(receipt.envelope.payload)
        st = Statement.model_validate_json(payload)
        assert st.canonical_bytes() == payload  # the template is the canonical form
        trusted = {keys.eth_address} if i == 0 else None  # a batch answer has no EIP-712 part
        checked = verify_receipt(receipt, keys.jwks, trusted_eth_signers=trusted,
                                 input_array=xs[i], model_sha256=info.sha256)
        p = checked.predicate
        assert p.requestId == job.request_ids[i] and p.clientRequestId == client_ids[i]
        assert p.model.name == info.name and p.input.name == info.input_name and p.device == info.device
        assert p.input.datatype == datatypes[i] and p.input.digest == tensor_digest(xs[i], datatypes[i])
        x_model = xs[i].astype(np.float32)
        assert p.input.commitment == "0x" + input_commitment(quantize(x_model, 13)).hex()
        assert p.label == job.labels[i]
        assert (receipt.eip712 is not None) == (i == 0)  # contracts get single-sample answers
        assert json.loads(body) == json.loads(receipt.model_dump_json(by_alias=True))


def test_libsodium_and_openssl_sign_the_same_bytes(signer):
    """Ed25519 is deterministic: the PyNaCl fast path makes OpenSSL's signature exactly."""
    sign, keys = signer
    message = b"DSSEv1 28 application/vnd.in-toto+json 5 hello"
    assert sign._ed(message) == keys.ed25519.sign(message)


def test_request_id_must_be_ours(signer):
    sign, _ = signer
    info = _info()
    job = _job(info, [np.zeros((1, 1, 8, 8), np.float32)], [None], ["FP32"])
    job.request_ids[0] = '0x"},"eip712":null}'
    with pytest.raises(InputError, match="bad request id"):
        sign.sign_batch(info, job)


def test_response_body_parses_and_embeds_the_receipt_text():
    """The hand-written response JSON: valid, the outputs asked for in order, and the
    receipt text carried exactly, also with backslashes and quotes in it."""
    from server.inference.oip import json_text_literal, outputs_json, response_body

    meta = (("logits", "FP32"), ("label", "INT64"))
    outs = {"logits": np.array([[0.25, -1.5]], dtype=np.float32), "label": np.array([0])}
    receipt = json.dumps({"a": 'quote " and backslash \\ and é', "n": [1, 2]}, separators=(",", ":"), ensure_ascii=False)
    body = json.loads(response_body('m "x"', "1", outputs_json(meta, outs, OutputChoice(("label", "logits"))), "c\\1", 0,
                                    "0x" + "ab" * 32, json_text_literal(receipt)))
    assert body == {
        "model_name": 'm "x"', "model_version": "1", "id": "c\\1",
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": [0]},
                    {"name": "logits", "datatype": "FP32", "shape": [1, 2], "data": [0.25, -1.5]}],
        "parameters": {"label": 0, "receipt_id": "0x" + "ab" * 32, "receipt": receipt},
    }
    plain = json.loads(response_body("m", "1", outputs_json(meta, outs, None), None, None))
    assert "parameters" not in plain and "id" not in plain and [o["name"] for o in plain["outputs"]] == ["logits", "label"]


def test_make_receipts_responses_show_what_the_statements_sign(signer, tmp_path):
    """The worker's whole answers (v2: one log append and one checkpoint for a group of jobs):
    each response's outputs (the numbers written once, for the statement and the response) are
    its own rows of the batch, as its logged statement has them, in the order asked for; each
    receipt verifies, is stored and carried in its response; a job that cannot be signed (NaN
    output) fails alone."""
    from server.receipts.logged import LogReceipts
    from server.receipts.store import ReceiptStore
    from server.receipts.worker import make_receipts
    from server.settings import ServerSettings
    from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2

    _, keys = signer
    maker = LogReceipts(keys, ServerSettings(home=tmp_path))
    info = _info()
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=(n, 1, 8, 8)).astype(np.float32) for n in (1, 3, 1)]
    job = _job(info, xs, [None, "c", None], ["FP32"] * 3)
    job.wanted = [None, OutputChoice(("label", "logits")), OutputChoice(("label",))]
    job.eip712 = [True, False, True]  # quotes inside the receipt: its literal in the response escapes them
    bad = _job(info, xs[:1], [None], ["FP32"])
    bad.outputs["logits"][0, 0] = np.nan
    other = _job(info, xs[1:], ["d", None], ["FP32"] * 2)
    store = ReceiptStore(tmp_path / "receipts.sqlite3")
    bodies, failed, more = make_receipts(maker, store, {info.name: info}, [job, bad, other], keep_inputs=True)
    assert isinstance(failed, str) and "could not sign" in failed
    assert len(more) == 2
    start, notes = 0, set()
    for i, (body, n) in enumerate(zip(bodies, job.rows)):
        resp = json.loads(body)
        receipt = resp["parameters"]["receipt"]
        assert store.get(resp["parameters"]["receipt_id"]) == receipt  # the same bytes
        assert (json.loads(receipt)["eip712"] is not None) == (i != 1)
        st = verify_receipt_v2(ReceiptV2.parse(receipt), keys.jwks)
        notes.add(json.loads(receipt)["checkpoint"])
        signed = {o.name: o.data for o in st.predicate.outputs}
        assert [o["name"] for o in resp["outputs"]] == list(job.wanted[i].names if job.wanted[i] else ["logits", "label"])
        for o in resp["outputs"]:
            mine = job.outputs[o["name"]][start : start + n]
            assert o["data"] == signed[o["name"]] == mine.ravel().tolist()
            assert o["shape"] == list(mine.shape)
        start += n
    for body in more:
        notes.add(json.loads(json.loads(body)["parameters"]["receipt"])["checkpoint"])
    assert len(notes) == 1  # one checkpoint for the group
    store.close()


def test_the_shared_writer_groups_the_jobs_of_every_connection(signer, tmp_path):
    """``serve --workers``: jobs waiting on several server processes' connections join one
    group (one log append, one checkpoint); each connection gets its own answers."""
    import socket
    import threading
    from multiprocessing.connection import Connection

    from server.receipts.worker import _serve, _Writer
    from server.settings import ServerSettings
    from verifier.receipts_v2 import ReceiptV2, verify_receipt_v2

    _, keys = signer
    writer = _Writer(ServerSettings(home=tmp_path))
    info = _info()
    writer.infos[info.name] = info
    rng = np.random.default_rng(3)
    pairs = [socket.socketpair() for _ in range(2)]
    clients = [Connection(a.detach()) for a, _ in pairs]
    for k, c in enumerate(clients):  # both wait before the writer looks
        c.send((k, _job(info, [rng.normal(size=(1, 1, 8, 8)).astype(np.float32)], [f"c{k}"], ["FP32"]),
                time.monotonic() + 600))
    loop = threading.Thread(target=_serve, args=(writer, [Connection(b.detach()) for _, b in pairs]))
    loop.start()
    replies = [c.recv() for c in clients]
    for c in clients:  # the writer drops a client that is gone, and stops with the last one
        c.close()
    loop.join(30)
    assert not loop.is_alive()
    writer.close()
    notes = set()
    for k, (seq, bodies, error) in enumerate(replies):
        assert seq == k and error is None
        resp = json.loads(bodies[0])
        assert resp["id"] == f"c{k}"
        receipt = ReceiptV2.parse(resp["parameters"]["receipt"])
        verify_receipt_v2(receipt, keys.jwks)
        notes.add(receipt.checkpoint)
    assert len(notes) == 1  # one group: one checkpoint for both connections' jobs


def test_the_writer_groups_waiting_jobs_up_to_a_chunk_of_answers(signer, tmp_path):
    """A group takes the waiting jobs until they hold ``GROUP_ANSWERS`` answers, not every
    job waiting: the rest are the next group's (their own checkpoint, their own reply), so
    the clients of the first group are answered while the second is signed."""
    import socket
    import threading
    from multiprocessing.connection import Connection

    from server.receipts.worker import GROUP_ANSWERS, _serve, _Writer
    from server.settings import ServerSettings
    from verifier.receipts_v2 import ReceiptV2

    writer = _Writer(ServerSettings(home=tmp_path))
    info = _info()
    writer.infos[info.name] = info
    rng = np.random.default_rng(4)
    ours, theirs = socket.socketpair()
    client = Connection(ours.detach())
    sizes = [GROUP_ANSWERS - 3, 3, 1, 2]  # the first two fill a group; the last two are the next
    for seq, n in enumerate(sizes):  # all wait before the writer looks
        xs = [rng.normal(size=(1, 1, 8, 8)).astype(np.float32) for _ in range(n)]
        client.send((seq, _job(info, xs, [None] * n, ["FP32"] * n), time.monotonic() + 600))
    loop = threading.Thread(target=_serve, args=(writer, [Connection(theirs.detach())]))
    loop.start()
    replies = [client.recv() for _ in sizes]
    client.close()
    loop.join(30)
    assert not loop.is_alive()
    writer.close()
    notes = []
    for seq, (got, bodies, error) in enumerate(replies):
        assert got == seq and error is None and len(bodies) == sizes[seq]
        notes.append({ReceiptV2.parse(json.loads(b)["parameters"]["receipt"]).checkpoint for b in bodies})
    assert notes[0] == notes[1] and notes[2] == notes[3] and notes[0] != notes[2]


def test_the_writer_refuses_a_job_past_its_deadline_and_answers_a_probe(signer, tmp_path):
    """A job whose client stopped waiting (its deadline passed: it answered a 503, e.g. while
    the writer was stopped) is refused, not logged; a probe (job None) is answered at once; a
    job in time is logged and signed."""
    import socket
    import threading
    from multiprocessing.connection import Connection

    from server.receipts.translog import LogReader
    from server.receipts.worker import TOO_LATE, _serve, _Writer
    from server.settings import ServerSettings

    settings = ServerSettings(home=tmp_path)
    writer = _Writer(settings)
    info = _info()
    writer.infos[info.name] = info
    ours, theirs = socket.socketpair()
    client = Connection(ours.detach())
    x = [np.zeros((1, 1, 8, 8), np.float32)]
    client.send((1, _job(info, x, ["late"], ["FP32"]), time.monotonic() - 1))
    client.send((2, None, time.monotonic() + 600))
    client.send((3, _job(info, x, ["in time"], ["FP32"]), time.monotonic() + 600))
    loop = threading.Thread(target=_serve, args=(writer, [Connection(theirs.detach())]))
    loop.start()
    replies = {r[0]: r for r in (client.recv() for _ in range(3))}
    client.close()
    loop.join(30)
    assert not loop.is_alive()
    writer.close()
    assert replies[1] == (1, None, TOO_LATE) and replies[2] == (2, [], None)
    assert replies[3][2] is None and json.loads(replies[3][1][0])["id"] == "in time"
    log = LogReader(settings.log_path)
    assert log.latest()[0] == 1  # the late job's statement is not in the log
    log.close()
