"""Relayer fixtures: anvil from node_modules (the contracts tier's ``run_anvil``), the embedded
py-evm chain, and real circuit packages (iris_mlp, digits_cnn) built once per session.

Transactions come from anvil's unlocked dev accounts, or from a key made by the test, funded
by the test and written to a 0600 file in the test's tmp dir (never committed).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # relay_world


def _contracts_conftest():
    name = "_verinfer_contracts_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, HERE.parent / "contracts" / "conftest.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.fixture(scope="session")
def relay_anvil_url():
    with _contracts_conftest().run_anvil() as url:
        yield url


@pytest.fixture(scope="session")
def anvil_chain(relay_anvil_url):
    from contracts.chain import connect

    return connect(relay_anvil_url)


@pytest.fixture(scope="session")
def embedded_chain():
    from contracts.chain import connect

    return connect(None)


@pytest.fixture(params=["embedded", "anvil"])
def chain(request):
    """Tests that take ``chain`` run on both chains."""
    return request.getfixturevalue(f"{request.param}_chain")


@pytest.fixture(scope="session")
def packages_home(tmp_path_factory) -> Path:
    """A data dir for real circuit packages (filled by the fixtures below)."""
    return tmp_path_factory.mktemp("relay-home")


def _build(home: Path, name: str) -> Path:
    pytest.importorskip("ezkl")
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
