"""Check a proof with a deployed Solidity verifier, by ``eth_call`` (no transaction, no gas paid).

The on-chain half of ``verinfer verify BUNDLE --rpc URL --verifier ADDR``: the same proof
and public instances that the offline check uses, sent to the model's EZKL ``Halo2Verifier``
(``verifyProof(bytes,uint256[]) returns (bool)``) on any JSON-RPC node. Light on purpose:
plain JSON-RPC over urllib and ``eth_abi``, no web3, so the auditor's install can run it.

Fails closed: :func:`verify_onchain` returns ``None`` or raises :class:`ProofInvalid`
(the verifier said no, returned anything but ABI true, or reverted), :class:`InputError` (bad
address, unreachable node, no code at the address, any other error of the node: then nothing
was said about the proof).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

from eth_abi import encode as abi_encode
from eth_utils import keccak

from verifier.errors import InputError, ProofInvalid
from verifier.proofs import proof_bytes

VERIFY_SELECTOR = keccak(text="verifyProof(bytes,uint256[])")[:4]
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


def proof_calldata(proof: bytes, instances: list[int]) -> bytes:
    """ABI calldata of ``verifyProof(proof, instances)``."""
    return VERIFY_SELECTOR + abi_encode(["bytes", "uint256[]"], [proof, list(instances)])


def proof_parts(proof: dict) -> tuple[bytes, list[int]]:
    """Proof bytes and flat instances (ints) from an EZKL proof JSON object."""
    raw = proof_bytes(proof)
    try:
        instances = [int.from_bytes(bytes.fromhex(f), "little")
                     for row in proof["instances"] for f in row]
    except (KeyError, TypeError, ValueError):
        raise InputError("proof has no readable 'instances'") from None
    return raw, instances


def rpc_call(url: str, method: str, params: list, *, timeout: float = 60.0):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            reply = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise InputError(f"cannot reach the node at {url}: {exc}") from None
    return reply


def verify_onchain(url: str, verifier: str, proof: bytes, instances: list[int]) -> None:
    """``eth_call`` the verifier at ``verifier``; ``None`` if it returns true."""
    if not _ADDRESS.match(verifier):
        raise InputError(f"not an address: {verifier!r}")
    code = rpc_call(url, "eth_getCode", [verifier, "latest"])
    if not isinstance(code, dict) or "error" in code:
        raise InputError(f"node error on eth_getCode: {_message(code.get('error') if isinstance(code, dict) else code)}")
    if code.get("result") in (None, "0x", "0x0"):
        raise InputError(f"no contract at {verifier}")
    call = {"to": verifier, "data": "0x" + proof_calldata(proof, instances).hex()}
    reply = rpc_call(url, "eth_call", [call, "latest"])
    error = reply.get("error") if isinstance(reply, dict) else {"message": "not a JSON-RPC reply"}
    if error is not None:
        if _is_revert(error):
            raise ProofInvalid(f"the on-chain verifier at {verifier} rejected the proof (reverted)")
        # the node's trouble (rate limit, eth_call disabled, ...), not the verifier's verdict
        raise InputError(f"node error on eth_call: {_message(error)}")
    try:
        out = bytes.fromhex(str(reply.get("result", "0x")).removeprefix("0x"))
    except ValueError:
        raise InputError("node error on eth_call: its result is not hex") from None
    if out != TRUE_WORD:  # ABI true is exactly this word; anything else is no
        raise ProofInvalid(f"the on-chain verifier at {verifier} did not accept the proof")


TRUE_WORD = (1).to_bytes(32, "big")


def _message(error) -> str:
    return str(error.get("message", error) if isinstance(error, dict) else error)[:300]


def _is_revert(error) -> bool:
    """A JSON-RPC error that says the call reverted: code 3 (geth, anvil: revert with data) or
    a message naming the revert (nodes differ in codes; all say "revert")."""
    return isinstance(error, dict) and (error.get("code") == 3 or "revert" in _message(error).lower())
