"""``verifier.packages``, the one owner of the data dir's package layout: names, ids and
folders; a package opened once, by its manifest, without EZKL. The server and the relayer
open the registered packages at start-up without importing EZKL."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from verifier.config import Settings
from verifier.errors import InputError, NotFound, PackageAltered, PackageError
from verifier.manifest import Artifact, Manifest, SRSInfo, TensorSpec
from verifier.packages import (
    check_name,
    find,
    list_names,
    name_target,
    package_dir,
    point_name,
    read_manifest,
    resolve,
)

REPO = Path(__file__).resolve().parents[2]
IRIS_ONNX = REPO / "models" / "artifacts" / "iris_mlp" / "model.onnx"


def register(settings: Settings, name: str, *, scale: int = 7, onnx: Path = IRIS_ONNX,
             ezkl_version: str | None = None) -> str:
    """Put a package holding ``onnx`` (and a manifest that lists it) in the data dir, as
    ``verinfer models add`` lays it out, and point ``name`` at it; returns the package id.
    Only the layout is under test here: no circuit is built."""
    from importlib.metadata import version

    data = onnx.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    manifest = Manifest(
        name=name, model_sha256=sha, ezkl_version=ezkl_version or version("ezkl"),
        solc_version="0.8.37", input_visibility="public",
        input=TensorSpec(name="input", datatype="FP32", shape=(1, 4), scale=scale),
        outputs=(TensorSpec(name="logits", datatype="FP32", shape=(1, 3), scale=scale),
                 TensorSpec(name="label", datatype="INT64", shape=(1,), scale=0)),
        label_output=1, srs=SRSInfo(logrows=15, sha256="00" * 32, source="development",
                                    insecure=True),
        artifacts={"model.onnx": Artifact(sha256=sha, bytes=len(data))},
        calibration={}, preflight={})
    folder = package_dir(settings, manifest.package_id)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_bytes(manifest.canonical_bytes())
    shutil.copyfile(onnx, folder / "model.onnx")
    point_name(settings, name, manifest.package_id)
    return manifest.package_id


def test_names_ids_and_folders(home):
    settings = Settings()
    assert list_names(settings) == {}
    pid = register(settings, "iris_copy")
    assert list_names(settings) == {"iris_copy": pid}
    assert name_target(settings, "iris_copy") == pid and name_target(settings, "nope") is None
    folder = package_dir(settings, pid)
    assert folder == home / "packages" / pid
    # by name, by id, by an id prefix, by folder: the same package
    for ref in ("iris_copy", pid, pid[:12], str(folder)):
        assert resolve(settings, ref) == folder, ref
    pkg = find(settings, "iris_copy")
    assert (pkg.dir, pkg.id, pkg.name) == (folder, pid, "iris_copy")
    assert pkg.manifest.input.scale == 7
    pkg.check(["model.onnx"])
    with pytest.raises(NotFound, match="no circuit package 'nope'"):
        resolve(settings, "nope")
    with pytest.raises(NotFound):
        resolve(settings, "../names/iris_copy")  # not a name: never read as one


def test_a_name_can_point_elsewhere(home):
    settings = Settings()
    first = register(settings, "m", scale=7)
    second = register(settings, "m2", scale=9)
    point_name(settings, "m", second)
    assert list_names(settings) == {"m": second, "m2": second}
    assert find(settings, "m").id == second != first
    assert not [p for p in settings.names_dir.iterdir() if p.name.startswith(".")]  # no temp


def test_a_name_pointed_at_twice_at_once_is_always_one_whole_id(home):
    # two 'models add' of one name at once shared one temporary file: a reader saw the name
    # empty (resolving to the packages folder itself), and one writer's rename failed with
    # FileNotFoundError, a traceback after its package was built
    import threading

    settings, errors, seen = Settings(), [], set()
    ids = ["a" * 64, "b" * 64]

    def write(pid: str) -> None:
        for _ in range(500):
            try:
                point_name(settings, "m", pid)
            except OSError as exc:
                errors.append(exc)

    def read() -> None:
        for _ in range(1000):
            seen.add(name_target(settings, "m"))

    threads = [threading.Thread(target=write, args=(i,)) for i in ids]
    threads.append(threading.Thread(target=read))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and seen <= {None, *ids}
    assert list_names(settings) == {"m": name_target(settings, "m")}
    assert sorted(p.name for p in settings.names_dir.iterdir()) == ["m"]  # no temporary left


def test_a_name_file_that_holds_no_package_id_is_no_name(home):
    # a folder or bytes under names/ made list_names raise (IsADirectoryError, a traceback
    # from 'models list'; the server's registry then served no package at all), and a path
    # there led out of packages/, past the check that a manifest hashes to its folder's name
    settings = Settings()
    pid = register(settings, "good")
    (settings.names_dir / "folder").mkdir()
    (settings.names_dir / "bytes").write_bytes(b"\xff\xfe")
    shutil.copytree(package_dir(settings, pid), home / "elsewhere")
    (settings.names_dir / "path").write_text("../elsewhere\n")  # from packages/
    (settings.names_dir / "empty").write_text("\n")
    assert list_names(settings) == {"good": pid}
    for name in ("folder", "bytes", "path", "empty"):
        assert name_target(settings, name) is None
        with pytest.raises(NotFound):
            resolve(settings, name)


@pytest.mark.parametrize("bad", ["", "UPPER", ".hidden", "-x", "a/b", "x" * 65])
def test_bad_names_are_refused(bad):
    with pytest.raises(InputError, match="invalid model name"):
        check_name(bad)


def test_broken_packages_are_refused_with_one_line(home):
    settings = Settings()
    pid = register(settings, "iris_copy")
    folder = package_dir(settings, pid)
    raw = json.loads((folder / "manifest.json").read_text())
    raw["input"]["scale"] = 8  # still a valid manifest, but no longer the one the id names
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(PackageAltered, match="manifest.json was altered"):
        read_manifest(folder)
    shutil.rmtree(folder)
    with pytest.raises(PackageError, match="points to package .* which is missing"):
        resolve(settings, "iris_copy")
    (home / "not-a-package").mkdir()
    with pytest.raises(PackageError, match="no manifest.json"):
        find(settings, str(home / "not-a-package"))


def test_the_prover_refuses_another_ezkl_version(home):
    from prover.package import CircuitPackage

    settings = Settings()
    register(settings, "old", ezkl_version="22.0.0")
    with pytest.raises(PackageError, match="made by EZKL 22.0.0"):
        CircuitPackage.of(find(settings, "old"))


_START_UP = """
import sys, json
from server.settings import ServerSettings
from server.http.app import create_app
from server.relayer.models import load_local_models

settings = ServerSettings(models=("iris_mlp",), engine="onnx")
app = create_app(settings)
served = app.state.service.models
circuit = app.state.jobs.circuit("iris_copy")
local = load_local_models(settings)
print(json.dumps({"served": sorted(served), "scale": served["iris_copy"].scale,
                  "circuit": circuit.package_id, "relayer": [m.name for m in local.values()],
                  "relayer_scale": [m.scale for m in local.values()],
                  "ezkl": sorted(m for m in sys.modules if m.split(".")[0] == "ezkl")}))
"""


@pytest.mark.filterwarnings("ignore")
def test_server_and_relayer_start_without_importing_ezkl(home):
    """Building the app (and the relayer's models) with a registered package reads its
    manifest, serves its model at its input scale, and does not import EZKL."""
    pid = register(Settings(), "iris_copy", scale=9)
    proc = subprocess.run([sys.executable, "-c", _START_UP], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "VERINFER_HOME": str(home)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["served"] == ["iris_copy", "iris_mlp"] and out["scale"] == 9
    assert out["circuit"] == pid
    assert out["relayer"] == ["iris_copy"] and out["relayer_scale"] == [9]
    assert out["ezkl"] == []
