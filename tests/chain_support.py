"""Chains for the tests: a real anvil node from the project's node_modules, and the embedded
py-evm chain. Shared by the contracts and relayer tiers (their conftests import the fixtures).

Dev accounts: anvil's default unlocked accounts are used in tests only.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from contracts.anvil import local_anvil

REPO_ROOT = Path(__file__).resolve().parents[1]
ANVIL = REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


@contextlib.contextmanager
def run_anvil(*extra: str):
    """Start anvil on 127.0.0.1:<free port> (``extra``: more anvil options); yield its URL;
    stop it."""
    if not ANVIL.is_file():  # make test runs the set-up (npm ci) first: never a skip in CI
        pytest.fail(f"anvil not installed at {ANVIL} (run make setup)")
    with local_anvil(ANVIL, "--disable-code-size-limit", *extra) as url:
        yield url


@pytest.fixture(scope="session")
def embedded_chain():
    from contracts.chain import connect

    return connect(None)


@pytest.fixture(params=["embedded", "anvil"])
def chain(request):
    """Each test that takes ``chain`` runs on both chains."""
    return request.getfixturevalue(f"{request.param}_chain")
