"""Subcommands owned by the verifier: ``verify`` (one proof bundle) and ``audit`` (many
receipts and bundles). Both run offline; handlers import what they need lazily."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register_verify(sub: argparse._SubParsersAction) -> None:
    verify = sub.add_parser(
        "verify", help="check a proof bundle offline",
        description="Check a proof bundle against its circuit package: artifact hashes, the "
        "links between input, label and proof, and the proof itself (EZKL, offline). A bundle "
        "that carries a signed receipt needs --keys. "
        "Exit 0 valid, 1 invalid, 2 unreadable input.")
    verify.add_argument("bundle", type=Path, help="bundle folder or bundle.json")
    verify.add_argument("--package", metavar="DIR|NAME",
                        help="circuit package folder, model name or id (default: the package "
                        "the bundle names, in the data dir)")
    _trust_options(verify)
    verify.add_argument("--rpc", metavar="URL",
                        help="also check the proof on chain: eth_call the deployed verifier "
                        "(needs --verifier)")
    verify.add_argument("--verifier", metavar="ADDRESS",
                        help="the model's deployed Halo2Verifier (with --rpc)")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(handler=_verify)


def register_audit(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser(
        "audit", help="check many receipts, saved responses and proof bundles offline",
        description="Audit receipts (*.json, one per line in *.jsonl), saved inference responses "
        "(*.json: the body of POST /v2/models/M/infer) and proof bundles "
        "(bundle.json, or folders holding them) found under PATHs, offline (only --keys and --log "
        "URLs are fetched, when given): receipt "
        "signatures against --keys, a response's outputs and label against its receipt, bundles "
        "against the circuit packages in --models, and the links between them. Prints OK/FAIL/ERROR lines and a summary table on stderr; "
        "--json prints the report on stdout. Exit 0 all passed, 1 any failed verification, "
        "2 usage error or (with no failure) an unreadable item.")
    audit.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                       help="files or folders to audit; - reads standard input (curl ... | verinfer "
                       "audit - --keys K)")
    _trust_options(audit)
    audit.add_argument("--models", type=Path, metavar="DIR",
                       help="circuit packages: a package folder, a data dir or a folder of "
                       "packages (default: the data dir's packages). Given explicitly, every "
                       "receipt must also be for one of these models")
    audit.add_argument("--jobs", "-j", type=int, metavar="N",
                       help="worker processes (default: one per core)")
    audit.add_argument("--quiet", "-q", action="store_true",
                       help="print only FAIL/ERROR lines and the summary")
    audit.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    audit.add_argument("--log", metavar="URL|DIR", action="append", default=[],
                       help="a receipt log (a server URL, or a data dir / log.sqlite3); repeatable, one "
                            "per origin: every checkpoint seen must be one append-only history with the "
                            "log of its origin (a fork, or a checkpoint of an origin no --log is of, "
                            "fails: exit 1)")
    audit.add_argument("--origin", metavar="ORIGIN", action="append",
                       help="v2 receipts (and logs) must be of the log with this origin (repeatable)")
    audit.add_argument("--request", type=Path, metavar="FILE",
                       help="the JSON request body the one saved response answers: its receipt must "
                            "attest this input (name, datatype, shape, data) and id")
    audit.set_defaults(handler=_audit)


def _request(path: Path) -> dict:
    """``--request``: the request body a client sent (JSON), read and parsed strictly."""
    from verifier.errors import InputError
    from verifier.limits import MAX_REQUEST_BYTES, read_at_most
    from verifier.responses import parse_request

    try:
        with open(path, "rb") as f:
            text = read_at_most(f, MAX_REQUEST_BYTES, f"--request {path}", "the request")
    except OSError as exc:
        raise InputError(f"--request {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return parse_request(text)
    except InputError as exc:
        raise InputError(f"--request {path}: {exc}") from None


def _trust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", metavar="JWKS", action="append",
                   help="trusted Ed25519 keys, a file or an http(s) URL: a JWK Set (as served at "
                   "/.well-known/jwks.json), one pinned JWK, a PEM public key, or a server's "
                   "/v1/keys or /.well-known/verinfer-log.json document (keys bound to its log's "
                   "origin: checkpoints of that origin only by them); repeatable. A URL trusts "
                   "what the server answers now; a saved copy pins the keys")
    p.add_argument("--eth-signer", action="append", metavar="ADDRESS",
                   help="trusted EIP-712 signer address (repeatable); without it an EIP-712 "
                   "signature must only recover to the signer it names")
    p.add_argument("--allow-dev-srs", action="store_true",
                   help="accept circuit packages whose SRS is not the public ceremony's "
                   "(development only: whoever generated such an SRS can forge proofs)")


def _trust(args: argparse.Namespace):
    from verifier.audit import load_trusted_keys
    from verifier.errors import InputError

    jwks = load_trusted_keys(*args.keys) if args.keys else None
    signers = None
    if args.eth_signer:
        import re

        for a in args.eth_signer:
            if not re.fullmatch(r"0x[0-9a-fA-F]{40}", a):
                raise InputError(f"--eth-signer {a!r} is not an address")
        signers = set(args.eth_signer)
    return jwks, signers


def _verify(args: argparse.Namespace) -> int:
    from verifier.bundle import ProofBundle
    from verifier.config import Settings
    from verifier.errors import NotFound, VerificationError
    from verifier.packages import package_dir, resolve
    from verifier.proofs import verify_signed_bundle

    if (args.rpc is None) != (args.verifier is None):
        from verifier.errors import InputError

        raise InputError("--rpc and --verifier go together")
    jwks, signers = _trust(args)
    bundle = ProofBundle.load(args.bundle)
    settings = Settings()
    if args.package:
        folder = resolve(settings, args.package)
    else:
        folder = package_dir(settings, bundle.model.package_id)
        if not folder.is_dir():
            raise NotFound(f"circuit package {bundle.model.package_id[:16]}… is not in "
                           f"{settings.packages_dir}; pass --package DIR")
    try:
        manifest, statement = verify_signed_bundle(bundle, folder, jwks,
                                                   trusted_eth_signers=signers,
                                                   allow_dev_srs=args.allow_dev_srs)
        if args.rpc is not None:  # the same proof and instances, checked by the chain
            from verifier.onchain import proof_parts, verify_onchain

            verify_onchain(args.rpc, args.verifier, *proof_parts(bundle.proof))
    except VerificationError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": type(exc).__name__, "reason": str(exc),
                              "dev_srs": type(exc).__name__ == "InsecureSRS"}))
        raise
    print(f"OK: {args.bundle}: {manifest.name} label {bundle.outputs.label} is proven"
          + (" and signed" if statement is not None else "")
          + (f", accepted on chain by {args.verifier}" if args.rpc is not None else "")
          + ("" if bundle.agreement.agree else
             f" (float model said {bundle.agreement.float_label}: DISAGREES)"), file=sys.stderr)
    from verifier.srs import is_ceremony_srs

    dev_srs = not is_ceremony_srs(manifest)
    if dev_srs:
        print("WARNING: the package uses a development SRS (insecure)", file=sys.stderr)
    if args.json:
        out = {"ok": True, "model": manifest.name, "label": bundle.outputs.label,
               "agree": bundle.agreement.agree, "signed": statement is not None,
               "dev_srs": dev_srs}
        if args.rpc is not None:
            out["onchain"] = args.verifier
        print(json.dumps(out))
    return 0


def _audit(args: argparse.Namespace) -> int:
    import time

    from verifier.audit import (
        Auditor,
        Progress,
        check_log,
        collect,
        find_packages,
        report_json,
        run_audit,
        summarize,
    )
    from verifier.config import Settings
    from verifier.errors import InputError, VerificationError

    if args.jobs is not None and args.jobs < 1:
        raise InputError("--jobs must be at least 1")
    jwks, signers = _trust(args)
    from verifier.logcheck import open_log

    logs = [open_log(where) for where in args.log]
    origins: dict[str, object] = {}
    for log in logs:  # an unreadable or unreachable --log is refused before any item is audited
        try:
            origin = log.latest().split("\n", 1)[0]  # unverified: only to refuse two of one origin now
        except VerificationError:
            continue  # it answered, wrongly: a failed log item in the report, with the items
        if origin in origins:
            raise InputError(f"{origins[origin]} and {log} are both logs of origin {origin!r}: "
                             "give one log per origin")
        origins[origin] = log
    if args.models is not None:
        packages = find_packages(args.models)
        if not packages:
            raise InputError(f"--models {args.models}: no circuit packages there (a package folder, "
                             "a data dir or a folder of packages)")
    else:
        home_packages = Settings().packages_dir
        packages = find_packages(home_packages) if home_packages.is_dir() else {}
    request = _request(args.request) if args.request is not None else None
    items = collect(args.paths)
    if not items:
        raise InputError("nothing to audit: no receipts, responses or bundles under the given paths")
    if request is not None and (len(items) != 1 or items[0].kind != "response"):
        raise InputError(f"--request goes with one saved response; the paths hold {len(items)} "
                         f"item(s): {', '.join(f'{i.name} ({i.kind})' for i in items[:3])}"
                         f"{', ...' if len(items) > 3 else ''}")
    auditor = Auditor(jwks=jwks, packages=packages, trusted_eth_signers=signers,
                      require_known_model=args.models is not None,
                      origins=frozenset(args.origin) if args.origin else None,
                      allow_dev_srs=args.allow_dev_srs, request=request)

    def err(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    progress = Progress(len(items), err)

    def on_result(r) -> None:
        if r.outcome != "ok" or not args.quiet:
            err(r.line() + (f", the answer to the request in {args.request}" if request and r.outcome == "ok" else ""))
        progress.tick()

    start = time.perf_counter()
    results = run_audit(items, auditor, jobs=args.jobs, on_result=on_result)
    for r in check_log(results, auditor, logs):  # the log's history, after the items
        if r.outcome != "ok" or not args.quiet:
            err(r.line())
        results.append(r)
    summary = summarize(results, time.perf_counter() - start)
    err(summary.table())
    if any(r.dev_srs for r in results):
        err("WARNING: some bundles passed with a development SRS (--allow-dev-srs: insecure)")
    if args.json:
        print(json.dumps(report_json(results, summary)))
    return summary.exit_code
