"""Which models the server serves, with their metadata, engine and input scale.

* every reference model (``models.REFERENCE_MODELS``, or ``settings.models``),
  run by PyTorch (or onnxruntime with ``engine="onnx"``);
* every ONNX file named in ``settings.onnx_models``, run by onnxruntime;
* every circuit package registered in the data dir (``verifier.packages``) whose
  name is not a reference model, run by onnxruntime from the package's model.onnx.

The fixed-point input scale for the EIP-712 input commitment is the registered
circuit package's ``manifest.input.scale`` when one exists for the same model
file, else ``DEFAULT_INPUT_SCALE`` (13). Each registered package is opened once, and
opening one reads its manifest without importing EZKL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from server.inference.engines import Engine, OnnxEngine, TensorMeta, TorchEngine, onnx_signature
from server.settings import DEFAULT_INPUT_SCALE, ServerSettings
from verifier.digests import sha256_file
from verifier.errors import InputError, VerinferError

log = logging.getLogger("verinfer.server")


@dataclass
class ServedModel:
    name: str
    version: str
    sha256: str  # of model.onnx
    input: TensorMeta
    outputs: list[TensorMeta]
    scale: int
    engine: Engine
    label_output: str | None  # the output holding the class index, if any

    @property
    def platform(self) -> str:
        return self.engine.platform


def _package(settings: ServerSettings, name: str):
    """The registered circuit package for ``name`` (made by the installed EZKL, its
    model.onnx hash-checked), or None."""
    from prover.package import CircuitPackage
    from verifier.packages import find

    try:
        return CircuitPackage.of(find(settings, name), check=["model.onnx"])
    except VerinferError:
        return None
    except Exception as exc:  # a broken package must not stop the server  # noqa: BLE001
        log.warning("circuit package %s unusable: %s", name, exc)
        return None


def registered_packages(settings: ServerSettings) -> dict:
    """Every registered name whose package opens, each opened once."""
    from verifier.packages import list_names

    try:
        names = list(list_names(settings))
    except OSError:
        return {}
    return {name: pkg for name in names if (pkg := _package(settings, name)) is not None}


def input_scale(settings: ServerSettings, name: str, model_sha256: str,
                packages: dict | None = None) -> int:
    """The input scale of ``name``'s registered package for this model file, else the
    default. ``packages``: those already opened (:func:`registered_packages`)."""
    pkg = packages.get(name) if packages is not None else _package(settings, name)
    if pkg is not None and pkg.manifest.model_sha256 == model_sha256:
        scale = pkg.manifest.input.scale
        if scale is not None:
            return int(scale)
    return DEFAULT_INPUT_SCALE


def _build(settings, name, onnx_path: Path, engine_kind: str, packages: dict) -> ServedModel:
    if not onnx_path.is_file():
        raise InputError(f"model {name}: no ONNX file at {onnx_path}")
    inputs, outputs = onnx_signature(onnx_path)
    if len(inputs) != 1:
        raise InputError(f"model {name}: only single-input models are served ({len(inputs)} inputs)")
    names = [o.name for o in outputs]
    sha = sha256_file(onnx_path)
    if engine_kind == "torch":
        engine: Engine = TorchEngine(name, names, settings.device, settings.torch_threads)
    else:
        engine = OnnxEngine(onnx_path, names)
    label = "label" if "label" in names else None
    return ServedModel(name, "1", sha, inputs[0], outputs,
                       input_scale(settings, name, sha, packages), engine, label)


def load_models(settings: ServerSettings) -> dict[str, ServedModel]:
    from models import REFERENCE_MODELS, get_reference_model

    packages = registered_packages(settings)
    served: dict[str, ServedModel] = {}
    for name in settings.models if settings.models is not None else REFERENCE_MODELS:
        try:
            ref = get_reference_model(name)
        except KeyError as exc:
            raise InputError(str(exc.args[0])) from None
        served[name] = _build(settings, name, ref.onnx_path, settings.engine, packages)
    for name, path in settings.onnx_models.items():
        served[name] = _build(settings, name, Path(path), "onnx", packages)
    for name, pkg in packages.items():
        if name in served or name in REFERENCE_MODELS:
            continue
        served[name] = _build(settings, name, pkg.path("model.onnx"), "onnx", packages)
    return served
