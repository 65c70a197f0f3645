"""Where circuit packages live in the data directory, and how model names point at them.

Layout under ``<home>`` (``Settings.packages_dir`` and ``Settings.names_dir``)::

    packages/<package_id>/   manifest.json and the artifacts it lists (model.onnx,
                             settings.json, model.compiled, vk.key, pk.key, kzg.srs,
                             Verifier.sol, Verifier.json)
    names/<name>             the package id a model name points to (one line)

The one owner of this layout: the commands, the server, the relayer and the deployer all
find packages here. Opening a package reads its manifest only (no EZKL); the prover
(:mod:`prover.package`) adds the EZKL-version check it needs before proving.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from verifier.config import Settings
from verifier.errors import InputError, NotFound, PackageAltered, PackageError
from verifier.manifest import MANIFEST_FILE, Manifest

NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")
_HEX = frozenset("0123456789abcdef")


def check_name(name: str) -> str:
    """``name`` if it is a valid model name, else :class:`InputError`."""
    if not name or len(name) > 64 or not set(name) <= NAME_CHARS or name[0] in ".-":
        raise InputError(f"invalid model name {name!r}: use 1-64 of a-z 0-9 _ - . "
                         f"(not starting with . or -)")
    return name


@dataclass
class Package:
    """An opened circuit package: its folder and its manifest (read once)."""

    dir: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def id(self) -> str:
        return self.manifest.package_id

    def path(self, artifact: str) -> Path:
        return self.dir / artifact

    def check(self, artifacts: list[str] | None = None) -> None:
        """:class:`PackageError` unless the named artifacts (default: all) hash as recorded."""
        self.manifest.check_artifacts(self.dir, artifacts)


def package_dir(settings: Settings, package_id: str) -> Path:
    """The folder of the package with this (full) id in the data dir."""
    return settings.packages_dir / package_id


def name_target(settings: Settings, name: str) -> str | None:
    """The package id ``name`` points to, or None when no such name is registered."""
    if not name or not set(name) <= NAME_CHARS or name[0] == ".":
        return None
    return _pointer(settings.names_dir / name)


def _pointer(path: Path) -> str | None:
    """The package id a name's file holds; None unless it is one (a folder, bytes that are no
    text, a path: never followed, so no name leads out of ``packages/``)."""
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if is_package_id(text) else None


def list_names(settings: Settings) -> dict[str, str]:
    """Registered model names and the package id each points to (a name whose file holds no
    package id is left out: one such file hid every name from the server)."""
    if not settings.names_dir.is_dir():
        return {}
    pointers = {p.name: _pointer(p) for p in sorted(settings.names_dir.iterdir())
                if not p.name.startswith(".")}
    return {name: pid for name, pid in pointers.items() if pid is not None}


def point_name(settings: Settings, name: str, package_id: str) -> None:
    """Atomically make ``name`` refer to ``package_id``."""
    check_name(name)
    settings.names_dir.mkdir(parents=True, exist_ok=True)
    # a temporary file of its own: two 'models add' of one name at once shared one, so one
    # renamed the other's half-written file into place and the other's rename failed
    fd, tmp = tempfile.mkstemp(dir=settings.names_dir, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(package_id + "\n")
        os.chmod(tmp, 0o644)  # as a plain write_text made it (mkstemp's is 0600)
        os.replace(tmp, settings.names_dir / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_name(settings: Settings, name: str) -> str | None:
    """Forget the model name ``name``; the package id it pointed to (None when its file held
    none). :class:`NotFound` when no such name is registered."""
    try:
        path = settings.names_dir / check_name(name)  # (no path outside names/)
    except InputError:
        path = None
    if path is None or not path.is_file():
        raise NotFound(f"no model named {name!r} (see 'verinfer models list')")
    pid = _pointer(path)
    path.unlink(missing_ok=True)
    return pid


def resolve(settings: Settings, ref: str | Path) -> Path:
    """A package folder from a path (a folder with a manifest), a registered model name, or a
    package id (a prefix of 8 or more hex digits will do)."""
    as_path = Path(ref)
    if (as_path / MANIFEST_FILE).is_file():
        return as_path
    ref = str(ref)
    pid = name_target(settings, ref)
    if pid is not None:
        folder = package_dir(settings, pid)
        if not folder.is_dir():
            raise PackageError(f"model {ref!r} points to package {pid[:16]}… which is missing")
        return folder
    if len(ref) >= 8 and set(ref) <= _HEX and settings.packages_dir.is_dir():
        hits = [p for p in settings.packages_dir.iterdir() if p.name.startswith(ref)]
        if len(hits) == 1:
            return hits[0]
    if as_path.is_dir():  # a folder that is no package: say so when it is opened
        return as_path
    raise NotFound(f"no circuit package {ref!r}: not a package folder, a registered model "
                   f"name or a package id (see 'verinfer models list')")


def is_package_id(text: str) -> bool:
    return len(text) == 64 and set(text) <= _HEX


def read_manifest(folder: Path) -> Manifest:
    """A package folder's manifest; in a data dir, or in any folder named by a package id,
    refused unless it hashes to the folder's name (:class:`PackageAltered`: a tampered
    package is a failed check, exit 1)."""
    folder = Path(folder)
    manifest = Manifest.load(folder / MANIFEST_FILE)
    if ((folder.parent.name == "packages" or is_package_id(folder.name))
            and manifest.package_id != folder.name):
        raise PackageAltered(f"{folder}: manifest.json was altered (it hashes to "
                             f"{manifest.package_id[:16]}…, not the package id)")
    return manifest


def open_package(folder: Path) -> Package:
    folder = Path(folder)
    return Package(folder, read_manifest(folder))


def find(settings: Settings, ref: str | Path) -> Package:
    """Open a package by model name, package id (or prefix) or folder."""
    return open_package(resolve(settings, ref))
