"""Compile Solidity with the pinned solcjs from the project's ``node_modules``.

EZKL's own compile step downloads a solc binary at run time, which fails
offline and is not pinned; we compile with solcjs from npm instead (version
pinned in ``package.json``), through its standard-JSON interface.

Pinned compiler settings, and why:
- ``EVM_VERSION = "cancun"``: the newest fork that both the embedded py-evm
  chain (eth-tester) and anvil run by default; later forks' opcodes would not
  deploy on py-evm.
- ``OPTIMIZER_RUNS = 200``: solc's default trade-off; the EZKL verifiers are
  mostly assembly, so runs barely change their gas.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from verifier.errors import InputError

# The solcjs release verinfer compiles with: package.json pins it for npm ci (a test holds the two
# equal). Another release makes other bytecode than the packages and docs record, so a solc
# package of another version (another project's node_modules above the working directory, an
# old install) is passed over, and refused where it is the only one.
SOLC_VERSION = "0.8.37"
EVM_VERSION = "cancun"
OPTIMIZER_RUNS = 200
EIP170_LIMIT = 24_576  # bytes of runtime code a contract may have on Ethereum (EIP-170)
REPO_ROOT = Path(__file__).resolve().parent.parent
SRC = Path(__file__).resolve().parent / "src"  # verinfer's own contracts


class CompileError(InputError):
    """solc rejected the source, or solcjs is not installed."""


@dataclass(frozen=True)
class CompiledContract:
    name: str
    abi: list
    bytecode: str  # creation code, 0x-prefixed hex
    deployed_bytecode: str  # runtime code, 0x-prefixed hex

    @property
    def runtime_size(self) -> int:
        """Bytes of runtime code; EIP-170 caps deployable code at 24,576."""
        return (len(self.deployed_bytecode) - 2) // 2


def solcjs_path() -> Path:
    """The solc npm package of :data:`SOLC_VERSION`: ``$VERINFER_SOLCJS``, else
    ``node_modules/solc`` in the current directory or the nearest folder above it (as node
    looks), else in this checkout (an installed verinfer has no checkout: run from where ``npm
    ci`` put node_modules, or set ``VERINFER_SOLCJS``)."""
    env = os.environ.get("VERINFER_SOLCJS")
    if env:
        candidates = [Path(env)]
    else:
        cwd = Path.cwd()
        candidates = [d / "node_modules" / "solc" for d in (cwd, *cwd.parents)]
        candidates.append(REPO_ROOT / "node_modules" / "solc")
    others = []
    for path in candidates:
        try:
            version = json.loads((path / "package.json").read_text()).get("version")
        except (OSError, ValueError, AttributeError):
            continue
        if version == SOLC_VERSION:
            return path
        others.append(f"{path} is solc {version}")
    where = (f"VERINFER_SOLCJS={env}" if env else
             f"node_modules/solc in {Path.cwd()} or a folder above it, nor in {REPO_ROOT}")
    found = f" ({'; '.join(others)})" if others else ""
    raise CompileError(f"solcjs {SOLC_VERSION} not found in {where}{found}: run 'npm ci' where "
                       "verinfer's package.json is (or 'make setup'), or set VERINFER_SOLCJS to "
                       f"a solc {SOLC_VERSION} package folder")


def solc_version() -> str:
    """E.g. ``0.8.37+commit.f401782d.Emscripten.clang``."""
    return _node("process.stdout.write(solc.version())").strip()


def compile_sources(
    sources: dict[str, str], *, optimizer_runs: int = OPTIMIZER_RUNS, via_ir: bool = False
) -> dict[str, CompiledContract]:
    """Compile ``{filename: source}``; returns every contract by name."""
    request = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sources.items()},
        "settings": {
            "optimizer": {"enabled": True, "runs": optimizer_runs},
            "evmVersion": EVM_VERSION,
            "viaIR": via_ir,
            "outputSelection": {
                "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}
            },
        },
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(request, f)
        f.flush()
        script = "process.stdout.write(solc.compile(require('fs').readFileSync(process.argv[1], 'utf8')))"
        result = json.loads(_node(script, f.name))
    errors = [e for e in result.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompileError("solc: " + "; ".join(e.get("formattedMessage", e["message"]).strip()
                                                for e in errors))
    out: dict[str, CompiledContract] = {}
    for contracts in result.get("contracts", {}).values():
        for name, c in contracts.items():
            out[name] = CompiledContract(
                name=name,
                abi=c["abi"],
                bytecode="0x" + c["evm"]["bytecode"]["object"],
                deployed_bytecode="0x" + c["evm"]["deployedBytecode"]["object"],
            )
    return out


def compile_files(paths: list[Path], **kwargs) -> dict[str, CompiledContract]:
    return compile_sources({p.name: p.read_text() for p in paths}, **kwargs)


def _node(script: str, *args: str) -> str:
    """Run ``script`` in Node with ``solc`` bound to the pinned package.

    (solcjs's own CLI reads stdin with readFileSync(0), which fails with EAGAIN
    on a pipe; going through the package's API with a file avoids that.)
    """
    node = shutil.which("node")
    if node is None:
        raise CompileError("node is not installed: solcjs needs Node.js")
    prelude = f"const solc = require({json.dumps(str(solcjs_path()))});"
    proc = subprocess.run(
        [node, "-e", prelude + script, "--", *args], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise CompileError(f"solcjs failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


@functools.cache
def compiled() -> dict[str, CompiledContract]:
    """VerinferOracle, ExampleConsumer and the interfaces, compiled with the pinned solcjs
    (here, not in :mod:`contracts.deploy`, so that :mod:`contracts.chain` can read their
    errors without importing the module that imports it)."""
    return compile_files(sorted(SRC.glob("*.sol")))
