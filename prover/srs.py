"""Structured reference strings: a local development SRS, or a ceremony file.

Development SRS: generated here with EZKL's ``gen_srs`` and cached per logrows
under ``<home>/srs/``. Whoever generates it knows its secret and can forge
proofs, so packages made with it are marked ``insecure`` in their manifest and
every command that uses them says so.

Ceremony SRS: a file the user brings (``--srs FILE``), checked against the
SHA-256 published for that logrows before use. Hashes are pinned in
``prover/srs_ceremony.json``; see the ``source`` field there for where they
come from. A logrows without a pinned hash needs ``--srs-sha256`` (the hash
the user took from the ceremony's publication); a mismatch is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prover.backend import ProofSystem
from verifier.digests import sha256_file
from verifier.errors import InputError

CEREMONY_HASHES = Path(__file__).with_name("srs_ceremony.json")


@dataclass(frozen=True)
class SRSFile:
    path: Path
    logrows: int
    sha256: str
    source: str  # "development" or "ceremony"

    @property
    def insecure(self) -> bool:
        return self.source == "development"


def dev_srs(cache_dir: Path, logrows: int, backend: ProofSystem) -> SRSFile:
    """The cached development SRS for ``logrows``, generating it on first use."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"dev-k{logrows}.srs"
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        # Generate beside the cache and rename: concurrent callers never see half a file.
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".dev-k{logrows}-", suffix=".tmp")
        os.close(fd)
        try:
            backend.make_dev_srs(Path(tmp), logrows)
            digest = sha256_file(Path(tmp))
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        meta.write_text(json.dumps({"logrows": logrows, "sha256": digest,
                                    "insecure": True, "note": "development only"}))
    recorded = json.loads(meta.read_text())
    return SRSFile(path=path, logrows=logrows, sha256=recorded["sha256"], source="development")


def pinned_ceremony_hash(logrows: int) -> str | None:
    table = json.loads(CEREMONY_HASHES.read_text())
    return table.get("sha256_by_logrows", {}).get(str(logrows))


def ceremony_srs(path: Path, logrows: int, expected_sha256: str | None = None) -> SRSFile:
    """Check a user's ceremony SRS file against the published hash for ``logrows``."""
    if not path.is_file():
        raise InputError(f"{path}: no such SRS file")
    expected = expected_sha256 or pinned_ceremony_hash(logrows)
    if expected is None:
        raise InputError(
            f"no published SHA-256 is pinned for a logrows={logrows} SRS: pass the ceremony's "
            f"published hash with --srs-sha256"
        )
    digest = sha256_file(path)
    if digest != expected.lower():
        raise InputError(
            f"{path}: SHA-256 {digest} is not the published hash for logrows={logrows} "
            f"({expected.lower()}); refusing this SRS"
        )
    return SRSFile(path=path, logrows=logrows, sha256=digest, source="ceremony")


def place(srs: SRSFile, dest: Path) -> None:
    """Put the SRS into a package folder (hard link when possible: they are large)."""
    try:
        os.link(srs.path, dest)
    except OSError:
        shutil.copyfile(srs.path, dest)
