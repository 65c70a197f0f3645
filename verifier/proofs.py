"""Proof checks against a circuit package: fail closed, typed errors.

``verify_bundle`` checks, in order: the package's files hash as its manifest
says; the bundle names this package; the proof's public instances are the
bundle's instances; the public input is the bundle's input quantized at the
circuit's scale (``public`` inputs) or the Poseidon hash of those field
elements (``hashed`` inputs); the public outputs are the bundle's logits and
label; and finally that EZKL accepts the proof under the package's vk,
settings and SRS.

``verify_receipt_link`` binds a signed receipt (already checked with
:func:`verifier.receipts.verify_receipt`) to a bundle and its manifest: same
model digest, same input (commitment at the circuit's scale, and the tensor
digest where the datatypes agree), same label. ``verify_signed_bundle`` runs
the whole chain for a bundle that carries a receipt.

This is the only module of ``verifier`` that talks to EZKL.
"""

from __future__ import annotations

import json
import re
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from verifier.bundle import ProofBundle
from verifier.errors import (
    DigestMismatch,
    InputError,
    KeyUnknown,
    LinkBroken,
    ProofInvalid,
)
from verifier.fixedpoint import felt_to_int, input_commitment, int_to_felt, quantize
from verifier.manifest import Manifest
from verifier.receipts import Statement
from verifier.tensors import tensor_digest

VERIFY_ARTIFACTS = ["settings.json", "vk.key", "kzg.srs"]
# an instance as EZKL writes it: 32 bytes, little-endian, lower-case hex
_FELT_HEX = re.compile(r"[0-9a-f]{64}")


def felt_hex_to_int(felt: str) -> int:
    """EZKL writes instances as 32-byte little-endian hex field elements."""
    return felt_to_int(int.from_bytes(bytes.fromhex(felt), "little"))


def int_to_felt_hex(value: int) -> str:
    return int_to_felt(value).to_bytes(32, "little").hex()


def proof_bytes(proof: dict) -> bytes:
    """The proof's bytes. EZKL writes them twice: ``proof`` (a byte list, what its verifier
    reads off chain) and ``hex_proof`` (what goes to a contract). Where both are given they must
    agree, so that what was checked off chain is what a contract gets (:class:`ProofInvalid`)."""
    listed, hex_proof, raw = proof.get("proof"), proof.get("hex_proof"), None
    if isinstance(listed, list):
        try:
            raw = bytes(listed)
        except (TypeError, ValueError):
            raise ProofInvalid("the proof's 'proof' is not a list of bytes") from None
    if isinstance(hex_proof, str):
        try:
            hexed = bytes.fromhex(hex_proof.removeprefix("0x"))
        except ValueError:
            raise ProofInvalid("the proof's 'hex_proof' is not hex") from None
        if raw is not None and hexed != raw:
            raise ProofInvalid("the proof's 'hex_proof' and 'proof' hold different bytes")
        raw = hexed
    if raw is None:
        raise InputError("proof has neither 'hex_proof' nor a 'proof' byte list")
    return raw


def ezkl_verify(proof: dict, settings: Path, vk: Path, srs: Path) -> None:
    """EZKL's own check of ``proof``; raises :class:`ProofInvalid` on any failure (and when
    its two encodings of the proof bytes disagree: :func:`proof_bytes`)."""
    import ezkl

    if isinstance(proof, dict) and "hex_proof" in proof:
        proof_bytes(proof)

    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        f.write(json.dumps(proof))  # one C-encoded write: json.dump streams in tiny pieces
        f.flush()
        try:
            ok = ezkl.verify(f.name, str(settings), str(vk), str(srs))
        except Exception as exc:  # EZKL raises on malformed proofs and wrong keys  # noqa: BLE001
            raise ProofInvalid(f"EZKL rejected the proof: {_first_line(exc)}") from None
    if ok is not True:
        raise ProofInvalid("EZKL rejected the proof")


def load_manifest_checked(package_dir: Path, names: list[str] = VERIFY_ARTIFACTS) -> Manifest:
    """The package's manifest, after checking the named artifacts' hashes (and, with
    ``settings.json`` among them, that the manifest describes the circuit those settings lay out)."""
    from verifier.packages import read_manifest

    manifest = read_manifest(Path(package_dir))  # PackageAltered: not the manifest its id names
    # PackageAltered (exit 1) when an artifact does not hash as recorded; a missing one is
    # unreadable input, a plain PackageError (exit 2), as prove and models show say
    manifest.check_artifacts(Path(package_dir), names)
    if "settings.json" in names:
        check_manifest_settings(manifest, Path(package_dir) / "settings.json")
    return manifest


