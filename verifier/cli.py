"""The ``verinfer`` console command.

One command, many subcommands; each package owns its own and declares them as entry points
(group ``verinfer.commands`` in ``pyproject.toml``): ``name = "module:register [extra]"``,
where ``register(subparsers)`` adds the subcommand cheaply (handlers import what they need
when run) and the optional ``[extra]`` names the install extra the command needs. This root
lives in ``verifier`` (the base install) and names no module above it, so an auditor's light
install still has ``verify`` and ``audit``, and a command whose dependencies are missing
says which extra brings them.

Exit codes: 0 all good, 1 something failed verification, 2 usage or input
error (141 when the reader of standard output went away, as for a command killed by SIGPIPE).
Human lines go to stderr, ``--json`` output to stdout.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

from pydantic import ValidationError

from verifier.base import first_error
from verifier.errors import InputError, VerificationError, VerinferError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

COMMANDS_GROUP = "verinfer.commands"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def commands() -> dict[str, EntryPoint]:
    """The installed subcommands, by name (the first distribution to declare a name wins)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=COMMANDS_GROUP):
        found.setdefault(ep.name, ep)
    return found


def install_hint(ep: EntryPoint) -> str:
    """``pip install 'dist[extra,...]'`` for a command's declared extras."""
    dist = ep.dist.name if ep.dist is not None else "verinfer"
    return f"pip install '{dist}[{','.join(ep.extras)}]'"


def _is_ours(module: str, cmds: dict[str, EntryPoint]) -> bool:
    """Whether a missing module belongs to a package that declares commands (a bug, not a
    missing extra)."""
    top = module.split(".")[0]
    return top == __name__.split(".")[0] or any(ep.module.split(".")[0] == top
                                                for ep in cmds.values())


def build_parser(cmds: dict[str, EntryPoint] | None = None) -> argparse.ArgumentParser:
    cmds = commands() if cmds is None else cmds
    parser = _Parser(prog="verinfer", description="Verifiable inference: serve, prove, verify.")
    parser.add_argument("--version", action="version", version=f"verinfer {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, ep in cmds.items():
        try:
            register = ep.load()
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing.split(".")[0] == ep.module.split(".")[0]:
                continue  # the package that owns the command is not installed here
            if not ep.extras or not missing or _is_ours(missing, cmds):
                raise
            _unavailable(sub, name, ep, missing)  # it needs a dependency not installed
            continue
        register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("verinfer")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "(not installed)"


def _unavailable(sub, name: str, ep: EntryPoint, missing: str) -> None:
    """A placeholder for a command that cannot load here: listed, and says what to install."""
    hint = install_hint(ep)
    # prefix_chars: take every argument as a plain word, so any command line reaches the hint
    p = sub.add_parser(name, help=f"(not installed: {hint})", add_help=False, prefix_chars="\0")
    p.add_argument("args", nargs="*")

    def handler(args: argparse.Namespace) -> int:
        fail(f"'{name}' needs {missing}, which is not installed: {hint}")
        return EXIT_USAGE

    p.set_defaults(handler=handler)


def _plain_error(message: str) -> None:
    print(f"verinfer: error: {message}", file=sys.stderr)


# How fail() writes its line: `verinfer serve` with JSON logs (server.logs.configure) makes it a
# JSON log record, so a log shipper reads a refused start as every other line
error_line: Callable[[str], None] = _plain_error


def fail(message: str) -> None:
    error_line(message)


# A command whose standard output's reader went away (`verinfer audit --json | head`): the
# shell's status of a command killed by SIGPIPE (Python ignores the signal and raises instead).
EXIT_PIPE_CLOSED = 128 + 13


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe or socket whose reading end is closed."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll, or stdout is no file
        return False


def run(handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace,
        cmds: dict[str, EntryPoint] | None = None) -> int:
    """Run a handler; map verinfer's errors to exit codes, one line each."""
    try:
        return handler(args) or EXIT_OK
    except VerificationError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (InputError, VerinferError) as exc:
        fail(str(exc))
        return EXIT_USAGE
    except ValidationError as exc:
        if not exc.title.endswith("Settings"):  # a bug of ours, not the user's VERINFER_* setting
            raise
        fail(f"invalid setting {first_error(exc, 'settings')}")
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        # A command of an optional part run on a light install (e.g. the auditor's).
        cmds = commands() if cmds is None else cmds
        ep = cmds.get(getattr(args, "command", None) or "")
        if ep is not None and ep.extras and exc.name and not _is_ours(exc.name, cmds):
            fail(f"'{ep.name}' needs {exc.name}, which is not installed: {install_hint(ep)}")
            return EXIT_USAGE
        raise
    except BrokenPipeError:
        if not _stdout_reader_gone():  # another pipe (a child's, a socket's): a bug, not hidden
            raise
        # nothing more can be said there; /dev/null takes what Python flushes at exit, which
        # would otherwise fail (and print) again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    except KeyboardInterrupt:
        fail("interrupted")
        return 130
    except SystemError as exc:
        # Ctrl-C inside a native call (EZKL's calibrate_settings, gen_srs): the call returns
        # with the KeyboardInterrupt pending, and Python raises a SystemError from it
        if not isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt):
            raise
        fail("interrupted")
        return 130


def main(argv: list[str] | None = None) -> int:
    cmds = commands()
    args = build_parser(cmds).parse_args(argv)
    return run(args.handler, args, cmds)


if __name__ == "__main__":
    # the imported module's main, not this __main__ copy's: state set on verifier.cli (its
    # error_line, by server.logs) is then the state fail() reads
    from verifier.cli import main as imported_main

    sys.exit(imported_main())
