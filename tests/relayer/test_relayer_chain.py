"""The relayer on a real chain (embedded py-evm and anvil), without EZKL: the signature path
allowed and refused by policy, unservable requests, restarts in each crash window, and the
relayer inside ``verinfer serve``. The proof path is in test_relayer_e2e.py."""

from __future__ import annotations

import json
import time

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
from contracts.chain import ContractRevert
from server.relayer.relayer import Relayer, RelayStore

pytestmark = pytest.mark.chain

class _Crash(BaseException):
    """Stands for the process dying at a hook (a BaseException, as SystemExit: the relayer
    does not catch it)."""


@pytest.mark.parametrize("policy,mode", [("either", "signature"), ("signature", "auto"),
                                         ("either", "auto")])
def test_signature_path_where_policy_allows(chain, iris_model, tmp_path, policy, mode):
    key, addr = new_key()
    oracle, cons = setup_oracle(chain, iris_model, policy, addr)
    qs = samples(3)
    rids = [request(chain, cons, q) for q in qs]
    # "auto" on a ProofOrSignature model would prove; this model has no circuit package here,
    # so the relayer falls back to its signature
    r = relayer_for(chain, oracle, iris_model, tmp_path, key, answer=mode)
    res = r.poll()
    assert res.fulfilled == ["0x" + x.hex() for x in rids]
    for rid, q in zip(rids, qs):
        assert answer(cons, rid) == (True, onnx_label(IRIS_ONNX, q, SCALE, (1, 4)))
    evs = fulfilled_events(chain, oracle.address)
    assert [e["byProof"] for e in evs] == [False] * 3
    assert {rec.state for rec in r.store.records()} == {"fulfilled"}
    assert {rec.method for rec in r.store.records()} == {"signature"}
    assert r.poll().events == 0  # nothing twice


def test_signature_path_refused_where_policy_does_not(chain, iris_model, tmp_path):
    key, _addr = new_key()
    oracle, cons = setup_oracle(chain, iris_model, "proof", None)
    rid = request(chain, cons, samples(1)[0])
    r = relayer_for(chain, oracle, iris_model, tmp_path, key, answer="signature")
    res = r.poll()
    assert res.skipped == ["0x" + rid.hex()] and not res.fulfilled
    rec = r.store.get("0x" + rid.hex())
    assert rec.state == "skipped" and "policy has no signature path" in rec.reason
    assert answer(cons, rid) == (False, 0)
    # and the oracle itself refuses a signature for a ProofOnly model
    deadline = chain.w3.eth.get_block("latest")["timestamp"] + 600
    ev = r._decode(chain.w3.eth.get_logs({"address": oracle.address, "fromBlock": 0,
                                          "topics": [r._topic]})[0])
    sig = r._sign(ev, 0, deadline, key)
    with pytest.raises(ContractRevert) as info:
        chain.transact(oracle.functions.fulfillWithSignature(rid, 0, deadline, sig))
    assert info.value.error == "SignaturePathDisabled"
    # "auto" with no circuit package: no path either, skipped with the reason
    r2 = relayer_for(chain, oracle, iris_model, tmp_path / "b", key, answer="auto")
    (tmp_path / "b").mkdir(exist_ok=True)
    assert r2.poll().skipped and "no circuit package" in r2.store.get("0x" + rid.hex()).reason


def test_wrong_signer_is_skipped(chain, iris_model, tmp_path):
    key, _ = new_key()
    _, other = new_key()
    oracle, cons = setup_oracle(chain, iris_model, "signature", other)
    rid = request(chain, cons, samples(1)[0])
    r = relayer_for(chain, oracle, iris_model, tmp_path, key)
    assert r.poll().skipped == ["0x" + rid.hex()]
    assert f"the request's signer is {other}" in r.store.get("0x" + rid.hex()).reason


