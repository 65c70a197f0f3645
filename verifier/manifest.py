"""The circuit package manifest: what a package is, bound by hashes.

A circuit package is a folder ``<home>/packages/<package_id>/`` holding the
artifacts listed in ``manifest.json``. The package id is the SHA-256 of the
manifest's canonical JSON (``verifier.digests.canonical_json``), so a package's
name says exactly what is in it. ``manifest.json`` itself is written in that
canonical form.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from verifier.base import Frozen, parse_as
from verifier.digests import canonical_json, sha256_bytes, sha256_file
from verifier.errors import PackageAltered, PackageError
from verifier.limits import MAX_MANIFEST_BYTES, read_bounded

MANIFEST_FORMAT = "verinfer.circuit-package/v1"
MANIFEST_FILE = "manifest.json"
MAX_SCALE = 1000
PublicOutput = Literal["logits", "label"]


class Artifact(Frozen):
    sha256: str
    bytes: int


class SRSInfo(Frozen):
    logrows: int
    sha256: str
    source: Literal["development", "ceremony"]
    # True for a locally generated SRS: whoever made it knows the toxic waste
    # and can forge proofs. Never use such a package in production.
    insecure: bool


class TensorSpec(Frozen):
    name: str
    datatype: str  # OIP v2 datatype, e.g. "FP32"
    shape: tuple[int, ...]  # with the batch axis (1 in the circuit)
    # fixed-point scale in the circuit (2**scale); bounded so that 2.0**±scale is a float
    scale: Annotated[int, Field(ge=-MAX_SCALE, le=MAX_SCALE)] | None = None


class Manifest(Frozen):
    format: Literal["verinfer.circuit-package/v1"] = MANIFEST_FORMAT
    name: str
    model_sha256: str  # sha256 of model.onnx: the model's identity everywhere
    ezkl_version: str
    solc_version: str
    input_visibility: Literal["public", "hashed"]
    output_visibility: Literal["public"] = "public"
    param_visibility: Literal["fixed"] = "fixed"
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    label_output: int  # index in ``outputs`` of the ArgMax label
    # What the circuit makes public besides its input: "logits" = every output of the model
    # (logits, then the label); "label" = the ArgMax label alone (the circuit still computes
    # the logits, privately; fewer public instances, less gas on chain). Absent = "logits".
    public_output: PublicOutput = "logits"
    srs: SRSInfo
    artifacts: dict[str, Artifact]  # file name in the package -> hash and size
    calibration: dict  # target, samples, chosen scales, numerical report
    preflight: dict  # ops, logrows, sizes, timings, float-vs-circuit agreement
    # The settings search that chose this circuit (``verinfer models tune``): objective,
    # baseline, candidates and their figures. Absent from packages made without one.
    tuning: dict | None = None

    @model_validator(mode="after")
    def _label_output_is_an_output(self) -> Manifest:
        # else no output is checked as the label: a bundle's label would be bound to nothing
        if not 0 <= self.label_output < len(self.outputs):
            raise ValueError(f"label_output {self.label_output} is not the index of one of the "
                             f"{len(self.outputs)} outputs")
        return self

    @model_validator(mode="after")
    def _label_only_has_one_output(self) -> Manifest:
        if self.public_output == "label" and (len(self.outputs) != 1 or self.label_output != 0):
            raise ValueError("a label-only manifest (public_output 'label') has the label as "
                             "its one output")
        return self

    def canonical_bytes(self) -> bytes:
        data = self.model_dump(mode="json")
        # manifests from before these fields hash as they did
        if data["tuning"] is None:
            del data["tuning"]
        if data["public_output"] == "logits":
            del data["public_output"]
        return canonical_json(data)

    @property
    def num_instances(self) -> int:
        """Public instances of a proof: the input (one Poseidon hash when hashed), then the
        public outputs (logits and label, or the label alone)."""
        n_in = math.prod(self.input.shape) if self.input_visibility == "public" else 1
        return n_in + sum(math.prod(o.shape) for o in self.outputs)

    @property
    def label_is_last_instance(self) -> bool:
        """Whether the label is the proof's last public instance, alone: the last output, of
        one element. The oracle reads the label there (docs/contracts.md); a model whose
        graph lists its label before its logits has the last logit there instead."""
        last = len(self.outputs) - 1
        return self.label_output == last and math.prod(self.outputs[last].shape) == 1

    @property
    def package_id(self) -> str:
        return sha256_bytes(self.canonical_bytes())

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            raw = read_bounded(path, MAX_MANIFEST_BYTES, "a manifest", PackageError)
        except FileNotFoundError:
            raise PackageError(f"{path}: no manifest.json (not a circuit package)") from None
        except OSError as exc:
            raise PackageError(f"{path}: cannot read the manifest: {exc.strerror}") from None
        return parse_as(cls, raw, f"{path}: invalid manifest", "manifest", PackageError)

    def check_artifacts(self, folder: Path, names: list[str] | None = None) -> None:
        """Raise :class:`PackageAltered` unless each artifact's bytes hash as recorded
        (:class:`PackageError` when one is missing)."""
        for name in names if names is not None else sorted(self.artifacts):
            want = self.artifacts.get(name)
            if want is None:
                raise PackageError(f"{folder}: the manifest lists no artifact {name}")
            path = folder / name
            if not path.is_file():
                raise PackageError(f"{folder}: artifact {name} is missing")
            if path.stat().st_size != want.bytes or sha256_file(path) != want.sha256:
                raise PackageAltered(
                    f"{folder}: artifact {name} does not match the manifest's sha256 (altered?)"
                )
