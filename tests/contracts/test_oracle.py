"""VerinferOracle on both chains (embedded py-evm and anvil): formats, admin, requests, the
signature path, the proof path's checks with a stand-in verifier, callbacks, fees, cancel.

Every revert asserts its exact custom error. Real EZKL proofs: test_proof_path.py.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_utils import keccak
from world import M_EITHER, M_PROOF, M_SIG, TIMEOUT, Q, helpers, make_world, reverts

from contracts import deploy
from contracts.chain import ContractRevert
from verifier import eip712
from verifier.fixedpoint import BN254_R, input_commitment, int_to_felt

pytestmark = pytest.mark.chain

ZERO = "0x" + "00" * 20
MAXQ = 2**128 - 1  # the widest input bound (deploy.MAX_INPUT_BOUND)


@pytest.fixture
def w(chain):
    return make_world(chain)


# -- formats -----------------------------------------------------------------------


def test_input_commitment_matches_python_and_docs(w):
    docs = bytes.fromhex("9761e28b7edf3bf5ab22077058d7bbdb3f7dfbbd2a3037b7bd08adc745236c3c")
    assert input_commitment(Q) == docs
    assert w.oracle.functions.inputCommitmentOf(Q).call() == docs
    for q in ([-1, 0, 1, -(2**62)], [-5] * 64):
        assert w.oracle.functions.inputCommitmentOf(q).call() == input_commitment(q)


def test_eip712_matches_python_and_docs(w):
    o = w.oracle.functions
    assert o.CLASSIFICATION_TYPEHASH().call() == eip712.CLASSIFICATION_TYPEHASH == keccak(
        text="Classification(bytes32 modelId,bytes32 inputCommitment,uint256 label,"
             "bytes32 requestId,uint256 deadline)")
    domain = eip712.Domain(chainId=w.chain.chain_id, verifyingContract=w.oracle.address)
    assert o.domainSeparator().call() == eip712.domain_separator(domain)
    _fields, name, version, chain_id, contract, _, _ = o.eip712Domain().call()
    assert (name, version, chain_id, contract) == ("verinfer", "1", w.chain.chain_id,
                                                   w.oracle.address)
    msg = eip712.Classification(modelId="0x" + "11" * 32, inputCommitment="0x" + input_commitment(Q).hex(),
                                label=2, requestId="0x" + "22" * 32, deadline=1700000000)
    on_chain = o.classificationDigest(b"\x11" * 32, input_commitment(Q), 2, b"\x22" * 32,
                                      1700000000).call()
    assert on_chain == eip712.signing_digest(domain, msg)
    # The docs/formats.md vector (chain 31337, the first anvil deployment address).
    docs_domain = eip712.Domain(chainId=31337,
                                verifyingContract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
    assert eip712.signing_digest(docs_domain, msg).hex() == (
        "95ed6df88041fa2b2a0d2caae4b8bc499a13ac7fc80a8d31b86efd857b963c88")


# -- owner ---------------------------------------------------------------------------


def test_owner_only_and_model_config_errors(w):
    o, c = w.oracle.functions, w.chain
    other = w.w3.eth.accounts[2]
    with reverts("NotOwner"):
        c.transact(o.registerModel(b"\x09" * 32, w.mock.address, 4, 13, 1, ZERO, 8, MAXQ, 0), sender=other)
    with reverts("NotOwner"):
        c.transact(o.updateModel(M_PROOF, w.mock.address, 1, ZERO), sender=other)
    with reverts("NotOwner"):
        c.transact(o.transferOwnership(other), sender=other)
    with reverts("ModelAlreadyRegistered", M_PROOF):
        c.transact(o.registerModel(M_PROOF, w.mock.address, 4, 13, 1, ZERO, 8, MAXQ, 0))
    with reverts("InvalidInputLength"):
        c.transact(o.registerModel(b"\x09" * 32, w.mock.address, 0, 13, 1, ZERO, 8, MAXQ, 0))
    with reverts("InvalidInstanceCount", 4, 5):
        c.transact(o.registerModel(b"\x09" * 32, w.mock.address, 4, 13, 1, ZERO, 4, MAXQ, 0))
    with reverts("InvalidInputBound"):
        c.transact(o.registerModel(b"\x09" * 32, w.mock.address, 4, 13, 1, ZERO, 8, 0, 0))
    with reverts("NotOwner"):
        c.transact(o.setMinFee(M_PROOF, 1), sender=other)
    with reverts("UnknownModel"):
        c.transact(o.setMinFee(b"\x09" * 32, 1))
    with reverts("InvalidPolicy"):
        c.transact(o.registerModel(b"\x09" * 32, w.mock.address, 4, 13, 0, ZERO, 8, MAXQ, 0))
    with reverts("VerifierHasNoCode"):
        c.transact(o.registerModel(b"\x09" * 32, other, 4, 13, 1, ZERO, 8, MAXQ, 0))
    with reverts("ZeroSigner"):
        c.transact(o.registerModel(b"\x09" * 32, w.mock.address, 4, 13, 3, ZERO, 8, MAXQ, 0))
    with reverts("UnknownModel"):
        c.transact(o.updateModel(b"\x09" * 32, w.mock.address, 1, ZERO))
    with reverts("ZeroAddress"):
        c.transact(o.transferOwnership(ZERO))
    owner = o.owner().call()
    c.transact(o.transferOwnership(other))  # two steps: nothing moves until accepted
    assert o.owner().call() == owner and o.pendingOwner().call() == other
    with reverts("NotPendingOwner", w.relayer):
        c.transact(o.acceptOwnership(), sender=w.relayer)
    receipt = c.transact(o.acceptOwnership(), sender=other)
    (ev,) = w.events(receipt, "OwnershipTransferred")
    assert (ev["previousOwner"], ev["newOwner"]) == (owner, other)
    assert o.owner().call() == other and o.pendingOwner().call() == ZERO
    with reverts("NotOwner", owner):
        c.transact(o.transferOwnership(owner))


# -- requests ------------------------------------------------------------------------


def test_request_emits_input_and_commitment(w):
    rid, receipt = w.request(fee=12345)
    (ev,) = w.events(receipt, "ClassificationRequested")
    assert ev["requestId"] == rid and ev["modelId"] == M_EITHER
    assert list(ev["input"]) == Q and ev["inputCommitment"] == input_commitment(Q)
    assert ev["fee"] == 12345 and ev["callbackGasLimit"] == 100_000
    assert ev["requester"] == w.consumer().address
    req = w.oracle.functions.requests(rid).call()
    assert req[0] == w.consumer().address and req[3] == 1  # Status.Open


def test_request_errors(w):
    o, c = w.oracle.functions, w.chain
    with reverts("UnknownModel", b"\x09" * 32):
        c.transact(o.requestClassification(b"\x09" * 32, Q, 100_000))
    with reverts("InputLengthMismatch", 4, 3):
        c.transact(o.requestClassification(M_EITHER, Q[:3], 100_000))
    with reverts("InputOutOfRange", 2, -(2**128)):
        c.transact(o.requestClassification(M_EITHER, [0, 1, -(2**128), 0], 100_000))
    with reverts("CallbackGasLimitTooHigh", 2_500_001, 2_500_000):
        c.transact(o.requestClassification(M_EITHER, Q, 2_500_001))


def test_unknown_request(w):
    deadline, sig = w.sign(b"\x07" * 32, 1)
    with reverts("UnknownRequest", b"\x07" * 32):
        w.fulfil_sig(b"\x07" * 32, 1, deadline, sig)
    with reverts("UnknownRequest"):
        w.chain.transact(w.oracle.functions.fulfillWithProof(b"\x07" * 32, b"", [0] * 5))
    with reverts("UnknownRequest"):
        w.chain.transact(w.oracle.functions.cancelRequest(b"\x07" * 32))


# -- signature path ------------------------------------------------------------------


@pytest.mark.parametrize("model_id", [M_SIG, M_EITHER])
def test_signature_path_fulfils_and_pays_fee(w, model_id):
    """The fee accrues to the model, for its payee (the owner by default), not to the
    fulfiller; no ETH moves until withdrawFees."""
    fee = 10**15
    rid, _ = w.request(model_id=model_id, fee=fee)
    deadline, sig = w.sign(rid, 2, model_id=model_id)
    assert _fees(w, model_id) == (w.chain.sender, 0)  # the payee, nothing accrued
    before, payee_before = w.w3.eth.get_balance(w.relayer), w.w3.eth.get_balance(w.chain.sender)
    receipt = w.fulfil_sig(rid, 2, deadline, sig)
    spent = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert w.w3.eth.get_balance(w.relayer) == before - spent
    assert w.w3.eth.get_balance(w.chain.sender) == payee_before  # pull, not push
    assert _fees(w, model_id) == (w.chain.sender, fee)
    (ev,) = w.events(receipt, "ClassificationFulfilled")
    assert (ev["requestId"], ev["label"], ev["byProof"], ev["fulfiller"]) == (rid, 2, False,
                                                                              w.relayer)
    assert not w.events(receipt, "CallbackFailed")
    consumer = w.consumer(model_id)
    assert consumer.functions.answers(rid).call() == [True, 2]
    assert w.oracle.functions.requests(rid).call()[3] == 2  # Status.Fulfilled


def test_signature_made_by_verifier_eip712_is_accepted(w):
    """The server's signer (verifier.eip712.sign_digest) and the oracle agree."""
    rid, _ = w.request()
    deadline = w.now() + 60
    domain = eip712.Domain(chainId=w.chain.chain_id, verifyingContract=w.oracle.address)
    msg = eip712.Classification(modelId="0x" + M_EITHER.hex(),
                                inputCommitment="0x" + input_commitment(Q).hex(), label=1,
                                requestId="0x" + rid.hex(), deadline=deadline)
    sig = eip712.sign_digest(eip712.signing_digest(domain, msg), bytes(w.signer.key))
    w.fulfil_sig(rid, 1, deadline, bytes.fromhex(sig[2:]))
    assert w.consumer().functions.answers(rid).call() == [True, 1]


