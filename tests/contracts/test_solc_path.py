"""Where solcjs is found: ``$VERINFER_SOLCJS``, else ``node_modules/solc`` in the working
folder or above it (as node looks), else in the checkout; an installed verinfer has no
checkout, so a miss says what to do in one line. Only the pinned release counts: another
project's solc above the working folder is passed over."""

from __future__ import annotations

import json

import pytest

from contracts import solc
from contracts.solc import CompileError, solcjs_path


def _fake_solc(folder, version=solc.SOLC_VERSION):
    folder.mkdir(parents=True)
    (folder / "package.json").write_text(json.dumps({"name": "solc", "version": version}))
    return folder


def test_env_var_wins(tmp_path, monkeypatch):
    target = _fake_solc(tmp_path / "pinned" / "solc")
    _fake_solc(tmp_path / "node_modules" / "solc")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VERINFER_SOLCJS", str(target))
    assert solcjs_path() == target


def test_node_modules_in_the_working_folder_or_above(tmp_path, monkeypatch):
    monkeypatch.delenv("VERINFER_SOLCJS", raising=False)
    found = _fake_solc(tmp_path / "node_modules" / "solc")
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    assert solcjs_path() == found


def test_not_found_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("VERINFER_SOLCJS", raising=False)
    monkeypatch.chdir(tmp_path)
    # an installed package: no checkout around it
    monkeypatch.setattr(solc, "REPO_ROOT", tmp_path / "site-packages")
    with pytest.raises(CompileError) as exc:
        solcjs_path()
    message = str(exc.value)
    assert len(message.splitlines()) == 1
    assert "VERINFER_SOLCJS" in message and "npm ci" in message and str(tmp_path) in message
    monkeypatch.setenv("VERINFER_SOLCJS", str(tmp_path / "nowhere"))
    with pytest.raises(CompileError, match="nowhere"):
        solcjs_path()


def test_the_pin_is_package_jsons():
    package = json.loads((solc.REPO_ROOT / "package.json").read_text())
    assert package["devDependencies"]["solc"] == solc.SOLC_VERSION
    assert solc.solc_version().startswith(solc.SOLC_VERSION + "+commit.")  # what npm ci installed


def test_another_release_is_passed_over_and_refused_alone(tmp_path, monkeypatch):
    """A project's own solc 0.8.20 above the working folder: the checkout's pinned one is used,
    not it (it would compile other bytecode than the packages record)."""
    monkeypatch.delenv("VERINFER_SOLCJS", raising=False)
    other = _fake_solc(tmp_path / "node_modules" / "solc", "0.8.20")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    pinned = _fake_solc(tmp_path / "checkout" / "node_modules" / "solc")
    monkeypatch.setattr(solc, "REPO_ROOT", tmp_path / "checkout")
    assert solcjs_path() == pinned
    monkeypatch.setattr(solc, "REPO_ROOT", tmp_path / "site-packages")
    with pytest.raises(CompileError) as exc:
        solcjs_path()
    message = str(exc.value)
    assert len(message.splitlines()) == 1
    assert f"{other} is solc 0.8.20" in message and f"solcjs {solc.SOLC_VERSION} not found" in message
    monkeypatch.setenv("VERINFER_SOLCJS", str(other))
    with pytest.raises(CompileError, match="is solc 0.8.20"):
        solcjs_path()
