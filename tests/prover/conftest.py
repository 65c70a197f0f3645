"""Real EZKL fixtures: circuit packages built once per test session.

Building runs the whole pipeline (calibrate, development SRS, key setup,
Solidity verifier with solcjs, agreement, one timed proof), through the real
``verinfer`` command for iris_mlp.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prover_support import oip_request, run_cli

from models import load_split


@pytest.fixture(scope="session")
def prover_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prover-home")


@pytest.fixture(scope="session")
def iris_package(prover_home) -> Path:
    """iris_mlp registered with ``verinfer models add iris_mlp``; the package folder."""
    run_cli("models", "add", "iris_mlp", home=prover_home, check=True)
    name = (prover_home / "names" / "iris_mlp").read_text().strip()
    return prover_home / "packages" / name


@pytest.fixture(scope="session")
def other_package(prover_home, tmp_path_factory) -> Path:
    """Another model: iris_mlp's architecture with other weights, added from an ONNX file
    with its own calibration data, an OIP v2 request body of 20 samples (the non-reference
    path of ``models add``)."""
    import torch

    from models.nets import IrisMLP
    from models.train import export_onnx

    torch.manual_seed(123)
    net = IrisMLP().eval()
    d = tmp_path_factory.mktemp("other-model")
    x_train, _, _, _ = load_split("iris_mlp")
    export_onnx(net, d / "other.onnx", torch.from_numpy(x_train[:1]))
    (d / "calibration.json").write_text(oip_request(x_train[:20]))
    run_cli("models", "add", d / "other.onnx", "--name", "other",
            "--calibration-data", d / "calibration.json", home=prover_home, check=True)
    return prover_home / "packages" / (prover_home / "names" / "other").read_text().strip()


@pytest.fixture(scope="session")
def iris_bundle(prover_home, iris_package, tmp_path_factory) -> Path:
    """A proof bundle for held-out sample 0, made with ``verinfer prove``."""
    _, x_test, _, _ = load_split("iris_mlp")
    d = tmp_path_factory.mktemp("iris-bundle")
    request = d / "request.json"
    request.write_text(oip_request(x_test[0].reshape(1, 4)))
    run_cli("prove", "iris_mlp", "--input", request, "--out", d / "bundle", home=prover_home,
            check=True)
    return d / "bundle" / "bundle.json"