def test_signature_refused_where_policy_is_proof_only(w):
    rid, _ = w.request(model_id=M_PROOF)
    deadline, sig = w.sign(rid, 1, model_id=M_PROOF)
    with reverts("SignaturePathDisabled", M_PROOF):
        w.fulfil_sig(rid, 1, deadline, sig)


def test_signature_expired_deadline(w):
    rid, _ = w.request()
    deadline, sig = w.sign(rid, 1, deadline=w.now() + 5)
    w.chain.advance_time(60)
    with reverts("SignatureExpired"):
        w.fulfil_sig(rid, 1, deadline, sig)


def test_signature_wrong_signer_and_altered_fields(w):
    rid, _ = w.request()
    stranger = Account.create()
    deadline, sig = w.sign(rid, 1, key=stranger)
    with reverts("WrongSigner") as info:
        w.fulfil_sig(rid, 1, deadline, sig)
    assert info.value.error_args == (stranger.address, w.signer.address)
    deadline, sig = w.sign(rid, 1)
    with reverts("WrongSigner"):  # another label than the one signed
        w.fulfil_sig(rid, 2, deadline, sig)
    with reverts("WrongSigner"):  # another deadline
        w.fulfil_sig(rid, 1, deadline + 1, sig)
    _, sig_other_input = w.sign(rid, 1, q=[1, 2, 3, 4], deadline=deadline)
    with reverts("WrongSigner"):  # signed for another input
        w.fulfil_sig(rid, 1, deadline, sig_other_input)
    _, sig_other_model = w.sign(rid, 1, model_id=M_SIG, deadline=deadline)
    with reverts("WrongSigner"):  # signed for another model
        w.fulfil_sig(rid, 1, deadline, sig_other_model)


