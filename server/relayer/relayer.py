"""The relayer: answers the oracle's on-chain classification requests.

It follows ``VerinferOracle``'s ``ClassificationRequested`` events from a durable cursor,
runs each requested input through the model locally and, per the model's on-chain policy,
fulfils it with a zk proof (``fulfillWithProof``) or an EIP-712 signature of the server's
key (``fulfillWithSignature``), several requests at once. The cursor moves only past
terminal requests (and back on a reorg), and a transaction's hash is recorded before it is
broadcast, so a relayer killed at any point misses no request and fulfils none twice; unpaid
requests are skipped, temporary answers of the prover delay a request, an input that cannot be
proven fails alone. The rules are in docs/server.md ("Relayer"); sending is in
:mod:`server.relayer.sender`.

Core logic only: no argparse, no printing (``server.relayer.cli`` is the CLI; the server runs
:class:`RelayerThread` from its lifespan when ``relay_rpc``/``relay_oracle`` are set).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.relayer.models import (
    InProcessProofs,
    LocalModel,
    ProofPending,
    ProofSource,
    ProofUnavailable,  # noqa: F401 - re-exported for callers
    QueueProofs,
    _reference_models,
    load_local_models,
)
from server.relayer.sender import Sender, Unpaid
from server.relayer.store import (
    CURSOR_END,
    TERMINAL,
    RelayStore,
    default_store_path,
)
from verifier.errors import InputError, VerinferError
from verifier.fixedpoint import felt_to_int, input_commitment

log = logging.getLogger("verinfer.relayer")

# VerinferOracle.Policy and .Status (the Solidity enums' order).
POLICY_PROOF, POLICY_SIGNATURE, POLICY_EITHER = 1, 2, 3
STATUS_NONE, STATUS_OPEN, STATUS_FULFILLED, STATUS_CANCELLED = 0, 1, 2, 3
ANSWER_MODES = ("auto", "proof", "signature")


LOG_CHUNK = 2_000  # blocks per eth_getLogs
DEFAULT_FEE_MARGIN = 1.0  # a request's fee must cover its gas cost x this (0: serve unpaid)
DEFAULT_MAX_CALLBACK_GAS = 1_000_000  # requests asking more gas for their callback: skipped
MIN_FULFIL_GAS = 50_000  # the least a fulfilment costs besides its callback (fee pre-check)
# The least a proof fulfilment costs besides its callback, until this relayer has estimated one
# of the model's: a KZG verifyProof is two pairings and dozens of curve multiplications
# (fulfillWithProof measured ~640k gas for iris_mlp with 1 column, ~940k for digits_cnn:
# docs/contracts.md). Checked before proving, so that a request paying for a signature's gas
# cannot make the relayer spend a proof's CPU; a floor, not a guess, so that no request that
# pays for its proof is refused for want of an estimate (the estimate after proving decides).
PROOF_FULFIL_GAS_FLOOR = 300_000


class RelayError(VerinferError):
    """The relayer cannot go on (bad oracle address, no models, ...)."""


# -- the relayer -----------------------------------------------------------------------


@dataclass
class Event:
    request_id: bytes
    model_id: bytes
    requester: str
    input: list[int]
    input_commitment: bytes
    fee: int
    callback_gas_limit: int
    block: int
    log_index: int

    @property
    def rid(self) -> str:
        return "0x" + self.request_id.hex()


@dataclass
class PassResult:
    """What one :meth:`Relayer.poll` did."""

    events: int = 0
    fulfilled: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    delayed: list[str] = field(default_factory=list)  # not answered yet: read again next poll
    latest_block: int = 0
    withdrawn: list[dict] = field(default_factory=list)  # fees paid out: {model, payee, amount, tx}


class Relayer:
    """Follows one oracle on one chain; :meth:`poll` handles every new request once.

    Settings (docs/server.md "Relayer"): ``confirmations`` (follow the head less N blocks),
    ``fee_margin`` (skip a request whose fee does not cover margin x its gas cost; 0 serves
    unpaid requests), ``max_callback_gas`` (skip requests asking more for their callback),
    ``workers`` (requests handled at once), ``tx_timeout_s`` (replace a transaction not mined
    in that time), ``withdraw_min_wei`` (after a poll, send ``withdrawFees`` for each served
    model whose accrued fees reached it; None: never, the payee withdraws). EIP-712 keys:
    ``eth_key`` (one), or ``eth_keys`` (a function giving them, the active one first: the data
    dir's, retired ones included, so that requests made under an earlier signer are answered)."""

    def __init__(self, chain, oracle: str, models: dict[bytes, LocalModel], store: RelayStore,
                 *, proofs: ProofSource | None = None, eth_key: bytes | None = None,
                 eth_keys: Callable[[], list[bytes]] | None = None, answer: str = "auto",
                 from_block: int = 0, confirmations: int = 0, answer_ttl_s: int = 3600,
                 fee_margin: float = DEFAULT_FEE_MARGIN, max_callback_gas: int = DEFAULT_MAX_CALLBACK_GAS,
                 workers: int = 4, tx_timeout_s: float = 120.0, withdraw_min_wei: int | None = None,
                 hooks: dict[str, Callable[[Event], None]] | None = None) -> None:
        from contracts.deploy import is_oracle, oracle_abi

        if answer not in ANSWER_MODES:
            raise InputError(f"answer must be one of {ANSWER_MODES}, not {answer!r}")
        if fee_margin < 0 or max_callback_gas < 0 or workers < 1 or tx_timeout_s <= 0:
            raise InputError("fee_margin and max_callback_gas must not be negative, workers "
                             "must be >= 1, tx_timeout_s > 0")
        if withdraw_min_wei is not None and not 0 <= withdraw_min_wei < 2**96:
            raise InputError("withdraw_min_wei must be between 0 and 2**96 - 1")
        self.withdraw_min_wei = withdraw_min_wei
        self.chain = chain
        self.w3 = chain.w3
        self.oracle = chain.contract(oracle, oracle_abi())
        if not self.w3.eth.get_code(self.oracle.address):
            raise RelayError(f"no contract at {oracle}")
        if not is_oracle(self.oracle):  # else it would follow events that never come
            raise RelayError(f"the contract at {oracle} is not a VerinferOracle")
        self.models = models
        self.store = store
        self.proofs = proofs or InProcessProofs()
        self._proof_gas: dict[bytes, int] = {}  # model id -> gas of its last proof fulfilment, besides the callback
        self.answer = answer
        self.from_block = from_block
        self.confirmations = confirmations
        self.answer_ttl_s = answer_ttl_s
        self.max_callback_gas = max_callback_gas
        # the embedded chain (py-evm in this process) is not thread-safe: one at a time there
        self.workers = 1 if chain.embedded else workers
        self.max_attempts = 3  # tries of a request whose preparation fails unexpectedly
        self.hooks = hooks or {}  # test seams: "after_send" runs after broadcast, before record
        self.sender = Sender(chain, self.oracle, store, fee_margin=fee_margin,
                             tx_timeout_s=tx_timeout_s, status=self._status, hooks=self.hooks)
        # EIP-712 keys by lower-case address; a request is signed by the key of the signer the
        # oracle recorded with it (after `verinfer keys rotate --eip712`, requests made before
        # the contract's update still name the old one). ``eth_keys`` (the active key first) is
        # asked again for a signer not held: a rotation while the relayer runs.
        self._load_eth = eth_keys or (lambda: [eth_key] if eth_key is not None else [])
        self._eth: dict[str, Any] = {}
        self.signer_address: str | None = None  # the active one
        self._hold_eth_keys()
        self._event = self.oracle.events.ClassificationRequested()
        self._topic = "0x" + self._event_topic().hex()

    def _hold_eth_keys(self) -> None:
        from eth_keys import keys as eth_keys

        held = [eth_keys.PrivateKey(k) for k in self._load_eth()]
        self._eth = {k.public_key.to_checksum_address().lower(): k for k in held}
        self.signer_address = held[0].public_key.to_checksum_address() if held else None

    def _eth_key_of(self, signer: str):
        """The key of ``signer`` (an address), if this relayer has it."""
        key = self._eth.get(signer.lower())
        if key is None and self.signer_address is not None:
            try:
                self._hold_eth_keys()  # rotated since (keys are read only when one is missing)
            except (InputError, OSError) as exc:
                log.warning("could not read the EIP-712 keys again: %s", exc)
            key = self._eth.get(signer.lower())
        return key

    def _event_topic(self) -> bytes:
        from eth_utils import keccak

        return keccak(text="ClassificationRequested(bytes32,bytes32,address,int256[],bytes32,"
                           "uint256,uint32)")

    # -- following events ------------------------------------------------------------

    def poll(self) -> PassResult:
        """Handle every request event from the cursor up to the chain head (less
        ``confirmations``), ``workers`` at a time. The cursor moves up to the first request
        that is not terminal (delayed: retried at the next poll); a reorg below the cursor
        rewinds it first. Node errors propagate, after every other request of the pass was
        handled."""
        res = PassResult()
        self._check_reorg()
        head = self.w3.eth.block_number - self.confirmations
        res.latest_block = head
        cur = self.store.cursor()
        start = self.from_block if cur is None else cur[0]
        if head < start:
            return res
        events: list[Event] = []
        for lo in range(start, head + 1, LOG_CHUNK):
            logs = self._logs(lo, min(head, lo + LOG_CHUNK - 1))
            for raw in sorted(logs, key=lambda lg: (lg["blockNumber"], lg["logIndex"])):
                if cur is None or (raw["blockNumber"], raw["logIndex"]) > cur:
                    events.append(self._decode(raw))
        # the hashes of the blocks read, before handling: a reorg meanwhile shows next time
        hashes = {b: self._block_hash(b) for b in {ev.block for ev in events} | {head}}
        self.store.remember_blocks({b: h for b, h in hashes.items() if h is not None})
        outcomes = self._handle_all(events)
        new_cursor, error = (head, CURSOR_END), None
        for ev, out in zip(events, outcomes):
            res.events += 1
            if isinstance(out, BaseException):
                error = error or out
                out = "pending"
            {"fulfilled": res.fulfilled, "skipped": res.skipped, "failed": res.failed,
             "pending": res.delayed}.get(out, res.elsewhere).append(ev.rid)
            if out not in TERMINAL and new_cursor == (head, CURSOR_END):
                new_cursor = (ev.block, ev.log_index - 1)  # this one is read again
        if cur is None or new_cursor > cur:
            self.store.set_cursor(*new_cursor)
        if self.withdraw_min_wei is not None:  # no fulfilment in flight now: one sender at a time
            res.withdrawn = self.withdraw_fees()
        if error is not None:
            raise error
        return res

    def _logs(self, lo: int, hi: int) -> list:
        """The request events of blocks ``lo``..``hi``, asked in halves while the node answers
        an error: hosted nodes cap the blocks (or results) of one eth_getLogs below
        LOG_CHUNK, and a relayer catching up over more than the cap never got past it. An
        error for a single block is raised (the node's: the pass is retried)."""
        from web3.exceptions import Web3RPCError

        try:
            return self.w3.eth.get_logs({"address": self.oracle.address, "fromBlock": lo,
                                         "toBlock": hi, "topics": [self._topic]})
        except Web3RPCError:
            if hi <= lo:
                raise
        mid = (lo + hi) // 2
        return self._logs(lo, mid) + self._logs(mid + 1, hi)

    def withdraw_fees(self) -> list[dict]:
        """``withdrawFees`` for each served model whose accrued fees reached
        ``withdraw_min_wei`` (the oracle pays its payee, whoever sends it; the relayer pays the
        gas). A model that fails is logged and tried again after the next poll."""
        from contracts.deploy import model_fees, withdraw_fees

        out = []
        for model_id in self.models:
            mid = "0x" + model_id.hex()
            try:
                fees = model_fees(self.oracle, model_id)
                if fees.accrued == 0 or fees.accrued < (self.withdraw_min_wei or 0):
                    continue
                paid = withdraw_fees(self.chain, self.oracle, model_id)
            except Exception as exc:  # noqa: BLE001 - fees wait; answering requests goes on
                log.warning("relayer: withdrawing the fees of model %s failed (%s: %s)", mid,
                            type(exc).__name__, str(exc)[:300])
                continue
            log.info("relayer: withdrew %d wei of model %s's fees to %s (tx %s)", paid["amount"],
                     mid, paid["payee"], paid["tx"])
            out.append({"model": mid, **paid})
        return out

    def _handle_all(self, events: list[Event]) -> list:
        """:meth:`handle` for each event, ``workers`` at a time; outcomes in event order (an
        exception where one was raised)."""
        def one(ev: Event):
            try:
                return self.handle(ev)
            except Exception as exc:  # noqa: BLE001 - reported by poll after the others
                return exc

        if self.workers == 1 or len(events) <= 1:
            return [one(ev) for ev in events]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.workers, thread_name_prefix="verinfer-relay") as pool:
            return list(pool.map(one, events))

    def _block_hash(self, number: int) -> str | None:
        from web3.exceptions import BlockNotFound

        try:
            return "0x" + bytes(self.w3.eth.get_block(number)["hash"]).hex()
        except BlockNotFound:
            return None

    def _check_reorg(self) -> None:
        """Compare the recorded block hashes with the chain's; on a difference, rewind the
        cursor and the request records to the newest block that is still the same."""
        known = self.store.known_blocks()
        if not known or self._block_hash(known[0][0]) == known[0][1]:
            return
        keep = next((n for n, h in known[1:] if self._block_hash(n) == h), None)
        gone = self.store.rewind(keep)
        log.warning("relayer: reorg: block %d changed; rewound to %s (%d request records "
                    "forgotten, read again)", known[0][0],
                    "the start" if keep is None else f"block {keep}", gone)

    def _decode(self, raw) -> Event:
        a = self._event.process_log(raw)["args"]
        return Event(bytes(a["requestId"]), bytes(a["modelId"]), a["requester"],
                     list(a["input"]), bytes(a["inputCommitment"]), a["fee"],
                     a["callbackGasLimit"], raw["blockNumber"], raw["logIndex"])

    # -- one request -----------------------------------------------------------------

    def handle(self, ev: Event) -> str:
        """Take one request to a terminal state and return it, or return "pending" (a
        temporary answer: the prover's queue is full, the proof is not ready, the node)."""
        rec = self.store.get(ev.rid)
        if rec is not None and rec.state in TERMINAL:
            return rec.state
        mid = "0x" + ev.model_id.hex()
        if rec is None:
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "pending")
        elif rec.state == "sending":  # a transaction sent before a restart
            done = self.sender.resume(ev, rec) if rec.tx_hash else None
            if done is not None:
                return done
            if rec.nonce is not None:  # its hash unknown to the node: wait for its nonce
                self.sender.wait_for_nonce(rec)

        status = self._status(ev.request_id)
        if status != STATUS_OPEN:
            state = {STATUS_FULFILLED: "answered_elsewhere", STATUS_CANCELLED: "cancelled"}.get(
                status, "skipped")
            reason = None if status != STATUS_NONE else "the oracle does not know this request"
            if rec is not None and rec.state == "sending" and status == STATUS_FULFILLED:
                # we were stopped between broadcasting and recording: the answer is ours
                state, reason = "fulfilled", "found fulfilled on chain after a restart"
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, state, reason=reason)
            log.info("relayer: request %s is %s on chain; nothing to send", ev.rid, state)
            return state

        def final(state: str, reason: str, **fields) -> str:
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, state, reason=reason,
                              **fields)
            log.warning("relayer: request %s %s: %s", ev.rid, state, reason)
            return state

        try:
            method, call, label = self._prepare(ev)
        except (_Skip, Unpaid) as s:
            return final("skipped", str(s))
        except ProofPending as exc:
            log.info("relayer: request %s delayed: %s", ev.rid, exc)
            return "pending"
        except Exception as exc:
            if _is_node_error(exc):
                raise  # the node or the network: retried at the next poll, not counted
            if isinstance(exc, VerinferError):
                # this input cannot be answered (e.g. EZKL cannot witness it): fail it, alone
                return final("failed", f"{type(exc).__name__}: {str(exc)[:300]}")
            tries = (self.store.get(ev.rid).attempts or 0) + 1
            if tries >= self.max_attempts:
                return final("failed", f"{type(exc).__name__}: {str(exc)[:300]} ({tries} "
                             "tries)", attempts=tries)
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "pending", attempts=tries)
            log.warning("relayer: request %s: try %d failed (%s: %s); retried at the next "
                        "poll", ev.rid, tries, type(exc).__name__, str(exc)[:300])
            return "pending"
        return self._send(ev, method, call, label)

    def _status(self, request_id: bytes) -> int:
        return int(self.oracle.functions.requests(request_id).call()[3])

    def _prepare(self, ev: Event):
        """Check that we can serve it, run the model, build the fulfilment call."""
        model = self.models.get(ev.model_id)
        if model is None:
            raise _Skip(f"model 0x{ev.model_id.hex()} is not served by this relayer")
        _signer, n, scale, policy, _verifier, num_instances, *_ = \
            self.oracle.functions.models(ev.model_id).call()
        if policy == 0:
            raise _Skip(f"model {model.name} is not registered in the oracle")
        if n != model.input_length or len(ev.input) != model.input_length:
            raise _Skip(f"input length {len(ev.input)}, oracle says {n}, model {model.name} "
                        f"takes {model.input_length}")
        if scale != model.scale:
            raise _Skip(f"model {model.name}: oracle input scale {scale}, package {model.scale}")
        if input_commitment(ev.input) != ev.input_commitment:
            raise _Skip("the event's input does not match its commitment")
        if ev.callback_gas_limit > self.max_callback_gas:
            raise _Skip(f"callback gas {ev.callback_gas_limit} is over this relayer's cap "
                        f"{self.max_callback_gas}")
        # before any work: the callback's gas alone, at today's price, must be paid for
        per_gas = self.sender.max_fee_per_gas()  # the price build() checks the fee at
        self.sender.check_fee(ev, ev.callback_gas_limit + MIN_FULFIL_GAS, per_gas)
        try:
            x = model.dequantize(ev.input)
        except InputError as exc:
            raise _Skip(str(exc)) from None
        float_label = model.label(x)

        # answered under the signer and policy recorded with the request, not the model's now
        *_, signer, policy = self.oracle.functions.requests(ev.request_id).call()
        method = self._method(model, policy, signer)
        if method == "signature":
            now = self.w3.eth.get_block("latest")["timestamp"]
            deadline = int(now) + self.answer_ttl_s
            sig = self._sign(ev, float_label, deadline, self._eth_key_of(signer))
            call = self.oracle.functions.fulfillWithSignature(ev.request_id, float_label,
                                                              deadline, sig)
            return method, call, float_label

        from verifier.onchain import proof_parts

        if model.num_instances not in (None, num_instances):  # the oracle would refuse it
            raise _Skip(f"model {model.name}: the oracle takes {num_instances} public instances, "
                        f"this package's proofs have {model.num_instances} (another public "
                        f"output shape)")
        if not model.label_last:  # the oracle would deliver another instance as the label
            from contracts.deploy import label_position

            raise _Skip(f"model {model.name}: {label_position(model.package.manifest)}")
        proof_gas = self._proof_gas.get(ev.model_id, PROOF_FULFIL_GAS_FLOOR)
        self.sender.check_fee(ev, ev.callback_gas_limit + proof_gas, per_gas)  # before proving
        bundle = self.proofs.prove(model, x)
        proof, instances = proof_parts(bundle.proof)
        if [felt_to_int(f) for f in instances[: model.input_length]] != list(ev.input):
            raise _Skip("the proof's public inputs are not the requested input")
        label = instances[-1]
        if label != float_label:
            log.warning("relayer: request %s: circuit label %d, float model %d; sending the "
                        "proven one", ev.rid, label, float_label)
        call = self.oracle.functions.fulfillWithProof(ev.request_id, proof, instances)
        return method, call, int(label)

    def _learn_proof_gas(self, ev: Event, gas_limit: int) -> None:
        """This model's proof fulfilment as last estimated, besides the callback: what the next
        request's pre-check (before proving) counts."""
        self._proof_gas[ev.model_id] = max(MIN_FULFIL_GAS, gas_limit - ev.callback_gas_limit)

    def _method(self, model: LocalModel, policy: int, signer: str) -> str:
        proof_ok = policy in (POLICY_PROOF, POLICY_EITHER)
        sig_ok = policy in (POLICY_SIGNATURE, POLICY_EITHER)
        can_prove = model.package is not None
        can_sign = sig_ok and self._eth_key_of(signer) is not None
        wants = {"auto": ("proof", "signature"), "proof": ("proof",),
                 "signature": ("signature",)}[self.answer]
        for m in wants:
            if m == "proof" and proof_ok and can_prove:
                return "proof"
            if m == "signature" and sig_ok and can_sign:
                return "signature"
        policy_name = {POLICY_PROOF: "ProofOnly", POLICY_SIGNATURE: "SignatureOnly",
                       POLICY_EITHER: "ProofOrSignature"}.get(policy, str(policy))
        why = []
        if "proof" in wants:
            why.append("policy has no proof path" if not proof_ok else
                       "no circuit package here" if not can_prove else "")
        if "signature" in wants:
            why.append("policy has no signature path" if not sig_ok else
                       "no EIP-712 key" if self.signer_address is None else
                       f"the request's signer is {signer}, ours is {self.signer_address}"
                       + (f" (and {len(self._eth) - 1} retired)" if len(self._eth) > 1 else ""))
        raise _Skip(f"cannot answer {model.name} (policy {policy_name}, answer mode "
                    f"{self.answer}): " + "; ".join(w for w in why if w))

    def _sign(self, ev: Event, label: int, deadline: int, key) -> bytes:
        from verifier.eip712 import Classification, Domain, sign_digest, signing_digest

        domain = Domain(chainId=self.chain.chain_id, verifyingContract=self.oracle.address)
        msg = Classification(modelId="0x" + ev.model_id.hex(),
                             inputCommitment="0x" + ev.input_commitment.hex(), label=label,
                             requestId=ev.rid, deadline=deadline)
        return bytes.fromhex(sign_digest(signing_digest(domain, msg), key)[2:])

    # -- sending ---------------------------------------------------------------------

    def _send(self, ev: Event, method: str, call, label: int) -> str:
        from contracts.chain import ContractRevert, decode_revert

        mid = "0x" + ev.model_id.hex()
        try:
            tx = self.sender.build(ev, call)
            if method == "proof":
                self._learn_proof_gas(ev, tx["gas"])
        except Unpaid as exc:
            if method == "proof":  # estimated, then found unpaid: learn it too, or each such
                self._learn_proof_gas(ev, exc.gas)  # request costs a proof
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "skipped", method=method,
                              label=label, reason=str(exc))
            log.warning("relayer: skipped request %s: %s", ev.rid, exc)
            return "skipped"
        except Exception as exc:  # noqa: BLE001
            err = decode_revert(exc, self.oracle.abi)
            if not isinstance(err, ContractRevert):
                raise err from None  # the node: retry at the next poll
            if err.error == "AlreadyFulfilled":
                state = "answered_elsewhere"
            elif err.error == "RequestIsCancelled":
                state = "cancelled"
            else:
                state = "failed"
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, state, method=method,
                              label=label, reason=str(err))
            log.warning("relayer: request %s: %s refused: %s", ev.rid, method, err)
            return state
        return self.sender.send(ev, tx, method, label)


