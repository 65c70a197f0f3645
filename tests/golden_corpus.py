"""The golden audit corpus, built once per test session (or written anywhere from the CLI).

It registers iris_mlp in a temporary data dir, proves two held-out samples, signs receipts
with throwaway keys (only public keys are written) and writes the valid items and their
tampered variants with :func:`testkit.corpus.write_corpus`, plus a verify-only copy of the
circuit package (manifest, settings, vk, SRS: no pk). Built, not committed: no key of any
kind lives in the repo. ~20 s, once per pytest process, on first import.

    .venv/bin/python tests/golden_corpus.py OUT [--home H] [--full]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VERIFY_ONLY = ["manifest.json", "settings.json", "vk.key", "kzg.srs"]


def _register(home: Path) -> None:
    env = {**os.environ, "VERINFER_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "verifier.cli", "models", "add", "iris_mlp"],
                   check=True, env=env, cwd=REPO, capture_output=True)


def _prove(home: Path, n: int):
    """``n`` proof bundles for held-out samples of iris_mlp, via the prover's API."""
    from models import load_split
    from prover.package import find_package
    from prover.proving import Prover
    from verifier.config import Settings

    pkg = find_package(Settings(home=home), "iris_mlp")
    prover = Prover(pkg)
    _, x_test, _, _ = load_split("iris_mlp")
    return pkg, [prover.prove(x_test[i].reshape(1, 4)) for i in range(n)]


def write(out: Path, home: Path | None = None, *, full: bool = False) -> Path:
    """Write a corpus to ``out`` (iris_mlp registered in ``home``, else in a temporary dir)."""
    from testkit.corpus import write_corpus

    with tempfile.TemporaryDirectory(prefix="verinfer-corpus-") as tmp:
        if home is None:
            home = Path(tmp)
            _register(home)
        pkg, bundles = _prove(home, 2)
        write_corpus(out, bundles, pkg.manifest, golden=not full)
        dest = out / "packages" / pkg.id
        dest.mkdir(parents=True)
        for f in VERIFY_ONLY:
            shutil.copy2(pkg.dir / f, dest / f)
    return out


@cache
def golden() -> Path:
    """The golden subset, built on first use in this process and removed at its exit."""
    root = Path(tempfile.mkdtemp(prefix="verinfer-golden-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return write(root / "audit")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--home", type=Path, help="data dir with iris_mlp registered")
    ap.add_argument("--full", action="store_true", help="every bundle variant, not the subset")
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    write(args.out, args.home, full=args.full)
    print(f"wrote a corpus to {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