def test_signature_malformed(w):
    rid, _ = w.request()
    deadline, sig = w.sign(rid, 1)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    r, s, v = sig[:32], int.from_bytes(sig[32:64]), sig[64]
    high_s = r + (n - s).to_bytes(32, "big") + bytes([55 - v])  # same signature, malleated
    for bad in (sig[:64], sig + b"\x00", sig[:64] + bytes([v - 27]), sig[:64] + b"\x1d",
                high_s, b"\x00" * 65):
        with reverts("InvalidSignature"):
            w.fulfil_sig(rid, 1, deadline, bad)
    with reverts("LabelOutOfRange", 2**32):
        w.fulfil_sig(rid, 2**32, deadline, sig)


def test_signature_replay(w):
    rid, _ = w.request()
    deadline, sig = w.sign(rid, 1)
    w.fulfil_sig(rid, 1, deadline, sig)
    with reverts("AlreadyFulfilled", rid):  # the same answer again
        w.fulfil_sig(rid, 1, deadline, sig)
    rid2, _ = w.request()  # the same input again: a new request id
    with reverts("WrongSigner"):  # the old signature names the old request
        w.fulfil_sig(rid2, 1, deadline, sig)


# -- proof path checks (stand-in verifier; real EZKL proofs in test_proof_path.py) ----


