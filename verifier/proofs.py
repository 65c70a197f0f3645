"""Proof checks against a circuit package: fail closed, typed errors.

``verify_bundle`` checks, in order: the package's files hash as its manifest
says; the bundle names this package; the proof's public instances are the
bundle's instances; the public input is the bundle's input quantized at the
circuit's scale; the public label output is the bundle's label; and finally
that EZKL accepts the proof under the package's vk, settings and SRS.

This is the only module of ``verifier`` that talks to EZKL.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from verifier.bundle import ProofBundle
from verifier.errors import DigestMismatch, LinkBroken, PackageError, ProofInvalid
from verifier.fixedpoint import felt_to_int, int_to_felt, quantize
from verifier.manifest import MANIFEST_FILE, Manifest

VERIFY_ARTIFACTS = ["settings.json", "vk.key", "kzg.srs"]


def felt_hex_to_int(felt: str) -> int:
    """EZKL writes instances as 32-byte little-endian hex field elements."""
    return felt_to_int(int.from_bytes(bytes.fromhex(felt), "little"))


def int_to_felt_hex(value: int) -> str:
    return int_to_felt(value).to_bytes(32, "little").hex()


def ezkl_verify(proof: dict, settings: Path, vk: Path, srs: Path) -> None:
    """EZKL's own check of ``proof``; raises :class:`ProofInvalid` on any failure."""
    import ezkl

    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(proof, f)
        f.flush()
        try:
            ok = ezkl.verify(f.name, str(settings), str(vk), str(srs))
        except Exception as exc:  # EZKL raises on malformed proofs and wrong keys
            raise ProofInvalid(f"EZKL rejected the proof: {_first_line(exc)}") from None
    if ok is not True:
        raise ProofInvalid("EZKL rejected the proof")


def load_manifest_checked(package_dir: Path, names: list[str] = VERIFY_ARTIFACTS) -> Manifest:
    """The package's manifest, after checking the named artifacts' hashes."""
    manifest = Manifest.load(Path(package_dir) / MANIFEST_FILE)
    try:
        manifest.check_artifacts(Path(package_dir), names)
    except PackageError as exc:
        raise DigestMismatch(str(exc)) from None
    return manifest


def verify_bundle(bundle: ProofBundle, package_dir: Path) -> Manifest:
    """Check ``bundle`` against the circuit package in ``package_dir``; returns its manifest."""
    package_dir = Path(package_dir)
    manifest = load_manifest_checked(package_dir)
    if bundle.model.package_id != manifest.package_id:
        raise LinkBroken(
            f"bundle is for package {bundle.model.package_id[:16]}…, "
            f"not {manifest.package_id[:16]}… ({manifest.name})"
        )
    if bundle.model.model_sha256 != manifest.model_sha256:
        raise LinkBroken("bundle's model digest differs from the package's")
    proof_instances = tuple(tuple(row) for row in bundle.proof["instances"])
    if proof_instances != bundle.instances:
        raise LinkBroken("bundle's instances differ from the proof's")
    flat = [felt for row in bundle.instances for felt in row]
    n_in = 1
    for d in manifest.input.shape:
        n_in *= d
    if manifest.input_visibility == "public":
        want = [int_to_felt_hex(q) for q in quantize(bundle.input.array(), manifest.input.scale)]
        if flat[:n_in] != want:
            raise LinkBroken("proof's public input is not the bundle's input")
    if not flat or felt_hex_to_int(flat[-1]) != bundle.outputs.label:
        raise LinkBroken("proof's public label is not the bundle's label")
    if bundle.agreement.circuit_label != bundle.outputs.label:
        raise LinkBroken("agreement section's circuit label is not the proven label")
    ezkl_verify(
        bundle.proof,
        package_dir / "settings.json",
        package_dir / "vk.key",
        package_dir / "kzg.srs",
    )
    return manifest


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