def test_unservable_requests_are_skipped_once(chain, iris_model, tmp_path):
    key, addr = new_key()
    oracle, cons = setup_oracle(chain, iris_model, "signature", addr)
    # a model the oracle knows but this relayer does not serve
    unknown = b"\x07" * 32
    deploy.register_model(chain, oracle, model_id=unknown, verifier=None, input_length=4,
                          input_scale=SCALE, policy="signature", signer=addr, num_instances=8)
    c_unknown = consumer(chain, oracle.address, unknown)
    # our model id under another oracle registration with the wrong input length
    oracle2, c_len = setup_oracle(chain, iris_model, "signature", addr, input_length=5)
    q = samples(1)[0]
    r_unknown = request(chain, c_unknown, q)
    r_good = request(chain, cons, q)
    r = relayer_for(chain, oracle, iris_model, tmp_path, key)
    res = r.poll()
    assert res.skipped == ["0x" + r_unknown.hex()] and res.fulfilled == ["0x" + r_good.hex()]
    assert "not served by this relayer" in r.store.get("0x" + r_unknown.hex()).reason
    assert r.poll().events == 0  # not retried

    r_len = request(chain, c_len, q + [0])
    (tmp_path / "2").mkdir()
    r2 = relayer_for(chain, oracle2, iris_model, tmp_path / "2", key)
    res = r2.poll()
    assert res.skipped == ["0x" + r_len.hex()]
    assert "input length 5" in r2.store.get("0x" + r_len.hex()).reason
    assert r2.poll().events == 0 and r2.store.cursor() is not None


def test_restart_between_send_and_record(chain, iris_model, tmp_path):
    """Killed after the fulfilment was broadcast, before it was recorded: the restart finds
    the request fulfilled on chain and sends nothing again."""
    key, addr = new_key()
    oracle, cons = setup_oracle(chain, iris_model, "signature", addr)
    rids = [request(chain, cons, q) for q in samples(2)]

    def crash(ev):
        raise _Crash

    # one at a time: the process dies right after the first broadcast
    r = relayer_for(chain, oracle, iris_model, tmp_path, key, hooks={"after_send": crash},
                 workers=1)
    with pytest.raises(_Crash):
        r.poll()
    r.store.close()
    # "pending": the crashed broadcast counts whether or not it is mined yet (anvil mines a
    # sent transaction after answering: "latest" lagged one in 20 of 300 reads)
    nonce = chain.w3.eth.get_transaction_count(chain.sender, "pending")
    r = relayer_for(chain, oracle, iris_model, tmp_path, key)
    res = r.poll()
    assert res.fulfilled == ["0x" + x.hex() for x in rids]
    # one new transaction: the second request's; the first was not sent again
    assert chain.w3.eth.get_transaction_count(chain.sender) == nonce + 1
    assert sorted(bytes(e["requestId"]) for e in fulfilled_events(chain, oracle.address)) \
        == sorted(rids)
    assert all(answer(cons, x)[0] for x in rids)


def test_restart_with_a_recorded_transaction(anvil_chain, iris_model, tmp_path):
    """With a local key the transaction hash is on disk before the broadcast. After a
    restart: a mined one is found (not resent); one the node never saw is sent again."""
    from contracts.chain import connect

    chain0 = anvil_chain
    key, addr = new_key()
    oracle, cons = setup_oracle(chain0, iris_model, "signature", addr)
    account, key_file = funded_key_file(chain0, tmp_path)
    chain = connect(chain0.rpc, key_file=key_file)
    rids = [request(chain0, cons, q) for q in samples(2)]

    def crash(ev):
        raise _Crash

    r = relayer_for(chain, oracle, iris_model, tmp_path, key, hooks={"after_send": crash})
    with pytest.raises(_Crash):
        r.poll()
    first = r.store.get("0x" + rids[0].hex())
    assert first.state == "sending" and first.tx_hash
    # the second request: pretend we were killed after recording a transaction that was
    # never broadcast
    r.store.upsert("0x" + rids[1].hex(), "0x" + iris_model.model_id.hex(), 0, 0, "sending",
                   method="signature", tx_hash="0x" + "ab" * 32)
    r.store.close()
    r = relayer_for(chain, oracle, iris_model, tmp_path, key)
    res = r.poll()
    assert res.fulfilled == ["0x" + x.hex() for x in rids]
    assert chain.w3.eth.get_transaction_count(account) == 2  # one transaction per request
    assert r.store.get("0x" + rids[0].hex()).tx_hash == first.tx_hash
    assert len(fulfilled_events(chain, oracle.address)) == 2


