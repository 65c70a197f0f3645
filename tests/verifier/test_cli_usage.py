"""Usage errors a new user's walk-through found: each is exit 2 with one line, before any work
(before the fix: ignored, a traceback, or exit 1 as if a check had failed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier.cli import main
from verifier.keys import ed25519_jwk


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_version():
    r = subprocess.run([sys.executable, "-m", "verifier.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("verinfer 0."), r


def test_serve_with_an_unknown_log_level_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--log-level", "bogus"])
    assert exit_.value.code == 2
    assert "invalid choice: 'bogus'" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("args, says", [
    (["--name", ""], "invalid model name ''"),
    (["--srs-sha256", "zz"], "--srs-sha256 goes with --srs FILE"),
    (["--srs", "/nonexistent/kzg12.srs"], "no such SRS file"),  # was found after calibrating
])
def test_models_add_refuses_an_empty_name_and_a_hash_without_its_srs(tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.setenv("VERINFER_HOME", str(tmp_path / "home"))
    assert main(["models", "add", "iris_mlp", *args]) == 2
    assert says in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "home" / "packages").exists()  # nothing built


def _receipts(tmp_path):
    from test_audit_log import _log

    key = Ed25519PrivateKey.generate()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [ed25519_jwk(key.public_key())]}))
    receipts = _log(tmp_path / "a" / "log.sqlite3", key, 1)
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in receipts))
    return tmp_path / "r.jsonl"


def test_audit_with_a_models_folder_that_holds_no_package_is_a_usage_error(tmp_path, capsys):
    items = _receipts(tmp_path)
    (tmp_path / "empty").mkdir()
    rc = main(["audit", str(items), "--keys", str(tmp_path / "jwks.json"), "--models", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert rc == 2 and "no circuit packages" in _one_line(err)  # not "FAIL: DigestMismatch" per receipt


def test_two_logs_of_one_origin_are_refused_before_any_item_is_printed(tmp_path, capsys):
    import shutil

    items = _receipts(tmp_path)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    rc = main(["audit", str(items), "--keys", str(tmp_path / "jwks.json"),
               "--log", str(tmp_path / "a"), "--log", str(tmp_path / "b")])
    captured = capsys.readouterr()
    assert rc == 2 and "both logs of origin" in _one_line(captured.err) and "OK:" not in captured.out


def test_ctrl_c_inside_a_native_call_is_interrupted_not_a_traceback(capsys):
    # Ctrl-C during EZKL's calibrate_settings or gen_srs ('models add'): the native call
    # returns with the KeyboardInterrupt pending and Python raises SystemError from it
    from verifier.cli import run

    def interrupted_native_call(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("<built-in function calibrate_settings> returned a result with "
                              "an exception set") from exc

    assert run(interrupted_native_call, None, {}) == 130
    assert _one_line(capsys.readouterr().err) == "verinfer: error: interrupted"

    def bug(args):
        raise SystemError("a bug")

    with pytest.raises(SystemError):  # any other SystemError is still a bug, not hidden
        run(bug, None, {})


_PRINTS_A_LOT = ("import sys; from verifier.cli import run; "
                 "sys.exit(run(lambda args: print('x' * 1_000_000), None, {}))")


def test_a_reader_that_goes_away_is_no_traceback():
    # `verinfer audit ... --json | head`: the reader closes the pipe before the output is all
    # written; the command stops quietly with SIGPIPE's shell status (was a BrokenPipeError
    # traceback, twice: once more when Python flushed stdout at exit)
    r_fd, w_fd = os.pipe()
    os.close(r_fd)
    try:
        r = subprocess.run([sys.executable, "-c", _PRINTS_A_LOT], stdout=w_fd, stderr=subprocess.PIPE,
                           text=True, timeout=60)
    finally:
        os.close(w_fd)
    assert r.returncode == 141 and r.stderr == "", r


def test_a_broken_pipe_that_is_not_stdout_is_still_a_bug():
    code = ("import sys; from verifier.cli import run\n"
            "def handler(args):\n"
            "    raise BrokenPipeError(32, 'Broken pipe')  # e.g. a child process's pipe\n"
            "sys.exit(run(handler, None, {}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" in r.stderr and "BrokenPipeError" in r.stderr, r
