"""The owner cannot rewrite open requests: each request is checked under the verifier, signer
and policy it was made under; model updates are announced and apply only after the oracle's
delay; every revert asserts its exact custom error. Both chains (embedded py-evm and anvil)."""

from __future__ import annotations

import pytest
from eth_account import Account
from world import M_EITHER, M_PROOF, Q, helpers, make_world, reverts

from verifier.fixedpoint import int_to_felt

pytestmark = pytest.mark.chain

DELAY = 86_400  # deploy.DEFAULT_UPDATE_DELAY, which make_world uses


@pytest.fixture
def w(chain):
    return make_world(chain)


def _instances(q, label=1):
    return [int_to_felt(x) for x in q] + [5, 7, 9, label]  # 4 inputs, 3 logits, the label


def _mock(w, mode: int):
    h = helpers()["MockVerifier"]
    addr, _ = w.chain.deploy(h.abi, h.bytecode)
    m = w.chain.contract(addr, h.abi)
    w.chain.transact(m.functions.setMode(mode))
    return m


def test_update_is_announced_and_applies_after_the_delay(w):
    o, c = w.oracle.functions, w.chain
    assert o.updateDelay().call() == DELAY
    new_signer = Account.create()
    with reverts("NoPendingUpdate", M_EITHER):
        c.transact(o.applyModelUpdate(M_EITHER))
    receipt = c.transact(o.updateModel(M_EITHER, w.mock.address, 3, new_signer.address))
    (ev,) = w.events(receipt, "ModelUpdateScheduled")
    effective = w.now() + DELAY
    assert ev["effectiveAt"] == effective and ev["signer"] == new_signer.address
    assert o.pendingUpdates(M_EITHER).call() == [w.mock.address, 3, effective,
                                                 new_signer.address]
    assert o.models(M_EITHER).call()[0] == w.signer.address  # not yet
    with reverts("UpdateNotReady", effective):
        c.transact(o.applyModelUpdate(M_EITHER), sender=w.relayer)
    c.advance_time(DELAY)
    receipt = c.transact(o.applyModelUpdate(M_EITHER), sender=w.relayer)  # anyone may apply
    assert w.events(receipt, "ModelUpdated")[0]["signer"] == new_signer.address
    assert o.models(M_EITHER).call()[0] == new_signer.address
    assert o.pendingUpdates(M_EITHER).call()[2] == 0
    # the owner may withdraw an announced update; only the owner
    c.transact(o.updateModel(M_EITHER, w.mock.address, 1, new_signer.address))
    with reverts("NotOwner", w.relayer):
        c.transact(o.cancelModelUpdate(M_EITHER), sender=w.relayer)
    c.transact(o.cancelModelUpdate(M_EITHER))
    with reverts("NoPendingUpdate", M_EITHER):
        c.transact(o.cancelModelUpdate(M_EITHER))
    c.advance_time(DELAY)
    with reverts("NoPendingUpdate", M_EITHER):
        c.transact(o.applyModelUpdate(M_EITHER))
    assert o.models(M_EITHER).call()[3] == 3  # policy unchanged


def test_update_model_does_not_change_how_an_open_request_is_checked(w):
    o, c = w.oracle.functions, w.chain
    old_rid, _ = w.request()  # made under the current signer, verifier, ProofOrSignature
    rejecting = _mock(w, 0)
    new_signer = Account.create()
    c.transact(o.updateModel(M_EITHER, rejecting.address, 2, new_signer.address))  # SigOnly
    c.advance_time(DELAY)
    c.transact(o.applyModelUpdate(M_EITHER))
    req = o.requests(old_rid).call()
    assert req[7:] == [w.mock.address, w.signer.address, 3]  # what it was made under
    new_rid, _ = w.request()
    assert o.requests(new_rid).call()[7:] == [rejecting.address, new_signer.address, 2]
    # the old request: the new signer's answer is refused, the old signer's accepted ...
    deadline, by_new = w.sign(old_rid, 1, key=new_signer)
    with reverts("WrongSigner", new_signer.address, w.signer.address):
        w.fulfil_sig(old_rid, 1, deadline, by_new)
    # ... and its proof path, closed for new requests, still goes to its own verifier
    c.transact(w.mock.functions.setMode(1))
    c.transact(o.fulfillWithProof(old_rid, b"p", _instances(Q, 2)), sender=w.relayer)
    assert w.consumer().functions.answers(old_rid).call() == [True, 2]
    # the new request follows the update: no proof path, the new signer only
    with reverts("ProofPathDisabled", M_EITHER):
        c.transact(o.fulfillWithProof(new_rid, b"p", _instances(Q)))
    deadline, by_old = w.sign(new_rid, 1)
    with reverts("WrongSigner", w.signer.address, new_signer.address):
        w.fulfil_sig(new_rid, 1, deadline, by_old)
    deadline, by_new = w.sign(new_rid, 1, key=new_signer)
    w.fulfil_sig(new_rid, 1, deadline, by_new)
    assert w.consumer().functions.answers(new_rid).call() == [True, 1]


def test_verifier_swap_cannot_reject_or_forge_an_open_proof_request(w):
    o, c = w.oracle.functions, w.chain
    rid, _ = w.request(model_id=M_PROOF)
    c.transact(w.mock.functions.setMode(0))  # the recorded verifier rejects for now
    accepting = _mock(w, 1)  # an owner's verifier that accepts anything
    c.transact(o.updateModel(M_PROOF, accepting.address, 1, "0x" + "00" * 20))
    c.advance_time(DELAY)
    c.transact(o.applyModelUpdate(M_PROOF))
    with reverts("ProofRejected", rid):  # still the recorded verifier's verdict
        c.transact(o.fulfillWithProof(rid, b"p", _instances(Q)))


def test_verify_inference_errors_with_stand_in_verifier(w):
    from eth_abi import encode

    from verifier.fixedpoint import input_commitment

    o, c = w.oracle.functions, w.chain
    com = input_commitment(Q)
    proof = encode(["bytes", "uint256[]"], [b"p", _instances(Q, 2)])
    label2 = encode(["uint256"], [2])
    c.transact(w.mock.functions.setMode(1))
    receipt = c.transact(o.verifyInference(M_PROOF, com, label2, proof), sender=w.relayer)
    (ev,) = w.events(receipt, "InferenceVerified")
    assert (ev["modelId"], ev["inputCommitment"], ev["caller"]) == (M_PROOF, com, w.relayer)
    from eth_utils import keccak
    assert ev["outputHash"] == keccak(label2)
    with reverts("OutputMismatch"):
        c.call(o.verifyInference(M_PROOF, com, encode(["uint256"], [1]), proof))
    with reverts("InputMismatch", b"\x00" * 32):
        c.call(o.verifyInference(M_PROOF, input_commitment([1, 2, 3, 4]), label2, proof))
    with reverts("MalformedInference"):
        c.call(o.verifyInference(M_PROOF, com, label2 + b"\x00", proof))
    with reverts("InstanceCountMismatch", 8, 3):
        c.call(o.verifyInference(M_PROOF, com, label2,
                                 encode(["bytes", "uint256[]"], [b"p", [1, 2, 3]])))
    with reverts("UnknownModel", b"\x09" * 32):
        c.call(o.verifyInference(b"\x09" * 32, com, label2, proof))
    from world import M_SIG
    with reverts("ProofPathDisabled", M_SIG):
        c.call(o.verifyInference(M_SIG, com, label2, proof))
    c.transact(w.mock.functions.setMode(0))
    with reverts("ProofRejected", b"\x00" * 32):
        c.call(o.verifyInference(M_PROOF, com, label2, proof))
