"""The proof path with a real EZKL proof (iris_mlp circuit built in the session).

On anvil: accepted, forged/altered rejected, another input rejected, double fulfilment
rejected, the eth_call verify client. On the embedded chain: one real proof accepted (its
pairing precompile is pure Python, so one is enough).
"""

from __future__ import annotations

import pytest
from world import make_world, reverts

from contracts import deploy
from contracts.deploy import VerifierArtifact
from verifier.errors import InputError, ProofInvalid
from verifier.fixedpoint import int_to_felt
from verifier.onchain import verify_onchain

pytestmark = [pytest.mark.chain, pytest.mark.ezkl]

M_IRIS = b"\x1a" * 32


def _deploy_iris(w, iris_proofs, policy="either"):
    address, _ = deploy.deploy_verifier(
        w.chain, VerifierArtifact.from_compiled(iris_proofs.circuit.verifier))
    deploy.register_model(w.chain, w.oracle, model_id=M_IRIS, verifier=address,
                          input_length=4, input_scale=iris_proofs.circuit.input_scale,
                          policy=policy, signer=w.signer.address,
                          num_instances=len(iris_proofs.a.instances))
    return address


@pytest.fixture(scope="module")
def aw(anvil_chain, iris_proofs):
    """One anvil world with the iris verifier (proofs are the slow part; share it)."""
    w = make_world(anvil_chain)
    w.iris_verifier = _deploy_iris(w, iris_proofs)
    return w


def test_circuit_public_input_is_our_quantization(iris_proofs):
    for p in (iris_proofs.a, iris_proofs.b):
        assert p.instances[:4] == [int_to_felt(x) for x in p.quantized]
        assert p.instances[-1] in (0, 1, 2)
    assert iris_proofs.a.instances[-1] != iris_proofs.b.instances[-1]  # setosa vs virginica


def test_real_proof_fulfils_request(aw, iris_proofs):
    p = iris_proofs.a
    rid, _ = aw.request(q=p.quantized, model_id=M_IRIS, fee=10**15)
    receipt = aw.chain.transact(aw.oracle.functions.fulfillWithProof(rid, p.proof, p.instances),
                                sender=aw.relayer)
    (ev,) = aw.events(receipt, "ClassificationFulfilled")
    assert ev["label"] == p.instances[-1] and ev["byProof"] is True
    assert aw.consumer(M_IRIS).functions.answers(rid).call() == [True, p.instances[-1]]
    with reverts("AlreadyFulfilled", rid):  # double fulfilment / replay
        aw.chain.transact(aw.oracle.functions.fulfillWithProof(rid, p.proof, p.instances))


