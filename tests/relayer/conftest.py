"""Relayer fixtures: anvil from node_modules (``tests/chain_support.py``), the embedded
py-evm chain, and real circuit packages (iris_mlp, digits_cnn) built once per session.

Transactions come from anvil's unlocked dev accounts, or from a key made by the test, funded
by the test and written to a 0600 file in the test's tmp dir (never committed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # relay_world

from chain_support import chain, embedded_chain, run_anvil  # noqa: E402, F401 (fixtures)


@pytest.fixture(scope="session")
def relay_anvil_url():
    with run_anvil() as url:
        yield url


@pytest.fixture(scope="session")
def anvil_chain(relay_anvil_url):
    from contracts.chain import connect

    return connect(relay_anvil_url)


@pytest.fixture(scope="session")
def packages_home(tmp_path_factory) -> Path:
    """A data dir for real circuit packages (filled by the fixtures below)."""
    return tmp_path_factory.mktemp("relay-home")


def _build(home: Path, name: str) -> Path:
    from prover.build import build_package, reference_source
    from prover.package import find_package, list_names
    from verifier.config import Settings

    settings = Settings(home=home)
    if name in list_names(settings):
        return find_package(settings, name, check=[]).dir
    return build_package(settings, reference_source(name)).dir


@pytest.fixture(scope="session")
def iris_package(packages_home) -> Path:
    """iris_mlp's real circuit package (logrows 11, ~10 s to build)."""
    return _build(packages_home, "iris_mlp")


@pytest.fixture(scope="session")
def digits_package(packages_home) -> Path:
    """digits_cnn's real circuit package (logrows 15, ~60 s to build)."""
    return _build(packages_home, "digits_cnn")


@pytest.fixture(scope="session")
def iris_model():
    """iris_mlp as a LocalModel without a circuit package (signature path), scale 13."""
    from relay_world import IRIS_ONNX, SCALE

    from server.relayer.relayer import LocalModel

    return LocalModel.from_onnx("iris_mlp", IRIS_ONNX, SCALE)
