"""A tamper corpus: valid receipts and bundles, and tampered variants of each kind.

Given proven bundles (from ``verinfer prove`` or :class:`prover.proving.Prover`) and
their circuit package, :func:`write_corpus` signs a receipt for each (with keys
made for the occasion; only public keys are written) and writes::

    OUT/corpus.json         index: item path -> the outcome an audit must give
    OUT/jwks.json           the trusted public key(s)
    OUT/receipts/*.json     one receipt per file; valid.jsonl holds several
    OUT/bundles/<v>/bundle.json

Receipts are signed with :func:`verifier.receipts.sign_envelope`, i.e. over
:func:`verifier.receipts.pae`: the one byte form the server signs, not a
second implementation. Each variant is named after what was done to it, and
``corpus.json`` gives the error class an audit must report (``ok`` for the
valid ones; ``InputError`` for unreadable items, exit code 2).

Used by ``tests/golden_corpus.py`` (the golden set, built once per test session),
the tests (the full corpus) and ``bench/audit.py``; not part of the trust root.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier.bundle import ProofBundle
from verifier.eip712 import Classification, Domain, EIP712Attestation, sign_digest, signing_digest
from verifier.fixedpoint import input_commitment, quantize
from verifier.keys import ed25519_jwk
from verifier.manifest import Manifest
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

CORPUS_FORMAT = "verinfer.corpus/v1"
CORPUS_DOMAIN = Domain(chainId=31337, verifyingContract="0x5FbDB2315678afecb367f032d93F642f64180aa3")


@dataclass
class Signer:
    """Throwaway signing keys (never written): Ed25519 for the envelope, secp256k1 for EIP-712."""

    ed25519: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    eth_key: bytes = field(default_factory=lambda: os.urandom(32))

    @property
    def jwk(self) -> dict[str, str]:
        return ed25519_jwk(self.ed25519.public_key())

    @property
    def kid(self) -> str:
        return self.jwk["kid"]

    @property
    def eth_address(self) -> str:
        from eth_keys import keys as eth_keys
        from eth_utils import to_checksum_address

        return to_checksum_address(eth_keys.PrivateKey(self.eth_key).public_key.to_canonical_address())


def sign_receipt(
    bundle: ProofBundle,
    manifest: Manifest,
    signer: Signer,
    *,
    label: int | None = None,
    model_sha256: str | None = None,
    kid: str | None = None,
    request_id: str | None = None,
) -> Receipt:
    """A receipt for the bundle's input and label, as the server would sign it.

    The keyword arguments make lies that carry a good signature: another label,
    another model digest, or another key id than the signing key's.
    """
    x = bundle.input.array()
    label = bundle.outputs.label if label is None else label
    request_id = request_id or "0x" + os.urandom(32).hex()
    model = ModelRef(name=manifest.name, version="1", sha256=model_sha256 or manifest.model_sha256)
    commitment = "0x" + input_commitment(quantize(x, manifest.input.scale)).hex()
    inp = InputRef(name=bundle.input.name, datatype=bundle.input.datatype, shape=x.shape,
                   digest=tensor_digest(x, bundle.input.datatype), scale=manifest.input.scale,
                   commitment=commitment)
    outputs = []
    for spec in manifest.outputs:
        if spec.name == manifest.outputs[manifest.label_output].name:
            arr = np.asarray([label], dtype=np.int64).reshape(spec.shape)
        else:
            arr = np.asarray(bundle.outputs.logits, dtype=np.float32).reshape(spec.shape)
        outputs.append(OutputTensor(name=spec.name, datatype=spec.datatype, shape=arr.shape,
                                    digest=tensor_digest(arr, spec.datatype),
                                    data=arr.ravel().tolist()))
    outs = tuple(outputs)
    kid = kid or signer.kid
    predicate = Predicate(
        requestId=request_id, model=model, input=inp, outputs=outs, label=label,
        time=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        device="cpu", keyId=kid)
    statement = Statement(subject=make_subjects(model, inp, outs), predicate=predicate)
    envelope = sign_envelope(statement, kid, signer.ed25519.sign)
    answer = Classification(modelId="0x" + model.sha256, inputCommitment=commitment, label=label,
                            requestId=request_id, deadline=2**40)
    eip = EIP712Attestation(domain=CORPUS_DOMAIN, message=answer, signer=signer.eth_address,
                            signature=sign_digest(signing_digest(CORPUS_DOMAIN, answer),
                                                  signer.eth_key))
    return Receipt(id=request_id, envelope=envelope, eip712=eip)


# --- tampering -------------------------------------------------------------------------


def flip_b64_bit(text: str, byte: int = 10, bit: int = 0) -> str:
    """Flip one bit of the bytes a base64 string encodes (stays valid base64)."""
    raw = bytearray(base64.b64decode(text))
    raw[byte % len(raw)] ^= 1 << bit
    return base64.b64encode(bytes(raw)).decode()


def flip_hex_bit(text: str, nibble: int = 0) -> str:
    prefix = "0x" if text.startswith("0x") else ""
    body = text[len(prefix):]
    i = nibble % len(body)
    return prefix + body[:i] + format(int(body[i], 16) ^ 1, "x") + body[i + 1:]


def receipt_variants(good: Receipt, bundle: ProofBundle, manifest: Manifest,
                     signer: Signer) -> dict[str, tuple[Any, str]]:
    """name -> (receipt as dict, or raw text for unreadable ones; expected outcome)."""
    d = good.model_dump(mode="json")
    out: dict[str, tuple[Any, str]] = {"valid": (d, "ok")}

    v = copy.deepcopy(d)
    v["envelope"]["signatures"][0]["sig"] = flip_b64_bit(v["envelope"]["signatures"][0]["sig"])
    out["sig-bitflip"] = (v, "SignatureInvalid")

    v = copy.deepcopy(d)
    v["envelope"]["payload"] = flip_b64_bit(v["envelope"]["payload"], byte=200, bit=1)
    out["payload-bitflip"] = (v, "SignatureInvalid")

    v = copy.deepcopy(d)
    v["eip712"]["signature"] = flip_hex_bit(v["eip712"]["signature"], nibble=7)
    out["eip712-sig-bitflip"] = (v, "SignatureInvalid")

    stranger = Signer()
    out["swapped-key"] = (sign_receipt(bundle, manifest, stranger).model_dump(mode="json"),
                          "KeyUnknown")
    out["forged-kid"] = (sign_receipt(bundle, manifest, stranger, kid=signer.kid)
                         .model_dump(mode="json"), "SignatureInvalid")
    out["swapped-model"] = (sign_receipt(bundle, manifest, signer, model_sha256="ab" * 32)
                            .model_dump(mode="json"), "DigestMismatch")

    v = copy.deepcopy(d)  # the EIP-712 part signs another label than the envelope
    other = (bundle.outputs.label + 1) % 3
    msg = Classification(**{**v["eip712"]["message"], "label": other})
    v["eip712"]["message"] = msg.model_dump(mode="json")
    v["eip712"]["signature"] = sign_digest(signing_digest(CORPUS_DOMAIN, msg), signer.eth_key)
    out["eip712-label-differs"] = (v, "LinkBroken")

    text = json.dumps(d)
    out["truncated"] = (text[: len(text) // 2], "InputError")
    v = copy.deepcopy(d)
    v["id"] = "not-a-request-id"
    out["malformed"] = (v, "InputError")
    return out


def _flip_proof(raw: dict) -> None:
    raw["proof"]["proof"][100] ^= 0x80
    hp = raw["proof"]["hex_proof"]
    i = 2 + 2 * 100
    raw["proof"]["hex_proof"] = hp[:i] + format(int(hp[i:i + 2], 16) ^ 0x80, "02x") + hp[i + 2:]


def bundle_variants(bundles: list[ProofBundle], manifest: Manifest, signer: Signer, *,
                    other_package: Manifest | None = None, golden: bool = False
                    ) -> dict[str, tuple[Any, str]]:
    """name -> (bundle as dict, or raw text; expected outcome). Needs two bundles with
    different inputs for ``input-of-other-receipt``. ``golden`` keeps a small subset."""
    a = bundles[0]
    receipt_a = sign_receipt(a, manifest, signer).model_dump(mode="json")
    signed = a.model_dump(mode="json") | {"receipt": receipt_a}
    out: dict[str, tuple[Any, str]] = {"valid-signed": (signed, "ok")}
    for i, b in enumerate(bundles[1:], 1):
        out[f"valid-signed-{i}"] = (b.model_dump(mode="json") | {
            "receipt": sign_receipt(b, manifest, signer).model_dump(mode="json")}, "ok")
    out["valid-unsigned"] = (a.model_dump(mode="json"), "ok")

    v = copy.deepcopy(signed)
    _flip_proof(v)
    out["proof-bitflip"] = (v, "ProofInvalid")
    # each of EZKL's two encodings of the proof bytes flipped alone: off chain EZKL reads
    # 'proof', a contract gets 'hex_proof'; a bundle whose two differ is refused
    v = copy.deepcopy(signed)
    v["proof"]["hex_proof"] = flip_hex_bit(v["proof"]["hex_proof"], nibble=200)
    out["hex-proof-bitflip"] = (v, "ProofInvalid")

    v = copy.deepcopy(signed)
    v["receipt"] = sign_receipt(a, manifest, signer, label=(a.outputs.label + 1) % 3
                                ).model_dump(mode="json")
    out["label-differs"] = (v, "LinkBroken")

    text = json.dumps(signed)
    out["truncated"] = (text[: len(text) // 3], "InputError")
    if golden:
        return out

    v = copy.deepcopy(signed)  # one public instance flipped in the proof only
    v["proof"]["instances"][0][0] = flip_hex_bit(v["proof"]["instances"][0][0], nibble=0)
    out["instances-bitflip"] = (v, "LinkBroken")

    # a forged logit, consistent everywhere the bundle states it: only the proof catches it
    v = copy.deepcopy(signed)
    n_in = 1
    for dim in manifest.input.shape:
        n_in *= dim
    j = n_in if manifest.input_visibility == "public" else 1
    forged = flip_hex_bit(v["instances"][0][j], nibble=0)
    v["instances"][0][j] = v["proof"]["instances"][0][j] = forged
    from verifier.proofs import felt_be_hex, felt_hex_to_int, rescaled_text

    scale = manifest.outputs[0].scale or 0
    v["outputs"]["logits"][0] = felt_hex_to_int(forged) / 2**scale
    pretty = v["proof"]["pretty_public_inputs"]  # EZKL's readable copy says it too
    pretty["outputs"][0][0], pretty["rescaled_outputs"][0][0] = felt_be_hex(forged), rescaled_text(forged, scale)
    out["instances-forged-logit"] = (v, "ProofInvalid")

    for name, (r, kind) in receipt_variants(Receipt.parse(receipt_a), a, manifest, signer).items():
        if name in ("valid", "truncated", "malformed"):
            continue
        v = copy.deepcopy(signed)
        v["receipt"] = r
        out[f"receipt-{name}"] = (v, kind)

    v = copy.deepcopy(signed)
    v["model"]["model_sha256"] = "ab" * 32
    out["swapped-model-ref"] = (v, "LinkBroken")
    if other_package is not None:
        v = copy.deepcopy(signed)
        v["model"] = {"name": other_package.name, "package_id": other_package.package_id,
                      "model_sha256": other_package.model_sha256}
        v["receipt"] = sign_receipt(a, other_package, signer).model_dump(mode="json")
        # another circuit: its vk rejects the proof; with another input visibility
        # (public vs hashed) the instances already disagree with its layout
        same_layout = other_package.input_visibility == manifest.input_visibility
        out["swapped-package"] = (v, "ProofInvalid" if same_layout else "LinkBroken")

    if len(bundles) > 1:
        b = next((b for b in bundles[1:] if b.input.data != a.input.data), None)
        if b is not None:
            v = copy.deepcopy(signed)
            v["receipt"] = sign_receipt(b, manifest, signer).model_dump(mode="json")
            out["input-of-other-receipt"] = (v, "LinkBroken")

    v = copy.deepcopy(signed)
    del v["proof"]
    out["malformed"] = (v, "InputError")
    return out


def write_corpus(out: Path, bundles: list[ProofBundle], manifest: Manifest, *,
                 signer: Signer | None = None, other_package: Manifest | None = None,
                 golden: bool = False, extra_valid_receipts: int = 3) -> dict[str, Any]:
    """Write the corpus under ``out`` (see the module doc); returns the index."""
    out = Path(out)
    signer = signer or Signer()
    (out / "receipts").mkdir(parents=True, exist_ok=True)
    (out / "bundles").mkdir(parents=True, exist_ok=True)
    items: dict[str, str] = {}

    good = sign_receipt(bundles[0], manifest, signer)
    for name, (r, kind) in receipt_variants(good, bundles[0], manifest, signer).items():
        rel = f"receipts/{name}.json"
        (out / rel).write_text(r if isinstance(r, str) else json.dumps(r))
        items[rel] = kind
    lines = [sign_receipt(bundles[i % len(bundles)], manifest, signer).model_dump_json()
             for i in range(extra_valid_receipts)]
    (out / "receipts" / "valid.jsonl").write_text("\n".join(lines) + "\n")
    for n in range(1, extra_valid_receipts + 1):
        items[f"receipts/valid.jsonl:{n}"] = "ok"

    for name, (b, kind) in bundle_variants(bundles, manifest, signer, golden=golden,
                                           other_package=other_package).items():
        folder = out / "bundles" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "bundle.json").write_text(b if isinstance(b, str) else json.dumps(b))
        items[f"bundles/{name}"] = kind

    index = {"format": CORPUS_FORMAT, "eth_signer": signer.eth_address,
             "items": dict(sorted(items.items()))}
    (out / "jwks.json").write_text(json.dumps({"keys": [signer.jwk]}, indent=1) + "\n")
    (out / "corpus.json").write_text(json.dumps(index, indent=1) + "\n")
    return index