def test_relayer_inside_serve(anvil_chain, relay_anvil_url, tmp_path):
    """``verinfer serve`` with relay_rpc/relay_oracle answers on-chain requests with the
    server's own EIP-712 key (reference model, no circuit package: signature path)."""
    from fastapi.testclient import TestClient

    from server.http.app import create_app
    from server.inference.registry import input_scale
    from server.receipts.keys import load_keys
    from server.settings import ServerSettings
    from verifier.digests import sha256_file

    chain = anvil_chain
    oracle, _ = deploy.deploy_oracle(chain, 600)
    base = dict(home=tmp_path / "home", models=("iris_mlp",), engine="onnx")
    keys = load_keys(ServerSettings(**base))
    sha = sha256_file(IRIS_ONNX)
    scale = input_scale(ServerSettings(**base), "iris_mlp", sha)
    mid = bytes.fromhex(sha)
    deploy.register_model(chain, oracle, model_id=mid, verifier=None, input_length=4,
                          input_scale=scale, policy="signature", signer=keys.eth_address,
                          num_instances=8)
    cons = consumer(chain, oracle.address, mid)
    q = quantized(held_out("iris_mlp", 1)[0], scale)
    rid = request(chain, cons, q)
    settings = ServerSettings(**base, relay_rpc=relay_anvil_url, relay_oracle=oracle.address,
                              relay_poll_interval_s=0.2, relay_fee_margin=0,
                              chain_id=chain.chain_id,
                              verifying_contract=oracle.address)
    with TestClient(create_app(settings)):
        end = time.monotonic() + 30
        while not answer(cons, rid)[0] and time.monotonic() < end:
            time.sleep(0.2)
    assert answer(cons, rid) == (True, onnx_label(IRIS_ONNX, q, scale, (1, 4)))
    assert (tmp_path / "home" / "relayer.sqlite3").is_file()


class _FailingProofs:
    def __init__(self):
        self.calls = 0

    def prove(self, model, x):
        self.calls += 1
        raise RuntimeError("prover crashed")


def test_a_request_that_keeps_failing_is_given_up(embedded_chain, iris_model, tmp_path):
    """A proof that fails every time (an unexpected error, not the input's) is tried
    max_attempts times, one per poll, then recorded as failed; each poll reports it delayed
    and raises nothing, so the requests after it are not held up."""
    import dataclasses

    chain = embedded_chain
    oracle, cons = setup_oracle(chain, iris_model, "proof", None)
    model = dataclasses.replace(iris_model, package=object())  # "has a circuit package"
    rid = request(chain, cons, samples(1)[0])
    proofs = _FailingProofs()
    store = RelayStore(tmp_path / "r.sqlite3", chain.chain_id, oracle.address)
    r = Relayer(chain, oracle.address, {model.model_id: model}, store, proofs=proofs,
                fee_margin=0)
    for _ in range(r.max_attempts - 1):
        assert r.poll().delayed == ["0x" + rid.hex()]
        assert store.get("0x" + rid.hex()).state == "pending"
    assert r.poll().failed == ["0x" + rid.hex()]
    rec = store.get("0x" + rid.hex())
    assert rec.state == "failed" and "prover crashed" in rec.reason
    assert proofs.calls == r.max_attempts and r.poll().events == 0


