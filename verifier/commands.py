"""Subcommands owned by the verifier: ``verify`` (one proof bundle)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    verify = sub.add_parser(
        "verify", help="check a proof bundle offline",
        description="Check a proof bundle against its circuit package: artifact hashes, the "
        "links between input, label and proof, and the proof itself (EZKL, offline). "
        "Exit 0 valid, 1 invalid, 2 unreadable input.")
    verify.add_argument("bundle", type=Path, help="bundle folder or bundle.json")
    verify.add_argument("--package", metavar="DIR|NAME",
                        help="circuit package folder, model name or id (default: the package "
                        "the bundle names, in the data dir)")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    from verifier.bundle import ProofBundle
    from verifier.config import Settings
    from verifier.errors import NotFound, VerificationError
    from verifier.proofs import verify_bundle

    bundle = ProofBundle.load(args.bundle)
    settings = Settings()
    if args.package:
        folder = Path(args.package)
        if not folder.is_dir():
            folder = settings.names_dir / args.package
            if not folder.is_file():
                raise NotFound(f"no circuit package {args.package!r}")
            folder = settings.packages_dir / folder.read_text().strip()
    else:
        folder = settings.packages_dir / bundle.model.package_id
        if not folder.is_dir():
            raise NotFound(f"circuit package {bundle.model.package_id[:16]}… is not in "
                           f"{settings.packages_dir}; pass --package DIR")
    try:
        manifest = verify_bundle(bundle, folder)
    except VerificationError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": type(exc).__name__, "reason": str(exc)}))
        raise
    print(f"OK: {args.bundle}: {manifest.name} label {bundle.outputs.label} is proven"
          + ("" if bundle.agreement.agree else
             f" (float model said {bundle.agreement.float_label}: DISAGREES)"), file=sys.stderr)
    if manifest.srs.insecure:
        print("WARNING: the package uses a development SRS (insecure)", file=sys.stderr)
    if args.json:
        print(json.dumps({"ok": True, "model": manifest.name, "label": bundle.outputs.label,
                          "agree": bundle.agreement.agree}))
    return 0