def check_manifest_settings(manifest: Manifest, settings_path: Path) -> None:
    """The manifest's claims a verifier reads instances by (input and output scales, shapes,
    visibility) are those of the circuit's own settings (which the vk is made from): else a
    package could say scale 14 of a circuit at 13, and a proof of 2x would read as one of x.
    :class:`LinkBroken` when they differ."""
    try:
        s = json.loads(settings_path.read_bytes())
        ra = s["run_args"]
        vis = ra["input_visibility"]
        input_vis = vis.lower() if isinstance(vis, str) else (
            "hashed" if isinstance(vis, dict) and (vis.get("Hashed") or {}).get("hash_is_public") is True
            else repr(vis))
        circuit = {
            "input visibility": input_vis,
            "output visibility": str(ra["output_visibility"]).lower(),
            "parameter visibility": str(ra["param_visibility"]).lower(),
            "input scale": s["model_input_scales"][0],
            "output scales": [int(x) for x in s["model_output_scales"]],
            "instance shapes": [list(x) for x in s["model_instance_shapes"]],
        }
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise LinkBroken(f"{settings_path}: not EZKL circuit settings") from None
    public_input = [list(manifest.input.shape)] if manifest.input_visibility == "public" else []
    claimed = {
        "input visibility": manifest.input_visibility,
        "output visibility": manifest.output_visibility,
        "parameter visibility": manifest.param_visibility,
        "input scale": manifest.input.scale,
        "output scales": [o.scale for o in manifest.outputs],
        "instance shapes": public_input + [list(o.shape) for o in manifest.outputs],
    }
    for what, value in claimed.items():
        if circuit[what] != value:
            raise LinkBroken(f"the manifest's {what} ({value}) is not its circuit's ({circuit[what]}, "
                             "settings.json)")


def verify_bundle(bundle: ProofBundle, package_dir: Path, *,
                  manifest: Manifest | None = None, links_checked: bool = False) -> Manifest:
    """Check ``bundle`` against the circuit package in ``package_dir``; returns its manifest.

    ``manifest``: one already loaded with :func:`load_manifest_checked` for this
    folder (a batch audit hashes each package once, not once per bundle).
    """
    package_dir = Path(package_dir)
    if manifest is None:
        manifest = load_manifest_checked(package_dir)
    if not links_checked:
        check_bundle_links(bundle, manifest)
    ezkl_verify(
        bundle.proof,
        package_dir / "settings.json",
        package_dir / "vk.key",
        package_dir / "kzg.srs",
    )
    return manifest


def check_bundle_links(bundle: ProofBundle, manifest: Manifest) -> None:
    """The bundle's own links: package, model, instances, input, outputs (no EZKL)."""
    if bundle.model.package_id != manifest.package_id:
        raise LinkBroken(
            f"bundle is for package {bundle.model.package_id[:16]}…, "
            f"not {manifest.package_id[:16]}… ({manifest.name})"
        )
    if bundle.model.model_sha256 != manifest.model_sha256:
        raise LinkBroken("bundle's model digest differs from the package's")
    if bundle.model.name != manifest.name:
        raise LinkBroken(f"bundle names model {bundle.model.name!r}, its package is "
                         f"{manifest.name!r}")
    try:
        proof_instances = tuple(tuple(row) for row in bundle.proof["instances"])
    except TypeError:
        raise LinkBroken("proof's instances are not a list of rows") from None
    if proof_instances != bundle.instances:
        raise LinkBroken("bundle's instances differ from the proof's")
    if not all(_FELT_HEX.fullmatch(f) for row in bundle.instances for f in row):
        raise LinkBroken("proof's instances are not field elements as EZKL writes them "
                         "(64 lower-case hex digits)")
    if tuple(bundle.input.shape) != tuple(manifest.input.shape):
        raise LinkBroken(f"bundle's input shape {list(bundle.input.shape)} is not the "
                         f"circuit's {list(manifest.input.shape)}")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # 1e300 as FP32: inf, refused below
            x = bundle.input.array()
        felts = [int_to_felt_hex(q) for q in quantize(x, manifest.input.scale)]
    except (ValueError, InputError) as exc:  # also NaN, infinity, beyond the fixed point
        raise LinkBroken(f"bundle's input does not fit its shape/datatype: {exc}") from None
    flat = [felt for row in bundle.instances for felt in row]
    if manifest.input_visibility == "public":
        if flat[: len(felts)] != felts:
            raise LinkBroken("proof's public input is not the bundle's input")
        rest, hashed = flat[len(felts):], []
    else:  # hashed: the first instance is Poseidon(input felts)
        if not flat or flat[0] != poseidon_felt_hex(felts):
            raise LinkBroken("proof's input hash is not the Poseidon hash of the bundle's input")
        rest, hashed = flat[1:], flat[:1]
    _check_outputs(bundle, manifest, rest)
    _check_pretty(bundle.proof, manifest, felts, hashed, rest)
    if tensor_digest(x, bundle.input.datatype) != bundle.input.digest:
        raise DigestMismatch("bundle's input does not hash to its recorded digest")
    a = bundle.agreement
    if a.circuit_label != bundle.outputs.label:
        raise LinkBroken("agreement section's circuit label is not the proven label")
    if a.agree != (a.float_label == a.circuit_label):
        raise LinkBroken("agreement section's verdict contradicts its two labels")