def test_a_contract_that_is_not_the_oracle_is_refused_at_start(embedded_chain, iris_model, tmp_path):
    """--oracle given another contract's address (a consumer, a model's verifier: 'chain
    deploy' prints both) was taken: the relayer followed events that never come and reported
    '0 request(s)' at every pass."""
    from server.relayer.relayer import RelayError

    chain = embedded_chain
    oracle, cons = setup_oracle(chain, iris_model, "proof", None)
    for address in (cons.address, mock_verifier(chain)):
        store = RelayStore(tmp_path / f"{address}.sqlite3", chain.chain_id, address)
        with pytest.raises(RelayError, match=f"the contract at {address} is not a VerinferOracle"):
            Relayer(chain, address, {iris_model.model_id: iris_model}, store)
    Relayer(chain, oracle.address, {iris_model.model_id: iris_model},
            RelayStore(tmp_path / "r.sqlite3", chain.chain_id, oracle.address))


class _FakeJobs:
    """server.proofs.jobs.ProofJobs' surface the relayer uses."""

    def __init__(self, status, bundle=None):
        from types import SimpleNamespace

        self.job = SimpleNamespace(id="j1", status=status, error="worker died 3 times")
        self._bundle = bundle
        self.submitted = []

    def submit_x(self, model, x, receipt_id, callback, client=None):
        self.submitted.append((model, x.shape, client))
        return self.job, "new"

    def get(self, job_id, client=None):
        self.read_as = client  # a client sees its own requests only: the relayer reads as itself
        return self.job

    def bundle(self, job_id, client=None):
        if isinstance(self._bundle, Exception):
            raise self._bundle
        return self._bundle


def test_queue_proof_source(iris_model):
    import numpy as np

    from server.auth import RELAYER
    from server.relayer.relayer import ProofUnavailable, QueueProofs

    x = np.zeros((1, 4), np.float32)
    q = QueueProofs(_FakeJobs("failed"), timeout_s=5)
    with pytest.raises(ProofUnavailable, match="worker died"):
        q.prove(iris_model, x)
    assert q.jobs.submitted == [("iris_mlp", (1, 4), RELAYER)]  # the queue's reserved share
    assert q.jobs.read_as == RELAYER


def test_a_queue_proof_pruned_as_it_ended_is_asked_again(iris_model):
    """Retention may forget a done job before the relayer reads its bundle: the request waits for
    the next poll (which asks for the proof anew) instead of failing for good."""
    import numpy as np

    from server.errors import Gone
    from server.relayer.relayer import ProofPending, QueueProofs

    q = QueueProofs(_FakeJobs("done", bundle=Gone("proof job j1 was pruned")), timeout_s=5)
    with pytest.raises(ProofPending, match="was pruned"):
        q.prove(iris_model, np.zeros((1, 4), np.float32))


