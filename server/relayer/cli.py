"""``verinfer relay``: answer an oracle's on-chain requests. Heavy imports happen in the handler."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "relay", help="answer a VerinferOracle's on-chain classification requests",
        description="Follow the oracle's ClassificationRequested events from a durable cursor "
        "(<home>/relayer.sqlite3), run each input through the registered circuit package's "
        "model and fulfil it with a zk proof or, where the model's on-chain policy allows and "
        "the model's signer is this server's EIP-712 key, a signature. After a restart it "
        "misses no request and fulfils none twice; a request it cannot serve (or whose fee "
        "does not pay for it) is recorded as skipped, never retried; one that cannot be "
        "proven fails alone; a full proof queue only delays. Exit 0 ok, 2 bad input or unreachable node.")
    p.add_argument("--rpc", required=True, metavar="URL", help="JSON-RPC node")
    p.add_argument("--oracle", required=True, metavar="ADDRESS", help="VerinferOracle address")
    p.add_argument("--key-file", type=Path, metavar="FILE",
                   help="private key (hex, mode 0600) that pays for the fulfilments (default: "
                   "$VERINFER_CHAIN_KEY_FILE, else the node's first unlocked account)")
    p.add_argument("--answer", choices=["auto", "proof", "signature"], default="auto",
                   help="auto (default): a proof where the policy allows one, else a "
                   "signature; proof / signature: only that path (others are skipped)")
    p.add_argument("--model", action="append", metavar="NAME",
                   help="answer only for these registered models (repeatable; default: all "
                   "circuit packages in the data dir)")
    p.add_argument("--from-block", type=int, default=0, metavar="N",
                   help="where a fresh cursor starts (default 0)")
    p.add_argument("--confirmations", type=int, default=0, metavar="N",
                   help="follow the head less N blocks (reorg safety on public chains)")
    p.add_argument("--fee-margin", type=float, default=1.0, metavar="X",
                   help="skip a request whose fee is below its estimated gas cost (gas limit x "
                   "fee per gas) times X (default 1; 0 answers unpaid requests too)")
    p.add_argument("--max-callback-gas", type=int, default=1_000_000, metavar="GAS",
                   help="skip requests asking more gas for their callback (default 1000000)")
    p.add_argument("--workers", type=int, default=4, metavar="N",
                   help="requests handled at once (default 4)")
    p.add_argument("--tx-timeout", type=float, default=120.0, metavar="S",
                   help="replace a fulfilment not mined in S seconds at the same nonce with a "
                   "higher fee (local --key-file only; default 120)")
    p.add_argument("--withdraw-min", type=int, default=None, metavar="WEI",
                   help="after each poll, send withdrawFees for a served model once its accrued "
                   "fees reach WEI (paid to its payee; the relayer pays the gas; default: never)")
    p.add_argument("--poll-interval", type=float, default=2.0, metavar="S",
                   help="seconds between polls (default 2)")
    p.add_argument("--once", action="store_true",
                   help="handle every request up to the head, then exit")
    p.add_argument("--json", action="store_true",
                   help="with --once: print what was done as JSON on stdout")
    p.set_defaults(handler=relay)


def relay(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from contracts.chain import key_file_from_env
    from server.relayer.relayer import load_local_models, make_relayer, run_forever
    from server.settings import ServerSettings
    from verifier.errors import InputError

    if args.poll_interval <= 0:
        raise InputError("--poll-interval must be positive")
    if args.from_block < 0 or args.confirmations < 0:
        raise InputError("--from-block and --confirmations must not be negative")
    if args.fee_margin < 0 or args.max_callback_gas < 0 or args.workers < 1 \
            or args.tx_timeout <= 0:
        raise InputError("--fee-margin and --max-callback-gas must not be negative, --workers "
                         "must be >= 1, --tx-timeout positive")
    if args.withdraw_min is not None and not 0 <= args.withdraw_min < 2**96:
        raise InputError("--withdraw-min must be between 0 and 2**96 - 1 wei")
    from prover.progress import private_stdio

    # proving redirects fd 2 to EZKL's log while it runs (prover.progress.captured_output), and
    # the relayer's lines, from any of its workers, must not vanish into it
    private_stdio()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = ServerSettings()
    from prover.ezkl_backend import use_ezkl_dir

    use_ezkl_dir(settings)
    models = load_local_models(settings, args.model)
    eth_keys = None
    if args.answer != "proof":
        from server.receipts.keys import eth_signing_keys, load_keys

        load_keys(settings)  # the server's keys exist and are safe (0600 enforced)
        eth_keys = lambda: eth_signing_keys(settings)  # noqa: E731 (active first, then retired ones)
    relayer = make_relayer(rpc=args.rpc, oracle=args.oracle, home=settings.home,
                           key_file=args.key_file or key_file_from_env(), models=models,
                           eth_keys=eth_keys, answer=args.answer, from_block=args.from_block,
                           confirmations=args.confirmations, answer_ttl_s=settings.answer_ttl_s,
                           fee_margin=args.fee_margin, max_callback_gas=args.max_callback_gas,
                           workers=args.workers, tx_timeout_s=args.tx_timeout,
                           withdraw_min_wei=args.withdraw_min)
    names = ", ".join(sorted(m.name for m in models.values()))
    print(f"verinfer: relaying for {relayer.oracle.address} on chain {relayer.chain.chain_id} "
          f"({names}; fulfilments from {relayer.chain.sender}"
          + (f", EIP-712 signer {relayer.signer_address}" if relayer.signer_address else "")
          + ")", file=sys.stderr)
    try:
        if args.once:
            try:
                res = relayer.poll()
            except Exception as exc:  # noqa: BLE001 - the node, or a transaction not mined yet
                # (what the loop logs and retries): one line; the requests left stay for a later pass
                print(f"verinfer relay: the pass did not finish ({type(exc).__name__}: "
                      f"{str(exc)[:300]}); the requests left are handled at the next pass",
                      file=sys.stderr)
                return 2  # as for a node error before the pass (docs/server.md)
            print(f"OK: {res.events} request(s) up to block {res.latest_block}: "
                  f"{len(res.fulfilled)} fulfilled, {len(res.elsewhere)} answered elsewhere or "
                  f"cancelled, {len(res.skipped)} skipped, {len(res.failed)} failed, "
                  f"{len(res.delayed)} delayed"
                  + (f", {sum(w['amount'] for w in res.withdrawn)} wei of fees withdrawn"
                     if res.withdrawn else ""), file=sys.stderr)
            if args.json:
                print(json.dumps({"events": res.events, "latest_block": res.latest_block,
                                  "fulfilled": res.fulfilled, "elsewhere": res.elsewhere,
                                  "skipped": res.skipped, "failed": res.failed,
                                  "delayed": res.delayed, "withdrawn": res.withdrawn}))
            return 0
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            run_forever(relayer, args.poll_interval, stop)
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        relayer.store.close()
