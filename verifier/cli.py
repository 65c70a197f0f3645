"""The ``verinfer`` console command.

One command, many subcommands; each package owns its own. This root lives in
``verifier`` (the base install) and picks up the other packages' subcommands
when they and their dependencies are installed, so an auditor's light install
still has ``verify`` and ``audit``.

Exit codes: 0 all good, 1 something failed verification, 2 usage or input
error. Human lines go to stderr, ``--json`` output to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from verifier.errors import InputError, VerificationError, VerinferError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# Modules with ``register(subparsers)``; each handler imports what it needs lazily.
SUBCOMMAND_MODULES = ("verifier.commands", "prover.cli", "server.cli", "contracts.cli",
                      "server.relayer.cli")


# Top-level modules of the optional extras -> the extra that brings them.
OPTIONAL_DEPENDENCIES = {
    "torch": "prove", "onnx": "prove", "onnxruntime": "prove", "sklearn": "prove",
    "fastapi": "serve", "uvicorn": "serve", "starlette": "serve",
    "coincurve": "serve", "web3": "chain", "eth_tester": "chain",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="verinfer", description="Verifiable inference: serve, prove, verify.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # an optional part that is not installed
            if exc.name and exc.name.split(".")[0] == name.split(".")[0]:
                continue
            raise
        module.register(sub)
    return parser


def fail(message: str) -> None:
    print(f"verinfer: error: {message}", file=sys.stderr)


def run(handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a handler; map verinfer's errors to exit codes, one line each."""
    try:
        return handler(args) or EXIT_OK
    except VerificationError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (InputError, VerinferError) as exc:
        fail(str(exc))
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        # A command of an optional part run on a light install (e.g. the auditor's).
        if exc.name and exc.name.split(".")[0] in OPTIONAL_DEPENDENCIES:
            extra = OPTIONAL_DEPENDENCIES[exc.name.split(".")[0]]
            fail(f"'{getattr(args, 'command', 'this command')}' needs {exc.name}, which is not "
                 f"installed: pip install 'verinfer[{extra}]'")
            return EXIT_USAGE
        raise
    except KeyboardInterrupt:
        fail("interrupted")
        return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