class _Skip(Exception):
    """The request cannot be served here: record, log, pass."""


def _is_node_error(exc: BaseException) -> bool:
    """Errors of the node or the network: retried for as long as it takes. A JSON-RPC error
    the node answers (a hosted node's rate limit, "header not found") is one too: a revert is
    not (web3 raises ContractLogicError for it, and the eth_calls made while preparing a
    request are views that do not revert)."""
    import requests  # web3's HTTP transport
    from web3.exceptions import Web3RPCError

    from contracts.chain import ChainError

    return isinstance(exc, (ChainError, ConnectionError, TimeoutError, OSError,
                            requests.RequestException, Web3RPCError))


# -- running it -----------------------------------------------------------------------


def make_relayer(*, rpc: str, oracle: str, home: Path, key_file: Path | None = None,
                 models: dict[bytes, LocalModel] | None = None, proofs: ProofSource | None = None,
                 eth_key: bytes | None = None, eth_keys: Callable[[], list[bytes]] | None = None,
                 answer: str = "auto", from_block: int = 0, confirmations: int = 0,
                 answer_ttl_s: int = 3600, store_path: Path | None = None, **options) -> Relayer:
    """Connect to ``rpc``, open the store and the data dir's packages; a ready Relayer."""
    import re

    from contracts.chain import connect
    from verifier.config import Settings

    if not re.fullmatch(r"0x[0-9a-fA-F]{40}", oracle or ""):
        raise InputError(f"--oracle {oracle!r} is not an address")
    chain = connect(rpc, key_file=key_file)
    if models is None:
        models = load_local_models(Settings(home=home))
    if not models:
        raise RelayError(f"no circuit packages in {home} to answer with "
                         "(register one with 'verinfer models add NAME')")
    store = RelayStore(store_path or default_store_path(home), chain.chain_id,
                       chain.w3.to_checksum_address(oracle))
    return Relayer(chain, oracle, models, store, proofs=proofs, eth_key=eth_key, eth_keys=eth_keys, answer=answer,
                   from_block=from_block, confirmations=confirmations,
                   answer_ttl_s=answer_ttl_s, **options)