def _instances(q, label=1, logits=(5, -3, 7)):
    return [int_to_felt(x) for x in q] + [int_to_felt(x) for x in logits] + [label]


def test_proof_path_checks_with_stand_in_verifier(w):
    o, c = w.oracle.functions, w.chain
    q = [-41779, 28672, -1, 0]  # negatives travel as r - |x|
    rid, _ = w.request(q=q, model_id=M_PROOF)
    with reverts("InstanceCountMismatch", 8, 4):
        c.transact(o.fulfillWithProof(rid, b"p", _instances(q)[:4]))
    with reverts("InstanceCountMismatch", 8, 9):  # one instance too many: another circuit
        c.transact(o.fulfillWithProof(rid, b"p", _instances(q) + [0]))
    bad = _instances(q)
    bad[2] = BN254_R  # not a field element
    with reverts("InstanceNotInField", 2):
        c.transact(o.fulfillWithProof(rid, b"p", bad))
    with reverts("InputMismatch", rid):
        c.transact(o.fulfillWithProof(rid, b"p", _instances([41779, 28672, -1, 0])))
    with reverts("InputMismatch", rid):  # -1 must be r-1, not 2**256-1 or 1
        c.transact(o.fulfillWithProof(rid, b"p", _instances([-41779, 28672, 1, 0])))
    with reverts("LabelOutOfRange", BN254_R - 1):  # a "negative" label
        c.transact(o.fulfillWithProof(rid, b"p", _instances(q, label=BN254_R - 1)))
    c.transact(w.mock.functions.setMode(0))
    with reverts("ProofRejected", rid):  # verifier returns false
        c.transact(o.fulfillWithProof(rid, b"p", _instances(q)))
    c.transact(w.mock.functions.setMode(2))
    with reverts("ProofRejected", rid):  # verifier reverts
        c.transact(o.fulfillWithProof(rid, b"p", _instances(q)))
    c.transact(w.mock.functions.setMode(1))
    receipt = c.transact(o.fulfillWithProof(rid, b"p", _instances(q, label=2)))
    (ev,) = w.events(receipt, "ClassificationFulfilled")
    assert ev["label"] == 2 and ev["byProof"] is True
    assert w.consumer(M_PROOF).functions.answers(rid).call() == [True, 2]
    with reverts("AlreadyFulfilled", rid):
        c.transact(o.fulfillWithProof(rid, b"p", _instances(q, label=2)))


def test_proof_refused_where_policy_is_signature_only(w):
    rid, _ = w.request(model_id=M_SIG)
    with reverts("ProofPathDisabled", M_SIG):
        w.chain.transact(w.oracle.functions.fulfillWithProof(rid, b"p", _instances(Q)))


# -- callbacks -----------------------------------------------------------------------


def _bad_consumer(w, behaviour: int):
    h = helpers()["BadConsumer"]
    addr, _ = w.chain.deploy(h.abi, h.bytecode, w.oracle.address)
    bc = w.chain.contract(addr, h.abi)
    w.chain.transact(bc.functions.setBehaviour(behaviour))
    return bc


