"""The prover's view of a circuit package: one found and opened by :mod:`verifier.packages`
(the owner of the data dir's layout), refused unless it was made by the installed EZKL, with
its artifacts hash-checked before they are used. Anything else is refused with one line,
never silently used.

The installed EZKL's version is read from its distribution's metadata, so opening a package
does not import EZKL (the server and the relayer open packages at start-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prover import backend as files
from verifier.config import Settings
from verifier.errors import PackageError
from verifier.packages import (
    Package,
    check_name,
    list_names,
    open_package,
    point_name,
    resolve,
)

# the layout's functions, for the prover's callers
__all__ = ["PROVE_ARTIFACTS", "CircuitPackage", "check_ezkl_version", "check_name",
           "find_package", "installed_ezkl_version", "list_names", "point_name", "resolve"]


def installed_ezkl_version() -> str:
    from importlib.metadata import version

    return version("ezkl")


def check_ezkl_version(package: Package) -> None:
    """:class:`PackageError` unless the package was made by the installed EZKL."""
    made_by, installed = package.manifest.ezkl_version, installed_ezkl_version()
    if made_by != installed:
        raise PackageError(
            f"{package.dir}: package made by EZKL {made_by}, but EZKL {installed} "
            f"is installed; re-register the model with 'verinfer models add'"
        )


@dataclass
class CircuitPackage(Package):
    _checked: set[str] = field(default_factory=set, repr=False)

    def check(self, artifacts: list[str] | None = None) -> None:
        """Hash-check artifacts once per open package (pk.key is hundreds of MB)."""
        names = artifacts if artifacts is not None else sorted(self.manifest.artifacts)
        todo = [a for a in names if a not in self._checked]
        self.manifest.check_artifacts(self.dir, todo)
        self._checked.update(todo)

    @classmethod
    def of(cls, package: Package, check: list[str] | None = None) -> CircuitPackage:
        """The prover's package for one opened with :mod:`verifier.packages` (its manifest is
        not read again); ``check`` names artifacts to hash-check now (default: all)."""
        check_ezkl_version(package)
        pkg = cls(package.dir, package.manifest)
        pkg.check(check)
        return pkg

    @classmethod
    def open(cls, folder: Path, check: list[str] | None = None) -> CircuitPackage:
        return cls.of(open_package(folder), check=check)


PROVE_ARTIFACTS = [files.MODEL, files.SETTINGS, files.COMPILED, files.VK, files.PK, files.SRS]


def find_package(settings: Settings, ref: str | Path, check: list[str] | None = None
                 ) -> CircuitPackage:
    """Open a registered package by name/id/path; ``check`` names artifacts to hash-check
    now (default: all of them)."""
    return CircuitPackage.open(resolve(settings, ref), check=check)
