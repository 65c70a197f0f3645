"""The relayer: answers the oracle's on-chain classification requests.

It follows ``VerinferOracle``'s ``ClassificationRequested`` events from a durable cursor,
runs each requested input through the model locally and, per the model's on-chain policy,
fulfils it with a zk proof (``fulfillWithProof``) or an EIP-712 signature of the server's
key (``fulfillWithSignature``). The cursor moves only past terminal requests, and a
transaction's hash is recorded before it is broadcast, so a relayer killed at any point
misses no request and fulfils none twice; the rules are in docs/server.md ("Relayer").

Core logic only: no argparse, no printing (``server.relayer.cli`` is the CLI; the server runs
:class:`RelayerThread` from its lifespan when ``relay_rpc``/``relay_oracle`` are set).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from server.relayer.models import (
    InProcessProofs,
    LocalModel,
    ProofSource,
    ProofUnavailable,
    QueueProofs,
    _reference_models,
    load_local_models,
)
from server.relayer.store import (
    TERMINAL,
    RelayStore,
    RequestRecord,
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
    latest_block: int = 0


class Relayer:
    """Follows one oracle on one chain; :meth:`poll` handles every new request once."""

    def __init__(self, chain, oracle: str, models: dict[bytes, LocalModel], store: RelayStore,
                 *, proofs: ProofSource | None = None, eth_key: bytes | None = None,
                 answer: str = "auto", from_block: int = 0, confirmations: int = 0,
                 answer_ttl_s: int = 3600,
                 hooks: dict[str, Callable[[Event], None]] | None = None) -> None:
        from contracts.deploy import oracle_abi

        if answer not in ANSWER_MODES:
            raise InputError(f"answer must be one of {ANSWER_MODES}, not {answer!r}")
        self.chain = chain
        self.w3 = chain.w3
        self.oracle = chain.contract(oracle, oracle_abi())
        if not self.w3.eth.get_code(self.oracle.address):
            raise RelayError(f"no contract at {oracle}")
        self.models = models
        self.store = store
        self.proofs = proofs or InProcessProofs()
        self.answer = answer
        self.from_block = from_block
        self.confirmations = confirmations
        self.answer_ttl_s = answer_ttl_s
        self.max_attempts = 3  # tries of a request whose preparation (e.g. proving) fails
        self.hooks = hooks or {}  # test seams: "after_send" runs after broadcast, before record
        self._eth = None
        self.signer_address = None
        if eth_key is not None:
            from eth_keys import keys as eth_keys

            self._eth = eth_keys.PrivateKey(eth_key)
            self.signer_address = self._eth.public_key.to_checksum_address()
        self._event = self.oracle.events.ClassificationRequested()
        self._topic = "0x" + self._event_topic().hex()

    def _event_topic(self) -> bytes:
        from eth_utils import keccak

        return keccak(text="ClassificationRequested(bytes32,bytes32,address,int256[],bytes32,"
                           "uint256,uint32)")

    # -- following events ------------------------------------------------------------

    def poll(self) -> PassResult:
        """Handle every request event from the cursor up to the chain head (less
        ``confirmations``). Node errors propagate; the cursor stays on the event that hit
        them."""
        res = PassResult()
        head = self.w3.eth.block_number - self.confirmations
        res.latest_block = head
        cur = self.store.cursor()
        start = self.from_block if cur is None else cur[0]
        if head < start:
            return res
        for lo in range(start, head + 1, LOG_CHUNK):
            hi = min(head, lo + LOG_CHUNK - 1)
            logs = self.w3.eth.get_logs({"address": self.oracle.address, "fromBlock": lo,
                                         "toBlock": hi, "topics": [self._topic]})
            for raw in sorted(logs, key=lambda lg: (lg["blockNumber"], lg["logIndex"])):
                pos = (raw["blockNumber"], raw["logIndex"])
                if cur is not None and pos <= cur:
                    continue
                ev = self._decode(raw)
                res.events += 1
                outcome = self.handle(ev)
                {"fulfilled": res.fulfilled, "skipped": res.skipped, "failed": res.failed}.get(
                    outcome, res.elsewhere).append(ev.rid)
                self.store.set_cursor(*pos)
                cur = pos
        return res

    def _decode(self, raw) -> Event:
        a = self._event.process_log(raw)["args"]
        return Event(bytes(a["requestId"]), bytes(a["modelId"]), a["requester"],
                     list(a["input"]), bytes(a["inputCommitment"]), a["fee"],
                     a["callbackGasLimit"], raw["blockNumber"], raw["logIndex"])

    # -- one request -----------------------------------------------------------------

    def handle(self, ev: Event) -> str:
        """Take one request to a terminal state; return it."""
        rec = self.store.get(ev.rid)
        if rec is not None and rec.state in TERMINAL:
            return rec.state
        mid = "0x" + ev.model_id.hex()
        if rec is None:
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "pending")
        elif rec.state == "sending" and rec.tx_hash:
            done = self._resume_sent(ev, rec)
            if done is not None:
                return done

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

        try:
            method, call, label = self._prepare(ev)
        except _Skip as s:
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "skipped", reason=str(s))
            log.warning("relayer: skipped request %s: %s", ev.rid, s)
            return "skipped"
        except ProofUnavailable as exc:
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "failed", reason=str(exc))
            log.warning("relayer: request %s failed: %s", ev.rid, exc)
            return "failed"
        except Exception as exc:
            # the node, the network or the prover: retried at the next poll, a few times
            tries = (self.store.get(ev.rid).attempts or 0) + 1
            if tries >= self.max_attempts and not _is_node_error(exc):
                self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "failed", attempts=tries,
                                  reason=f"{type(exc).__name__}: {str(exc)[:300]}")
                log.warning("relayer: request %s failed %d times, giving up: %s", ev.rid,
                            tries, exc)
                return "failed"
            if not _is_node_error(exc):
                self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "pending",
                                  attempts=tries)
            raise
        return self._send(ev, method, call, label)

    def _status(self, request_id: bytes) -> int:
        return int(self.oracle.functions.requests(request_id).call()[3])

    def _prepare(self, ev: Event):
        """Check that we can serve it, run the model, build the fulfilment call."""
        model = self.models.get(ev.model_id)
        if model is None:
            raise _Skip(f"model 0x{ev.model_id.hex()} is not served by this relayer")
        _signer, n, scale, policy, *_ = self.oracle.functions.models(ev.model_id).call()
        if policy == 0:
            raise _Skip(f"model {model.name} is not registered in the oracle")
        if n != model.input_length or len(ev.input) != model.input_length:
            raise _Skip(f"input length {len(ev.input)}, oracle says {n}, model {model.name} "
                        f"takes {model.input_length}")
        if scale != model.scale:
            raise _Skip(f"model {model.name}: oracle input scale {scale}, package {model.scale}")
        if input_commitment(ev.input) != ev.input_commitment:
            raise _Skip("the event's input does not match its commitment")
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
            sig = self._sign(ev, float_label, deadline)
            call = self.oracle.functions.fulfillWithSignature(ev.request_id, float_label,
                                                              deadline, sig)
            return method, call, float_label

        from verifier.onchain import proof_parts

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

    def _method(self, model: LocalModel, policy: int, signer: str) -> str:
        proof_ok = policy in (POLICY_PROOF, POLICY_EITHER)
        sig_ok = policy in (POLICY_SIGNATURE, POLICY_EITHER)
        can_prove = model.package is not None
        can_sign = self._eth is not None and signer.lower() == (self.signer_address or "").lower()
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
                       "no EIP-712 key" if self._eth is None else
                       f"the model's signer is {signer}, ours is {self.signer_address}")
        raise _Skip(f"cannot answer {model.name} (policy {policy_name}, answer mode "
                    f"{self.answer}): " + "; ".join(w for w in why if w))

    def _sign(self, ev: Event, label: int, deadline: int) -> bytes:
        from verifier.eip712 import Classification, Domain, sign_digest, signing_digest

        domain = Domain(chainId=self.chain.chain_id, verifyingContract=self.oracle.address)
        msg = Classification(modelId="0x" + ev.model_id.hex(),
                             inputCommitment="0x" + ev.input_commitment.hex(), label=label,
                             requestId=ev.rid, deadline=deadline)
        return bytes.fromhex(sign_digest(signing_digest(domain, msg), self._eth)[2:])

    # -- sending ---------------------------------------------------------------------

    def _send(self, ev: Event, method: str, call, label: int) -> str:
        from contracts.chain import ContractRevert, decode_revert

        mid = "0x" + ev.model_id.hex()
        abi = self.oracle.abi
        tx: dict = {"from": self.chain.sender, "value": 0}
        try:
            tx["gas"] = int(call.estimate_gas(tx) * 1.2) + 20_000
            tx = call.build_transaction(tx)
        except Exception as exc:  # noqa: BLE001
            err = decode_revert(exc, abi)
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

        rec = self.store.get(ev.rid)
        attempts = (rec.attempts if rec else 0) + 1
        account = getattr(self.chain, "_account", None)
        after_send = self.hooks.get("after_send")
        if account is not None and not self.chain.embedded:
            tx["nonce"] = self.w3.eth.get_transaction_count(account.address, "pending")
            tx.setdefault("chainId", self.chain.chain_id)
            signed = account.sign_transaction(tx)
            tx_hash = "0x" + bytes(signed.hash).hex()
            # on disk before it is broadcast: a restart looks it up instead of guessing
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "sending", method=method,
                              label=label, tx_hash=tx_hash, attempts=attempts)
            self.w3.eth.send_raw_transaction(signed.raw_transaction)
            if after_send is not None:
                after_send(ev)
        else:
            # an unlocked node account: the hash is known only once sent; a restart in
            # between finds the request fulfilled on chain (or still open) and acts on that
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "sending", method=method,
                              label=label, tx_hash=None, attempts=attempts)
            tx_hash = "0x" + bytes(self.w3.eth.send_transaction(tx)).hex()
            if after_send is not None:
                after_send(ev)
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "sending", tx_hash=tx_hash)
        return self._await(ev, tx_hash, method, label)

    def _await(self, ev: Event, tx_hash: str, method: str, label: int | None) -> str:
        mid = "0x" + ev.model_id.hex()
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=300)
        if receipt["status"] == 1:
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "fulfilled", reason=None)
            log.info("relayer: fulfilled %s by %s (label %s, gas %d, tx %s)", ev.rid, method,
                     label, receipt["gasUsed"], tx_hash)
            return "fulfilled"
        # reverted when mined: someone else fulfilled first, or it was cancelled meanwhile
        status = self._status(ev.request_id)
        state = {STATUS_FULFILLED: "answered_elsewhere", STATUS_CANCELLED: "cancelled"}.get(
            status, "failed")
        self.store.upsert(ev.rid, mid, ev.block, ev.log_index, state,
                          reason=f"transaction {tx_hash} reverted")
        return state

    def _resume_sent(self, ev: Event, rec: RequestRecord) -> str | None:
        """A transaction recorded before a restart: done if mined, waited for if pending,
        ``None`` (send again) if the node does not know it."""
        from web3.exceptions import TransactionNotFound

        try:
            self.w3.eth.get_transaction(rec.tx_hash)
        except TransactionNotFound:
            log.info("relayer: request %s: recorded tx %s is unknown to the node; resending",
                     ev.rid, rec.tx_hash)
            return None
        return self._await(ev, rec.tx_hash, rec.method or "?", rec.label)


class _Skip(Exception):
    """The request cannot be served here: record, log, pass."""


def _is_node_error(exc: BaseException) -> bool:
    """Errors of the node or the network: retried for as long as it takes."""
    import requests  # web3's HTTP transport

    from contracts.chain import ChainError

    return isinstance(exc, (ChainError, ConnectionError, TimeoutError, OSError,
                            requests.RequestException))


# -- running it -----------------------------------------------------------------------


def make_relayer(*, rpc: str, oracle: str, home: Path, key_file: Path | None = None,
                 models: dict[bytes, LocalModel] | None = None, proofs: ProofSource | None = None,
                 eth_key: bytes | None = None, answer: str = "auto", from_block: int = 0,
                 confirmations: int = 0, answer_ttl_s: int = 3600,
                 store_path: Path | None = None) -> Relayer:
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
    return Relayer(chain, oracle, models, store, proofs=proofs, eth_key=eth_key, answer=answer,
                   from_block=from_block, confirmations=confirmations,
                   answer_ttl_s=answer_ttl_s)


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
                            eth_key=keys.eth_key if keys is not None else None,
                            answer=settings.relay_answer, answer_ttl_s=settings.answer_ttl_s,
                            proofs=QueueProofs(jobs) if jobs is not None else None)

    t = RelayerThread(factory, settings.relay_poll_interval_s)
    t.start()
    log.info("relayer: following %s on %s", settings.relay_oracle, settings.relay_rpc)
    return t