@pytest.mark.parametrize("behaviour", [0, 1], ids=["reverts", "burns-all-gas"])
def test_failing_callback_does_not_undo_fulfilment(w, behaviour):
    bc = _bad_consumer(w, behaviour)
    w.chain.transact(bc.functions.classify(M_EITHER, Q, 50_000), value=777)
    rid = bc.functions.lastRequestId().call()
    deadline, sig = w.sign(rid, 1)
    receipt = w.fulfil_sig(rid, 1, deadline, sig)
    assert [e["requestId"] for e in w.events(receipt, "CallbackFailed")] == [rid]
    assert w.events(receipt, "ClassificationFulfilled")[0]["label"] == 1
    assert w.oracle.functions.requests(rid).call()[3] == 2  # Fulfilled
    if behaviour == 1:  # the callback got its cap and no more
        assert receipt["gasUsed"] < 50_000 + 120_000


def test_callback_cannot_be_starved(w):
    bc = _bad_consumer(w, 2)
    w.chain.transact(bc.functions.classify(M_EITHER, Q, 2_000_000))
    rid = bc.functions.lastRequestId().call()
    deadline, sig = w.sign(rid, 1)
    fn = w.oracle.functions.fulfillWithSignature(rid, 1, deadline, sig)
    with reverts("InsufficientGasForCallback", 2_000_000):
        _call_with_gas(w, fn, 1_000_000)
    w.fulfil_sig(rid, 1, deadline, sig)  # with enough gas it goes through
    assert bc.functions.calls().call() == 1


def _call_with_gas(w, fn, gas):
    from contracts.chain import decode_revert

    try:
        fn.call({"from": w.relayer, "gas": gas})
    except Exception as exc:  # noqa: BLE001
        raise decode_revert(exc, w.oracle.abi) from None


# -- fees and cancel -----------------------------------------------------------------


def test_cancel_after_timeout_refunds_fee(w):
    """The fee comes back to the consumer, and to its owner, who alone could have paid it: a
    stranger cannot ask through the example consumer (before, a stranger's fee went to the
    owner on cancel)."""
    fee = 5 * 10**15
    consumer = w.consumer()
    with reverts("OnlyOwner", w.relayer):
        w.chain.transact(consumer.functions.classify(list(Q)), value=fee, sender=w.relayer)
    rid, _ = w.request(fee=fee)
    with reverts("NotRequester"):
        w.chain.transact(w.oracle.functions.cancelRequest(rid))
    with reverts("CancelTooEarly"):
        w.chain.transact(consumer.functions.cancel(rid))
    with reverts("OnlyOwner"):
        w.chain.transact(consumer.functions.cancel(rid), sender=w.relayer)
    w.chain.advance_time(TIMEOUT + 1)
    receipt = w.chain.transact(consumer.functions.cancel(rid), abi=w.oracle.abi + consumer.abi)
    (ev,) = w.events(receipt, "RequestCancelled")
    assert ev["refund"] == fee
    assert w.w3.eth.get_balance(consumer.address) == fee
    assert w.oracle.functions.requests(rid).call()[3] == 3  # Cancelled
    deadline, sig = w.sign(rid, 1)
    with reverts("RequestIsCancelled", rid):
        w.fulfil_sig(rid, 1, deadline, sig)
    with reverts("RequestIsCancelled", rid):
        w.chain.transact(consumer.functions.cancel(rid), abi=w.oracle.abi + consumer.abi)
    before = w.w3.eth.get_balance(w.chain.sender)
    r = w.chain.transact(consumer.functions.withdraw())
    assert w.w3.eth.get_balance(w.chain.sender) == before + fee - r["gasUsed"] * r[
        "effectiveGasPrice"]


