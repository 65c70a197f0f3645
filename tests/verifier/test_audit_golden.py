"""The golden corpus (tests/golden_corpus.py, built once per session): every valid item
passes, every tampered one fails with its error kind, malformed input exits 2 — with torch
& co. unimportable and the network raising. The audit only verifies (milliseconds per proof)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from audit_support import GOLDEN, NO_INET, corpus_args, no_network_prefix, outcomes, verinfer

INDEX = json.loads((GOLDEN / "corpus.json").read_text())
EXIT = {"ok": 0, "InputError": 2}


def test_golden_corpus_covers_every_kind():
    kinds = set(INDEX["items"].values())
    assert {"ok", "SignatureInvalid", "KeyUnknown", "DigestMismatch", "LinkBroken",
            "ProofInvalid", "InputError"} <= kinds


def test_audit_golden_corpus_offline_and_light():
    proc = verinfer("audit", GOLDEN, *corpus_args(GOLDEN), "--json")
    assert proc.returncode == 1, proc.stderr  # some items fail verification
    report = json.loads(proc.stdout)
    assert outcomes(report, GOLDEN) == INDEX["items"]
    lines = proc.stderr.splitlines()
    for item, kind in INDEX["items"].items():
        tag = "OK" if kind == "ok" else ("ERROR" if kind == "InputError" else "FAIL")
        assert any(line.startswith(f"{tag}: {GOLDEN / item}") for line in lines), item
    assert "failures by kind:" in proc.stderr
    assert report["counts"]["ok"] == sum(k == "ok" for k in INDEX["items"].values())


@pytest.mark.parametrize("item", sorted(INDEX["items"]))
def test_each_golden_item_alone_gives_its_exit_code(item):
    kind = INDEX["items"][item]
    path = GOLDEN / item.split(":")[0]  # one line of a .jsonl: audit the whole file
    proc = verinfer("audit", path, *corpus_args(GOLDEN), "--quiet")
    assert proc.returncode == EXIT.get(kind, 1), proc.stderr
    if kind == "InputError":
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
        assert len(errors) == 1 and "Traceback" not in proc.stderr
    elif kind != "ok":
        (fail,) = [line for line in proc.stderr.splitlines() if line.startswith("FAIL:")]
        assert f": {kind}: " in fail


def test_verify_command_on_golden_bundles(tmp_path):
    keys = ["--keys", GOLDEN / "jwks.json"]
    pkg = next((GOLDEN / "packages").iterdir())
    ok = verinfer("verify", GOLDEN / "bundles" / "valid-signed", "--package", pkg, *keys, "--json",
                  "--allow-dev-srs")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"ok": True, "model": "iris_mlp", "label": 2, "agree": True,
                                     "signed": True, "dev_srs": True}
    # a receipt and no trusted keys: fails closed
    nokeys = verinfer("verify", GOLDEN / "bundles" / "valid-signed", "--package", pkg)
    assert nokeys.returncode == 1 and "KeyUnknown" not in nokeys.stderr.split(":")[0]
    assert "no trusted keys" in nokeys.stderr
    bad = verinfer("verify", GOLDEN / "bundles" / "label-differs", "--package", pkg, *keys,
                   "--allow-dev-srs")
    assert bad.returncode == 1 and bad.stderr.startswith("FAIL:")
    trunc = verinfer("verify", GOLDEN / "bundles" / "truncated", "--package", pkg, *keys)
    assert trunc.returncode == 2 and len(trunc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("how", ["best", "seccomp"])
def test_audit_with_no_network_at_all(how):
    """Audit with no network at all, for native code too (the socket-patched runs only stop
    Python's socket module): in a fresh network namespace where unprivileged user namespaces
    are allowed, else under a seccomp filter that refuses every non-AF_UNIX socket. The filter
    is also run on its own, so CI runs it whatever the machine allows. (Before: skipped where
    no namespace could be made, as on Ubuntu 24.04 or in Docker.)"""
    name, prefix = no_network_prefix() if how == "best" else ("seccomp", [sys.executable, "-c", NO_INET])
    if name == "seccomp":  # the filter is on: an IPv4/IPv6 socket cannot even be made
        probe = subprocess.run([*prefix, sys.executable, "-c", PROBE], capture_output=True, text=True)
        assert probe.returncode == 0 and probe.stdout.split() == ["refused", "13", "13", "unix"], probe
    proc = verinfer("audit", GOLDEN, *corpus_args(GOLDEN), "--json", prefix=prefix)
    assert proc.returncode == 1, (name, proc.stderr)
    assert outcomes(json.loads(proc.stdout), GOLDEN) == INDEX["items"]


PROBE = """
import errno, socket
codes = []
for family in (socket.AF_INET, socket.AF_INET6):
    try:
        socket.socket(family).close()
    except OSError as exc:
        codes.append(exc.errno)
print("refused", *codes, "unix" if socket.socket(socket.AF_UNIX) else "")
"""


def test_wrong_eth_signer_fails_every_receipt_with_key_unknown():
    args = ["--keys", GOLDEN / "jwks.json", "--models", GOLDEN / "packages",
            "--eth-signer", "0x" + "12" * 20]
    proc = verinfer("audit", GOLDEN / "receipts" / "valid.jsonl", *args, "--json")
    assert proc.returncode == 1
    assert {i["error"] for i in json.loads(proc.stdout)["items"]} == {"KeyUnknown"}
