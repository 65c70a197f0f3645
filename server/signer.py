"""Make a receipt for one answer: in-toto statement in a DSSE envelope + EIP-712 signature."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

import numpy as np

from server.keys import KeyRing
from server.settings import ServerSettings
from verifier.eip712 import (
    Classification,
    Domain,
    EIP712Attestation,
    domain_separator,
    sign_digest,
    signing_digest,
    signing_key,
)
from verifier.fixedpoint import input_commitment, quantize
from verifier.receipts import (
    InputRef,
    ModelRef,
    OutputTensor,
    Predicate,
    Receipt,
    Statement,
    make_subjects,
    sign_envelope,
)
from verifier.tensors import tensor_digest


def new_request_id() -> str:
    """A receipt id: 32 random bytes as 0x-hex (also the EIP-712 ``requestId``)."""
    return "0x" + os.urandom(32).hex()


class ReceiptSigner:
    def __init__(self, keys: KeyRing, settings: ServerSettings) -> None:
        self.keys = keys
        self.ttl = settings.answer_ttl_s
        self.domain = Domain(chainId=settings.chain_id, verifyingContract=settings.verifying_contract)
        self._separator = domain_separator(self.domain)
        self._eth = signing_key(keys.eth_key)  # made once: deriving the public key costs

    def sign(
        self,
        *,
        request_id: str,
        client_request_id: str | None,
        model: ModelRef,
        input_name: str,
        datatype: str,
        x_sent: np.ndarray,
        x_model: np.ndarray,
        scale: int,
        outputs: list[tuple[str, str, np.ndarray]],  # (name, datatype, array)
        label: int | list[int],
        device: str,
    ) -> Receipt:
        # the digest covers the tensor as sent; the commitment, the values the model saw
        commitment = "0x" + input_commitment(quantize(x_model, scale)).hex()
        inp = InputRef.model_construct(
            name=input_name,
            datatype=datatype,
            shape=x_sent.shape,
            digest=tensor_digest(x_sent, datatype),
            scale=scale,
            commitment=commitment,
        )
        outs = tuple(
            OutputTensor.model_construct(
                name=n, datatype=dt, shape=a.shape, digest=tensor_digest(a, dt), data=a.ravel().tolist()
            )
            for n, dt, a in outputs
        )
        predicate = Predicate.model_construct(
            requestId=request_id,
            clientRequestId=client_request_id,
            model=model,
            input=inp,
            outputs=outs,
            label=label,
            time=datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            device=device,
            keyId=self.keys.kid,
        )
        statement = Statement(subject=make_subjects(model, inp, outs), predicate=predicate)
        envelope = sign_envelope(statement, self.keys.kid, self.keys.ed25519.sign)
        eip = None
        if isinstance(label, int):  # one sample: something a contract can check
            answer = Classification(
                modelId="0x" + model.sha256,
                inputCommitment=commitment,
                label=label,
                requestId=request_id,
                deadline=int(time.time()) + self.ttl,
            )
            digest = signing_digest(self.domain, answer, separator=self._separator)
            eip = EIP712Attestation(
                domain=self.domain,
                message=answer,
                signer=self.keys.eth_address,
                signature=sign_digest(digest, self._eth),
            )
        return Receipt(id=request_id, envelope=envelope, eip712=eip)
