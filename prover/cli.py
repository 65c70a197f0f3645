"""Subcommands owned by the prover: ``models add|show|list|rm|tune``, ``prove``, ``demo``.

Registration is cheap: handlers import EZKL, torch and friends only when run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register_models(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="register and inspect models (circuit packages)")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True

    add = msub.add_parser(
        "add", help="turn an ONNX model into a circuit package",
        description="Make a content-addressed circuit package (settings, compiled circuit, "
        "keys, Solidity verifier, manifest) from an ONNX file or a reference model name "
        "(iris_mlp, digits_cnn).")
    add.add_argument("model", help="path to an .onnx file, or a reference model name")
    add.add_argument("--name", help="name to register it under (default: reference name or "
                     "file stem)")
    add.add_argument("--calibration-data", type=Path, metavar="FILE",
                     help="real input samples (.npy or JSON) for calibration; needed for a "
                     "model that is not a reference model")
    add.add_argument("--input-visibility", choices=["public", "hashed"], default="public",
                     help="public: the input is a public instance; hashed: only its Poseidon "
                     "hash is (default: public)")
    add.add_argument("--public-output", choices=["logits", "label"], default="logits",
                     help="logits: every output (logits, label) is a public instance; label: "
                     "the label alone is, the logits stay private (fewer instances, less gas "
                     "on chain; model.onnx keeps only the label output) (default: logits)")
    add.add_argument("--inner-cols", type=int, choices=[1, 2],
                     help="inner columns of the circuit's layout (default: 1 when the circuit "
                     "fits 2^12 rows, else 2); 1 doubles the rows (one more logrows, slower "
                     "proofs) and cuts verifyProof gas by about a quarter")
    add.add_argument("--max-ops", choices=["ezkl", "range-checks"],
                     help="how the circuit takes maxima: ezkl: MaxPool and ArgMax as EZKL lays "
                     "them out (a sort: shuffles and a dynamic lookup); range-checks: rewritten "
                     "exactly from ReLU and comparisons (model.onnx is the rewritten graph, so "
                     "not under a reference model's name: give --name; about half the prove "
                     "time of a CNN; see docs/tuning.md) (default: ezkl)")
    add.add_argument("--srs", type=Path, metavar="FILE",
                     help="ceremony SRS file to use instead of a local development SRS")
    add.add_argument("--srs-sha256", metavar="HEX",
                     help="published SHA-256 of the --srs file, where none is pinned")
    add.add_argument("--json", action="store_true", help="print the manifest as JSON to stdout")
    add.add_argument("--rebuild", action="store_true",
                     help="build the package anew even when one was built from the same ONNX, "
                     "calibration data and options (by default the name is pointed at that one)")
    add.add_argument("--tune", action="store_true",
                     help="search the circuit settings first (as 'models tune') and register "
                     "the best candidate")
    _tune_flags(add)
    add.set_defaults(handler=_add)

    tune = msub.add_parser(
        "tune", help="search circuit settings for a cheaper circuit with the same labels",
        description="Search EZKL's settings (scale, range-check decomposition, inner columns, "
        "logrows) for a smaller, faster or cheaper-to-verify circuit; a candidate that changes "
        "any label (held-out split of a reference model, else the calibration samples) is out. "
        "Prints the Pareto front and registers the best candidate for the objective as a "
        "package whose manifest records the search.")
    for a in add._actions:  # the same model, source and SRS options as 'models add'
        if a.dest not in ("help", "tune", "rebuild", "objective", "budget", "verifier"):
            tune._add_action(a)
    _tune_flags(tune)
    tune.set_defaults(handler=_add, tune=True)

    show = msub.add_parser("show", help="print a registered model's preflight report")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print the manifest as JSON to stdout")
    show.set_defaults(handler=_show)

    rm = msub.add_parser(
        "rm", help="forget a model name (and its package, when no other name points to it)",
        description="Remove a registered model name. Its circuit package is removed too, "
        "unless another name points to it or --keep-package is given; 'verinfer verify' of "
        "the package's bundles then needs a copy of it (--package DIR). A running server "
        "keeps what it opened at start: see docs/server.md.")
    rm.add_argument("name")
    rm.add_argument("--keep-package", action="store_true",
                    help="remove the name only; the package stays (its id still finds it)")
    rm.set_defaults(handler=_rm)

    ls = msub.add_parser("list", help="list registered models")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_list)


def register_prove(sub: argparse._SubParsersAction) -> None:
    prove = sub.add_parser("prove", help="prove one input; writes a proof bundle",
                           description="Prove the model's answer for one input (an Open "
                           "Inference Protocol v2 request body) and write DIR/bundle.json.")
    prove.add_argument("name", help="registered model name or package id")
    prove.add_argument("--input", type=Path, required=True, metavar="FILE",
                       help="OIP v2 request body (JSON) with one input tensor")
    prove.add_argument("--out", type=Path, required=True, metavar="DIR",
                       help="folder to write bundle.json into")
    prove.add_argument("--json", action="store_true", help="print a summary as JSON to stdout")
    prove.set_defaults(handler=_prove)


def register_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="register iris_mlp, prove a held-out sample, verify it")
    demo.set_defaults(handler=_demo)


def _tune_flags(p: argparse.ArgumentParser) -> None:
    # No defaults here: 'models add' refuses them without --tune (see _add).
    p.add_argument("--objective", choices=["prove", "pk", "gas"],
                   help="what the registered candidate minimises: proving time, proving key "
                   "size or verifyProof gas (default: prove)")
    p.add_argument("--budget", type=float, metavar="MINUTES",
                   help="time for the search, in minutes (default: 10), after measuring "
                   "the defaults; registering the chosen candidate comes after")
    p.add_argument("--verifier", choices=["chain", "offline"],
                   help="where the proofs are checked: chain (default) keeps only circuits whose "
                   "Solidity verifier fits EIP-170; offline (verinfer verify/audit, HTTP "
                   "clients) also wider, faster ones whose verifier no chain would deploy")


def _settings():
    from prover.ezkl_backend import use_ezkl_dir
    from verifier.config import Settings

    settings = Settings()
    use_ezkl_dir(settings)
    return settings


def _progress():
    from prover.progress import Progress

    return Progress()


def _add(args: argparse.Namespace) -> int:
    from models import REFERENCE_MODELS
    from prover.backend import CircuitOptions
    from prover.build import build_package, file_source, find_build, reference_source
    from prover.report import render
    from verifier.errors import InputError
    from verifier.packages import point_name

    if args.name is not None:  # '' too: not silently the file's stem
        from verifier.packages import check_name

        check_name(args.name)
    if args.srs_sha256 is not None and args.srs is None:
        raise InputError("--srs-sha256 goes with --srs FILE (the hash of that file)")
    if args.srs is not None and not args.srs.is_file():  # before calibrating, not after
        raise InputError(f"{args.srs}: no such SRS file")
    path = Path(args.model)
    if path.suffix == ".onnx" or path.exists():
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        source = file_source(args.name or path.stem, path, args.calibration_data)
    elif args.model in REFERENCE_MODELS:
        from dataclasses import replace

        from prover.build import load_samples

        source = reference_source(args.model)
        if args.name:
            source = replace(source, name=args.name)
        if args.calibration_data:
            source = replace(source, calibration=load_samples(args.calibration_data))
    else:
        raise InputError(f"{args.model}: neither an ONNX file nor a reference model "
                         f"({', '.join(REFERENCE_MODELS)})")
    settings = _settings()
    progress = _progress()
    if args.tune:
        for flag, value in (("--inner-cols", args.inner_cols), ("--max-ops", args.max_ops)):
            if value is not None:
                raise InputError(f"{flag} does not go with --tune: the search chooses it")
        return _tune(args, settings, source, progress)
    if args.objective is not None or args.budget is not None or args.verifier is not None:
        raise InputError("--objective, --budget and --verifier go with --tune (or 'models tune')")
    options = None if args.inner_cols is None and args.max_ops is None else CircuitOptions(
        inner_cols=args.inner_cols, max_ops=args.max_ops or "ezkl")
    pkg = None if args.rebuild else find_build(
        settings, source, visibility=args.input_visibility, public_output=args.public_output,
        options=options, srs_file=args.srs, srs_sha256=args.srs_sha256)
    if pkg is not None:  # the same ONNX, samples and options: minutes of building for nothing
        point_name(settings, source.name, pkg.id)
        print(f"OK: registered {pkg.name} as package {pkg.id}, already built from the same "
              f"ONNX, calibration data and options (--rebuild to build it anew)", file=sys.stderr)
        if args.json:
            print(pkg.manifest.model_dump_json(indent=2))
        return 0
    pkg = build_package(settings, source, visibility=args.input_visibility, srs_file=args.srs,
                        srs_sha256=args.srs_sha256, progress=progress,
                        public_output=args.public_output, options=options)
    print(render(pkg.manifest, pkg.dir), file=sys.stderr)
    print(f"OK: registered {pkg.name} as package {pkg.id}", file=sys.stderr)
    if args.json:
        print(pkg.manifest.model_dump_json(indent=2))
    return 0


def _tune(args, settings, source, progress) -> int:
    from prover.report import render
    from prover.tune import table, tune_and_register

    objective = args.objective or "prove"
    result, pkg = tune_and_register(
        settings, source, objective=objective,
        budget_minutes=10.0 if args.budget is None else args.budget,
        progress=progress, visibility=args.input_visibility, public_output=args.public_output,
        verifier=args.verifier or "chain", srs_file=args.srs, srs_sha256=args.srs_sha256)
    print(render(pkg.manifest, pkg.dir), file=sys.stderr)
    print(table(result), file=sys.stderr if args.json else sys.stdout)
    where = " (verified offline only: its verifier contract is over EIP-170)" if (
        result.chosen.offline_only) else ""
    print(f"OK: registered {pkg.name} as package {pkg.id} (tuned for {objective}){where}",
          file=sys.stderr)
    if args.json:
        print(json.dumps({"name": pkg.name, "package_id": pkg.id, "package_dir": str(pkg.dir),
                          "tuning": pkg.manifest.tuning}, indent=2))
    return 0


def _show(args: argparse.Namespace) -> int:
    from prover.report import render
    from verifier.packages import find

    pkg = find(_settings(), args.name)
    if args.json:
        print(pkg.manifest.model_dump_json(indent=2))
    else:  # the report is what 'show' is for: stdout (add and tune print it on stderr)
        print(render(pkg.manifest, pkg.dir))
    return 0


def _rm(args: argparse.Namespace) -> int:
    from verifier.packages import list_names, remove_name

    settings = _settings()
    pid = remove_name(settings, args.name)
    if pid is None:
        print(f"OK: removed {args.name} (it pointed to no package)", file=sys.stderr)
        return 0
    others = sorted(n for n, p in list_names(settings).items() if p == pid)
    if others:
        kept = f"kept: {', '.join(others)} still point{'s' if len(others) == 1 else ''} to it"
    elif args.keep_package:
        kept = "kept (--keep-package)"
    else:
        from prover.build import remove_package

        kept = "removed" if remove_package(settings, pid) else "was already missing"
    print(f"OK: removed {args.name}; package {pid} {kept}", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    from verifier.packages import list_names

    names = list_names(_settings())
    if args.json:
        print(json.dumps(names, indent=2))
    elif not names:
        print("no models registered (try 'verinfer models add iris_mlp')", file=sys.stderr)
    for name, pid in names.items():
        print(f"{name}\t{pid}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _prove(args: argparse.Namespace) -> int:
    from prover.package import find_package
    from prover.proving import Prover
    from verifier.errors import InputError
    from verifier.oip import load_request_file, single_input

    settings = _settings()
    request = load_request_file(args.input)
    pkg = find_package(settings, args.name, check=[])
    x = single_input(request, pkg.manifest.input)
    prover = Prover(pkg)  # checks the package's artifacts against its manifest
    _writable_dir(args.out)  # before the proof, not after its seconds
    progress = _progress()
    bundle = prover.prove(x, progress=progress)
    try:
        path = bundle.write(args.out)
    except OSError as exc:
        raise InputError(f"--out {args.out}: cannot write the bundle: {exc.strerror or exc}") from None
    a = bundle.agreement
    print(f"OK: proved {pkg.name}: label {bundle.outputs.label} "
          f"(float model: {a.float_label}, {'agree' if a.agree else 'DISAGREE'}) -> {path}",
          file=sys.stderr)
    if pkg.manifest.srs.insecure:
        print("WARNING: development SRS: this proof is not secure for production", file=sys.stderr)
    if args.json:
        print(json.dumps({"bundle": str(path), "label": bundle.outputs.label,
                          "agree": a.agree, "package_id": pkg.id}))
    return 0


def _writable_dir(out: Path) -> None:
    """``out`` is (or is now) a folder this process can write into, or an ``InputError``."""
    import os

    from verifier.errors import InputError

    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"--out {out}: not a folder") from None
    except OSError as exc:
        raise InputError(f"--out {out}: cannot make the folder: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: the folder is not writable")


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    from models import load_split
    from prover.build import build_package, reference_source
    from prover.package import find_package
    from prover.proving import Prover
    from verifier.bundle import ProofBundle
    from verifier.errors import NotFound
    from verifier.proofs import verify_bundle

    settings = _settings()
    progress = _progress()
    try:
        pkg = find_package(settings, "iris_mlp")
        progress.note(f"1. iris_mlp is registered (package {pkg.id[:16]}…)")
    except NotFound:
        progress.note("1. Registering iris_mlp (first run only)")
        pkg = build_package(settings, reference_source("iris_mlp"), progress=progress)
    _, x_test, _, y_test = load_split("iris_mlp")
    x = x_test[:1].reshape(pkg.manifest.input.shape)
    progress.note(f"2. Proving held-out sample 0: {x.ravel().tolist()} (true class {y_test[0]})")
    bundle = Prover(pkg).prove(x, progress=progress)
    out = Path(tempfile.mkdtemp(prefix="verinfer-demo-"))
    bundle.write(out)
    progress.note(f"3. Verifying the bundle from disk ({out}/bundle.json, kept for you to look at)")
    verify_bundle(ProofBundle.load(out), pkg.dir)
    print(f"OK: iris_mlp says class {bundle.outputs.label} for held-out sample 0 "
          f"(true class {y_test[0]}); the proof verifies, the float model agrees: "
          f"{bundle.agreement.agree}", file=sys.stderr)
    print("WARNING: development SRS (insecure, for development only)", file=sys.stderr)
    return 0
