"""Make receipts: an in-toto statement in a DSSE envelope (Ed25519) plus an EIP-712 signature.

The format is defined, and checked, by :mod:`verifier.receipts` and :mod:`verifier.eip712`;
this module only produces it, on every answer's path, so it writes the statement's canonical
JSON from a template instead of building pydantic models (about 3x cheaper, docs/performance.md;
``tests/server/test_signer.py`` checks the bytes against the pydantic models). The
tensor digest, the fixed-point commitment and the EIP-712 struct are the verifier's own
definitions: one definition to sign and to verify.
"""

from __future__ import annotations

import base64
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from server.receipts.keys import KeyRing
from server.settings import ServerSettings
from verifier.digests import canonical_text, compact_json, numbers_json, shape_json
from verifier.eip712 import (
    Domain,
    classification_hash,
    domain_separator,
    sign_digest,
    signing_key,
    typed_digest,
)
from verifier.errors import InputError
from verifier.fixedpoint import input_commitments
from verifier.receipts import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    RECEIPT_FORMAT,
    STATEMENT_TYPE,
    ModelRef,
    Receipt,
    pae,
)
from verifier.tensors import datatype_of, tensor_digest

if TYPE_CHECKING:
    from server.inference.oip import OutputChoice

REQUEST_ID = re.compile(r"0x[0-9a-f]{64}")


def new_request_id() -> str:
    """A receipt id, also the EIP-712 ``requestId``: 32 bytes as 0x-hex, the time in
    nanoseconds (8 bytes, big-endian) then 24 random bytes. Unique by its random part;
    ordered by time, so the receipt store's id indexes grow at their end: random ids
    dirtied ~2x the pages per commit, and the store cost ~2x the CPU (docs/performance.md)."""
    return new_request_ids(1)[0]


def new_request_ids(n: int) -> list[str]:
    """``n`` of :func:`new_request_id`'s ids at once (one clock read, one ``urandom``)."""
    now = "0x" + time.time_ns().to_bytes(8, "big").hex()
    rnd = os.urandom(24 * n).hex()
    return [now + rnd[48 * i : 48 * i + 48] for i in range(n)]


@dataclass(frozen=True)
class ModelInfo:
    """What a receipt says about the model (picklable: sent once to the receipt worker)."""

    name: str
    version: str
    sha256: str  # of model.onnx
    input_name: str
    input_datatype: str  # what the model runs on
    scale: int  # fixed-point scale of the input commitment
    outputs: tuple[tuple[str, str], ...]  # (name, OIP datatype), in the model's order
    device: str

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.name, version=self.version, sha256=self.sha256)


@dataclass
class BatchJob:
    """One batch's answers to sign. Row ``rows[i]`` samples of the outputs belong to answer i."""

    model: str
    request_ids: list[str] | None  # None: the signer makes them (new_request_ids)
    client_ids: list[str | None]
    wanted: list[OutputChoice | None]  # the outputs each request asked for (None: all, as JSON)
    datatypes: list[str]  # each request's input datatype as sent
    x_sent: list[np.ndarray | None]  # as sent, what the input digest covers (None: = x_model's rows)
    x_model: np.ndarray  # the batch's input as the model saw it: what the commitments cover
    outputs: dict[str, np.ndarray]  # the whole batch's outputs
    rows: list[int]
    labels: list[int | list[int]]
    time: float = field(default_factory=time.time)
    eip712: list[bool] | None = None  # per answer: attach an EIP-712 signature (v2 receipts)


# One value in canonical JSON, as ``verifier.digests.canonical_json`` writes it
_j = canonical_text


def _ed25519_signer(keys: KeyRing):
    """``sign(message) -> 64 bytes``: libsodium (PyNaCl) when installed, ~30% faster than
    OpenSSL here; Ed25519 is deterministic, so both give the same bytes (tested)."""
    try:
        from nacl.bindings import crypto_sign, crypto_sign_seed_keypair
    except ImportError:  # pragma: no cover - the serve extra installs PyNaCl
        return keys.ed25519.sign
    from cryptography.hazmat.primitives import serialization

    seed = keys.ed25519.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                      serialization.NoEncryption())
    _, secret = crypto_sign_seed_keypair(seed)
    return lambda message: crypto_sign(message, secret)[:64]