def test_forged_proof_rejected(aw, iris_proofs):
    p = iris_proofs.a
    rid, _ = aw.request(q=p.quantized, model_id=M_IRIS)
    for i in (100, len(p.proof) // 2, len(p.proof) - 1):
        forged = bytearray(p.proof)
        forged[i] ^= 0x01
        with reverts("ProofRejected", rid):
            aw.chain.transact(aw.oracle.functions.fulfillWithProof(rid, bytes(forged),
                                                                   p.instances))
    other_label = list(p.instances)
    other_label[-1] = (p.instances[-1] + 1) % 3  # claim another class
    with reverts("ProofRejected", rid):
        aw.chain.transact(aw.oracle.functions.fulfillWithProof(rid, p.proof, other_label))
    with reverts("ProofRejected", rid):  # a proof cut short
        aw.chain.transact(aw.oracle.functions.fulfillWithProof(rid, p.proof[:-32], p.instances))
    assert aw.oracle.functions.requests(rid).call()[3] == 1  # still open


def test_proof_for_another_input_rejected(aw, iris_proofs):
    rid, _ = aw.request(q=iris_proofs.a.quantized, model_id=M_IRIS)
    b = iris_proofs.b  # a valid proof, of another input
    with reverts("InputMismatch", rid):
        aw.chain.transact(aw.oracle.functions.fulfillWithProof(rid, b.proof, b.instances))


def test_too_little_gas_reports_out_of_gas_not_proof_rejected(aw, iris_proofs):
    """A valid proof sent with too little gas for the verifier: VerifierOutOfGas (the
    sender's fault), never ProofRejected; with enough gas the same proof is accepted."""
    from contracts.chain import decode_revert

    p = iris_proofs.a
    rid, _ = aw.request(q=p.quantized, model_id=M_IRIS)
    fn = aw.oracle.functions.fulfillWithProof(rid, p.proof, p.instances)
    need = fn.estimate_gas({"from": aw.relayer})
    for gas in (need // 2, need * 3 // 4):
        with reverts("VerifierOutOfGas", rid):
            try:
                fn.call({"from": aw.relayer, "gas": gas})
            except Exception as exc:  # noqa: BLE001
                raise decode_revert(exc, aw.oracle.abi) from None
    aw.chain.transact(fn, sender=aw.relayer)
    assert aw.oracle.functions.requests(rid).call()[3] == 2  # fulfilled


def test_proof_refused_where_policy_is_signature_only(aw, iris_proofs):
    from world import M_SIG

    p = iris_proofs.a
    rid, _ = aw.request(q=p.quantized, model_id=M_SIG)
    with reverts("ProofPathDisabled", M_SIG):
        aw.chain.transact(aw.oracle.functions.fulfillWithProof(rid, p.proof, p.instances))


def test_verify_onchain_client(aw, anvil_url, iris_proofs):
    p = iris_proofs.a
    verify_onchain(anvil_url, aw.iris_verifier, p.proof, p.instances)
    forged = bytearray(p.proof)
    forged[200] ^= 0x01
    with pytest.raises(ProofInvalid):
        verify_onchain(anvil_url, aw.iris_verifier, bytes(forged), p.instances)
    with pytest.raises(InputError):
        verify_onchain(anvil_url, "0x" + "00" * 19 + "01", p.proof, p.instances)
    with pytest.raises(InputError):
        verify_onchain(anvil_url, "not-an-address", p.proof, p.instances)


def test_real_proof_on_embedded_chain(embedded_chain, iris_proofs):
    w = make_world(embedded_chain)
    _deploy_iris(w, iris_proofs, policy="proof")
    p = iris_proofs.b
    rid, _ = w.request(q=p.quantized, model_id=M_IRIS)
    w.chain.transact(w.oracle.functions.fulfillWithProof(rid, p.proof, p.instances),
                     gas=2_000_000)
    assert w.consumer(M_IRIS).functions.answers(rid).call() == [True, p.instances[-1]]


def test_verify_inference_accepts_a_real_proof_and_rejects_a_tampered_one(aw, iris_proofs):
    """ERC-7992-shaped verifyInference: no request; reverts on failure; gas printed (the
    figure in docs/contracts.md)."""
    from eth_abi import encode

    from verifier.fixedpoint import input_commitment

    p = iris_proofs.a
    o, c = aw.oracle.functions, aw.chain
    com = input_commitment(p.quantized)
    label = encode(["uint256"], [p.instances[-1]])
    proof = encode(["bytes", "uint256[]"], [p.proof, p.instances])
    assert c.call(o.verifyInference(M_IRIS, com, label, proof)) is True
    receipt = c.transact(o.verifyInference(M_IRIS, com, label, proof), sender=aw.relayer)
    (ev,) = aw.events(receipt, "InferenceVerified")
    assert ev["modelId"] == M_IRIS and ev["inputCommitment"] == com
    print(f"verifyInference gas (iris_mlp, real proof): {receipt['gasUsed']}")
    forged = bytearray(p.proof)
    forged[100] ^= 0x01
    with reverts("ProofRejected", b"\x00" * 32):
        c.transact(o.verifyInference(M_IRIS, com, label,
                                     encode(["bytes", "uint256[]"], [bytes(forged), p.instances])))
    with reverts("OutputMismatch"):
        c.call(o.verifyInference(M_IRIS, com, encode(["uint256"], [(p.instances[-1] + 1) % 3]),
                                 proof))
    b = iris_proofs.b  # a valid proof of another input
    with reverts("InputMismatch", b"\x00" * 32):
        c.call(o.verifyInference(M_IRIS, com, encode(["uint256"], [b.instances[-1]]),
                                 encode(["bytes", "uint256[]"], [b.proof, b.instances])))
