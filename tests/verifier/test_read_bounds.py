"""Every file verify and audit read is bounded (verifier/limits.py, docs/audit.md): past its
bound it is refused in one line, exit 2. 'verinfer verify /dev/zero' read until memory ran
out; here the command runs under a 2 GiB address-space cap, so the unbounded read dies of a
MemoryError (a traceback) instead of taking the machine's memory."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from verifier import limits
from verifier.audit import collect


def _verinfer(*args, home: Path) -> subprocess.CompletedProcess:
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    env = {**os.environ, "VERINFER_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "verifier.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, preexec_fn=cap)


def _one_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def _package(tmp_path: Path) -> Path:
    """A folder whose manifest.json is one byte over the bound (a sparse file: no disk)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    with open(pkg / "manifest.json", "wb") as f:
        f.truncate(limits.MAX_MANIFEST_BYTES + 1)
    return pkg


def _bundle(tmp_path: Path) -> Path:
    """A bundle.json that parses far enough to name its package (it never gets further)."""
    b = tmp_path / "b" / "bundle.json"
    b.parent.mkdir()
    b.write_text(json.dumps({"format": "verinfer.proof-bundle/v1"}))
    return b


CASES = {  # what is read from /dev/zero (or a file past its bound): args, and the one line
    "verify-bundle": (lambda t: ["verify", "/dev/zero"], "a proof bundle is over 64 MiB"),
    "verify-keys": (lambda t: ["verify", _bundle(t), "--keys", "/dev/zero"],
                    "a keys file is over 1 MiB"),
    "audit-keys": (lambda t: ["audit", t, "--keys", "/dev/zero"], "a keys file is over 1 MiB"),
    "audit-models": (lambda t: ["audit", _bundle(t), "--models", _package(t)],
                     "a manifest is over 16 MiB"),
}


@pytest.mark.parametrize("case", CASES)
def test_an_endless_file_is_refused_in_one_line(home, tmp_path, case):
    args, says = CASES[case]
    line = _one_line(_verinfer(*args(tmp_path), home=home))
    assert says in line and "the most verinfer reads (docs/audit.md)" in line, line


def test_verify_package_reads_a_bounded_manifest(tmp_path):
    """verify --package DIR reads DIR/manifest.json as every command does (Manifest.load)."""
    from verifier.errors import PackageError
    from verifier.packages import find

    with pytest.raises(PackageError, match="a manifest is over 16 MiB"):
        find(None, _package(tmp_path))


def test_audit_refuses_a_device_given_as_a_path(home):
    line = _one_line(_verinfer("audit", "/dev/zero", home=home))
    assert line == "verinfer: error: /dev/zero: not a file or folder"


def test_a_receipts_file_over_its_bound_is_an_unreadable_item(tmp_path, monkeypatch):
    monkeypatch.setattr("verifier.audit.MAX_RECEIPTS_FILE_BYTES", 1000)
    (tmp_path / "big.jsonl").write_text("{}\n" * 400)  # 1,200 bytes
    (tmp_path / "small.jsonl").write_text("{}\n" * 300)
    (tmp_path / "endless.json").symlink_to("/dev/zero")
    items = {Path(i.name).name: i for i in collect([tmp_path]) if i.kind == "unreadable"}
    assert set(items) == {"big.jsonl", "endless.json"}
    assert items["big.jsonl"].problem == ("a receipts file is over 0.000953674 MiB, the most "
                                          "verinfer reads (docs/audit.md)")
    assert len([i for i in collect([tmp_path / "small.jsonl"])]) == 300


def test_a_file_at_its_bound_is_read_one_past_it_is_not(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 10)
    assert limits.read_bounded(f, 10, "a file") == b"x" * 10
    with pytest.raises(limits.InputError, match="a file is over"):
        limits.read_bounded(f, 9, "a file")
