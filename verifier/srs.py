"""Is a circuit package's SRS the public ceremony's? The trust check on ``kzg.srs``.

Whoever generated a KZG SRS knows its secret and can forge proofs, so a proof
only means something under the public Perpetual Powers of Tau SRS. The SHA-256
of EZKL's published ``kzg{logrows}.srs`` files is pinned in
``srs_ceremony.json`` (beside this module; its ``source`` field cites where
the hashes come from). A package passes only when its ``kzg.srs`` (hashed
against the manifest by ``Manifest.check_artifacts``) is that file;
otherwise :class:`InsecureSRS`, unless the caller allows a development SRS.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from verifier.errors import DigestMismatch, InsecureSRS
from verifier.manifest import Manifest

CEREMONY_TABLE = Path(__file__).with_name("srs_ceremony.json")
SRS_ARTIFACT = "kzg.srs"


@lru_cache(maxsize=1)
def _table() -> dict[str, str]:
    return json.loads(CEREMONY_TABLE.read_text())["sha256_by_logrows"]


def pinned_ceremony_hash(logrows: int) -> str | None:
    """The published SHA-256 of the ceremony SRS for ``logrows``, or None."""
    return _table().get(str(logrows))


def is_ceremony_srs(manifest: Manifest) -> bool:
    """The manifest's SRS is the pinned ceremony file for its logrows."""
    pinned = pinned_ceremony_hash(manifest.srs.logrows)
    return pinned is not None and manifest.srs.sha256.lower() == pinned


def check_package_srs(manifest: Manifest, *, allow_dev_srs: bool = False) -> None:
    """Raise unless the package's SRS is the public ceremony's (or dev SRS is allowed).

    :class:`DigestMismatch` when the manifest's SRS hash is not its ``kzg.srs``
    artifact's; :class:`InsecureSRS` when that file is not the pinned ceremony
    file (a development SRS, or one claimed as ceremony that is not).
    """
    art = manifest.artifacts.get(SRS_ARTIFACT)
    if art is None or art.sha256.lower() != manifest.srs.sha256.lower():
        raise DigestMismatch("the manifest's SRS hash is not its kzg.srs artifact's")
    if allow_dev_srs or is_ceremony_srs(manifest):
        return
    if manifest.srs.source == "development" or manifest.srs.insecure:
        why = "a development SRS (whoever generated it can forge proofs)"
    else:
        why = (f"an SRS whose SHA-256 {manifest.srs.sha256[:16]}… is not the published "
               f"ceremony file for logrows={manifest.srs.logrows}")
    raise InsecureSRS(f"package {manifest.name} uses {why}; pass --allow-dev-srs to accept "
                      f"it for development")
