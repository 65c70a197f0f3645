"""Subcommands owned by contracts: ``chain deploy``, ``withdraw-fees``, ``update-signer``,
``apply-update``.

Registration imports nothing heavy: web3 and solc are loaded only when a handler runs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    chain = sub.add_parser("chain", help="deploy and use the on-chain contracts")
    csub = chain.add_subparsers(dest="chain_command", metavar="ACTION")
    csub.required = True

    dep = csub.add_parser(
        "deploy", help="deploy the oracle and the models' verifiers; register the models",
        description="Compile (pinned solcjs) and deploy VerinferOracle, deploy one EZKL "
        "verifier per --package (default: every model registered in the data dir whose "
        "circuit takes a public input) and register each model with the oracle; write the "
        "deployment file. With no --rpc, deploys to an embedded py-evm chain that ends with "
        "this process (a dry run that measures gas).")
    dep.add_argument("--rpc", metavar="URL", help="JSON-RPC node (default: embedded py-evm)")
    dep.add_argument("--key-file", type=Path, metavar="FILE",
                     help="deployer private key (hex, file mode 0600); default "
                     "$VERINFER_CHAIN_KEY_FILE, else the node's first unlocked account")
    dep.add_argument("--package", action="append", default=[], metavar="DIR|NAME",
                     help="circuit package folder or registered model name (repeatable; "
                     "default: the registered models)")
    dep.add_argument("--policy", choices=["proof", "signature", "either"], default="proof",
                     help="how the models' requests may be answered (default: proof)")
    dep.add_argument("--signer", metavar="ADDRESS",
                     help="authorised EIP-712 signer (needed for signature/either)")
    dep.add_argument("--request-timeout", type=int, default=3600, metavar="SECONDS",
                     help="seconds before a requester may cancel (default: 3600)")
    dep.add_argument("--min-fee", type=int, default=0, metavar="WEI",
                     help="least fee a request for these models must bring (default: 0)")
    dep.add_argument("--payee", metavar="ADDRESS",
                     help="who receives the fees of these models' fulfilments, e.g. the "
                     "relayer's account (default: the deployer; never the transaction's sender)")
    dep.add_argument("--update-delay", type=int, default=86_400, metavar="SECONDS",
                     help="seconds between announcing a model update (updateModel) and its "
                     "taking effect, so requesters see it coming (default: 86400)")
    dep.add_argument("--allow-dev-srs", action="store_true",
                     help="deploy verifiers of packages with a development SRS to a chain "
                     "other than a local one (31337, 1337): their proofs could be forged")
    dep.add_argument("--out", type=Path, metavar="FILE",
                     help="deployment file (default: <home>/deployments/<chain id>.json)")
    dep.add_argument("--json", action="store_true", help="print the deployment as JSON")
    dep.set_defaults(handler=_deploy)

    wd = csub.add_parser(
        "withdraw-fees", help="pay models' accrued fees to their payees",
        description="Fulfilment fees accrue per model in the oracle (pull payments: no "
        "fulfilment transfers ETH). For each MODEL with fees accrued, send withdrawFees, which "
        "pays them to the model's payee whoever sends it; a model with none is reported and "
        "skipped. Every MODEL is checked before anything is sent.")
    _chain_arguments(wd, "the account that pays the gas")
    wd.set_defaults(handler=_withdraw_fees)

    us = csub.add_parser(
        "update-signer", help="announce a new EIP-712 signer for models (after `keys rotate --eip712`)",
        description="Send updateModel for each MODEL: its verifier and policy stay, its signer "
        "becomes --signer. The oracle applies it after its update delay, and only to requests "
        "made after that (open requests keep the signer they were made under: the relayer "
        "answers them with the retired key). Then `verinfer chain apply-update`. Only the "
        "oracle's owner may send it.")
    us.add_argument("--signer", required=True, metavar="ADDRESS",
                    help="the new signer (`verinfer keys list`)")
    _chain_arguments(us, "the oracle's owner")
    us.set_defaults(handler=_update_signer)

    ap = csub.add_parser(
        "apply-update", help="apply models' announced updates once their delay has passed",
        description="Send applyModelUpdate for each MODEL with an update announced (e.g. by "
        "`chain update-signer`) whose delay has passed; anyone may.")
    _chain_arguments(ap, "the account that pays the gas")
    ap.set_defaults(handler=_apply_update)


def _chain_arguments(p: argparse.ArgumentParser, whose: str) -> None:
    """MODEL..., --rpc, --oracle and --key-file: what the commands that send to a deployed
    oracle take."""
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model id (0x + 64 hex digits), registered model name or package folder")
    p.add_argument("--rpc", required=True, metavar="URL", help="JSON-RPC node")
    p.add_argument("--oracle", required=True, metavar="ADDRESS", help="VerinferOracle address")
    p.add_argument("--key-file", type=Path, metavar="FILE",
                   help=f"private key (hex, file mode 0600) of {whose}; default "
                   "$VERINFER_CHAIN_KEY_FILE, else the node's first unlocked account")


_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_MODEL_ID = re.compile(r"^0x[0-9a-fA-F]{64}$")


def _resolve_package(ref: str) -> Path:
    """A folder with manifest.json, a model name registered in the data dir, or a package id."""
    from verifier.config import Settings
    from verifier.packages import resolve

    return resolve(Settings(), ref)  # a folder without a manifest is refused when read


def _registered_packages() -> list[Path]:
    """The packages of the models registered in the data dir that the oracle can take (public
    input); says on stderr which are left out, or that there are none."""
    from contracts.deploy import label_position
    from contracts.solc import EIP170_LIMIT
    from verifier.config import Settings
    from verifier.errors import VerinferError
    from verifier.packages import find, list_names

    settings = Settings()
    names = list_names(settings)
    out: dict[str, Path] = {}  # model sha256 -> package: the oracle takes each model once
    for name in names:
        try:
            pkg = find(settings, name)
        except VerinferError as exc:
            print(f"note: {name} left out: {exc}", file=sys.stderr)
            continue
        if pkg.manifest.input_visibility != "public":
            print(f"note: {name} left out: its circuit hashes its input (the oracle needs a "
                  "public input)", file=sys.stderr)
            continue
        if not pkg.manifest.label_is_last_instance:
            print(f"note: {name} left out: {label_position(pkg.manifest)}", file=sys.stderr)
            continue
        if pkg.manifest.preflight.get("verifier_fits") is False:
            size = pkg.manifest.preflight.get("verifier_runtime_bytes")
            print(f"note: {name} left out: its verifier ({size:,} bytes) is over EIP-170's "
                  f"{EIP170_LIMIT:,}, a package for proofs checked offline", file=sys.stderr)
            continue
        first = out.setdefault(pkg.manifest.model_sha256, pkg.dir)
        if first != pkg.dir:
            print(f"note: {name} left out: the same model as package {first.name[:16]}…",
                  file=sys.stderr)
    if not names:
        print(f"note: no models are registered in {settings.home} ('verinfer models add "
              "NAME', or name packages with --package): deploying the oracle only",
              file=sys.stderr)
    return list(out.values())


def _deploy(args: argparse.Namespace) -> int:
    from contracts.chain import connect, key_file_from_env
    from contracts.deploy import deploy_all
    from verifier.errors import InputError

    if args.signer and not _ADDRESS.match(args.signer):
        raise InputError(f"--signer is not an address: {args.signer!r}")
    if args.payee and not _ADDRESS.match(args.payee):
        raise InputError(f"--payee is not an address: {args.payee!r}")
    if args.request_timeout < 0:
        raise InputError("--request-timeout must be >= 0")
    if not 0 <= args.min_fee < 2**96:
        raise InputError("--min-fee must be between 0 and 2**96 - 1 wei")
    if not 0 <= args.update_delay <= 2**32 - 1:
        raise InputError("--update-delay must be between 0 and 4294967295 seconds (136 years)")
    if args.out is not None and args.out.exists():
        # checked before anything is spent: the file may be the only record of an earlier oracle
        raise InputError(f"--out {args.out} exists; a deployment record is never overwritten "
                         "(name another file, or remove this one)")
    packages = ([_resolve_package(r) for r in args.package] if args.package
                else _registered_packages())
    key_file = args.key_file or (key_file_from_env() if args.rpc else None)
    chain = connect(args.rpc, key_file=key_file)
    print(f"deploying to {'the embedded chain' if chain.embedded else args.rpc} "
          f"(chain id {chain.chain_id}) from {chain.sender}", file=sys.stderr)
    record = deploy_all(chain, packages, policy=args.policy, signer=args.signer,
                        request_timeout=args.request_timeout,
                        allow_dev_srs=args.allow_dev_srs, update_delay=args.update_delay,
                        min_fee=args.min_fee, payee=args.payee)
    # the addresses are said before any file is written: a write that fails loses nothing
    print(f"OK: oracle {record['oracle']['address']} (gas {record['oracle']['gas_used']})",
          file=sys.stderr)
    for m in record["models"]:
        print(f"OK: {m['name']} verifier {m['verifier']} (gas {m['verifier_gas_used']}, "
              f"{m['verifier_runtime_bytes']} bytes), model id {m['model_id']}", file=sys.stderr)
    if chain.embedded:
        print("note: the embedded chain ends with this command; the file is a record only",
              file=sys.stderr)
    if args.out is not None:
        out, kept = args.out, None
        _write_new(out, record)
    else:
        from verifier.config import Settings

        out, kept = _write_latest(Settings().home / "deployments", record)
    if kept is not None:
        print(f"kept the earlier deployment record as {kept}", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    if args.json:
        print(json.dumps(record, indent=2))
    return 0


def _record_bytes(record: dict) -> bytes:
    return (json.dumps(record, indent=2) + "\n").encode()


def _write_new(path: Path, record: dict) -> None:
    """Write ``path`` whole (a temporary file linked in), refusing to replace a file."""
    import os
    import tempfile

    from verifier.errors import InputError

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(_record_bytes(record))
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # FileExistsError rather than a silent replace
    except FileExistsError:
        raise InputError(f"{path} appeared while deploying; the record was not written there "
                         "(the addresses are above)") from None
    except OSError as exc:
        raise InputError(f"cannot write the deployment record {path}: {exc.strerror} "
                         "(the addresses are above)") from None
    finally:
        if tmp is not None:
            os.unlink(tmp)


def _write_latest(folder: Path, record: dict) -> tuple[Path, Path | None]:
    """``<folder>/<chain id>.json`` becomes ``record``; an earlier record there is first kept
    as ``<chain id>-<its oracle address>[-N].json`` (a chain may hold several oracles, each
    with its requesters' funds: none of their addresses may be lost). Returns (the latest
    file, where the earlier one went or None)."""
    latest = folder / f"{record['chain_id']}.json"
    try:
        kept = _keep_earlier(latest, record["chain_id"])
    except OSError as exc:
        from verifier.errors import InputError

        raise InputError(f"cannot keep the earlier deployment record {latest}: {exc.strerror}; "
                         "nothing was written (the addresses are above)") from None
    _write_new(latest, record)
    return latest, kept


def _keep_earlier(latest: Path, chain_id: int) -> Path | None:
    import os

    kept = None
    if latest.exists():
        try:
            address = str(json.loads(latest.read_text())["oracle"]["address"])
        except (ValueError, KeyError, TypeError):
            address = "unknown"
        address = re.sub(r"[^0-9A-Za-z]", "", address)[:42] or "unknown"
        n = 1
        while True:
            kept = latest.parent / f"{chain_id}-{address}{'' if n == 1 else f'-{n}'}.json"
            try:
                os.link(latest, kept)  # never replaces a kept record
                break
            except FileExistsError:
                if kept.read_bytes() == latest.read_bytes():
                    break  # kept before, e.g. by a run killed between the link and the write
                n += 1
        latest.unlink()
    return kept


def _model_id(ref: str) -> bytes:
    """A model id given as 0x + 64 hex digits, or the model sha256 of a package's manifest."""
    if _MODEL_ID.match(ref):
        return bytes.fromhex(ref[2:])
    from verifier.packages import read_manifest

    return bytes.fromhex(read_manifest(_resolve_package(ref)).model_sha256)


