"""Finding and opening circuit packages in the data directory.

Layout under ``<home>``::

    packages/<package_id>/   manifest.json, model.onnx, settings.json, model.compiled,
                             vk.key, pk.key, kzg.srs, Verifier.sol, Verifier.json
    names/<name>             the package id a model name points to (one line)

A package is opened after checking that it was made by the installed EZKL and
that its files hash as the manifest says; anything else is refused with one
line, never silently used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from prover import backend as files
from verifier.config import Settings
from verifier.errors import InputError, NotFound, PackageError
from verifier.manifest import MANIFEST_FILE, Manifest

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-.")


def check_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= NAME_CHARS or name[0] in ".-":
        raise InputError(f"invalid model name {name!r}: use 1-64 of a-z 0-9 _ - . "
                         f"(not starting with . or -)")
    return name


def installed_ezkl_version() -> str:
    import ezkl

    return ezkl.__version__


@dataclass
class CircuitPackage:
    dir: Path
    manifest: Manifest
    _checked: set[str] = field(default_factory=set, repr=False)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def id(self) -> str:
        return self.manifest.package_id

    def path(self, artifact: str) -> Path:
        return self.dir / artifact

    def check(self, artifacts: list[str] | None = None) -> None:
        """Hash-check artifacts once per open package (pk.key is hundreds of MB)."""
        todo = [a for a in (artifacts or sorted(self.manifest.artifacts)) if a not in self._checked]
        self.manifest.check_artifacts(self.dir, todo)
        self._checked.update(todo)

    @classmethod
    def open(cls, folder: Path, check: list[str] | None = None) -> CircuitPackage:
        folder = Path(folder)
        manifest = Manifest.load(folder / MANIFEST_FILE)
        installed = installed_ezkl_version()
        if manifest.ezkl_version != installed:
            raise PackageError(
                f"{folder}: package made by EZKL {manifest.ezkl_version}, but EZKL {installed} "
                f"is installed; re-register the model with 'verinfer models add'"
            )
        if manifest.package_id != folder.name and folder.parent.name == "packages":
            raise PackageError(f"{folder}: manifest.json was altered (its hash is not the "
                               f"package id)")
        pkg = cls(folder, manifest)
        pkg.check(check)
        return pkg


PROVE_ARTIFACTS = [files.MODEL, files.SETTINGS, files.COMPILED, files.VK, files.PK, files.SRS]


def resolve(settings: Settings, ref: str | Path) -> Path:
    """A package folder from a model name, a package id (or prefix), or a path."""
    as_path = Path(ref)
    if (as_path / MANIFEST_FILE).is_file():
        return as_path
    name_file = settings.names_dir / str(ref)
    if str(ref) and set(str(ref)) <= NAME_CHARS and name_file.is_file():
        pid = name_file.read_text().strip()
        folder = settings.packages_dir / pid
        if not folder.is_dir():
            raise PackageError(f"model {ref!r} points to package {pid[:16]}… which is missing")
        return folder
    ref = str(ref)
    if len(ref) >= 8 and set(ref) <= set("0123456789abcdef") and settings.packages_dir.is_dir():
        hits = [p for p in settings.packages_dir.iterdir() if p.name.startswith(ref)]
        if len(hits) == 1:
            return hits[0]
    raise NotFound(f"no registered model or package {ref!r} (see 'verinfer models list')")


def find_package(settings: Settings, ref: str | Path, check: list[str] | None = None
                 ) -> CircuitPackage:
    """Open a registered package by name/id/path; ``check`` names artifacts to hash-check
    now (default: all of them)."""
    return CircuitPackage.open(resolve(settings, ref), check=check)


def list_names(settings: Settings) -> dict[str, str]:
    """Registered model names and the package id each points to."""
    if not settings.names_dir.is_dir():
        return {}
    return {p.name: p.read_text().strip() for p in sorted(settings.names_dir.iterdir())
            if not p.name.startswith(".")}


def point_name(settings: Settings, name: str, package_id: str) -> None:
    """Atomically make ``name`` refer to ``package_id``."""
    settings.names_dir.mkdir(parents=True, exist_ok=True)
    tmp = settings.names_dir / f".{name}.tmp"
    tmp.write_text(package_id + "\n")
    os.replace(tmp, settings.names_dir / name)
