"""Make v2 receipts: each answer's statement a leaf of the receipt log, one checkpoint per batch.

The format is defined, and checked, by :mod:`verifier.receipts_v2` and :mod:`verifier.tlog`;
this module produces it on every answer's path, so it writes each statement's RFC 8785 bytes
from a template (keys in sorted order, values by :mod:`server.receipts.jcs`) instead of
building pydantic models; ``tests/server/test_log_inprocess.py`` checks the bytes against
``StatementV2(...).canonical_bytes()`` (the ``rfc8785`` package). The only signatures are one
Ed25519 checkpoint signature per batch and, when a request asks (``parameters.eip712``), that
answer's EIP-712 signature.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

from server.inference.oip import json_text_literal
from server.receipts.jcs import jcs_number_rows, jcs_string
from server.receipts.keys import KeyRing, LiveKeys
from server.receipts.signer import (
    REQUEST_ID,
    BatchJob,
    ModelInfo,
    _ed25519_signer,
    new_request_ids,
)
from server.receipts.translog import LogWriter
from server.settings import ServerSettings
from verifier.digests import keccak, shape_json
from verifier.eip712 import (
    CLASSIFICATION_TYPEHASH,
    Domain,
    domain_separator,
    sign_digest,
    signing_key,
)
from verifier.errors import InputError
from verifier.fixedpoint import input_commitments
from verifier.receipts import STATEMENT_TYPE
from verifier.receipts_v2 import PREDICATE_V2_TYPE, RECEIPT_V2_FORMAT
from verifier.tensors import tensor_digest, tensor_digests
from verifier.tlog import note_verifier_key, signature_line

_sha256 = hashlib.sha256


class LogReceipts:
    """Holds the keys and the log writer; turns batches of answers into v2 receipt texts."""

    def __init__(self, keys: KeyRing, settings: ServerSettings, live: LiveKeys | None = None) -> None:
        """``live``: follow the data dir's keys (a rotation or revocation while the server
        runs): each group's checkpoint is signed with the key active then."""
        self.live = live
        self.ttl = settings.answer_ttl_s
        self.domain = Domain(chainId=settings.chain_id, verifyingContract=settings.verifying_contract)
        self._domain_json = self.domain.model_dump_json()
        self._prefix = b"\x19\x01" + domain_separator(self.domain)
        self._eth_address: str | None = None  # whose key self._eth is
        self._use(keys)
        self.log = LogWriter(settings.log_path, settings.log_origin,
                             lambda name, body: signature_line(name, self.keys.ed25519, body, self._ed),
                             fsync=settings.log_fsync)
        self._models: dict[ModelInfo, tuple] = {}

    def _use(self, keys: KeyRing) -> None:
        if keys.eth_address != self._eth_address:
            d = self.domain  # the statements name the EIP-712 signer: after `keys rotate --eip712`, the new one
            self._eip712_ref = (f'{{"domain":{{"chainId":{d.chainId},"name":{jcs_string(d.name)},'
                                f'"verifyingContract":{jcs_string(d.verifyingContract)},'
                                f'"version":{jcs_string(d.version)}}},"signer":{jcs_string(keys.eth_address)}}}')
            self._eth, self._eth_address = signing_key(keys.eth_key), keys.eth_address
        self.keys = keys
        self._ed = _ed25519_signer(keys)

    def refresh_keys(self) -> bool:
        """Sign with the data dir's active keys from now on (``verinfer keys rotate``, ``rotate
        --eip712`` or ``revoke`` ran): before each group's statements, which name the EIP-712
        signer, and its checkpoint; True when they changed."""
        if self.live is not None and (keys := self.live.current()) is not self.keys:
            self._use(keys)
            return True
        return False

    def follow_keys(self) -> None:
        """The writer, when idle: a key that changed signs the log's head now, answers or not."""
        if self.refresh_keys():
            self.log.sign_head()

    @property
    def note_key(self) -> str:
        """The note verifier key of the key that signs the log's checkpoints now."""
        return note_verifier_key(self.log.origin, self.keys.ed25519.public_key())

    def _model_parts(self, model: ModelInfo) -> tuple:
        parts = self._models.get(model)
        if parts is None:
            parts = (
                f'{{"name":{jcs_string(model.name)},"sha256":"{model.sha256}","version":{jcs_string(model.version)}}}',
                f'{{"digest":{{"sha256":"{model.sha256}"}},"name":{jcs_string("model/" + model.name)}}}',
                jcs_string(model.input_name),
                jcs_string("input/" + model.input_name),
                [(jcs_string(n), jcs_string(dt), jcs_string("output/" + n)) for n, dt in model.outputs],
                jcs_string(model.device),
            )
            self._models[model] = parts
        return parts

    def statements(self, model: ModelInfo, job: BatchJob) -> tuple[list[bytes], list[dict[str, str]], list[str]]:
        """Each answer's statement bytes, its outputs' data as JSON (for the response) and its
        EIP-712 attestation JSON (``null`` unless asked for and one sample)."""
        if job.request_ids is None:
            job.request_ids = new_request_ids(len(job.rows))
        now = datetime.fromtimestamp(job.time, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        deadline = int(job.time) + self.ttl
        model_json, model_subject, input_name, input_subject, output_names, device = self._model_parts(model)
        rows = job.rows
        commitments = input_commitments(job.x_model, model.scale, rows)
        # whole-batch digests and JSON, cut per answer: one conversion, not one per answer
        if all(x is None for x in job.x_sent) and len(set(job.datatypes)) == 1:
            input_digests = tensor_digests(job.x_model, job.datatypes[0], rows)
        else:  # some request sent another datatype than the model's: digest what it sent
            input_digests, start = [], 0
            for n, x, dt in zip(rows, job.x_sent, job.datatypes):
                input_digests.append(tensor_digest(job.x_model[start : start + n] if x is None else x, dt))
                start += n
        per_output = [(name_j, dt_j, subject_j, tensor_digests(a, dt, rows), jcs_number_rows(a, rows), a.shape[1:])
                      for (name_j, dt_j, subject_j), (name, dt) in zip(output_names, model.outputs)
                      for a in (job.outputs[name],)]
        eip_asked = job.eip712 or [False] * len(rows)
        stmts, texts_all, eips, start = [], [], [], 0
        for i, n in enumerate(rows):
            rid, datatype = job.request_ids[i], job.datatypes[i]
            if not REQUEST_ID.fullmatch(rid):
                raise InputError(f"bad request id {rid!r}")  # it goes into the JSON unescaped
            x_sent = job.x_sent[i]
            in_shape = shape_json(x_sent.shape) if x_sent is not None else shape_json((n, *job.x_model.shape[1:]))
            label = job.labels[i]
            commitment_raw = commitments[i]
            commitment = "0x" + commitment_raw.hex()
            input_digest = input_digests[i]
            outputs, subjects, texts = [], [], {}
            for (name_j, dt_j, subject_j, digests, datas, tail), (name, _) in zip(per_output, model.outputs):
                digest, texts[name] = digests[i], datas[i]
                outputs.append(f'{{"data":{datas[i]},"datatype":{dt_j},"digest":"{digest}",'
                               f'"name":{name_j},"shape":{shape_json((n, *tail))}}}')
                subjects.append(f'{{"digest":{{"sha256":"{digest}"}},"name":{subject_j}}}')
            start += n
            texts_all.append(texts)
            client = job.client_ids[i]
            one = isinstance(label, int)
            eip = "null"
            if eip_asked[i] and one:  # one sample: something a contract can check
                struct = keccak(CLASSIFICATION_TYPEHASH + bytes.fromhex(model.sha256) + commitment_raw
                                + label.to_bytes(32, "big") + bytes.fromhex(rid[2:]) + deadline.to_bytes(32, "big"))
                signature = sign_digest(keccak(self._prefix + struct), self._eth)
                eip = (f'{{"domain":{self._domain_json},"message":{{"modelId":"0x{model.sha256}",'
                       f'"inputCommitment":"{commitment}","label":{label},"requestId":"{rid}",'
                       f'"deadline":{deadline}}},"signer":"{self.keys.eth_address}","signature":"{signature}"}}')
            eips.append(eip)
            label_j = str(label) if one else "[" + ",".join(map(str, label)) + "]"
            stmts.append((
                f'{{"_type":"{STATEMENT_TYPE}","predicate":{{"clientRequestId":{"null" if client is None else jcs_string(client)},'
                f'"device":{device},"eip712":{self._eip712_ref if eip != "null" else "null"},'
                f'"input":{{"commitment":"{commitment}","datatype":{jcs_string(datatype)},"digest":"{input_digest}",'
                f'"name":{input_name},"scale":{model.scale},"shape":{in_shape}}},'
                f'"label":{label_j},"model":{model_json},"outputs":[{",".join(outputs)}],'
                f'"requestId":"{rid}","time":"{now}"}},"predicateType":"{PREDICATE_V2_TYPE}","subject":['
                f'{model_subject},{{"digest":{{"sha256":"{input_digest}"}},"name":{input_subject}}},'
                f'{",".join(subjects)}]}}'
            ).encode())
        return stmts, texts_all, eips

    def log_batch(self, request_ids: list[str], stmts: list[bytes], eips: list[str]) -> list[tuple[str, str]]:
        """Append the statements to the log (durably), sign one checkpoint. Per answer: the
        receipt's JSON text (stored) and the same text as a JSON string literal (the response's
        ``parameters.receipt``), both written here from their parts: escaping a 2.6 KB receipt
        afterwards cost more than the rest of its response."""
        first = self.log.size
        note, proof = self.log.append([_sha256(b"\x00" + s).digest() for s in stmts])
        note_j = jcs_string(note)
        note_lit = json_text_literal(note_j)[1:-1]
        b64 = base64.b64encode
        texts: dict[bytes, tuple[str, str]] = {}  # a batch's proofs share most of their hashes
        out = []
        for j, (rid, s, eip) in enumerate(zip(request_ids, stmts, eips)):
            hashes = proof(first + j)
            for h in hashes:
                if h not in texts:
                    h64 = b64(h).decode()
                    texts[h] = (f'"{h64}"', f'\\"{h64}\\"')
            path = ",".join([texts[h][0] for h in hashes])
            path_lit = ",".join([texts[h][1] for h in hashes])
            statement = b64(s).decode()
            eip_lit = eip if eip == "null" else json_text_literal(eip)[1:-1]
            # Every value here is hex, base64, a number or JSON we made: only the note and the
            # EIP-712 part have characters to escape in the literal.
            out.append((
                f'{{"format":"{RECEIPT_V2_FORMAT}","id":"{rid}","statement":"{statement}",'
                f'"index":{first + j},"proof":[{path}],"checkpoint":{note_j},"eip712":{eip}}}',
                f'"{{\\"format\\":\\"{RECEIPT_V2_FORMAT}\\",\\"id\\":\\"{rid}\\",\\"statement\\":\\"{statement}\\",'
                f'\\"index\\":{first + j},\\"proof\\":[{path_lit}],\\"checkpoint\\":{note_lit},\\"eip712\\":{eip_lit}}}"',
            ))
        return out