def _oracle(args: argparse.Namespace) -> tuple:
    """(chain, oracle contract, model ids) of a command that sends to a deployed oracle: the
    address, the contract and every MODEL (registered there) checked before anything is sent."""
    from contracts.chain import connect, key_file_from_env
    from contracts.deploy import is_oracle, model_fees, oracle_abi
    from verifier.errors import InputError

    if not _ADDRESS.match(args.oracle):
        raise InputError(f"--oracle is not an address: {args.oracle!r}")
    ids = [_model_id(ref) for ref in args.models]
    chain = connect(args.rpc, key_file=args.key_file or key_file_from_env())
    if not chain.w3.eth.get_code(chain.w3.to_checksum_address(args.oracle)):
        raise InputError(f"no contract at {args.oracle} on chain {chain.chain_id}")
    oracle = chain.contract(args.oracle, oracle_abi())
    if not is_oracle(oracle):
        raise InputError(f"the contract at {args.oracle} is not a VerinferOracle (the oracle's "
                         "address is the one 'chain deploy' printed first)")
    for ref, mid in zip(args.models, ids):
        if not model_fees(oracle, mid).registered:
            raise InputError(f"{ref}: model not registered in the oracle {args.oracle}")
    return chain, oracle, ids


def _update_signer(args: argparse.Namespace) -> int:
    from contracts.deploy import announce_signer
    from verifier.errors import InputError

    if not _ADDRESS.match(args.signer) or int(args.signer, 16) == 0:
        raise InputError(f"--signer is not an address: {args.signer!r}")
    chain, oracle, ids = _oracle(args)
    signer = chain.w3.to_checksum_address(args.signer)
    owner = oracle.functions.owner().call()
    if owner.lower() != chain.sender.lower():
        raise InputError(f"only the oracle's owner {owner} may announce an update, not {chain.sender} "
                         "(--key-file)")
    for ref, mid in zip(args.models, ids):
        done = announce_signer(chain, oracle, mid, signer)
        print(f"OK: {ref}: signer {signer} announced, effective from {done['effective_at']} "
              f"(unix time; then `verinfer chain apply-update`) (tx {done['tx']})", file=sys.stderr)
    return 0


