"""A deployed oracle with models, consumers and a signer, for the chain tests."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from contracts import deploy
from contracts.chain import Chain, ContractRevert
from contracts.solc import SRC, compile_files
from verifier import eip712
from verifier.fixedpoint import input_commitment

HELPERS = Path(__file__).resolve().parent / "sol" / "TestHelpers.sol"
TIMEOUT = 600  # the oracle's request timeout in these tests

# Model ids (any 32 bytes; verinfer uses the ONNX file's sha256).
M_PROOF = b"\x01" * 32  # ProofOnly, mock verifier
M_SIG = b"\x02" * 32  # SignatureOnly
M_EITHER = b"\x03" * 32  # ProofOrSignature, mock verifier
Q = [41779, 28672, 11469, 1638]  # the docs/formats.md vector (iris sample at scale 13)


@functools.cache
def helpers():
    return compile_files(sorted(SRC.glob("*.sol")) + [HELPERS])


@contextlib.contextmanager
def reverts(name: str, *args):
    """Expect a ContractRevert with exactly this custom error (and args, if given)."""
    with pytest.raises(ContractRevert) as info:
        yield info
    assert info.value.error == name, f"expected {name}, got {info.value}"
    if args:
        assert info.value.error_args == args, info.value.error_args


@dataclass
class World:
    chain: Chain
    oracle: object
    signer: object  # eth_account LocalAccount, made by the test
    mock: object  # MockVerifier
    consumers: dict = field(default_factory=dict)  # model id -> ExampleConsumer
    relayer: str = ""

    @property
    def w3(self):
        return self.chain.w3

    def consumer(self, model_id: bytes = M_EITHER):
        if model_id not in self.consumers:
            self.consumers[model_id], _ = deploy.deploy_consumer(
                self.chain, self.oracle.address, model_id, 100_000)
        return self.consumers[model_id]

    def request(self, q=Q, model_id: bytes = M_EITHER, fee: int = 0) -> tuple[bytes, dict]:
        c = self.consumer(model_id)
        receipt = self.chain.transact(c.functions.classify(list(q)), value=fee)
        return c.functions.lastRequestId().call(), receipt

    def now(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"]

    def sign(self, request_id: bytes, label: int, *, q=Q, model_id: bytes = M_EITHER,
             deadline: int | None = None, key=None) -> tuple[int, bytes]:
        """EIP-712 signature as eth-account makes it (the spec's reference signer)."""
        deadline = self.now() + 3600 if deadline is None else deadline
        domain = eip712.Domain(chainId=self.chain.chain_id,
                               verifyingContract=self.oracle.address)
        msg = eip712.Classification(
            modelId="0x" + model_id.hex(), inputCommitment="0x" + input_commitment(q).hex(),
            label=label, requestId="0x" + request_id.hex(), deadline=deadline)
        data = eip712.typed_data(domain, msg)
        signed = Account.sign_message(encode_typed_data(full_message=data),
                                      (key or self.signer).key)
        return deadline, bytes(signed.signature)

    def fulfil_sig(self, request_id, label, deadline, sig, **kw):
        return self.chain.transact(
            self.oracle.functions.fulfillWithSignature(request_id, label, deadline, sig),
            sender=kw.pop("sender", self.relayer), **kw)

    def events(self, receipt, name, contract=None):
        contract = contract or self.oracle
        return [e["args"] for e in getattr(contract.events, name)().process_receipt(
            receipt, errors=__import__("web3").logs.DISCARD)]


def make_world(chain: Chain) -> World:
    oracle, _ = deploy.deploy_oracle(chain, TIMEOUT)
    h = helpers()["MockVerifier"]
    mock_addr, _ = chain.deploy(h.abi, h.bytecode)
    signer = Account.create()
    w = World(chain, oracle, signer, chain.contract(mock_addr, h.abi))
    w.relayer = chain.w3.eth.accounts[1]
    deploy.register_model(chain, oracle, model_id=M_PROOF, verifier=mock_addr, input_length=4,
                          input_scale=13, policy="proof", signer=None, num_instances=8)
    deploy.register_model(chain, oracle, model_id=M_SIG, verifier=None, input_length=4,
                          input_scale=13, policy="signature", signer=signer.address,
                          num_instances=8)
    deploy.register_model(chain, oracle, model_id=M_EITHER, verifier=mock_addr, input_length=4,
                          input_scale=13, policy="either", signer=signer.address,
                          num_instances=8)
    return w
