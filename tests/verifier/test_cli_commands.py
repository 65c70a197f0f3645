"""The ``verinfer`` command is assembled from the ``verinfer.commands`` entry points: the
trust root (``verifier.cli``) imports nothing above it, registration is cheap, and a command
whose dependencies are missing is listed and says which extra brings it (one line, exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ABOVE = ("prover", "server", "contracts")
HEAVY = ("torch", "fastapi", "uvicorn", "web3", "eth_tester", "ezkl", "onnxruntime", "sklearn")


def _loaded(code: str, env: dict | None = None) -> list[str]:
    """Top-level packages in sys.modules after running ``code`` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                           "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"],
                          capture_output=True, text=True, check=True, env=env, cwd=REPO)
    return proc.stdout.split()


def test_importing_the_cli_loads_nothing_above_the_verifier():
    loaded = _loaded("import verifier.cli")
    assert "verifier" in loaded
    assert not [m for m in loaded if m in ABOVE], loaded


def test_building_the_parser_imports_no_heavy_dependency():
    loaded = _loaded("import verifier.cli as c\nc.build_parser()")
    assert {"prover", "server", "contracts"} <= set(loaded)  # the commands were registered
    assert not [m for m in loaded if m in HEAVY], loaded


def test_installed_commands_are_the_ones_pyproject_declares():
    from verifier.cli import build_parser, commands

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"][
        "verinfer.commands"]
    installed = {name: ep.value for name, ep in commands().items()}
    # a difference means a stale install: pip install --no-deps -e .
    assert installed == declared
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(declared)


def _fake_distribution(tmp_path: Path) -> dict:
    """A distribution ``fakecmds`` on PYTHONPATH with two commands: ``ghost`` (its module
    needs a package that is not installed) and ``halfway`` (registers, but its handler needs
    one)."""
    info = tmp_path / "fakecmds-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakecmds\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [verinfer.commands]
        ghost = fakecmds_ghost:register [ghostly]
        halfway = fakecmds_half:register [half]
        """))
    (tmp_path / "fakecmds_ghost.py").write_text("import no_such_dependency_ghost\n")
    (tmp_path / "fakecmds_half.py").write_text(textwrap.dedent("""\
        def register(sub):
            p = sub.add_parser("halfway", help="a command whose handler needs more")
            p.set_defaults(handler=_run)

        def _run(args):
            import no_such_dependency_half  # noqa: F401
        """))
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def _verinfer(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "verifier.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO)


def test_a_command_whose_dependencies_are_missing_names_its_extra(tmp_path):
    env = _fake_distribution(tmp_path)
    listing = _verinfer("--help", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "    verify" in listing.stdout and "    halfway" in listing.stdout
    assert "ghost" in listing.stdout and "pip install 'fakecmds[ghostly]'" in listing.stdout

    for argv, missing, extra in ((["ghost", "--any", "thing"], "no_such_dependency_ghost",
                                  "ghostly"),
                                 (["halfway"], "no_such_dependency_half", "half")):
        proc = _verinfer(*argv, env=env)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines() == [
            f"verinfer: error: '{argv[0]}' needs {missing}, which is not installed: "
            f"pip install 'fakecmds[{extra}]'"], proc.stderr


def test_a_missing_module_of_ours_is_a_bug_not_a_missing_extra(tmp_path):
    """Only third-party modules are blamed on an extra: a broken import of our own code
    shows its traceback."""
    env = _fake_distribution(tmp_path)
    (tmp_path / "fakecmds_half.py").write_text(textwrap.dedent("""\
        def register(sub):
            p = sub.add_parser("halfway")
            p.set_defaults(handler=_run)

        def _run(args):
            import prover.no_such_module  # noqa: F401
        """))
    proc = _verinfer("halfway", env=env)
    assert proc.returncode == 1 and "Traceback" in proc.stderr, proc.stderr
    assert "pip install" not in proc.stderr