def test_copied_fulfilment_cannot_take_the_fee(w):
    """Another account sends the relayer's fulfilment (same calldata) first: the fee still
    goes to the model's payee, the copier only pays gas; the relayer's own send then finds the
    request fulfilled."""
    fee = 10**16
    o, c = w.oracle.functions, w.chain
    with reverts("NotOwner"):
        c.transact(o.setPayee(M_EITHER, w.relayer), sender=w.relayer)
    with reverts("ZeroAddress"):
        c.transact(o.setPayee(M_EITHER, ZERO))
    with reverts("UnknownModel"):
        c.transact(o.setPayee(b"\x09" * 32, w.relayer))
    receipt = c.transact(o.setPayee(M_EITHER, w.relayer))
    assert w.events(receipt, "PayeeSet")[0]["payee"] == w.relayer
    rid, _ = w.request(model_id=M_EITHER, fee=fee)
    deadline, sig = w.sign(rid, 2)
    copier = w.w3.eth.accounts[2]
    payee0, copier0 = w.w3.eth.get_balance(w.relayer), w.w3.eth.get_balance(copier)
    receipt = w.fulfil_sig(rid, 2, deadline, sig, sender=copier)  # the copy, mined first
    spent = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert w.events(receipt, "ClassificationFulfilled")[0]["fulfiller"] == copier
    assert _fees(w, M_EITHER) == (w.relayer, fee)  # accrued for the payee
    with reverts("AlreadyFulfilled", rid):
        w.fulfil_sig(rid, 2, deadline, sig)
    receipt = c.transact(o.withdrawFees(M_EITHER), sender=copier)  # even the copier's withdraw
    spent += receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert w.w3.eth.get_balance(copier) == copier0 - spent  # gained nothing
    assert w.w3.eth.get_balance(w.relayer) == payee0 + fee  # the payee has the fee


def test_cannot_cancel_a_fulfilled_request(w):
    rid, _ = w.request()
    deadline, sig = w.sign(rid, 1)
    w.fulfil_sig(rid, 1, deadline, sig)
    w.chain.advance_time(TIMEOUT + 1)
    with reverts("AlreadyFulfilled", rid):
        w.chain.transact(w.consumer().functions.cancel(rid), abi=w.oracle.abi + w.consumer().abi)


def test_refund_failure_reverts_the_cancel(w):
    bc = _bad_consumer(w, 2)  # no receive(): cannot take its refund
    w.chain.transact(bc.functions.classify(M_EITHER, Q, 50_000), value=1000)
    rid = bc.functions.lastRequestId().call()
    w.chain.advance_time(TIMEOUT + 1)
    with reverts("RefundFailed"):
        w.chain.transact(bc.functions.cancel(rid), abi=w.oracle.abi + bc.abi)


def test_a_payee_that_refuses_eth_does_not_block_fulfilment(w):
    """Pull payments: a payee without receive() cannot stop fulfilments (they accrue);
    withdrawFees reverts for it and keeps the fees; setPayee away from it moves them on."""
    o = w.oracle.functions
    h = helpers()["NonPayableFulfiller"]
    addr, _ = w.chain.deploy(h.abi, h.bytecode)
    f = w.chain.contract(addr, h.abi)
    w.chain.transact(o.setPayee(M_EITHER, addr))  # no receive()
    rid, _ = w.request(fee=1000)
    deadline, sig = w.sign(rid, 1)
    # fulfilled through a contract that takes no ETH either: the fee is never the fulfiller's
    w.chain.transact(f.functions.fulfil(w.oracle.address, rid, 1, deadline, sig),
                     abi=w.oracle.abi)
    assert o.requests(rid).call()[3] == 2  # Status.Fulfilled
    assert _fees(w, M_EITHER) == (addr, 1000)
    with reverts("FeeTransferFailed", addr):
        w.chain.transact(o.withdrawFees(M_EITHER))
    assert _fees(w, M_EITHER) == (addr, 1000)  # still accrued
    receipt = w.chain.transact(o.setPayee(M_EITHER, w.relayer))  # old payee refuses: carried
    assert not w.events(receipt, "FeesWithdrawn")
    assert _fees(w, M_EITHER) == (w.relayer, 1000)
    before = w.w3.eth.get_balance(w.relayer)
    w.chain.transact(o.withdrawFees(M_EITHER), sender=w.w3.eth.accounts[3])
    assert w.w3.eth.get_balance(w.relayer) == before + 1000


def _fees(w, model_id: bytes) -> tuple[str, int]:
    """(payee, accruedFees) of a model: models(id) fields 8 and 9."""
    return tuple(w.oracle.functions.models(model_id).call()[8:10])


