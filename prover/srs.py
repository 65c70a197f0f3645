"""Structured reference strings: a local development SRS, or a ceremony file.

Development SRS: generated here with EZKL's ``gen_srs`` and cached per logrows
under ``<home>/srs/``. Whoever generates it knows its secret and can forge
proofs, so packages made with it are marked ``insecure`` in their manifest and
every command that uses them says so.

Ceremony SRS: a file the user brings (``--srs FILE``), checked against the
SHA-256 published for that logrows before use. Hashes are pinned in
``verifier/srs_ceremony.json`` (the verifier checks packages against the same
table; its ``source`` field cites where they come from). A logrows without a
pinned hash needs ``--srs-sha256``; where one is pinned it always wins, and a
mismatch is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from prover.backend import ProofSystem
from prover.workdirs import held_tempdir
from verifier.digests import sha256_file
from verifier.errors import InputError
from verifier.srs import pinned_ceremony_hash


@dataclass(frozen=True)
class SRSFile:
    path: Path
    logrows: int
    sha256: str
    source: str  # "development" or "ceremony"

    @property
    def insecure(self) -> bool:
        return self.source == "development"


def has_dev_srs(cache_dir: Path, logrows: int) -> bool:
    """Whether :func:`dev_srs` has the SRS for ``logrows`` cached (else it generates it)."""
    path = cache_dir / f"dev-k{logrows}.srs"
    return path.is_file() and path.with_suffix(".json").is_file()


def dev_srs(cache_dir: Path, logrows: int, backend: ProofSystem) -> SRSFile:
    """The cached development SRS for ``logrows``, generating it on first use."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"dev-k{logrows}.srs"
    meta = path.with_suffix(".json")
    if not has_dev_srs(cache_dir, logrows):
        # One generator per logrows at a time (another process's 'models add' waits, then
        # finds it cached): two generating at once each replaced the file and wrote its own
        # hash, so the cache (and the packages made meanwhile) could pair one SRS with the
        # other's hash. Generate beside the cache and rename: readers never see half a file.
        with open(cache_dir / f".dev-k{logrows}.lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            if not has_dev_srs(cache_dir, logrows):
                _generate(cache_dir, logrows, backend)
    recorded = json.loads(meta.read_text())
    return SRSFile(path=path, logrows=logrows, sha256=recorded["sha256"], source="development")


def _generate(cache_dir: Path, logrows: int, backend: ProofSystem) -> None:
    path = cache_dir / f"dev-k{logrows}.srs"
    # In a held working folder (prover/workdirs.py, as builds and searches): what a generation
    # killed outright left (2^logrows points, GBs for a big logrows) is removed by the next
    # generation of any logrows; it was removed only by the next of the same logrows.
    with held_tempdir(".tmp-", cache_dir) as work:
        tmp = work / path.name
        backend.make_dev_srs(tmp, logrows)
        digest = sha256_file(tmp)
        os.replace(tmp, path)
        meta = work / "meta.json"  # the hash beside it, renamed into place whole as well
        meta.write_text(json.dumps({"logrows": logrows, "sha256": digest,
                                    "insecure": True, "note": "development only"}))
        os.replace(meta, path.with_suffix(".json"))


def ceremony_srs(path: Path, logrows: int, expected_sha256: str | None = None) -> SRSFile:
    """Check a user's ceremony SRS file against the published hash for ``logrows``."""
    if not path.is_file():
        raise InputError(f"{path}: no such SRS file")
    pinned = pinned_ceremony_hash(logrows)
    if pinned is not None and expected_sha256 and expected_sha256.lower() != pinned:
        raise InputError(
            f"--srs-sha256 {expected_sha256.lower()} is not the pinned ceremony hash for "
            f"logrows={logrows} ({pinned}); refusing this SRS"
        )
    expected = pinned or expected_sha256
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
    """Put the SRS into a package folder: a hard link to the development cache when possible
    (they are large, and the cache's files are only ever replaced by a rename), a copy of a
    user's ceremony file (a link would share its bytes: the file written over in place later,
    by cp or a new download, would change every package made from it)."""
    if srs.source == "development":
        try:
            os.link(srs.path, dest)
            return
        except OSError:
            pass
    shutil.copyfile(srs.path, dest)
