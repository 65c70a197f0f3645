"""SRS handling: ceremony files are checked against their published hash; the
development SRS is generated once per logrows and cached."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from prover_support import dead_and_running

from prover import srs
from verifier.errors import InputError

UNPINNED = 30  # past EZKL's largest public SRS (26): no hash is pinned for it


def test_ceremony_srs_with_matching_hash_is_accepted(tmp_path):
    f = tmp_path / "kzg30.srs"
    f.write_bytes(b"ceremony bytes")
    digest = hashlib.sha256(b"ceremony bytes").hexdigest()
    got = srs.ceremony_srs(f, UNPINNED, digest.upper())
    assert got.sha256 == digest and got.source == "ceremony" and not got.insecure


def test_ceremony_srs_with_other_hash_is_refused(tmp_path):
    f = tmp_path / "kzg30.srs"
    f.write_bytes(b"tampered bytes")
    with pytest.raises(InputError, match="not the published hash"):
        srs.ceremony_srs(f, UNPINNED, hashlib.sha256(b"ceremony bytes").hexdigest())


def test_ceremony_srs_without_a_published_hash_is_refused(tmp_path):
    f = tmp_path / "kzg30.srs"
    f.write_bytes(b"x")
    with pytest.raises(InputError, match="--srs-sha256"):
        srs.ceremony_srs(f, UNPINNED)


@pytest.mark.parametrize("logrows", [12, 15])  # the project's circuits
def test_file_that_is_not_the_pinned_ceremony_srs_is_refused(tmp_path, logrows):
    f = tmp_path / f"kzg{logrows}.srs"
    f.write_bytes(b"a locally generated SRS, not the ceremony's")
    with pytest.raises(InputError, match=f"not the published hash for logrows={logrows}"):
        srs.ceremony_srs(f, logrows)
    # --srs-sha256 cannot replace a pinned hash with the file's own
    own = hashlib.sha256(f.read_bytes()).hexdigest()
    with pytest.raises(InputError, match="not the pinned ceremony hash"):
        srs.ceremony_srs(f, logrows, own)


class CountingBackend:
    name, version = "fake-for-cache-test", "0"

    def __init__(self) -> None:
        self.calls = 0

    def make_dev_srs(self, path: Path, logrows: int) -> None:
        self.calls += 1
        path.write_bytes(bytes([logrows]) * 64)


def test_dev_srs_is_generated_once_per_logrows_and_marked_insecure(tmp_path):
    backend = CountingBackend()
    a = srs.dev_srs(tmp_path, 10, backend)
    b = srs.dev_srs(tmp_path, 10, backend)
    c = srs.dev_srs(tmp_path, 11, backend)
    assert backend.calls == 2 and a == b and a.insecure and c.logrows == 11
    assert a.sha256 == hashlib.sha256(bytes([10]) * 64).hexdigest()
    assert not list(tmp_path.glob("*.tmp"))


class RacingBackend:
    """Random bytes, as EZKL's gen_srs: the first caller is still generating when the second
    one has finished (or waits for it, up to a timeout, when the second one is kept out)."""

    name, version = "fake-for-race-test", "0"

    def __init__(self) -> None:
        import threading

        self.second_done = threading.Event()
        self.calls = 0

    def make_dev_srs(self, path: Path, logrows: int) -> None:
        self.calls += 1
        if self.calls == 1:
            self.second_done.wait(timeout=2)
        path.write_bytes(os.urandom(64))


def test_two_generating_the_same_dev_srs_at_once_agree_with_the_cache(tmp_path):
    # Two 'models add' of one logrows at once: each generated an SRS, replaced the cached
    # file and wrote its own hash, so one package's manifest named an SRS hash that its
    # kzg.srs (hard-linked from the cache) did not have, and the cache could stay so.
    import threading

    backend, got = RacingBackend(), {}

    def add(who: str) -> None:
        got[who] = srs.dev_srs(tmp_path, 10, backend)
        if who == "second":  # then links the cached file into its package after the first
            backend.second_done.set()
            first.join()
        got[who + "_bytes"] = got[who].path.read_bytes()  # what its package's kzg.srs holds

    first = threading.Thread(target=add, args=("first",))
    first.start()
    while backend.calls == 0:  # the first is generating
        threading.Event().wait(0.01)
    second = threading.Thread(target=add, args=("second",))
    second.start()
    first.join()
    second.join()
    cached = (tmp_path / "dev-k10.srs").read_bytes()
    for who in ("first", "second"):
        assert hashlib.sha256(got[who + "_bytes"]).hexdigest() == got[who].sha256
    assert json.loads((tmp_path / "dev-k10.json").read_text())["sha256"] == \
        hashlib.sha256(cached).hexdigest()
    assert backend.calls == 1 and not list(tmp_path.glob("*.tmp"))


def test_a_ceremony_srs_is_copied_into_the_package_not_linked(tmp_path):
    # a hard link shared the user's file: written over in place later (cp of another file,
    # an interrupted download), it changed the package's kzg.srs too, and every proof of the
    # package then failed its artifact hash
    f = tmp_path / "kzg30.srs"
    f.write_bytes(b"ceremony bytes")
    ceremony = srs.ceremony_srs(f, UNPINNED, hashlib.sha256(b"ceremony bytes").hexdigest())
    srs.place(ceremony, tmp_path / "package-kzg.srs")
    with open(f, "r+b") as out:  # as cp writes over an existing file: same inode
        out.write(b"other bytes!!!")
    assert (tmp_path / "package-kzg.srs").read_bytes() == b"ceremony bytes"
    dev = srs.dev_srs(tmp_path / "cache", 10, CountingBackend())
    srs.place(dev, tmp_path / "dev-kzg.srs")  # the cache's: linked (its files are only renamed)
    assert (tmp_path / "dev-kzg.srs").stat().st_ino == dev.path.stat().st_ino


def test_what_a_killed_generation_left_is_removed_by_the_next_of_any_logrows(tmp_path):
    # a 'models add' killed while EZKL wrote the SRS left its temporary file (GBs for a big
    # logrows) in the cache; only a later generation of the same logrows removed it, so one of
    # a logrows never generated again stayed for good. Generations work in held folders now
    # (prover/workdirs.py): a dead one's is removed by the next of any logrows.
    with dead_and_running(tmp_path, ".tmp-"):
        srs.dev_srs(tmp_path, 10, CountingBackend())
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")) == [
            ".tmp-running", ".tmp-running.lock"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".tmp-")) == [
        ".dev-k10.lock", "dev-k10.json", "dev-k10.srs"]
