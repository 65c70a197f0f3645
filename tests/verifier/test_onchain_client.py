"""``verify --rpc``'s client (verifier/onchain.py) against what nodes answer besides a verdict:
only a revert or a word other than ABI true is a rejected proof (exit 1); any other error of the
node says nothing about the proof and is the node's trouble (exit 2). The verdicts of a real
deployed verifier on anvil: tests/contracts/test_proof_path.py::test_verify_onchain_client."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
from chain_support import jsonrpc_endpoint

from verifier.errors import InputError, ProofInvalid
from verifier.onchain import verify_onchain

VERIFIER = "0x" + "ab" * 20


@contextmanager
def _node(eth_call_reply):
    """A JSON-RPC endpoint on loopback: code at every address, ``eth_call_reply`` (the reply's
    fields besides jsonrpc and id, or a whole non-object reply) to eth_call."""

    def answer(req: dict, _body: bytes) -> bytes:
        if req["method"] == "eth_getCode":
            reply = {"jsonrpc": "2.0", "id": req["id"], "result": "0x6001"}
        elif isinstance(eth_call_reply, dict):
            reply = {"jsonrpc": "2.0", "id": req["id"], **eth_call_reply}
        else:
            reply = eth_call_reply
        return json.dumps(reply).encode()

    with jsonrpc_endpoint(answer) as url:
        yield url


@pytest.mark.parametrize("reply, verdict", [
    ({"result": "0x" + "00" * 31 + "01"}, None),
    ({"result": "0x" + "00" * 31 + "00"}, ProofInvalid),
    ({"result": "0x" + "00" * 31 + "02"}, ProofInvalid),  # not ABI true (eth_abi raised here before)
    ({"result": "0x" + "00" * 30 + "0001"}, None),
    ({"result": "0x01"}, ProofInvalid),
    ({"error": {"code": 3, "message": "execution reverted", "data": "0x"}}, ProofInvalid),
    ({"error": {"code": -32000, "message": "execution reverted"}}, ProofInvalid),
    ({"error": {"code": -32015, "message": "VM execution error: Reverted"}}, ProofInvalid),
    ({"error": {"code": -32005, "message": "rate limit exceeded"}}, InputError),  # was ProofInvalid
    ({"error": {"code": -32000, "message": "header not found"}}, InputError),
    ({"error": {"code": -32601, "message": "the method eth_call does not exist"}}, InputError),
    ({"result": "0xzz"}, InputError),
    ([{"jsonrpc": "2.0", "id": 1, "result": "0x"}], InputError),
])
def test_only_a_revert_or_a_no_is_a_rejected_proof(reply, verdict):
    with _node(reply) as url:
        if verdict is None:
            assert verify_onchain(url, VERIFIER, b"\x01" * 64, [1, 2]) is None
        else:
            with pytest.raises(verdict):
                verify_onchain(url, VERIFIER, b"\x01" * 64, [1, 2])
