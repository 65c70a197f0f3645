"""Fixtures for the verifier and audit tests.

The golden tests need nothing built. The ``ezkl`` tier builds its own circuit
packages once per session (iris_mlp, public and hashed input) with the real
``verinfer models add`` and proves a few held-out samples with the prover's API.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # audit_support

from prover_support import run_cli


@pytest.fixture(scope="session")
def audit_home(tmp_path_factory) -> Path:
    """A data dir with iris_mlp (public input) and iris_hashed (hashed input)."""
    home = tmp_path_factory.mktemp("audit-home")
    run_cli("models", "add", "iris_mlp", home=home, check=True)
    run_cli("models", "add", "iris_mlp", "--name", "iris_hashed", "--input-visibility", "hashed",
            home=home, check=True)
    return home


def _prove(home: Path, name: str, samples: list[int]):
    from models import load_split
    from prover.package import find_package
    from prover.proving import Prover
    from verifier.config import Settings

    pkg = find_package(Settings(home=home), name)
    prover = Prover(pkg)
    _, x_test, _, _ = load_split("iris_mlp")
    return pkg, [prover.prove(x_test[i].reshape(1, 4)) for i in samples]


@pytest.fixture(scope="session")
def iris_proven(audit_home):
    """(package, [bundles]) for held-out samples with different labels."""
    return _prove(audit_home, "iris_mlp", [0, 1, 2])


@pytest.fixture(scope="session")
def hashed_proven(audit_home):
    return _prove(audit_home, "iris_hashed", [0])
