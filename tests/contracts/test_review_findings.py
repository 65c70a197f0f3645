"""Flaws an adversarial review of the on-chain path found, each fixed (the docstrings say what failed)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from world import HELPERS, M_PROOF, M_SIG, make_world

from contracts import deploy
from contracts.chain import ChainError, ContractRevert
from contracts.solc import SRC, compile_files

pytestmark = pytest.mark.chain

REVIEW_HELPERS = Path(__file__).resolve().parent / "sol" / "ReviewHelpers.sol"


@functools.cache
def review_helpers():
    return compile_files(sorted(SRC.glob("*.sol")) + [HELPERS, REVIEW_HELPERS])


# -- 1. setPayee cannot replace a payee that refuses ETH with a return bomb --------------


def test_setpayee_can_always_replace_a_payee_that_refuses_eth(embedded_chain):
    """docs/contracts.md: "if the old payee refuses ETH, the accrual stays with the model and
    goes to the new payee (so a payee that cannot take ETH can always be replaced, and the fees
    are not stuck)". A payee that refuses by reverting with large return data makes setPayee
    run out of gas whatever gas it is sent (Solidity copies the return data of
    `(bool ok,) = old.call{value: amount}("")` into memory with the 1/64 of gas left), so the
    payee can never be replaced and every fee the model accrues is locked for good."""
    chain = embedded_chain
    w = make_world(chain)
    h = review_helpers()["BombPayee"]
    bomb, _ = chain.deploy(h.abi, h.bytecode)
    chain.transact(w.oracle.functions.setPayee(M_SIG, bomb))  # nothing accrued yet: no call
    rid, _ = w.request(model_id=M_SIG, fee=10**15)
    deadline, sig = w.sign(rid, 1, model_id=M_SIG)
    w.fulfil_sig(rid, 1, deadline, sig)
    assert w.oracle.functions.models(M_SIG).call()[9] == 10**15  # accrued, for the bomb payee

    new_payee = chain.w3.eth.accounts[2]
    try:
        chain.transact(w.oracle.functions.setPayee(M_SIG, new_payee), gas=10_000_000)
    except ChainError as exc:
        pytest.fail(f"setPayee cannot replace a payee that refuses ETH: {exc}")
    fields = w.oracle.functions.models(M_SIG).call()
    assert (fields[8], fields[9]) == (new_payee, 10**15)


# -- 2. an update delay beyond 2^32 s is refused (it would wrap the 40-bit effectiveAt) -----


def test_an_update_delay_that_would_wrap_the_timelock_is_refused(embedded_chain):
    """updateModel stores `uint40(block.timestamp + updateDelay)`: a delay of 2^64 s (a
    deployer's "never") wrapped to effectiveAt = now, so the owner could swap the verifier,
    signer or policy with no notice while the ModelUpdateScheduled event announced the far
    future. The constructor now refuses a delay over 2^32 - 1 s, and `chain deploy` says so."""
    from verifier.cli import main as verinfer

    chain = embedded_chain
    with pytest.raises(ChainError, match="UpdateDelayTooLong"):
        deploy.deploy_oracle(chain, 600, update_delay=2**64)
    # the longest delay allowed still holds an update back
    oracle, _ = deploy.deploy_oracle(chain, 600, update_delay=2**32 - 1)
    mock = review_helpers()["MockVerifier"]
    v1, _ = chain.deploy(mock.abi, mock.bytecode)
    v2, _ = chain.deploy(mock.abi, mock.bytecode)
    deploy.register_model(chain, oracle, model_id=M_PROOF, verifier=v1, input_length=4,
                          input_scale=13, policy="proof", signer=None, num_instances=8)
    receipt = chain.transact(oracle.functions.updateModel(M_PROOF, v2, 1, "0x" + "00" * 20))
    (ev,) = oracle.events.ModelUpdateScheduled().process_receipt(receipt)
    assert oracle.functions.pendingUpdates(M_PROOF).call()[2] == ev["args"]["effectiveAt"]
    with pytest.raises(ContractRevert) as exc:
        chain.transact(oracle.functions.applyModelUpdate(M_PROOF))
    assert exc.value.error == "UpdateNotReady"
    assert verinfer(["chain", "deploy", "--update-delay", str(2**32), "--rpc", "http://127.0.0.1:9"]) == 2


# -- 3. the relayer proves requests whose fee cannot pay for a proof fulfilment ------------


def test_relayer_does_not_prove_a_request_it_then_skips_as_unpaid(anvil_chain, tmp_path):
    """The relayer's fee pre-check ("before any work", docs/server.md Relayer step 2) counts
    only the callback gas + MIN_FULFIL_GAS (50,000), the cost of a *signature* fulfilment. A
    proof fulfilment costs ~640k (iris) to ~940k (digits) gas, so a request paying just the
    pre-check's amount makes the relayer generate an EZKL proof (seconds to a minute of CPU,
    hundreds of MiB of proving key) and only then skip it as unpaid when the real gas is
    estimated; the requester cancels after the timeout and gets the fee back. Each such request
    costs the attacker one requestClassification (~200k gas) and the relayer one proof."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "relayer"))
    import dataclasses

    from relay_world import IRIS_ONNX, SCALE, relayer_for, samples, setup_oracle

    from server.relayer.relayer import MIN_FULFIL_GAS, LocalModel
    from verifier.fixedpoint import int_to_felt

    chain = anvil_chain
    base = LocalModel.from_onnx("iris_mlp", IRIS_ONNX, SCALE)
    model = dataclasses.replace(base, package=object())  # "has a circuit package": proof path
    oracle, cons = setup_oracle(chain, model, "proof", None)
    q = samples(1)[0]
    fee = (100_000 + MIN_FULFIL_GAS) * chain.w3.eth.gas_price  # exactly what the pre-check asks
    chain.transact(cons.functions.classify(list(q)), value=fee)
    rid = "0x" + bytes(cons.functions.lastRequestId().call()).hex()

    class CountingProofs:  # stands in for the EZKL prover (a MockVerifier-grade bundle)
        calls = 0

        def prove(self, m, x):
            CountingProofs.calls += 1
            label = m.label(m.dequantize(q))
            felts = [int_to_felt(v) for v in q] + [0, 0, 0, label]
            return SimpleNamespace(proof={"hex_proof": "0x00", "instances": [
                [f.to_bytes(32, "little").hex() for f in felts]]})

    r = relayer_for(chain, oracle, model, tmp_path, None, fee_margin=1.0,
                    proofs=CountingProofs())
    res = r.poll()
    rec = r.store.get(rid)
    assert res.skipped == [rid] and "does not cover" in rec.reason  # unpaid, in the end
    assert CountingProofs.calls == 0, (
        f"the relayer generated {CountingProofs.calls} proof(s) for a request it then skipped "
        f"as unpaid ({rec.reason})")
