"""``verinfer serve``, ``keys``, ``receipts``/``proofs prune``, ``apikeys``. Heavy imports happen in handlers."""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys


def register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the models over the Open Inference Protocol v2, with signed receipts",
        description="Serve every registered model (the reference ones at least) over OIP v2 "
        "REST; every answer carries a signed receipt. Settings also come from VERINFER_* "
        "environment variables (see docs/server.md).",
    )
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8080)")
    p.add_argument("--no-signing", action="store_true", help="answer without receipts (benchmarks only)")
    p.add_argument("--max-batch-size", type=int, help="dynamic batching: most samples per forward pass")
    p.add_argument("--max-queue-delay-ms", type=float, help="dynamic batching: longest wait for a batch")
    p.add_argument("--engine", choices=["torch", "onnx"], help="engine for the reference models")
    p.add_argument("--workers", type=int, help="server processes sharing the port, with one receipt log "
                   "writer for all (default 1; on CPU about cores/2)")
    p.add_argument("--receipt-workers", type=int, help="processes that sign and store receipts: 1, the "
                   "receipt log's one writer (more cores: --workers)")
    p.add_argument("--prover-executor", choices=["local", "ray"],
                   help="where proof jobs run: local worker processes (default) or a Ray cluster")
    p.add_argument("--ray-address", help="Ray cluster to prove on (HOST:PORT of its head, or 'auto')")
    p.add_argument("--log-level", default="warning", type=str.lower,
                   choices=["critical", "error", "warning", "info", "debug", "trace"],
                   help="uvicorn log level (default warning)")
    p.set_defaults(handler=serve)


# a key id: an RFC 7638 thumbprint, 43 base64url characters
_KID_WITH_DASH = re.compile(r"-[A-Za-z0-9_-]{42}")


def _kid_parser(base: type[argparse.ArgumentParser]) -> type[argparse.ArgumentParser]:
    class KidParser(base):
        """One key id in 64 begins with '-': argparse took it for an option ('keys revoke
        -qwM4…': 'the following arguments are required: KID'). A key id is an argument."""

        def _parse_optional(self, arg_string):
            if _KID_WITH_DASH.fullmatch(arg_string):
                return None
            return super()._parse_optional(arg_string)

    return KidParser


def register_keys(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("keys", help="the server's signing keys")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=_kid_parser(type(k)))
    ksub.required = True
    r = ksub.add_parser("rotate", help="make a new Ed25519 signing key active; old public keys stay in the JWKS",
                        description="Make a new Ed25519 signing key active (old public keys stay in the "
                        "JWKS), or with --eip712 a new EIP-712 (secp256k1) key: the old one is kept "
                        "under keys/eth-retired/, so that the relayer answers the requests the oracle "
                        "recorded under the old signer; then announce the new signer on chain "
                        "(`verinfer chain update-signer`). A running server follows, without a restart.")
    r.add_argument("--eip712", action="store_true", help="rotate the EIP-712 signing key, not the Ed25519 one")
    r.add_argument("--json", action="store_true", help="print the new key id (or signer) as JSON on stdout")
    r.set_defaults(handler=keys_rotate)
    rv = ksub.add_parser("revoke", help="revoke a signing key: it stays in the JWKS marked revoked "
                         "(receipts it signs from now on fail), its private key file is deleted")
    rv.add_argument("kid", metavar="KID", help="the key id (see `keys list`)")
    rv.add_argument("--json", action="store_true", help="print the revocation as JSON on stdout")
    rv.set_defaults(handler=keys_revoke)
    ls = ksub.add_parser("list", help="list the public keys (JWKS) and the EIP-712 signer addresses")
    ls.add_argument("--json", action="store_true", help="print the JWKS as JSON on stdout")
    ls.set_defaults(handler=keys_list)