def run_forever(relayer: Relayer, interval_s: float, stop: threading.Event,
                on_pass: Callable[[PassResult], None] | None = None) -> None:
    """Poll until ``stop`` is set; node errors are logged and retried after ``interval_s``."""
    while not stop.is_set():
        try:
            res = relayer.poll()
            if on_pass is not None:
                on_pass(res)
        except Exception as exc:  # keep following: the cursor has not moved past the error  # noqa: BLE001
            log.warning("relayer: poll failed (%s: %s); retrying", type(exc).__name__,
                        str(exc)[:300])
        stop.wait(interval_s)


class RelayerThread:
    """The relayer in a background thread (``verinfer serve`` with ``relay_rpc``)."""

    def __init__(self, factory: Callable[[], Relayer], interval_s: float) -> None:
        self._factory = factory
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="verinfer-relayer", daemon=True)
        self.relayer: Relayer | None = None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.relayer is None:
            try:
                self.relayer = self._factory()
            except Exception as exc:  # noqa: BLE001
                log.warning("relayer: cannot start (%s); retrying", exc)
                self._stop.wait(self._interval)
        if self.relayer is not None:
            run_forever(self.relayer, self._interval, self._stop)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self.relayer is not None:
            self.relayer.store.close()


def _eth_keys_of(settings) -> Callable[[], list[bytes]]:
    """The data dir's EIP-712 keys, the active one first, read when asked."""
    from server.receipts.keys import eth_signing_keys

    return lambda: eth_signing_keys(settings)


