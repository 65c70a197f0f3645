"""Regenerate the golden audit corpus in ``tests/assets/audit`` (or a full one anywhere).

    .venv/bin/python tests/assets/make_corpus.py                 # golden set, fresh package
    .venv/bin/python tests/assets/make_corpus.py OUT --home H --full

It registers iris_mlp in a temporary data dir (or uses ``--home``), proves two
held-out samples, signs receipts with throwaway keys (only public keys are
written) and writes the valid items and their tampered variants with
:func:`verifier.corpus.write_corpus`. The golden set also carries a
verify-only copy of the circuit package (manifest, settings, vk, SRS: no pk),
so the golden tests need no EZKL proving and no package build.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

GOLDEN = Path(__file__).resolve().parent / "audit"
VERIFY_ONLY = ["manifest.json", "settings.json", "vk.key", "kzg.srs"]


def prove_samples(home: Path, name: str, n: int):
    """``n`` proof bundles for held-out samples of iris_mlp, via the prover's API."""
    from models import load_split
    from prover.package import find_package
    from prover.proving import Prover
    from verifier.config import Settings

    pkg = find_package(Settings(home=home), name)
    prover = Prover(pkg)
    _, x_test, _, _ = load_split("iris_mlp")
    return pkg, [prover.prove(x_test[i].reshape(1, 4)) for i in range(n)]


def register(home: Path, *args: str) -> None:
    env = {**os.environ, "VERINFER_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "verifier.cli", "models", "add", "iris_mlp", *args],
                   check=True, env=env, cwd=REPO, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?", default=GOLDEN)
    ap.add_argument("--home", type=Path, help="data dir with iris_mlp registered")
    ap.add_argument("--full", action="store_true", help="every bundle variant, not the subset")
    args = ap.parse_args()
    from verifier.corpus import write_corpus

    with tempfile.TemporaryDirectory(prefix="verinfer-corpus-") as tmp:
        home = args.home or Path(tmp)
        if args.home is None:
            register(home)
        pkg, bundles = prove_samples(home, "iris_mlp", 2)
        if args.out.exists():
            shutil.rmtree(args.out)
        index = write_corpus(args.out, bundles, pkg.manifest, golden=not args.full)
        dest = args.out / "packages" / pkg.id
        dest.mkdir(parents=True)
        for f in VERIFY_ONLY:
            shutil.copy2(pkg.dir / f, dest / f)
    print(f"wrote {len(index['items'])} items to {args.out}")


if __name__ == "__main__":
    main()
