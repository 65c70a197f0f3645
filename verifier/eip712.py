"""EIP-712 typed data for a signed answer: what a contract checks with ``ecrecover``.

One struct, one domain, one digest function, used by the server's signer and
by every verifier (``eth-account``'s ``encode_typed_data`` gives the same digest,
checked in the tests)::

    EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)
    Classification(bytes32 modelId,bytes32 inputCommitment,uint256 label,bytes32 requestId,uint256 deadline)

* ``modelId``: the model digest, SHA-256 of the model's ``model.onnx`` bytes.
* ``inputCommitment``: ``keccak256(abi.encode(int256[] q))`` of the fixed-point
  input (``verifier.fixedpoint``) at the circuit's input scale.
* ``label``: the predicted class index.
* ``requestId``: the receipt id (32 random bytes) or an on-chain request id.
* ``deadline``: unix seconds after which a contract must refuse the answer (no replay
  after it; within it, a contract marks ``requestId`` as used).

Digest: ``keccak256(0x1901 || domainSeparator || hashStruct(answer))``; the
signature is 65 bytes ``r || s || v`` with ``v`` in {27, 28} and low ``s``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from eth_abi import encode as abi_encode
from eth_keys import keys as eth_keys
from eth_keys.exceptions import BadSignature
from eth_keys.exceptions import ValidationError as EthKeysValidationError
from eth_utils import to_checksum_address
from pydantic import Field, StringConstraints

from verifier.base import Bytes32Hex
from verifier.base import Frozen as _Frozen
from verifier.digests import keccak
from verifier.errors import KeyUnknown, SignatureInvalid

try:  # libsecp256k1 bindings: ~20x faster than eth_keys' pure-Python fallback
    import coincurve
except ImportError:  # pragma: no cover - the light install may lack it
    coincurve = None

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

DOMAIN_NAME = "verinfer"
DOMAIN_VERSION = "1"
DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
CLASSIFICATION_TYPE = (
    "Classification(bytes32 modelId,bytes32 inputCommitment,uint256 label,bytes32 requestId,"
    "uint256 deadline)"
)
DOMAIN_TYPEHASH = keccak(DOMAIN_TYPE.encode())
CLASSIFICATION_TYPEHASH = keccak(CLASSIFICATION_TYPE.encode())

AddressHex = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{40}$")]
Uint256 = Annotated[int, Field(ge=0, lt=2**256)]


class Domain(_Frozen):
    name: str = DOMAIN_NAME
    version: str = DOMAIN_VERSION
    chainId: Uint256
    verifyingContract: AddressHex


class Classification(_Frozen):
    modelId: Bytes32Hex
    inputCommitment: Bytes32Hex
    label: Uint256
    requestId: Bytes32Hex
    deadline: Uint256


class EIP712Attestation(_Frozen):
    """The EIP-712 part of a receipt: what was signed, by whom, and the signature."""

    domain: Domain
    message: Classification
    signer: AddressHex  # checksummed address of the signing key
    signature: Annotated[str, StringConstraints(pattern=r"^0x[0-9a-f]{130}$")]


def _b32(hex_str: str) -> bytes:
    return bytes.fromhex(hex_str[2:])


def _text_hash(text: str, what: str) -> bytes:
    try:
        return keccak(text.encode())
    except UnicodeEncodeError:  # a lone surrogate: JSON text may hold one, UTF-8 cannot
        raise SignatureInvalid(f"the EIP-712 domain {what} is not UTF-8 text") from None


@lru_cache(maxsize=64)  # Domain is frozen (hashable); one per chain and contract
def domain_separator(domain: Domain) -> bytes:
    return keccak(
        abi_encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [
                DOMAIN_TYPEHASH,
                _text_hash(domain.name, "name"),
                _text_hash(domain.version, "version"),
                domain.chainId,
                domain.verifyingContract,
            ],
        )
    )


def classification_hash(model_id: bytes, input_commitment: bytes, label: int, request_id: bytes,
                        deadline: int) -> bytes:
    """hashStruct(Classification) from its raw 32-byte words (the signer's hot path calls this
    directly). abi.encode of static 32-byte words is their concatenation (uint256 big-endian)."""
    return keccak(CLASSIFICATION_TYPEHASH + model_id + input_commitment + label.to_bytes(32, "big")
                  + request_id + deadline.to_bytes(32, "big"))


def struct_hash(answer: Classification) -> bytes:
    return classification_hash(_b32(answer.modelId), _b32(answer.inputCommitment), answer.label,
                               _b32(answer.requestId), answer.deadline)


def typed_digest(separator: bytes, struct: bytes) -> bytes:
    """EIP-712's signed 32 bytes: keccak256(0x1901 || domain separator || struct hash)."""
    return keccak(b"\x19\x01" + separator + struct)