def _apply_update(args: argparse.Namespace) -> int:
    from contracts.deploy import apply_update
    from verifier.errors import InputError

    chain, oracle, ids = _oracle(args)
    now = chain.w3.eth.get_block("latest")["timestamp"]
    for ref, mid in zip(args.models, ids):
        effective_at = oracle.functions.pendingUpdates(mid).call()[2]
        if effective_at == 0:
            raise InputError(f"{ref}: no update announced (`verinfer chain update-signer` first)")
        if now < effective_at:
            raise InputError(f"{ref}: its update takes effect at {effective_at} (unix time; "
                             f"in {effective_at - now} s)")
    for ref, mid in zip(args.models, ids):
        done = apply_update(chain, oracle, mid)
        print(f"OK: {ref}: update applied: signer {done['signer']}, verifier {done['verifier']} "
              f"(tx {done['tx']})", file=sys.stderr)
    return 0


def _withdraw_fees(args: argparse.Namespace) -> int:
    from contracts.deploy import model_fees, withdraw_fees

    chain, oracle, ids = _oracle(args)
    accounts = [model_fees(oracle, mid) for mid in ids]
    for ref, mid, fees in zip(args.models, ids, accounts):
        if fees.accrued == 0:
            print(f"note: {ref}: no fees accrued (payee {fees.payee})", file=sys.stderr)
            continue
        paid = withdraw_fees(chain, oracle, mid)
        print(f"OK: {ref}: paid {paid['amount']} wei to {paid['payee']} (tx {paid['tx']})",
              file=sys.stderr)
    return 0
