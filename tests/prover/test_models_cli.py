"""``verinfer models add`` of a model already built, ``models rm``: the data dir's names and
packages as a user manages them (real packages, built once per session in conftest.py)."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prover_support import run_cli

from verifier.config import Settings

pytestmark = pytest.mark.ezkl


def _packages(home: Path) -> set[str]:
    return {p.name for p in (home / "packages").iterdir() if not p.name.startswith(".")}


def _home_with(home: Path, name: str, package: Path) -> Path:
    """``home`` holding a copy of ``package`` with ``name`` pointing at it."""
    (home / "packages").mkdir(exist_ok=True)
    shutil.copytree(package, home / "packages" / package.name)
    (home / "names").mkdir(exist_ok=True)
    (home / "names" / name).write_text(package.name + "\n")
    return home / "packages" / package.name


# --- models add of the same model again ---------------------------------------------


def test_adding_the_same_model_again_points_the_name_at_its_package(prover_home, iris_package):
    """The manifest records timings, so a second build is another package id: 'models add' of
    the same ONNX and options built everything again (minutes for digits_cnn)."""
    before = _packages(prover_home)
    proc = run_cli("models", "add", "iris_mlp", home=prover_home, check=True)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"OK: registered iris_mlp as package "
                                                   f"{iris_package.name}, already built"), proc.stderr
    assert "--rebuild" in lines[0]
    assert _packages(prover_home) == before
    assert (prover_home / "names" / "iris_mlp").read_text().strip() == iris_package.name


def test_the_build_key_names_everything_the_circuit_is_made_from(tmp_path):
    """Any one input of the build changed is another key: never the package of another."""
    from prover.backend import CircuitOptions
    from prover.build import build_key, package_model, reference_source

    src = reference_source("iris_mlp")
    srs = tmp_path / "k.srs"
    srs.write_bytes(b"srs")

    def key(source=src, public_output="logits", **kw):
        args = {"visibility": "public", "options": None, "srs_file": None,
                "ezkl_version": "23.0.5", "solc": "0.8.37", **kw}
        return build_key(source, package_model(source, public_output)[2],
                         public_output=public_output,
                         **args)

    other_samples = np.array(src.calibration, copy=True)
    other_samples[0, 0] += 0.5
    keys = [key(), key(replace(src, name="iris2")), key(replace(src, calibration=other_samples)),
            key(replace(src, eval_inputs=src.eval_inputs[1:], eval_labels=src.eval_labels[1:])),
            key(visibility="hashed"), key(public_output="label"),
            key(options=CircuitOptions(inner_cols=2)), key(options=CircuitOptions(scale=7)),
            key(options=CircuitOptions(decomp_base=4096, decomp_legs=2)), key(srs_file=srs),
            key(ezkl_version="23.0.6"), key(solc="0.8.38")]
    assert len({repr(k) for k in keys}) == len(keys)
    assert key() == key(options=CircuitOptions())  # no options are the default options


def test_an_altered_package_is_not_reused_and_rebuild_builds_anew(home, iris_package):
    from prover.build import find_build, reference_source

    pkg = _home_with(home, "iris_mlp", iris_package)
    settings = Settings()
    assert find_build(settings, reference_source("iris_mlp")).dir == pkg
    assert find_build(settings, reference_source("iris_mlp"), visibility="hashed") is None
    pk = pkg / "pk.key"
    data = bytearray(pk.read_bytes())
    data[len(data) // 2] ^= 1
    os.chmod(pk, 0o644)
    pk.write_bytes(bytes(data))
    assert find_build(settings, reference_source("iris_mlp")) is None
    pk.unlink()
    shutil.copyfile(iris_package / "pk.key", pk)
    proc = run_cli("models", "add", "iris_mlp", "--rebuild", home=home, check=True)
    assert "already built" not in proc.stderr
    new = (home / "names" / "iris_mlp").read_text().strip()
    assert new != pkg.name and _packages(home) == {pkg.name, new}


# --- models rm ----------------------------------------------------------------------------


def _one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_rm_removes_the_name_and_the_package_no_other_name_points_to(home, iris_package):
    pkg = _home_with(home, "iris_mlp", iris_package)
    (home / "names" / "iris2").write_text(pkg.name + "\n")
    line = _one_line(run_cli("models", "rm", "iris_mlp", home=home, check=True))
    assert line == f"OK: removed iris_mlp; package {pkg.name} kept: iris2 still points to it"
    assert not (home / "names" / "iris_mlp").exists() and pkg.is_dir()
    line = _one_line(run_cli("models", "rm", "iris2", "--keep-package", home=home, check=True))
    assert line.endswith("kept (--keep-package)") and pkg.is_dir()
    assert run_cli("models", "show", pkg.name[:12], home=home).returncode == 0  # by its id
    (home / "names" / "iris2").write_text(pkg.name + "\n")
    line = _one_line(run_cli("models", "rm", "iris2", home=home, check=True))
    assert line == f"OK: removed iris2; package {pkg.name} removed"
    assert list((home / "packages").iterdir()) == [] and list((home / "names").iterdir()) == []


@pytest.mark.parametrize("name", ["nope", "../packages", ".hidden", "UPPER"])
def test_rm_of_a_name_not_registered_is_one_line_exit_2(home, iris_package, name):
    pkg = _home_with(home, "iris_mlp", iris_package)
    proc = run_cli("models", "rm", name, home=home)
    assert proc.returncode == 2
    assert _one_line(proc) == f"verinfer: error: no model named {name!r} (see 'verinfer models list')"
    assert pkg.is_dir() and (home / "names" / "iris_mlp").is_file()


def test_a_removal_killed_midway_is_finished_by_the_next_build(home, iris_package):
    """The package leaves packages/ by a rename into a held working folder; one whose remover
    died (its lock free) is removed by the next build or removal, like a killed build's."""
    from prover.build import remove_package

    pkg = _home_with(home, "iris_mlp", iris_package)
    dead = home / "packages" / ".tmp-dead"
    shutil.copytree(pkg, dead)
    (home / "packages" / ".tmp-dead.lock").touch()
    assert remove_package(Settings(), pkg.name)
    assert list((home / "packages").iterdir()) == []
    assert not remove_package(Settings(), pkg.name)