def _check_outputs(bundle: ProofBundle, manifest: Manifest, felts: list[str]) -> None:
    """Public outputs, in the manifest's order: the logits and the label."""
    sizes = [_numel(o.shape) for o in manifest.outputs]
    if len(felts) != sum(sizes):
        raise LinkBroken(f"proof has {len(felts)} public outputs, the circuit {sum(sizes)}")
    # the bundle's logits are the first output other than the label (prover/proving.py); a
    # circuit whose only public output is the label has none
    logits_at = next((i for i in range(len(sizes)) if i != manifest.label_output), None)
    logits = bundle.outputs.logits
    if logits_at is None and logits:
        raise LinkBroken("bundle has logits, the proof has no public output but the label")
    at = 0
    for i, (spec, n) in enumerate(zip(manifest.outputs, sizes)):
        values = [felt_hex_to_int(f) for f in felts[at:at + n]]
        at += n
        if i == manifest.label_output:
            if values != [bundle.outputs.label]:
                raise LinkBroken("proof's public label is not the bundle's label")
        elif i == logits_at:
            if len(logits) != n:
                raise LinkBroken(f"bundle has {len(logits)} {spec.name}, the proof {n}")
            step = 2.0 ** -(spec.scale or 0)
            # not (|d| <= step/2): NaN compares false either way and must fail
            if any(not abs(v * step - f) <= step / 2 for v, f in zip(values, logits)):
                raise LinkBroken(f"proof's public {spec.name} are not the bundle's")


# What EZKL writes in a proof; its verifier reads ``instances`` and the proof's bytes
PROOF_KEYS = frozenset({"protocol", "instances", "proof", "hex_proof", "split", "pretty_public_inputs",
                        "timestamp", "version"})
PRETTY_KEYS = ("inputs", "rescaled_inputs", "processed_inputs", "processed_params", "processed_outputs",
               "outputs", "rescaled_outputs")


def _check_pretty(proof: dict, manifest: Manifest, inputs: list[str], hashed: list[str], outputs: list[str]) -> None:
    """EZKL's readable copy of the public values (``pretty_public_inputs``), which its verifier
    does not read, must say what the instances say: else a bundle could show another label
    there and still pass. Each value is checked as EZKL writes it: field elements as 0x and
    big-endian hex, rescaled ones as the shortest plain decimal. Keys EZKL does not write are
    refused (``timestamp`` and ``version`` are EZKL's metadata, not claims, and not checked)."""
    if set(proof) - PROOF_KEYS:
        raise LinkBroken(f"proof has fields EZKL does not write: {sorted(set(proof) - PROOF_KEYS)}")
    pretty = proof.get("pretty_public_inputs")
    if pretty is None:
        return
    if not isinstance(pretty, dict) or set(pretty) - set(PRETTY_KEYS):
        raise LinkBroken("proof's pretty_public_inputs has fields EZKL does not write")
    groups, at = [], 0
    for spec in manifest.outputs:
        n = _numel(spec.shape)
        groups.append((outputs[at:at + n], spec.scale or 0))
        at += n
    public = [] if hashed else [inputs]  # a hashed input is public only as its Poseidon hash
    want = {
        "inputs": [[felt_be_hex(f) for f in g] for g in public],
        "rescaled_inputs": [[rescaled_text(f, manifest.input.scale) for f in g] for g in public],
        "processed_inputs": [[felt_be_hex(f) for f in hashed]] if hashed else [],
        "processed_params": [],
        "processed_outputs": [],
        "outputs": [[felt_be_hex(f) for f in g] for g, _ in groups],
        "rescaled_outputs": [[rescaled_text(f, scale) for f in g] for g, scale in groups],
    }
    for key in PRETTY_KEYS:
        if key in pretty and pretty[key] != want[key]:
            raise LinkBroken(f"proof's pretty_public_inputs.{key} is not what its instances say")