class ReceiptSigner:
    """Holds the private keys; turns answers into receipt JSON strings.

    The statement's canonical JSON is written from a template with its keys in sorted
    order and each value encoded by :func:`_j`; ``tests/server/test_signer.py`` checks it
    byte for byte against ``Statement(...).canonical_bytes()`` (the pydantic model),
    including non-ASCII and quoted names, client ids and multi-sample answers.
    """

    def __init__(self, keys: KeyRing, settings: ServerSettings) -> None:
        self.keys = keys
        self.kid = keys.kid
        self.ttl = settings.answer_ttl_s
        self.domain = Domain(chainId=settings.chain_id, verifyingContract=settings.verifying_contract)
        self._domain_json = compact_json(self.domain.model_dump()).decode()
        self._separator = domain_separator(self.domain)
        self._ed = _ed25519_signer(keys)
        self._eth = signing_key(keys.eth_key)  # made once: deriving the public key costs
        self._models: dict[ModelInfo, tuple] = {}

    def _model_parts(self, model: ModelInfo) -> tuple:
        """Per-model pieces of the statement, encoded once."""
        parts = self._models.get(model)
        if parts is None:
            parts = (
                _j({"name": model.name, "sha256": model.sha256, "version": model.version}),
                _j({"digest": {"sha256": model.sha256}, "name": f"model/{model.name}"}),
                _j(model.input_name),
                _j(f"input/{model.input_name}"),
                [(_j(name), _j(dt), _j(f"output/{name}")) for name, dt in model.outputs],
                _j(model.device),
                _j(self.kid),
            )
            self._models[model] = parts
        return parts

    def sign_batch(self, model: ModelInfo, job: BatchJob,
                   data_json: list[dict[str, str]] | None = None) -> list[str]:
        """One receipt (JSON text, as stored) per answer of ``job``. Given ``data_json``, also
        appends each answer's ``{output name: its data as JSON}``, as the statement has it: the
        response shows the same numbers, written once (``outputs_json(..., data_json=...)``)."""
        if job.request_ids is None:
            job.request_ids = new_request_ids(len(job.rows))
        now = datetime.fromtimestamp(job.time, UTC).isoformat(timespec="milliseconds")
        now = _j(now.replace("+00:00", "Z"))
        deadline = int(job.time) + self.ttl
        model_json, model_subject, input_name, input_subject, output_names, device, kid = self._model_parts(model)
        model_id = bytes.fromhex(model.sha256)
        # the commitments cover the values the model saw; quantized once for the whole job
        commitments = input_commitments(job.x_model, model.scale, job.rows)
        out, start = [], 0
        for i, n in enumerate(job.rows):
            rid, datatype = job.request_ids[i], job.datatypes[i]
            if not REQUEST_ID.fullmatch(rid):  # it goes into the JSON unescaped
                raise InputError(f"bad request id {rid!r}")
            x_model = job.x_model[start : start + n]
            x_sent = job.x_sent[i] if job.x_sent[i] is not None else x_model
            label = job.labels[i]
            # the digest covers the tensor as sent
            commitment_raw = commitments[i]
            commitment = "0x" + commitment_raw.hex()
            input_digest = tensor_digest(x_sent, datatype)
            outputs, subjects, texts = [], [], {}
            for (name_j, dt_j, subject_j), (name, dt) in zip(output_names, model.outputs):
                a = job.outputs[name][start : start + n]
                digest = tensor_digest(a, dt)
                texts[name] = data = numbers_json(a)
                outputs.append(f'{{"data":{data},"datatype":{dt_j},"digest":"{digest}",'
                               f'"name":{name_j},"shape":{shape_json(a.shape)}}}')
                subjects.append(f'{{"digest":{{"sha256":"{digest}"}},"name":{subject_j}}}')
            start += n
            if data_json is not None:
                data_json.append(texts)
            client = job.client_ids[i]
            payload = (
                f'{{"_type":"{STATEMENT_TYPE}","predicate":{{"clientRequestId":{"null" if client is None else _j(client)},"device":{device},'
                f'"input":{{"commitment":"{commitment}","datatype":{_j(datatype)},"digest":"{input_digest}",'
                f'"name":{input_name},"scale":{model.scale},"shape":{shape_json(x_sent.shape)}}},"keyId":{kid},'
                f'"label":{label if isinstance(label, int) else _j(label)},"model":{model_json},"outputs":[{",".join(outputs)}],'
                f'"requestId":"{rid}","time":{now}}},"predicateType":"{PREDICATE_TYPE}","subject":['
                f'{model_subject},{{"digest":{{"sha256":"{input_digest}"}},"name":{input_subject}}},'
                f'{",".join(subjects)}]}}'
            ).encode()
            sig = self._ed(pae(PAYLOAD_TYPE, payload))
            eip = "null"
            if isinstance(label, int):  # one sample: something a contract can check
                struct = classification_hash(model_id, commitment_raw, label, bytes.fromhex(rid[2:]), deadline)
                signature = sign_digest(typed_digest(self._separator, struct), self._eth)
                eip = (f'{{"domain":{self._domain_json},"message":{{"modelId":"0x{model.sha256}",'
                       f'"inputCommitment":"{commitment}","label":{label},"requestId":"{rid}",'
                       f'"deadline":{deadline}}},"signer":"{self.keys.eth_address}","signature":"{signature}"}}')
            # Every value here is hex, base64 or a number we made: no escaping needed.
            out.append(
                f'{{"format":"{RECEIPT_FORMAT}","id":"{rid}","envelope":{{"payloadType":"{PAYLOAD_TYPE}",'
                f'"payload":"{base64.b64encode(payload).decode()}","signatures":[{{"keyid":"{self.kid}",'
                f'"sig":"{base64.b64encode(sig).decode()}"}}]}},"eip712":{eip}}}'
            )
        return out

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
        """One answer's receipt, parsed (for tools and tests; the server uses :meth:`sign_batch`)."""
        info = ModelInfo(model.name, model.version, model.sha256, input_name, datatype_of(x_model), scale,
                         tuple((n, dt) for n, dt, _ in outputs), device)
        job = BatchJob(model.name, [request_id], [client_request_id], [None], [datatype], [x_sent], x_model,
                       {n: a for n, _, a in outputs}, [int(x_sent.shape[0]) if x_sent.ndim else 1], [label])
        return Receipt.parse(self.sign_batch(info, job)[0])