def test_fees_accrue_per_model_and_are_withdrawn_to_the_payee(w):
    """Each model accrues its own fees; withdrawFees by anyone pays the model's payee (never
    the caller), once; setPayee pays what accrued to the old payee first."""
    o, c = w.oracle.functions, w.chain
    stranger, payee_b = w.w3.eth.accounts[4], w.w3.eth.accounts[5]
    c.transact(o.setPayee(M_SIG, payee_b))
    for model_id, fee in ((M_EITHER, 1000), (M_EITHER, 2000), (M_SIG, 5000)):
        rid, _ = w.request(model_id=model_id, fee=fee)
        w.fulfil_sig(rid, 1, *w.sign(rid, 1, model_id=model_id))
    assert _fees(w, M_EITHER) == (w.chain.sender, 3000)
    assert _fees(w, M_SIG) == (payee_b, 5000)
    with reverts("NoFeesAccrued", M_PROOF):
        c.transact(o.withdrawFees(M_PROOF))
    with reverts("UnknownModel"):
        c.transact(o.withdrawFees(b"\x09" * 32))
    stranger0, payee_b0 = w.w3.eth.get_balance(stranger), w.w3.eth.get_balance(payee_b)
    receipt = c.transact(o.withdrawFees(M_SIG), sender=stranger)
    (ev,) = w.events(receipt, "FeesWithdrawn")
    assert (ev["modelId"], ev["payee"], ev["amount"]) == (M_SIG, payee_b, 5000)
    assert w.w3.eth.get_balance(payee_b) == payee_b0 + 5000
    spent = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert w.w3.eth.get_balance(stranger) == stranger0 - spent
    assert _fees(w, M_SIG) == (payee_b, 0)
    with reverts("NoFeesAccrued", M_SIG):  # paid once
        c.transact(o.withdrawFees(M_SIG), sender=stranger)
    # setPayee settles: the 3000 accrued under the owner go to the owner, not the new payee
    owner0 = w.w3.eth.get_balance(w.chain.sender)
    receipt = c.transact(o.setPayee(M_EITHER, payee_b))
    (ev,) = w.events(receipt, "FeesWithdrawn")
    assert (ev["payee"], ev["amount"]) == (w.chain.sender, 3000)
    spent = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert w.w3.eth.get_balance(w.chain.sender) == owner0 - spent + 3000
    assert _fees(w, M_EITHER) == (payee_b, 0)
    assert w.w3.eth.get_balance(w.oracle.address) == 0  # every fee paid out


def test_example_consumer_rejects_callbacks_not_from_oracle(w):
    consumer = w.consumer()
    with reverts("OnlyOracle"):
        w.chain.transact(consumer.functions.onClassification(b"\x00" * 32, M_EITHER, 1))


def test_revert_error_is_decoded(w):
    with pytest.raises(ContractRevert) as info:
        w.chain.call(w.oracle.functions.cancelRequest(b"\x05" * 32))
    assert "UnknownRequest" in str(info.value)
    assert deploy.POLICIES == {"proof": 1, "signature": 2, "either": 3}


# -- per-model minimum fee and input bound ------------------------------------------


def test_minimum_fee_and_input_bound_are_checked_at_request_time(w):
    o, c = w.oracle.functions, w.chain
    mid = b"\x0b" * 32
    c.transact(o.registerModel(mid, w.mock.address, 4, 13, 1, ZERO, 8, 2**35 - 1, 1000))
    assert o.models(mid).call()[5:] == [8, 1000, 2**35 - 1, w.chain.sender, 0]
    with reverts("FeeTooLow", 999, 1000):
        w.request(model_id=mid, fee=999)
    with reverts("InputOutOfRange", 0, 2**36):  # the unprovable iris input
        w.request(q=[2**36, 0, 0, 0], model_id=mid, fee=1000)
    with reverts("InputOutOfRange", 3, -(2**35)):
        w.request(q=[0, 0, 0, -(2**35)], model_id=mid, fee=1000)
    rid, _ = w.request(q=[2**35 - 1, -(2**35 - 1), 0, 1], model_id=mid, fee=1000)
    assert o.requests(rid).call()[6] == 1000
    receipt = c.transact(o.setMinFee(mid, 5))
    assert w.events(receipt, "MinFeeSet")[0]["minFee"] == 5
    w.request(model_id=mid, fee=5)