def felt_be_hex(felt: str) -> str:
    return "0x" + bytes.fromhex(felt)[::-1].hex()


def rescaled_text(felt: str, scale: int) -> str:
    """The value as EZKL prints it (Rust's f64 Display: shortest round-trip digits, no exponent)."""
    text = format(Decimal(repr(felt_hex_to_int(felt) * 2.0 ** -scale)), "f")
    return text[:-2] if text.endswith(".0") else text


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def poseidon_felt_hex(felts_hex: list[str]) -> str:
    """EZKL's Poseidon hash of field elements (hex, little-endian), as EZKL writes it."""
    import ezkl

    try:
        out = ezkl.poseidon_hash(felts_hex)
    except Exception as exc:  # noqa: BLE001
        raise LinkBroken(f"cannot hash the input: {_first_line(exc)}") from None
    return out[0] if isinstance(out, list) else str(out)


def verify_receipt_link(statement: Statement, bundle: ProofBundle, manifest: Manifest, *,
                        labels: bool = True) -> None:
    """A checked receipt's statement describes this bundle's model, input and (``labels``)
    label. Without ``labels``: model and input alone, for a proof that found the signed label
    wrong (a ``mismatch``), which must still be of the receipt's input."""
    p = statement.predicate
    if p.model.sha256 != manifest.model_sha256:
        raise DigestMismatch(f"receipt is for model {p.model.sha256[:16]}…, the circuit "
                             f"package's model is {manifest.model_sha256[:16]}…")
    if p.input.scale != manifest.input.scale:
        raise LinkBroken(f"receipt commits to the input at scale {p.input.scale}, the circuit "
                         f"uses {manifest.input.scale}")
    q = quantize(bundle.input.array(), manifest.input.scale)
    if "0x" + input_commitment(q).hex() != p.input.commitment:
        raise LinkBroken("bundle's input is not the receipt's input (commitments differ)")
    if p.input.datatype == bundle.input.datatype and p.input.digest != bundle.input.digest:
        raise LinkBroken("bundle's input is not the receipt's input (tensor digests differ)")
    if not labels:
        return
    if p.label != bundle.outputs.label:
        raise LinkBroken(f"receipt's signed label {p.label} is not the proven label "
                         f"{bundle.outputs.label}")
    if bundle.agreement.float_label != p.label:  # the signed answer is the float model's
        raise LinkBroken(f"agreement section's float label {bundle.agreement.float_label} is not the "
                         f"receipt's signed label {p.label}")


def verify_signed_bundle(
    bundle: ProofBundle,
    package_dir: Path,
    jwks: dict[str, Any] | None,
    *,
    trusted_eth_signers: set[str] | None = None,
    manifest: Manifest | None = None,
    allow_dev_srs: bool = False,
) -> tuple[Manifest, Statement | None]:
    """The whole chain for one bundle: its proof receipt, if any (signature against
    ``jwks``, binding the bundle's receipt and proof digests), its receipt, if any
    (signature, then the links receipt -> bundle), then the proof. Fails closed: a bundle with a
    receipt and no trusted keys raises :class:`KeyUnknown`; a package whose SRS is not the
    public ceremony's raises :class:`InsecureSRS` unless ``allow_dev_srs``.
    """
    from verifier.srs import check_package_srs

    package_dir = Path(package_dir)
    if manifest is None:
        manifest = load_manifest_checked(package_dir)
    statement = None
    links_checked = False
    if bundle.proof_receipt is not None:
        if jwks is None:
            raise KeyUnknown("bundle carries a proof receipt but no trusted keys were given (--keys)")
        from verifier.proof_receipts import verify_proof_receipt

        verify_proof_receipt(bundle.proof_receipt, bundle, jwks)
    if bundle.receipt is not None:
        if jwks is None:
            raise KeyUnknown("bundle carries a receipt but no trusted keys were given (--keys)")
        from verifier.receipts_v2 import parse_any_receipt, verify_any_receipt

        receipt = parse_any_receipt(bundle.receipt)  # v1 (DSSE) or v2 (receipt log)
        statement = verify_any_receipt(receipt, jwks, trusted_eth_signers=trusted_eth_signers)
        check_bundle_links(bundle, manifest)  # the bundle's own links before the receipt's
        links_checked = True
        verify_receipt_link(statement, bundle, manifest)
    # last of the cheap checks: a tampered item reports what was tampered with
    check_package_srs(manifest, allow_dev_srs=allow_dev_srs)
    verify_bundle(bundle, package_dir, manifest=manifest, links_checked=links_checked)
    return manifest, statement


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
