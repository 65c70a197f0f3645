"""verifier.receipts / verifier.eip712 / verifier.keys: fail-closed checks, pinned vectors."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eth_account import Account
from eth_account.messages import encode_typed_data

from verifier.eip712 import (
    Classification,
    Domain,
    EIP712Attestation,
    recover_signer,
    sign_digest,
    signing_digest,
    struct_hash,
    typed_data,
    verify_eip712,
)
from verifier.errors import DigestMismatch, KeyUnknown, LinkBroken, SignatureInvalid
from verifier.keys import ed25519_jwk, jwk_thumbprint
from verifier.receipts import Receipt, pae, verify_receipt

VECTOR_DOMAIN = Domain(chainId=31337, verifyingContract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
VECTOR_MESSAGE = Classification(
    modelId="0x" + "11" * 32,
    inputCommitment="0x9761e28b7edf3bf5ab22077058d7bbdb3f7dfbbd2a3037b7bd08adc745236c3c",
    label=2,
    requestId="0x" + "22" * 32,
    deadline=1700000000,
)


def test_eip712_vector_from_docs():
    assert struct_hash(VECTOR_MESSAGE).hex() == "b7026ce47d7d60b38bd9f50d9aee08d435c826ce75282102ffcae36810a14601"
    assert signing_digest(VECTOR_DOMAIN, VECTOR_MESSAGE).hex() == (
        "95ed6df88041fa2b2a0d2caae4b8bc499a13ac7fc80a8d31b86efd857b963c88"
    )


def test_eip712_matches_eth_account_and_recovers():
    acct = Account.create()
    sig = sign_digest(signing_digest(VECTOR_DOMAIN, VECTOR_MESSAGE), bytes(acct.key))
    signed = Account.sign_message(encode_typed_data(full_message=typed_data(VECTOR_DOMAIN, VECTOR_MESSAGE)), acct.key)
    assert sig == "0x" + bytes(signed.signature).hex()  # RFC 6979: deterministic, same bytes
    assert recover_signer(VECTOR_DOMAIN, VECTOR_MESSAGE, sig) == acct.address
    att = EIP712Attestation(domain=VECTOR_DOMAIN, message=VECTOR_MESSAGE, signer=acct.address, signature=sig)
    verify_eip712(att, {acct.address})
    with pytest.raises(KeyUnknown):
        verify_eip712(att, {Account.create().address})
    other = att.model_copy(update={"message": VECTOR_MESSAGE.model_copy(update={"label": 3})})
    with pytest.raises(SignatureInvalid):
        verify_eip712(other)


def test_rfc7638_thumbprint_vector():
    # RFC 8037 appendix A.3: the thumbprint of its Ed25519 example key
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert jwk_thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_pae_vector():
    # DSSE spec example
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


@pytest.fixture
def signed(tmp_path, monkeypatch):
    """A real receipt from the server's signer, its JWKS and its input."""
    monkeypatch.setenv("VERINFER_HOME", str(tmp_path))
    from server.receipts.keys import load_keys
    from server.receipts.signer import ReceiptSigner, new_request_id
    from server.settings import ServerSettings
    from verifier.receipts import ModelRef

    settings = ServerSettings()
    keys = load_keys(settings)
    x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    receipt = ReceiptSigner(keys, settings).sign(
        request_id=new_request_id(), client_request_id="c1",
        model=ModelRef(name="iris_mlp", version="1", sha256="ab" * 32),
        input_name="input", datatype="FP32", x_sent=x, x_model=x, scale=13,
        outputs=[("logits", "FP32", np.array([[1.5, -2.0, 0.25]], dtype=np.float32)),
                 ("label", "INT64", np.array([0]))],
        label=0, device="cpu",
    )
    return Receipt.parse(receipt.model_dump_json()), keys.jwks, x, keys.eth_address


def test_verify_receipt_ok(signed):
    receipt, jwks, x, eth = signed
    st = verify_receipt(receipt, jwks, trusted_eth_signers={eth}, input_array=x, model_sha256="ab" * 32)
    assert st.predicate.label == 0
    assert st.predicate.input.commitment == "0x9761e28b7edf3bf5ab22077058d7bbdb3f7dfbbd2a3037b7bd08adc745236c3c"


def _with_payload(receipt: Receipt, mutate) -> Receipt:
    st = json.loads(base64.b64decode(receipt.envelope.payload))
    mutate(st)
    payload = base64.b64encode(json.dumps(st).encode()).decode()
    return receipt.model_copy(update={"envelope": receipt.envelope.model_copy(update={"payload": payload})})


def test_tampered_payload_fails(signed):
    receipt, jwks, _, _ = signed
    bad = _with_payload(receipt, lambda st: st["predicate"].update(label=2))
    with pytest.raises(SignatureInvalid):
        verify_receipt(bad, jwks)


def test_unknown_key_fails(signed):
    receipt, _, _, _ = signed
    other = {"keys": [ed25519_jwk(Ed25519PrivateKey.generate().public_key())]}
    with pytest.raises(KeyUnknown):
        verify_receipt(receipt, other)
    with pytest.raises(KeyUnknown):
        verify_receipt(receipt, {"keys": []})


def test_resigned_inconsistent_statement_is_digest_mismatch(signed, tmp_path):
    """A statement whose output data does not hash to its subject, validly signed."""
    receipt, _, _, _ = signed
    key = Ed25519PrivateKey.generate()
    jwk = ed25519_jwk(key.public_key())
    st = json.loads(base64.b64decode(receipt.envelope.payload))
    st["predicate"]["keyId"] = jwk["kid"]
    st["predicate"]["outputs"][0]["data"][0] = 9.0
    payload = json.dumps(st).encode()
    sig = key.sign(pae(receipt.envelope.payloadType, payload))
    env = {"payloadType": receipt.envelope.payloadType, "payload": base64.b64encode(payload).decode(),
           "signatures": [{"keyid": jwk["kid"], "sig": base64.b64encode(sig).decode()}]}
    with pytest.raises(DigestMismatch):
        verify_receipt(Receipt.parse({"id": receipt.id, "envelope": env}), {"keys": [jwk]})


def test_wrong_input_or_model_is_digest_mismatch(signed):
    receipt, jwks, x, _ = signed
    with pytest.raises(DigestMismatch):
        verify_receipt(receipt, jwks, input_array=x + 1)
    with pytest.raises(DigestMismatch):
        verify_receipt(receipt, jwks, model_sha256="cd" * 32)


def test_eip712_part_must_match_statement(signed):
    receipt, jwks, _, _ = signed
    acct = Account.create()
    msg = receipt.eip712.message.model_copy(update={"label": 1})
    sig = sign_digest(signing_digest(receipt.eip712.domain, msg), bytes(acct.key))
    att = EIP712Attestation(domain=receipt.eip712.domain, message=msg, signer=acct.address, signature=sig)
    with pytest.raises(LinkBroken):
        verify_receipt(receipt.model_copy(update={"eip712": att}), jwks)
    with pytest.raises(KeyUnknown):  # signed fine, but not by the trusted signer
        verify_receipt(receipt.model_copy(update={"eip712": att}), jwks, trusted_eth_signers={receipt.eip712.signer})