def register_receipts(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("receipts", help="the server's stored receipts (retention)",
                       description="Stored receipts and inputs in <home>/receipts.sqlite3. The receipt log "
                       "keeps what makes every receipt verifiable by its inclusion proof.")
    _prune_command(r, "forget stored receipts and inputs by age or count", "receipts", receipts_prune,
                   "Delete stored receipts older than --older-than and/or all but the newest --keep (a "
                   "running server's receipt worker does the same with the receipt_retention_s / "
                   "receipt_retention_max settings).")


# what `proofs prune` forgets, and what it never does
_PROOFS_PRUNE = ("Delete finished proof jobs (done or failed) not ended nor asked for in --older-than "
                 "seconds and/or all but the newest --keep, with their inputs and bundles; never a queued "
                 "or running job, nor one with a callback still to send (a running server does the same "
                 "with the proof_retention_s / proof_retention_max settings). Their ids then answer 410.")


def register_proofs(sub: argparse._SubParsersAction) -> None:
    """``proofs prune``: named after the API's /v1/proofs, as ``receipts prune`` after the stored receipts."""
    p = sub.add_parser("proofs", help="the server's finished proof jobs and bundles (retention)",
                       description="Proof jobs, their inputs and bundles in <home>/receipts.sqlite3 (served "
                       "at /v1/proofs/{id}). A bundle a client keeps verifies offline without them.")
    _prune_command(p, "forget finished proof jobs and their bundles by age or count", "finished jobs",
                   proofs_prune, _PROOFS_PRUNE)


def _prune_command(parent: argparse.ArgumentParser, help: str, what: str, handler, description: str) -> None:
    """``parent prune [--older-than SECONDS] [--keep N]``, forgetting ``what`` (``handler``)."""
    sub = parent.add_subparsers(dest=f"{parent.prog.split()[-1]}_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("prune", help=help, description=description)
    p.add_argument("--older-than", type=float, metavar="SECONDS", help=f"forget {what} older than this")
    p.add_argument("--keep", type=int, metavar="N", help=f"keep only the newest N {what}")
    p.add_argument("--vacuum", action="store_true",
                   help="then give the space freed back to the file system (SQLite VACUUM; the store is "
                   "rewritten, so the server must be stopped); without it freed space is reused")
    p.set_defaults(handler=handler)


def _prune(args: argparse.Namespace, open_store, report) -> int:
    """``--older-than`` (a Unix time from now) and ``--keep`` applied by ``open_store(path).prune``;
    ``report(store, gone)``: the line after ``OK:``."""
    import time

    from verifier.errors import InputError

    if args.older_than is None and args.keep is None and not args.vacuum:
        raise InputError("say what to prune: --older-than SECONDS and/or --keep N (and/or --vacuum)")
    if (args.older_than is not None and not 0 <= args.older_than < math.inf) \
            or (args.keep is not None and args.keep < 0):  # (nan pruned nothing, and said OK)
        raise InputError("--older-than must be a number of seconds >= 0 and --keep a count >= 0")
    settings = _settings()
    if args.vacuum and _server_running(settings):
        raise InputError("--vacuum rewrites the store, which would stall the running server's answers: "
                         "stop the server first (a prune alone needs no stop: freed space is reused)")
    store = open_store(settings.receipts_path)
    try:
        line = report(store, store.prune(time.time() - args.older_than if args.older_than is not None else None,
                                         args.keep))
    finally:
        store.close()
    if args.vacuum:
        import sqlite3

        from server.sqlite import vacuum

        try:
            before, after = vacuum(settings.receipts_path)
        except sqlite3.OperationalError as exc:  # e.g. a server with signing off holds no log lock
            raise InputError(f"--vacuum: {exc} (the store is in use: stop the server first)") from None
        line += f"; store {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB"
    print(f"OK: {line}", file=sys.stderr)
    return 0


def receipts_prune(args: argparse.Namespace) -> int:
    from server.receipts.store import ReceiptStore

    return _prune(args, ReceiptStore, lambda store, gone: f"{gone} stored receipts pruned, {store.count()} kept")


def proofs_prune(args: argparse.Namespace) -> int:
    from server.proofs.store import JobStore

    def report(store: JobStore, gone: int) -> str:
        n = store.counts()
        return (f"{gone} finished proof jobs pruned, {n.get('done', 0) + n.get('failed', 0)} kept "
                f"({n.get('queued', 0) + n.get('running', 0)} queued or running)")

    return _prune(args, JobStore, report)


def register_apikeys(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("apikeys", help="API keys for the server (access control)",
                       description="API keys, stored hashed in <home>/apikeys.sqlite3. A key is "
                       "shown once, when it is made. The server asks for them on any bind but "
                       "loopback (setting VERINFER_AUTH=auto|on|off).")
    asub = a.add_subparsers(dest="apikeys_command", metavar="ACTION")
    asub.required = True
    c = asub.add_parser("create", help="make a key of a tier; prints the key once")
    c.add_argument("--tier", default="basic", help="tier name from the settings (default basic)")
    c.add_argument("--name", default="", help="a note saying whose key it is")
    c.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    c.set_defaults(handler=apikeys_create)
    ls = asub.add_parser("list", help="list keys (never the secrets)")
    ls.add_argument("--json", action="store_true", help="print the list as JSON")
    ls.set_defaults(handler=apikeys_list)
    w = asub.add_parser("wallet", help="let an Ethereum wallet sign in (Sign-In with Ethereum) with a tier",
                        description="Register a wallet (or change its tier): it may then sign in with an "
                        "EIP-4361 message (POST /v1/auth/siwe) and get a short-lived session token of the tier.")
    w.add_argument("address", help="the wallet's 0x address")
    w.add_argument("--tier", default="basic", help="tier name from the settings (default basic)")
    w.add_argument("--name", default="", help="a note saying whose wallet it is")
    w.set_defaults(handler=apikeys_wallet)
    r = asub.add_parser("revoke", help="revoke a key by id, or a wallet by address: 403 from now on")
    r.add_argument("key_id", help="the key's id or the wallet's 0x address (from 'apikeys list')")
    r.set_defaults(handler=apikeys_revoke)


def _apikeys():
    from server.auth import ApiKeyStore

    settings = _settings()
    return settings, ApiKeyStore(settings.apikeys_path)


def apikeys_create(args: argparse.Namespace) -> int:
    from verifier.errors import InputError

    settings, store = _apikeys()
    try:
        if args.tier not in settings.tiers:
            raise InputError(f"unknown tier {args.tier!r} (tiers: {', '.join(sorted(settings.tiers))})")
        key, token = store.create(args.tier, args.name)
    finally:
        store.close()
    if args.json:
        print(json.dumps({**key.public(), "key": token}))
    else:
        print(token)
    print(f"OK: API key {key.id} ({key.tier}) made; it is shown only now", file=sys.stderr)
    return 0


def apikeys_wallet(args: argparse.Namespace) -> int:
    from verifier.errors import InputError

    settings, store = _apikeys()
    try:
        if args.tier not in settings.tiers:
            raise InputError(f"unknown tier {args.tier!r} (tiers: {', '.join(sorted(settings.tiers))})")
        wallet = store.add_wallet(args.address, args.tier, args.name)
    finally:
        store.close()
    print(f"OK: {wallet.id} may sign in ({wallet.tier})", file=sys.stderr)
    return 0


def apikeys_list(args: argparse.Namespace) -> int:
    _, store = _apikeys()
    try:
        keys = store.list() + store.wallets()
    finally:
        store.close()
    if args.json:
        print(json.dumps({"keys": [k.public() for k in keys]}))
    else:
        for k in keys:
            state = "revoked" if k.revoked is not None else "active"
            print(f"{k.id}  {k.tier:10}  {state:8}  {k.name}")
    return 0


def apikeys_revoke(args: argparse.Namespace) -> int:
    _, store = _apikeys()
    try:
        key = store.revoke(args.key_id)
    finally:
        store.close()
    print(f"OK: {'API key ' if not key.id.startswith('wallet:') else ''}{key.id} revoked", file=sys.stderr)
    return 0


def _settings(**overrides):
    from pydantic import ValidationError

    from server.settings import BatchPolicy, ServerSettings
    from verifier.base import first_error
    from verifier.errors import InputError

    try:
        base = ServerSettings()
        values = {k: v for k, v in overrides.items() if v is not None}
        batch = {k: values.pop(k) for k in ("max_batch_size", "max_queue_delay_ms") if k in values}
        if batch:
            values["batching"] = BatchPolicy(**{**base.batching.model_dump(), **batch})
        return ServerSettings(**values) if values else base
    except ValidationError as exc:
        raise InputError(f"invalid setting {first_error(exc, 'settings')}") from None


def serve(args: argparse.Namespace) -> int:
    settings = _settings(
        host=args.host,
        port=args.port,
        signing=False if args.no_signing else None,
        max_batch_size=args.max_batch_size,
        max_queue_delay_ms=args.max_queue_delay_ms,
        engine=args.engine,
        workers=args.workers,
        receipt_workers=args.receipt_workers,
        prover_executor=args.prover_executor,
        ray_address=args.ray_address,
    )
    if settings.workers > 1:  # several processes on one port, one receipt log writer
        from server.supervisor import Supervisor

        return Supervisor(settings, args.log_level).run()
    import uvicorn

    from prover.ezkl_backend import use_ezkl_dir
    from prover.progress import private_stdio
    from server.http.app import create_app, on_stop_signal
    from server.logs import configure, say
    from server.supervisor import bind, check_log, start_errors

    private_stdio()  # an in-process relayer proves in threads: EZKL's log takes its prints alone
    log_config = configure(settings.log_format, args.log_level)  # a refused start's line too
    with start_errors():  # e.g. a store's folder that cannot be made: one line, exit 2
        use_ezkl_dir(settings)  # for its prover workers and an in-process relayer's proofs
        app = create_app(settings)  # refuses unsafe key files before listening
        if settings.signing:
            check_log(settings)
        listener = bind(settings)  # a port in use is refused here, in one line (exit 2)
    keys = app.state.keys

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # SIGTERM, Ctrl-C
            on_stop_signal(app)
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started and not self.should_exit:  # said once the app is up, not before
                say(f"serving {', '.join(sorted(app.state.service.models))} on "
                    f"http://{settings.host}:{listener.getsockname()[1]} (key {keys.kid}, "
                    f"EIP-712 signer {keys.eth_address})")

    server = Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level,
                                   **({"log_config": log_config} if log_config is not None else {})))
    server.run(sockets=[listener])
    if not server.started:
        say("error: the server did not start (the log above says why)", logging.ERROR)
        return 1
    return 0


def keys_rotate(args: argparse.Namespace) -> int:
    from server.receipts.keys import load_keys, new_ed25519

    settings = _settings()
    if args.eip712:
        return _rotate_eip712(settings, args.json)
    fresh = not (settings.keys_dir / "ed25519" / "active").exists()
    keys = load_keys(settings)  # the data dir's keys exist and are safe first
    kid = keys.kid if fresh else new_ed25519(settings)
    if settings.signing_key is not None or settings.signing_key_path is not None:
        print("verinfer: warning: the server signs with the key from VERINFER_SIGNING_KEY(_PATH), "
              "not the data dir's active key", file=sys.stderr)
    if args.json:
        print(json.dumps({"kid": kid}))
    print(f"OK: new signing key {kid} is active; old public keys stay in the JWKS. A running server "
          "signs its next checkpoint with it (no restart)", file=sys.stderr)
    return 0


def _rotate_eip712(settings, as_json: bool) -> int:
    from server.receipts.keys import load_keys, rotate_eth

    load_keys(settings)  # the data dir's keys exist and are safe first
    new, old = rotate_eth(settings)
    if as_json:
        print(json.dumps({"signer": new, "retired": old}))
    print(f"OK: EIP-712 signer {new} is active (was {old}, kept for the requests made under it). "
          "A running server signs with it from now on (no restart). Contracts that trust the old "
          f"signer: announce the new one (`verinfer chain update-signer MODEL --signer {new} --rpc "
          "URL --oracle ADDRESS`), then apply it after the oracle's update delay (`verinfer chain "
          "apply-update`)", file=sys.stderr)
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    from server.receipts.keys import load_keys, revoke_ed25519

    settings = _settings()
    load_keys(settings, create=False)  # the data dir's keys exist and are safe first
    done = revoke_ed25519(settings, args.kid)
    if args.json:
        print(json.dumps(done))
    print(f"OK: key {done['kid']} revoked at {done['revoked_at']} (its private key file is "
          f"deleted; it stays in the JWKS marked revoked); active key: {done['active']} (a running "
          "server signs its next checkpoint with it, no restart)",
          file=sys.stderr)
    return 0


def _server_running(settings) -> bool:
    """Whether a server holds this data dir's receipt log (its writer's lock)."""
    from server.receipts.translog import writer_lock
    from verifier.errors import InputError

    if not settings.log_path.exists():
        return False
    try:
        writer_lock(settings.log_path, 0.0).close()
    except InputError:
        return True
    return False


def keys_list(args: argparse.Namespace) -> int:
    from server.receipts.keys import load_keys

    keys = load_keys(_settings(), create=False)
    if args.json:
        print(json.dumps({**keys.jwks, "active": keys.kid, "eip712_signer": keys.eth_address,
                          "eip712_retired": list(keys.eth_retired)}))
    else:
        for jwk in keys.jwks["keys"]:
            mark = " (active)" if jwk["kid"] == keys.kid else (
                f" (revoked at {jwk['revoked_at']})" if "revoked_at" in jwk else "")
            print(f"{jwk['kid']}  Ed25519{mark}")
        print(f"EIP-712 signer: {keys.eth_address}")
        for address in keys.eth_retired:
            print(f"EIP-712 signer: {address} (retired)")
    return 0
