"""A relayer that cannot be drained or stalled (issue 16), on a real anvil chain, without
EZKL: unpaid and greedy requests skipped, a full proof queue only delays, a slow proof does
not hold up the others, a stuck transaction replaced, confirmations, a reorg rewound.
An unprovable input with the real EZKL prover: test_relayer_e2e.py."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from types import SimpleNamespace

import pytest
from relay_world import (
    IRIS_ONNX,
    SCALE,
    answer,
    consumer,
    fulfilled_events,
    funded_key_file,
    held_out,
    mock_verifier,
    new_key,
    onnx_label,
    quantized,
    relayer_for,
    request,
    samples,
    setup_oracle,
)

from contracts import deploy
from server.relayer.relayer import LocalModel, Relayer, RelayStore

pytestmark = pytest.mark.chain


def _rpc(chain, method: str, *params):
    return chain.w3.provider.make_request(method, list(params))["result"]


def _paid_request(chain, cons, q, fee: int) -> bytes:
    chain.transact(cons.functions.classify(list(q)), value=fee)
    return bytes(cons.functions.lastRequestId().call())


def test_unpaid_and_greedy_requests_are_skipped_and_logged(anvil_chain, iris_model, tmp_path,
                                                          caplog):
    """Zero fee with a 2.5M-gas callback: skipped (over the callback cap; and, with the cap
    raised, unpaid). Zero fee with a small callback: skipped (unpaid). Enough fee: served, in
    the same pass. Skipped requests are final: not read again."""
    chain = anvil_chain
    key, addr = new_key()
    oracle, small = setup_oracle(chain, iris_model, "signature", addr)
    greedy = consumer(chain, oracle.address, iris_model.model_id, gas=2_500_000)
    q = samples(1)[0]
    r_greedy = request(chain, greedy, q)
    r_unpaid = request(chain, small, q)
    r_paid = _paid_request(chain, small, q, 10**16)
    r = relayer_for(chain, oracle, iris_model, tmp_path, key, fee_margin=1.0)
    with caplog.at_level(logging.WARNING, logger="verinfer.relayer"):
        res = r.poll()
    hexes = ["0x" + x.hex() for x in (r_greedy, r_unpaid, r_paid)]
    assert res.skipped == hexes[:2] and res.fulfilled == hexes[2:]
    assert "callback gas 2500000 is over this relayer's cap 1000000" in r.store.get(
        hexes[0]).reason
    assert "fee 0 wei does not cover" in r.store.get(hexes[1]).reason
    assert all(f"{h} skipped" in caplog.text for h in hexes[:2])
    assert answer(small, r_paid) == (True, onnx_label(IRIS_ONNX, q, SCALE, (1, 4)))
    assert answer(greedy, r_greedy) == (False, 0) and answer(small, r_unpaid) == (False, 0)
    assert r.poll().events == 0  # skipped is final

    # a relayer that would serve 2.5M-gas callbacks still refuses to pay for one
    (tmp_path / "b").mkdir()
    r2 = relayer_for(chain, oracle, iris_model, tmp_path / "b", key, fee_margin=1.0,
                  max_callback_gas=2_500_000)
    res = r2.poll()
    assert hexes[0] in res.skipped and "fee 0 wei does not cover" in r2.store.get(
        hexes[0]).reason
    assert len(fulfilled_events(chain, oracle.address)) == 1


def _fake_bundle(model: LocalModel, q: list[int]):
    """A bundle whose instances carry ``q`` and the float model's label: what a
    MockVerifier-backed oracle accepts (the proof bytes are not checked)."""
    from verifier.fixedpoint import int_to_felt

    label = model.label(model.dequantize(q))
    felts = [int_to_felt(x) for x in q] + [0, 0, 0, label]
    return SimpleNamespace(proof={"hex_proof": "0x00",
                                  "instances": [[f.to_bytes(32, "little").hex() for f in felts]]})


class _QueueFullOnce:
    """server.proofs.jobs.ProofJobs' surface: the first submit answers the real QueueFull;
    the next says it has no package for the model, so QueueProofs proves with its fallback
    (here a MockVerifier-grade bundle)."""

    def __init__(self):
        self.submits = 0

    def submit_x(self, model, x, receipt_id, callback, client=None):
        from server.errors import NoCircuitPackage, QueueFull

        self.submits += 1
        if self.submits == 1:
            raise QueueFull("the proof queue is full (1 jobs queued or running); retry later", 1)
        raise NoCircuitPackage(f"no circuit package for {model}")


def test_a_full_proof_queue_delays_but_does_not_fail(anvil_chain, iris_model, tmp_path):
    from server.relayer.models import QueueProofs

    chain = anvil_chain
    oracle, cons = setup_oracle(chain, iris_model, "proof", None)
    model = dataclasses.replace(iris_model, package=object())  # "has a circuit package"
    q = samples(1)[0]
    rid = request(chain, cons, q)
    jobs = _QueueFullOnce()
    fallback = SimpleNamespace(prove=lambda m, x: _fake_bundle(model, q))
    r = relayer_for(chain, oracle, model, tmp_path, None,
                 proofs=QueueProofs(jobs, timeout_s=5, fallback=fallback))
    first = r.poll()
    assert first.delayed == ["0x" + rid.hex()] and not first.failed
    rec = r.store.get("0x" + rid.hex())
    assert rec.state == "pending" and rec.attempts == 0  # not counted as a failure
    assert answer(cons, rid) == (False, 0)
    second = r.poll()
    assert second.fulfilled == ["0x" + rid.hex()] and jobs.submits == 2
    assert answer(cons, rid)[0]


class _SlowProofs:
    """A proof that is not done until the signature request (handled after it, in event
    order) is answered on chain; gives up after 60 s, which fails the test."""

    def __init__(self, model, q, sig_consumer, sig_rid):
        self._bundle = _fake_bundle(model, q)
        self.cons, self.rid = sig_consumer, sig_rid
        self.saw_signature_answer = False

    def prove(self, model, x):
        import time

        end = time.monotonic() + 60
        while time.monotonic() < end:
            if answer(self.cons, self.rid)[0]:
                self.saw_signature_answer = True
                break
            time.sleep(0.05)
        return self._bundle


def test_a_slow_proof_does_not_hold_up_signature_requests(anvil_chain, iris_model, tmp_path):
    chain = anvil_chain
    key, addr = new_key()
    oracle, sig_cons = setup_oracle(chain, iris_model, "signature", addr)
    proof_model = dataclasses.replace(iris_model, model_id=b"\x0a" * 32, package=object())
    deploy.register_model(chain, oracle, model_id=proof_model.model_id,
                          verifier=mock_verifier(chain), input_length=4, input_scale=SCALE,
                          policy="proof", signer=None, num_instances=8)
    proof_cons = consumer(chain, oracle.address, proof_model.model_id)
    q = samples(1)[0]
    r_proof = request(chain, proof_cons, q)  # first in event order
    r_sig = request(chain, sig_cons, q)
    proofs = _SlowProofs(proof_model, q, sig_cons, r_sig)
    store = RelayStore(tmp_path / "r.sqlite3", chain.chain_id, oracle.address)
    r = Relayer(chain, oracle.address, {iris_model.model_id: iris_model,
                                        proof_model.model_id: proof_model}, store,
                eth_key=key, proofs=proofs, fee_margin=0, workers=2)
    res = r.poll()
    assert res.fulfilled == ["0x" + r_proof.hex(), "0x" + r_sig.hex()]
    assert proofs.saw_signature_answer  # answered while the proof was still running


def _poll_in_background(r, out: dict) -> threading.Thread:
    """``r.poll()`` in a thread: ``out["res"]``, or ``out["exc"]`` what it raised."""
    def run():
        try:
            out["res"] = r.poll()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            out["exc"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_stuck_transaction_is_replaced(anvil_chain, iris_model, tmp_path):
    """Automine off: the fulfilment is not mined within tx_timeout_s, so the relayer sends it
    again at the same nonce with a higher fee; the block then mined holds the replacement,
    and the request ends fulfilled once."""
    from web3.exceptions import TransactionNotFound

    from contracts.chain import connect

    chain0 = anvil_chain
    key, addr = new_key()
    oracle, cons = setup_oracle(chain0, iris_model, "signature", addr)
    account, key_file = funded_key_file(chain0, tmp_path)
    chain = connect(chain0.rpc, key_file=key_file)
    rid = request(chain0, cons, samples(1)[0])
    first, replaced, out = [], threading.Event(), {}
    r = relayer_for(chain, oracle, iris_model, tmp_path, key, tx_timeout_s=0.5, hooks={
        "after_send": lambda ev: first.append(r.store.get(ev.rid).tx_hash),
        "after_replace": lambda ev: replaced.set()})

    _rpc(chain0, "evm_setAutomine", False)
    try:
        t = _poll_in_background(r, out)
        assert replaced.wait(60), "the relayer did not replace its stuck transaction"
        _rpc(chain0, "evm_mine")
        t.join(60)
    finally:
        _rpc(chain0, "evm_setAutomine", True)
    assert "exc" not in out, out.get("exc")
    assert out["res"].fulfilled == ["0x" + rid.hex()]
    rec = r.store.get("0x" + rid.hex())
    assert rec.tx_hash != first[0]  # the replacement was mined ...
    with pytest.raises(TransactionNotFound):  # ... the first never was
        chain.w3.eth.get_transaction_receipt(first[0])
    assert chain.w3.eth.get_transaction_count(account) == 1
    assert [bytes(e["requestId"]) for e in fulfilled_events(chain, oracle.address)] == [rid]


def test_a_stuck_transaction_the_fee_would_not_pay_to_replace_is_waited_on(anvil_chain, iris_model, tmp_path):
    """The request's fee covers the sent fulfilment but not its replacement at fees x 1.25:
    the broadcast transaction cannot be skipped, so the relayer keeps it (no replacement, no
    Unpaid escaping the pass, the record naming it) and it is what fulfils the request once
    mined. (Before: Unpaid escaped poll, the record stayed 'sending', the next poll blocked.)"""
    from contracts.chain import connect

    chain0 = anvil_chain
    key, addr = new_key()
    oracle, cons = setup_oracle(chain0, iris_model, "signature", addr)
    account, key_file = funded_key_file(chain0, tmp_path)
    chain = connect(chain0.rpc, key_file=key_file)
    chain0.transact(cons.functions.classify(list(samples(1)[0])), value=10**16)
    rid = "0x" + bytes(cons.functions.lastRequestId().call()).hex()
    first, out = [], {}

    def after_send(ev):  # the fee now sits between what the sent tx and its replacement need
        tx = chain.w3.eth.get_transaction(r.store.get(ev.rid).tx_hash)
        first.append(r.store.get(ev.rid).tx_hash)
        r.sender.fee_margin = ev.fee / (tx["gas"] * tx["maxFeePerGas"] * 1.1)

    r = relayer_for(chain, oracle, iris_model, tmp_path, key, tx_timeout_s=0.3, fee_margin=1.0,
                    hooks={"after_send": after_send})
    r.sender.max_replacements = 2

    _rpc(chain0, "evm_setAutomine", False)
    try:
        t = _poll_in_background(r, out)
        t.join(60)
        assert not t.is_alive()
        # not mined after its replacements were declined: a node-side wait, retried next pass
        assert isinstance(out.get("exc"), TimeoutError), out
        rec = r.store.get(rid)
        assert (rec.state, rec.tx_hash) == ("sending", first[0])
        pending = _rpc(chain0, "txpool_content")["pending"]
        assert sum(len(txs) for txs in pending.values()) == 1  # the first alone: never replaced
    finally:
        _rpc(chain0, "evm_setAutomine", True)
    _rpc(chain0, "evm_mine")
    assert r.poll().fulfilled == [rid]
    assert r.store.get(rid).tx_hash == first[0]
    assert chain.w3.eth.get_transaction_count(account) == 1


def test_a_restart_between_sending_from_the_unlocked_account_and_recording_it_pays_once(
        anvil_chain, iris_model, tmp_path):
    """The node's unlocked account: the hash is known only once sent. A relayer stopped right
    after the broadcast, before the hash is on disk, finds at its restart the nonce it recorded
    taken by a pending transaction: it waits for it instead of sending (and paying for) a second,
    and the request ends fulfilled by that one transaction."""
    chain = anvil_chain
    key, addr = new_key()
    oracle, cons = setup_oracle(chain, iris_model, "signature", addr)
    rid = "0x" + request(chain, cons, samples(1)[0]).hex()
    nonce = chain.w3.eth.get_transaction_count(chain.sender)

    class Stopped(Exception):
        pass

    def stop(ev):  # the process dies between the broadcast and recording the hash
        raise Stopped

    r = relayer_for(chain, oracle, iris_model, tmp_path, key, hooks={"after_send": stop})
    out = {}
    _rpc(chain, "evm_setAutomine", False)
    try:
        with pytest.raises(Stopped):
            r.poll()
        rec = r.store.get(rid)
        assert (rec.state, rec.tx_hash, rec.nonce) == ("sending", None, nonce)
        r.store.close()
        restarted = relayer_for(chain, oracle, iris_model, tmp_path, key)
        t = _poll_in_background(restarted, out)
        time.sleep(1.5)
        pending = _rpc(chain, "txpool_content")["pending"]
        assert sum(len(txs) for txs in pending.values()) == 1  # the first alone: no second sent
        _rpc(chain, "evm_mine")
        t.join(60)
        assert not t.is_alive()
    finally:
        _rpc(chain, "evm_setAutomine", True)
    assert "exc" not in out, out.get("exc")
    assert out["res"].fulfilled == [rid]
    assert chain.w3.eth.get_transaction_count(chain.sender) == nonce + 1
    assert [bytes(e["requestId"]) for e in fulfilled_events(chain, oracle.address)] == [bytes.fromhex(rid[2:])]


def test_confirmations_wait_for_depth(anvil_chain, iris_model, tmp_path):
    chain = anvil_chain
    key, addr = new_key()
    oracle, cons = setup_oracle(chain, iris_model, "signature", addr)
    rid = request(chain, cons, samples(1)[0])
    r = relayer_for(chain, oracle, iris_model, tmp_path, key, confirmations=2)
    assert r.poll().events == 0  # one block deep
    _rpc(chain, "evm_mine")
    assert r.poll().events == 0  # two
    _rpc(chain, "evm_mine")
    assert r.poll().fulfilled == ["0x" + rid.hex()]


def test_the_relayer_withdraws_fees_once_they_reach_its_minimum(anvil_chain, iris_model, tmp_path):
    """``withdraw_min_wei`` (``relay --withdraw-min``): after a poll, a served model's accrued
    fees go to its payee once they reach the minimum, not before; none accrued, nothing sent."""
    chain = anvil_chain
    key, addr = new_key()
    oracle, cons = setup_oracle(chain, iris_model, "signature", addr)
    _, payee = new_key()
    chain.transact(oracle.functions.setPayee(iris_model.model_id, payee))
    r = relayer_for(chain, oracle, iris_model, tmp_path, key, withdraw_min_wei=2 * 10**16)
    assert r.poll().withdrawn == []  # nothing accrued: no transaction
    q = samples(1)[0]
    _paid_request(chain, cons, q, 10**16)
    res = r.poll()
    assert len(res.fulfilled) == 1 and res.withdrawn == []  # 1e16 accrued, under the minimum
    assert deploy.model_fees(oracle, iris_model.model_id).accrued == 10**16
    _paid_request(chain, cons, q, 10**16)
    res = r.poll()
    assert len(res.fulfilled) == 1
    assert [(w["payee"], w["amount"]) for w in res.withdrawn] == [(payee, 2 * 10**16)]
    assert chain.w3.eth.get_balance(payee) == 2 * 10**16
    assert deploy.model_fees(oracle, iris_model.model_id).accrued == 0
    assert r.poll().withdrawn == []


def test_a_reorg_that_drops_only_the_fulfilment_sends_it_again(anvil_chain, iris_model, tmp_path):
    """The request's block stays, the block with the relayer's own fulfilment goes (anvil:
    revert to a snapshot taken between them), and the request is open on chain again. The
    relayer sees the block of its transaction change, reopens that request and fulfils it
    again (before, the request stayed "fulfilled" in its store and open on chain for good)."""
    chain = anvil_chain
    key, addr = new_key()
    oracle, cons = setup_oracle(chain, iris_model, "signature", addr)
    q = samples(1)[0]
    rid = request(chain, cons, q)
    snap = _rpc(chain, "evm_snapshot")
    r = relayer_for(chain, oracle, iris_model, tmp_path, key)
    assert r.poll().fulfilled == ["0x" + rid.hex()]
    label = answer(cons, rid)
    assert label[0] is True
    assert _rpc(chain, "evm_revert", snap) is True
    for _ in range(2):  # the new chain grows past the dropped block's height
        _rpc(chain, "evm_mine")
    assert answer(cons, rid) == (False, 0)  # the answer went with its block
    res = r.poll()
    assert res.fulfilled == ["0x" + rid.hex()]
    assert answer(cons, rid) == label
    assert r.poll().events == 0  # and not again


def test_a_reorg_of_the_requests_block_is_rewound(anvil_chain, iris_model, tmp_path):
    """A request is fulfilled, then a reorg (anvil: revert to a snapshot) replaces its block
    with one holding another request under the same id. The relayer sees the block hash
    change, rewinds, and answers the new request with its own label."""
    chain = anvil_chain
    key, addr = new_key()
    oracle, cons = setup_oracle(chain, iris_model, "signature", addr)
    xs = held_out("iris_mlp", 30)
    labels = [onnx_label(IRIS_ONNX, quantized(x, SCALE), SCALE, (1, 4)) for x in xs]
    q1 = quantized(xs[0], SCALE)
    q2 = quantized(xs[next(i for i, lb in enumerate(labels) if lb != labels[0])], SCALE)
    snap = _rpc(chain, "evm_snapshot")
    rid1 = request(chain, cons, q1)
    r = relayer_for(chain, oracle, iris_model, tmp_path, key)
    assert r.poll().fulfilled == ["0x" + rid1.hex()]
    assert _rpc(chain, "evm_revert", snap) is True
    rid2 = request(chain, cons, q2)
    assert rid2 == rid1  # the same id, another input: only the block hash tells them apart
    assert answer(cons, rid2) == (False, 0)
    res = r.poll()
    assert res.fulfilled == ["0x" + rid2.hex()]
    assert answer(cons, rid2) == (True, onnx_label(IRIS_ONNX, q2, SCALE, (1, 4)))
    assert r.poll().events == 0


@contextlib.contextmanager
def _hosted(url: str, refuse):
    """anvil behind a front that answers a request ``refuse(request)`` names with the JSON-RPC
    error it returns (as a hosted node answers a rate limit or a range over its cap), and
    passes every other request to anvil as it is."""
    import json
    import urllib.request

    from chain_support import jsonrpc_endpoint

    def answer(req: dict, body: bytes) -> bytes:
        error = refuse(req)
        if error is not None:
            return json.dumps({"jsonrpc": "2.0", "id": req.get("id"), "error": error}).encode()
        fwd = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(fwd, timeout=60) as resp:
            return resp.read()

    with jsonrpc_endpoint(answer) as front:
        yield front


@contextlib.contextmanager
def _rate_limited(url: str, selector: str, times: int):
    """The first ``times`` ``eth_call``s of ``selector`` answered with a hosted node's rate
    limit error (-32005)."""
    left = [times]

    def refuse(req: dict):
        call = (req.get("params") or [{}])[0] if req.get("method") == "eth_call" else {}
        if str(call.get("data") or call.get("input") or "").startswith(selector) and left[0] > 0:
            left[0] -= 1
            return {"code": -32005, "message": "daily request count exceeded, request rate "
                    "limited"}
        return None

    with _hosted(url, refuse) as front:
        yield front


def test_a_node_error_while_preparing_delays_and_does_not_fail(anvil_chain, relay_anvil_url,
                                                               iris_model, tmp_path):
    """A JSON-RPC error from the node (a hosted node's rate limit) while a request is prepared
    is the node's, as a refused connection is (docs/server.md): the pass reports it, the request
    stays pending and is answered once the node answers, however many polls that takes. Before,
    it counted as a failure of the request, which after 3 polls was recorded failed, never to
    be answered, and its fee stayed locked until the requester cancelled."""
    from web3.exceptions import Web3RPCError

    from contracts.chain import connect

    key, addr = new_key()
    oracle, cons = setup_oracle(anvil_chain, iris_model, "signature", addr)
    q = samples(1)[0]
    rid = request(anvil_chain, cons, q)
    selector = oracle.functions.models(iris_model.model_id)._encode_transaction_data()[:10]
    with _rate_limited(relay_anvil_url, selector, times=4) as url:
        r = relayer_for(connect(url), oracle, iris_model, tmp_path, key)
        for _ in range(4):
            with pytest.raises(Web3RPCError, match="rate limited"):
                r.poll()
            rec = r.store.get("0x" + rid.hex())
            assert (rec.state, rec.attempts) == ("pending", 0)
        assert r.poll().fulfilled == ["0x" + rid.hex()]
    assert answer(cons, rid) == (True, onnx_label(IRIS_ONNX, q, SCALE, (1, 4)))


class _Stopped(BaseException):
    """The process dying at a hook (a BaseException, as SystemExit: the relayer catches none)."""


def _stop(ev):
    raise _Stopped


def _pending_txs(chain) -> list[dict]:
    pending = _rpc(chain, "txpool_content")["pending"]
    return [tx for txs in pending.values() for tx in txs.values()]


def _key_file_request(chain0, model, tmp_path):
    """A signature model's request, and the relayer's chain with a funded key of its own:
    (chain, EIP-712 key, oracle, request id)."""
    from contracts.chain import connect

    key, addr = new_key()
    oracle, cons = setup_oracle(chain0, model, "signature", addr)
    _account, key_file = funded_key_file(chain0, tmp_path)
    rid = "0x" + request(chain0, cons, samples(1)[0]).hex()
    return connect(chain0.rpc, key_file=key_file), key, oracle, rid


def _mined_once(chain0, chain, relayer, oracle, rid: str) -> None:
    """Mine the pending block: the relayer's next pass finds the request fulfilled by the one
    transaction its account sent."""
    _rpc(chain0, "evm_mine")
    assert relayer.poll().fulfilled == [rid]
    assert chain.w3.eth.get_transaction_count(chain.sender) == 1
    assert [bytes(e["requestId"]) for e in fulfilled_events(chain, oracle.address)] == [
        bytes.fromhex(rid[2:])]
    assert not _pending_txs(chain0)


def test_a_stuck_transaction_is_still_replaced_after_a_restart(anvil_chain, iris_model,
                                                              tmp_path):
    """A relayer stopped while its fulfilment is stuck (automine off: never mined) finds it
    pending at its restart and replaces it after tx_timeout_s at the same nonce, as before the
    restart. Before, it only waited on it (300 s a poll, forever): a transaction stuck at too
    low a fee held up every later fulfilment of the account."""
    chain0 = anvil_chain
    chain, key, oracle, rid = _key_file_request(chain0, iris_model, tmp_path)
    _rpc(chain0, "evm_setAutomine", False)
    try:
        r = relayer_for(chain, oracle, iris_model, tmp_path, key, hooks={"after_send": _stop})
        with pytest.raises(_Stopped):
            r.poll()
        first = r.store.get(rid).tx_hash
        r.store.close()
        (stuck,) = _pending_txs(chain0)
        replaced = []
        restarted = relayer_for(chain, oracle, iris_model, tmp_path, key, tx_timeout_s=0.3,
                                hooks={"after_replace": lambda ev: replaced.append(ev.rid)})
        restarted.sender.max_replacements, restarted.sender.wait_s = 1, 1.0
        with pytest.raises(TimeoutError):  # replaced once, still not mined: the next pass waits
            restarted.poll()
        assert replaced == [rid]
        (pending,) = _pending_txs(chain0)  # the replacement took the stuck one's place
        assert pending["nonce"] == stuck["nonce"] and pending["hash"] != first
        assert int(pending["maxFeePerGas"], 16) > int(stuck["maxFeePerGas"], 16)
        assert restarted.store.get(rid).tx_hash == pending["hash"]
    finally:
        _rpc(chain0, "evm_setAutomine", True)
    _mined_once(chain0, chain, restarted, oracle, rid)


def test_a_restart_in_the_middle_of_a_replacement_sends_nothing_more(anvil_chain, iris_model,
                                                                     tmp_path):
    """A relayer stopped while it replaces its stuck fulfilment, between the two steps of
    broadcasting the replacement and recording it: at its restart the request is not answered
    again (no second transaction queued behind the first nonce); the replacement is waited for
    and, once mined, is what fulfilled it. Before, the new hash was recorded first: the
    restart found a hash no node knew and sent another transaction at the next nonce, and lost
    the stuck one, which it could then never replace."""
    chain0 = anvil_chain
    chain, key, oracle, rid = _key_file_request(chain0, iris_model, tmp_path)
    _rpc(chain0, "evm_setAutomine", False)
    try:
        r = relayer_for(chain, oracle, iris_model, tmp_path, key, tx_timeout_s=0.3,
                        hooks={"mid_replace": _stop})
        with pytest.raises(_Stopped):
            r.poll()
        r.store.close()
        restarted = relayer_for(chain, oracle, iris_model, tmp_path, key, tx_timeout_s=0.3)
        restarted.sender.wait_s = 1.0
        with pytest.raises(TimeoutError):  # the nonce is taken, not mined: nothing is sent
            restarted.poll()
        assert len(_pending_txs(chain0)) == 1
    finally:
        _rpc(chain0, "evm_setAutomine", True)
    _mined_once(chain0, chain, restarted, oracle, rid)


def test_a_node_that_caps_the_blocks_of_a_log_query_is_caught_up_with(anvil_chain,
                                                                     relay_anvil_url,
                                                                     iris_model, tmp_path):
    """A node that refuses eth_getLogs over more than 8 blocks (hosted nodes cap the range
    or the results of one query, often below the relayer's 2,000): the relayer asks for
    smaller ranges and finds the request. Before, every pass failed on its first query, and
    the relayer never got past the cursor."""
    from contracts.chain import connect

    def refuse(req: dict):
        if req.get("method") != "eth_getLogs":
            return None
        q = req["params"][0]
        if int(q["toBlock"], 16) - int(q["fromBlock"], 16) + 1 > 8:
            return {"code": -32600, "message": "eth_getLogs is limited to a 8 block range"}
        return None

    key, addr = new_key()
    oracle, cons = setup_oracle(anvil_chain, iris_model, "signature", addr)
    q = samples(1)[0]
    rid = request(anvil_chain, cons, q)
    first = max(0, anvil_chain.w3.eth.block_number - 40)  # the relayer starts 40 blocks back
    for _ in range(10):
        _rpc(anvil_chain, "evm_mine")
    with _hosted(relay_anvil_url, refuse) as url:
        r = relayer_for(connect(url), oracle, iris_model, tmp_path, key, from_block=first)
        assert r.poll().fulfilled == ["0x" + rid.hex()]
    assert answer(cons, rid) == (True, onnx_label(IRIS_ONNX, q, SCALE, (1, 4)))
