"""Fixtures shared by every test tier.

Tier folders (``tests/prover``, ``tests/server``, ``tests/contracts``, ...) keep
their own ``conftest.py``. Nothing here starts a server or a prover.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty VERINFER_HOME for one test."""
    d = tmp_path / "home"
    d.mkdir()
    monkeypatch.setenv("VERINFER_HOME", str(d))
    return d