def test_an_eip712_rotation_answers_each_request_with_the_signer_it_was_made_under(
        anvil_chain, relay_anvil_url, iris_model, tmp_path):
    """`keys rotate --eip712`, then `chain update-signer` and `chain apply-update` (the real CLI,
    on anvil): a request made before the update is answered with the retired key, one made
    after with the new one, by a relayer started before the rotation (it reads the data dir's
    keys again for a signer it does not hold). The oracle checks each signature's signer."""
    import os
    import subprocess

    from server.receipts.keys import eth_signing_keys, load_keys
    from server.settings import ServerSettings
    from testkit.server_process import REPO_ROOT, VERINFER

    chain = anvil_chain
    home = tmp_path / "home"
    settings = ServerSettings(home=home)
    old_signer = load_keys(settings).eth_address  # the data dir's keys, made here
    oracle, _ = deploy.deploy_oracle(chain, 600, update_delay=0)
    deploy.register_model(chain, oracle, model_id=iris_model.model_id, verifier=None,
                          input_length=iris_model.input_length, input_scale=SCALE,
                          policy="signature", signer=old_signer, num_instances=iris_model.input_length + 4)
    cons = consumer(chain, oracle.address, iris_model.model_id)
    q_old, q_new = samples(2)
    rid_old = request(chain, cons, q_old)
    store = RelayStore(tmp_path / "relayer.sqlite3", chain.chain_id, oracle.address)
    relayer = Relayer(chain, oracle.address, {iris_model.model_id: iris_model}, store, fee_margin=0,
                      eth_keys=lambda: eth_signing_keys(settings))
    assert relayer.signer_address == old_signer

    def verinfer(*args):
        return subprocess.run([*VERINFER, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "VERINFER_HOME": str(home)})

    rotated = verinfer("keys", "rotate", "--eip712", "--json")
    assert rotated.returncode == 0, rotated.stderr
    new_signer = json.loads(rotated.stdout)["signer"]
    model = "0x" + iris_model.model_id.hex()
    on_chain = ("--rpc", relay_anvil_url, "--oracle", oracle.address)
    bad = verinfer("chain", "update-signer", model, "--signer", "0x1234", *on_chain)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--signer" in bad.stderr
    unknown = verinfer("chain", "update-signer", "0x" + "07" * 32, "--signer", new_signer, *on_chain)
    assert unknown.returncode == 2 and "not registered" in unknown.stderr, unknown.stderr
    too_soon = verinfer("chain", "apply-update", model, *on_chain)
    assert too_soon.returncode == 2 and "no update announced" in too_soon.stderr, too_soon.stderr
    announced = verinfer("chain", "update-signer", model, "--signer", new_signer, *on_chain)
    assert announced.returncode == 0, announced.stderr
    assert oracle.functions.models(iris_model.model_id).call()[0] == old_signer  # not before it is applied
    applied = verinfer("chain", "apply-update", model, *on_chain)
    assert applied.returncode == 0 and f"signer {new_signer}" in applied.stderr, applied.stderr
    assert oracle.functions.models(iris_model.model_id).call()[0] == new_signer
    rid_new = request(chain, cons, q_new)

    res = relayer.poll()
    assert sorted(res.fulfilled) == sorted("0x" + r.hex() for r in (rid_old, rid_new)), res
    for rid, q, signer in ((rid_old, q_old, old_signer), (rid_new, q_new, new_signer)):
        assert oracle.functions.requests(rid).call()[-2] == signer  # the signer it was made under
        assert answer(cons, rid) == (True, onnx_label(IRIS_ONNX, q, SCALE, (1, 4)))
    assert relayer.signer_address == new_signer  # read again for the new request
    again = verinfer("chain", "apply-update", model, *on_chain)  # nothing pending now
    assert again.returncode == 2 and "no update announced" in again.stderr, again.stderr

    # an oracle with an update delay: applied too early, refused in one line; only its owner announces
    slow, _ = deploy.deploy_oracle(chain, 600, update_delay=3600)
    deploy.register_model(chain, slow, model_id=iris_model.model_id, verifier=None,
                          input_length=iris_model.input_length, input_scale=SCALE,
                          policy="signature", signer=old_signer, num_instances=iris_model.input_length + 4)
    on_slow = ("--rpc", relay_anvil_url, "--oracle", slow.address)
    _, stranger = funded_key_file(chain, tmp_path)
    refused = verinfer("chain", "update-signer", model, "--signer", new_signer, *on_slow, "--key-file", str(stranger))
    assert refused.returncode == 2 and "only the oracle's owner" in refused.stderr, refused.stderr
    assert verinfer("chain", "update-signer", model, "--signer", new_signer, *on_slow).returncode == 0
    early = verinfer("chain", "apply-update", model, *on_slow)
    assert early.returncode == 2 and "takes effect at" in early.stderr and len(early.stderr.strip().splitlines()) == 1
    assert slow.functions.models(iris_model.model_id).call()[0] == old_signer