def signing_digest(domain: Domain, answer: Classification, *, separator: bytes | None = None) -> bytes:
    """The 32 bytes that are signed (``separator`` may be precomputed for speed)."""
    return typed_digest(separator or domain_separator(domain), struct_hash(answer))


def typed_data(domain: Domain, answer: Classification) -> dict[str, Any]:
    """The same data as an EIP-712 JSON object (for wallets and ``eth-account``)."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Classification": [
                {"name": "modelId", "type": "bytes32"},
                {"name": "inputCommitment", "type": "bytes32"},
                {"name": "label", "type": "uint256"},
                {"name": "requestId", "type": "bytes32"},
                {"name": "deadline", "type": "uint256"},
            ],
        },
        "primaryType": "Classification",
        "domain": domain.model_dump(),
        "message": answer.model_dump(),
    }


def signing_key(secret: bytes):
    """The fastest signing-key object for ``secret`` (build once, sign many)."""
    return coincurve.PrivateKey(secret) if coincurve else eth_keys.PrivateKey(secret)


def sign_digest(digest: bytes, private_key) -> str:
    """``0x`` + r || s || v (v in {27, 28}) over a 32-byte digest (low ``s``).

    ``private_key``: raw 32 bytes, an ``eth_keys`` key, or :func:`signing_key`'s result.
    """
    if coincurve is not None and isinstance(private_key, coincurve.PrivateKey):
        # libsecp256k1 normalises s to the lower half; last byte is the recovery id
        raw = private_key.sign_recoverable(digest, hasher=None)
        return "0x" + (raw[:64] + bytes([raw[64] + 27])).hex()
    if not isinstance(private_key, eth_keys.PrivateKey):
        private_key = eth_keys.PrivateKey(private_key)
    sig = private_key.sign_msg_hash(digest)
    r, s, v = sig.r, sig.s, sig.v
    return "0x" + (r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v + 27])).hex()


def recover_signer(domain: Domain, answer: Classification, signature: str) -> str:
    """The checksummed address that made ``signature``; :class:`SignatureInvalid` if none."""
    raw = bytes.fromhex(signature.removeprefix("0x"))
    if len(raw) != 65 or raw[64] not in (27, 28):
        raise SignatureInvalid("EIP-712 signature must be 65 bytes with v in {27, 28}")
    digest = signing_digest(domain, answer)
    r, s = int.from_bytes(raw[:32]), int.from_bytes(raw[32:64])
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise SignatureInvalid("EIP-712 signature does not recover: r or s out of range")
    if s > SECP256K1_N // 2:  # (r, n - s) is the same signer's twin: the oracle refuses it (EIP-2)
        raise SignatureInvalid("EIP-712 signature has a high s (not canonical: a contract refuses it)")
    if coincurve is not None:
        try:
            pub = coincurve.PublicKey.from_signature_and_message(
                raw[:64] + bytes([raw[64] - 27]), digest, hasher=None)
        except Exception as exc:  # coincurve raises ValueError/Exception on no recovery  # noqa: BLE001
            raise SignatureInvalid(f"EIP-712 signature does not recover: {exc}") from None
        return to_checksum_address(keccak(pub.format(compressed=False)[1:])[-20:])
    try:
        sig = eth_keys.Signature(vrs=(raw[64] - 27, int.from_bytes(raw[:32]), int.from_bytes(raw[32:64])))
        pub = sig.recover_public_key_from_msg_hash(digest)
    except (BadSignature, EthKeysValidationError, ValueError) as exc:
        raise SignatureInvalid(f"EIP-712 signature does not recover: {exc}") from None
    return to_checksum_address(pub.to_canonical_address())


def verify_eip712(att: EIP712Attestation, trusted_signers: set[str] | None = None) -> None:
    """Fail closed: the signature recovers to ``att.signer``, a trusted address if given."""
    got = recover_signer(att.domain, att.message, att.signature)
    if got.lower() != att.signer.lower():
        raise SignatureInvalid(f"EIP-712 signature recovers to {got}, not {att.signer}")
    if trusted_signers is not None and got.lower() not in {a.lower() for a in trusted_signers}:
        raise KeyUnknown(f"EIP-712 signer {got} is not a trusted signer")