# --- a tampered package in the data dir -----------------------------------------------------


def _commands(home: Path, pid: str, bundle: Path, out: Path) -> dict[str, list]:
    req = out.parent / "request.json"
    req.write_text('{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", '
                   '"data": [6.1, 2.8, 4.7, 1.2]}]}')
    return {"prove": ["prove", "iris_mlp", "--input", req, "--out", out],
            "verify": ["verify", bundle, "--allow-dev-srs"],
            "verify --package": ["verify", bundle, "--allow-dev-srs", "--package", "iris_mlp"],
            "audit": ["audit", bundle, "--allow-dev-srs"],
            "audit --models": ["audit", bundle, "--allow-dev-srs", "--models", home],
            "models show": ["models", "show", "iris_mlp"],
            "models show ID": ["models", "show", pid[:12]]}


def test_an_altered_manifest_in_the_data_dir_fails_every_command_exit_1(home, iris_package,
                                                                         iris_bundle, tmp_path):
    """A manifest edited in place (still valid, no longer the one its id names) exited 2, as
    if the user's input were bad; audit reported the bundle's package as not audited."""
    import json

    pkg = _home_with(home, "iris_mlp", iris_package)
    raw = json.loads((pkg / "manifest.json").read_text())
    raw["preflight"]["prove_seconds"] = 0.001
    (pkg / "manifest.json").write_text(json.dumps(raw))
    for what, args in _commands(home, pkg.name, iris_bundle, tmp_path / "out").items():
        proc = run_cli(*args, home=home)
        assert proc.returncode == 1, (what, proc.stderr)
        if what.startswith("audit"):
            assert f"FAIL: {iris_bundle}: PackageAltered: {pkg}: manifest.json was altered" in proc.stderr
        else:
            assert _one_line(proc) == (f"FAIL: {pkg}: manifest.json was altered (it hashes to "
                                       f"{json_id(raw)[:16]}…, not the package id)"), what
    assert not (tmp_path / "out").exists()
    # unreadable is not tampered: a usage error, exit 2
    (pkg / "manifest.json").write_text("{")
    for what, args in _commands(home, pkg.name, iris_bundle, tmp_path / "out").items():
        proc = run_cli(*args, home=home)
        assert proc.returncode == 2, (what, proc.stderr)


def test_a_missing_artifact_is_unreadable_input_in_every_command_exit_2(home, iris_package,
                                                                        iris_bundle, tmp_path):
    """verify and audit turned a missing vk.key into DigestMismatch (exit 1, a failed check)
    while prove and models show said exit 2: a missing file is unreadable input."""
    pkg = _home_with(home, "iris_mlp", iris_package)
    (pkg / "vk.key").unlink()
    for what, args in _commands(home, pkg.name, iris_bundle, tmp_path / "out").items():
        if what.startswith("models show"):  # reads the manifest alone, no artifact
            continue
        proc = run_cli(*args, home=home)
        assert proc.returncode == 2, (what, proc.stderr)
        assert "DigestMismatch" not in proc.stderr and "Traceback" not in proc.stderr, what
        if not what.startswith("audit"):
            assert _one_line(proc).endswith(f"{pkg}: artifact vk.key is missing"), (what, proc.stderr)
    assert not (tmp_path / "out").exists()


def json_id(raw: dict) -> str:
    from verifier.manifest import Manifest

    return Manifest.model_validate(raw).package_id


def test_reuse_checks_a_ceremony_srs_as_a_build_does(home, iris_package, tmp_path):
    """With --srs FILE the reuse took the package of the same key without the build's check of
    the file against the pinned (or --srs-sha256) hash: a file a build refuses was accepted.
    The package here is iris_mlp's made over as a 'ceremony' one (its own SRS, which is not
    the pinned file for its logrows), with the build key of that file."""
    import json

    from contracts.solc import solc_version
    from prover.build import build_key, find_build, package_model, reference_source
    from prover.package import installed_ezkl_version
    from verifier.digests import canonical_json
    from verifier.errors import InputError
    from verifier.manifest import Manifest

    src = reference_source("iris_mlp")
    srs_file = tmp_path / "kzg12.srs"
    shutil.copyfile(iris_package / "kzg.srs", srs_file)
    raw = json.loads((iris_package / "manifest.json").read_text())
    raw["srs"] = {**raw["srs"], "source": "ceremony", "insecure": False}
    manifest = Manifest.model_validate(raw)
    pkg = home / "packages" / manifest.package_id
    shutil.copytree(iris_package, pkg)
    (pkg / "manifest.json").write_bytes(manifest.canonical_bytes())
    key = build_key(src, package_model(src, "logits")[2], visibility="public",
                    public_output="logits",
                    options=None, srs_file=srs_file, ezkl_version=installed_ezkl_version(),
                    solc=solc_version())
    (pkg / "build.json").write_bytes(canonical_json(key))
    with pytest.raises(InputError, match="is not the published hash for logrows=12"):
        find_build(Settings(), src, srs_file=srs_file)
