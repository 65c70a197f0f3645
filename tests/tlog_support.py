"""Build v2 receipts without a server: a statement (pydantic + rfc8785), a log in memory,
a checkpoint signed by a key the test generates."""

from __future__ import annotations

import base64
import os

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier.fixedpoint import input_commitments
from verifier.keys import ed25519_jwk
from verifier.receipts import InputRef, ModelRef, OutputTensor, make_subjects
from verifier.receipts_v2 import PredicateV2, ReceiptV2, StatementV2
from verifier.tensors import tensor_digest
from verifier.tlog import MemoryTree, checkpoint_body, sign_note

ORIGIN = "verinfer.test/log"


def statement(request_id: str | None = None, logits: list[float] | None = None) -> StatementV2:
    x = np.asarray([[0.5, -1.25, 3.0, 0.125]], dtype=np.float32)
    y = np.asarray([logits or [0.1, 2.5, -0.3]], dtype=np.float32)
    model = ModelRef(name="iris_mlp", version="1", sha256="ab" * 32)
    commitment = "0x" + input_commitments(x, 7, [1])[0].hex()
    inp = InputRef(name="input", datatype="FP32", shape=(1, 4), digest=tensor_digest(x, "FP32"),
                   scale=7, commitment=commitment)
    out = OutputTensor(name="logits", datatype="FP32", shape=(1, 3), digest=tensor_digest(y, "FP32"),
                       data=[float(v) for v in y.ravel()])
    rid = request_id or "0x" + os.urandom(32).hex()
    pred = PredicateV2(requestId=rid, model=model, input=inp, outputs=(out,), label=int(y.argmax()),
                       time="2026-11-30T20:00:00.000Z", device="cpu")
    return StatementV2(subject=make_subjects(model, inp, (out,)), predicate=pred)


class MemLog:
    """A log in memory with a generated key: receipts and checkpoints as the server makes them."""

    def __init__(self, origin: str = ORIGIN, key: Ed25519PrivateKey | None = None, fill: int = 5) -> None:
        self.origin = origin
        self.key = key or Ed25519PrivateKey.generate()
        self.jwks = {"keys": [ed25519_jwk(self.key.public_key())]}
        self.tree = MemoryTree()
        for _ in range(fill):  # other answers before ours
            self.tree.append(os.urandom(40))

    def checkpoint(self, size: int | None = None) -> str:
        size = self.tree.size if size is None else size
        return sign_note(checkpoint_body(self.origin, size, self.tree.root(size)), self.origin, self.key).decode()

    def add(self, st: StatementV2, after: int = 3, data: bytes | None = None) -> ReceiptV2:
        """Log ``st`` (as ``data`` when given: other bytes for it), then ``after`` more leaves;
        the receipt is for the whole tree."""
        data = st.canonical_bytes() if data is None else data
        index = self.tree.append(data)
        for _ in range(after):
            self.tree.append(os.urandom(40))
        return ReceiptV2(id=st.predicate.requestId, statement=base64.b64encode(data).decode(), index=index,
                         proof=tuple(base64.b64encode(h).decode() for h in self.tree.inclusion(index)),
                         checkpoint=self.checkpoint())


def doc_block(tag: str) -> str:
    """The fenced block of docs/formats.md whose info string ends with ``tag``."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "formats.md").read_text()
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("```") and line.endswith(tag))
    end = next(i for i in range(start + 1, len(lines)) if lines[i] == "```")
    return "\n".join(lines[start + 1 : end]) + "\n"


def doc_recipe():
    """``check_receipt`` from the standalone recipe in docs/formats.md."""
    scope: dict = {}
    exec(compile(doc_block("recipe"), "docs/formats.md#recipe", "exec"), scope)
    return scope["check_receipt"]


def check_history(get, jwks: dict, receipts: list) -> int:
    """Every receipt verifies and every checkpoint it carries is consistent with the server's
    latest (``get(path)``: the server's JSON or text); returns how many checkpoints were checked."""
    from verifier.receipts_v2 import ReceiptV2, note_verifiers, verify_receipt_v2
    from verifier.tlog import verify_checkpoint, verify_consistency

    latest_note = get("/v1/log/checkpoint")
    origin = latest_note.split("\n", 1)[0]
    latest = verify_checkpoint(latest_note, note_verifiers(jwks, origin), origin)
    notes = set()
    for r in receipts:
        r = ReceiptV2.parse(r)
        verify_receipt_v2(r, jwks, origin=origin)
        notes.add(r.checkpoint)
    for note in notes:
        cp = verify_checkpoint(note, note_verifiers(jwks, origin), origin)
        proof = get(f"/v1/log/proof/consistency?from={cp.size}&to={latest.size}")["proof"]
        verify_consistency(cp.size, latest.size, cp.root, latest.root, [base64.b64decode(h) for h in proof])
    return len(notes)