def start_in_server(settings, keys, jobs=None) -> RelayerThread | None:
    """The relayer ``verinfer serve`` runs when ``relay_rpc`` and ``relay_oracle`` are set:
    in a background thread, with the server's data dir, EIP-712 key and settings, proving
    through the server's proof job queue (``jobs``) when it has one."""
    if not settings.relay_rpc or not settings.relay_oracle:
        return None
    from contracts.chain import key_file_from_env

    def factory() -> Relayer:
        models = load_local_models(settings)
        models.update({k: v for k, v in _reference_models(settings).items() if k not in models})
        return make_relayer(rpc=settings.relay_rpc, oracle=settings.relay_oracle,
                            home=settings.home, models=models,
                            key_file=settings.relay_key_file or key_file_from_env(),
                            eth_keys=_eth_keys_of(settings) if keys is not None else None,
                            answer=settings.relay_answer, answer_ttl_s=settings.answer_ttl_s,
                            confirmations=settings.relay_confirmations,
                            fee_margin=settings.relay_fee_margin,
                            max_callback_gas=settings.relay_max_callback_gas,
                            workers=settings.relay_workers,
                            tx_timeout_s=settings.relay_tx_timeout_s,
                            withdraw_min_wei=settings.relay_withdraw_min_wei,
                            proofs=QueueProofs(jobs) if jobs is not None else None)

    t = RelayerThread(factory, settings.relay_poll_interval_s)
    t.start()
    log.info("relayer: following %s on %s", settings.relay_oracle, settings.relay_rpc)
    return t
