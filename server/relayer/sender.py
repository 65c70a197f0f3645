"""The relayer's transactions: estimate, price check, send (hash on disk first), wait, and
replace a transaction that is not mined in time at the same nonce with a higher fee.

One :class:`Sender` per relayer; its lock makes nonce choice and broadcast one step, so the
relayer's worker threads can send at once. Rules in docs/server.md ("Relayer").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from server.relayer.store import RelayStore, RequestRecord

log = logging.getLogger("verinfer.relayer")

# VerinferOracle.Status (the Solidity enum's order)
STATUS_FULFILLED, STATUS_CANCELLED = 2, 3


class Unpaid(Exception):
    """The request's fee does not cover what answering it would cost (skip it). ``gas``: the
    gas the fee was checked against (from :meth:`Sender.build`: the estimated gas limit)."""

    def __init__(self, message: str, gas: int) -> None:
        super().__init__(message)
        self.gas = gas


class Sender:
    """Sends fulfilments from the chain's account. ``tx_timeout_s``: how long a transaction may
    stay unmined before it is replaced (fees x ``fee_bump``, same nonce; with a local key
    only, at most ``max_replacements`` times per wait). ``fee_margin``: the request's fee
    must be at least margin x the transaction's gas limit x its fee per gas (0: no check)."""

    fee_bump = 1.25
    max_replacements = 5
    receipt_poll_s = 0.2
    wait_s = 300.0  # a wait that replaces nothing (the node's account; a nonce), per poll

    def __init__(self, chain, oracle, store: RelayStore, *, fee_margin: float,
                 tx_timeout_s: float, status: Callable[[bytes], int],
                 hooks: dict[str, Callable] | None = None) -> None:
        self.chain, self.w3, self.oracle, self.store = chain, chain.w3, oracle, store
        self.fee_margin = fee_margin
        self.tx_timeout_s = tx_timeout_s
        self._status = status
        self.hooks = hooks or {}
        self._lock = threading.Lock()
        account = getattr(chain, "_account", None)
        self._account = account if account is not None and not chain.embedded else None

    # -- before sending ---------------------------------------------------------------

    def max_fee_per_gas(self) -> int:
        """The highest fee per gas a transaction built now may pay, as web3 fills it in
        (:meth:`build`): twice the base fee plus the priority fee; the gas price before EIP-1559."""
        w3 = self.chain.w3
        base = w3.eth.get_block("latest").get("baseFeePerGas")
        if base is None:
            return int(w3.eth.gas_price)
        return 2 * int(base) + int(w3.eth.max_priority_fee)

    def check_fee(self, ev, gas: int, per_gas: int) -> None:
        """Raise :class:`Unpaid` unless ``ev.fee`` covers ``gas`` at ``per_gas`` wei x margin."""
        need = int(self.fee_margin * gas * per_gas)
        if self.fee_margin > 0 and ev.fee < need:
            raise Unpaid(f"fee {ev.fee} wei does not cover {gas} gas at {per_gas} wei/gas x "
                         f"margin {self.fee_margin} = {need} wei", gas)

    def build(self, ev, call) -> dict:
        """Estimate ``call`` (reverts raise, decoded by the caller) and check the fee against
        the gas limit and the highest fee per gas the transaction may pay."""
        tx: dict = {"from": self.chain.sender, "value": 0}
        tx["gas"] = int(call.estimate_gas(tx) * 1.2) + 20_000
        tx = call.build_transaction(tx)
        per_gas = int(tx.get("maxFeePerGas") or tx.get("gasPrice") or 0)
        self.check_fee(ev, tx["gas"], per_gas)
        return tx

    # -- sending ----------------------------------------------------------------------

    def send(self, ev, tx: dict, method: str, label: int) -> str:
        mid = "0x" + ev.model_id.hex()
        rec = self.store.get(ev.rid)
        attempts = (rec.attempts if rec else 0) + 1
        after_send = self.hooks.get("after_send")
        with self._lock:
            if self._account is not None:
                tx["nonce"] = self.w3.eth.get_transaction_count(self._account.address, "pending")
                tx.setdefault("chainId", self.chain.chain_id)
                signed = self._account.sign_transaction(tx)
                tx_hash = "0x" + bytes(signed.hash).hex()
                # on disk before it is broadcast: a restart looks it up instead of guessing, and
                # when the node does not know it (a replacement took its place), waits for its
                # nonce instead of sending a second transaction behind it
                self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "sending", method=method,
                                  label=label, tx_hash=tx_hash, nonce=tx["nonce"],
                                  attempts=attempts)
                self.w3.eth.send_raw_transaction(signed.raw_transaction)
            else:
                # an unlocked node account: the hash is known only once sent, so the nonce is
                # chosen and recorded first; a restart in between waits for that nonce to be
                # mined (wait_for_nonce) instead of paying for a second transaction
                tx["nonce"] = self.w3.eth.get_transaction_count(self.chain.sender, "pending")
                self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "sending", method=method,
                                  label=label, tx_hash=None, nonce=tx["nonce"], attempts=attempts)
                tx_hash = "0x" + bytes(self.w3.eth.send_transaction(tx)).hex()
        if after_send is not None:
            after_send(ev)
        if self._account is None:
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "sending", tx_hash=tx_hash)
        return self.wait(ev, tx_hash, method, label, tx if self._account is not None else None)

    def wait(self, ev, tx_hash: str, method: str, label: int | None,
             tx: dict | None = None) -> str:
        """Wait for ``tx_hash`` (or a replacement of it) to be mined; record the outcome.
        ``tx``: the signed transaction's fields, to replace it when it is not mined within
        ``tx_timeout_s``; without it the wait is for up to ``wait_s`` per call."""
        mid = "0x" + ev.model_id.hex()
        hashes = [tx_hash]
        replacements = 0
        while True:
            receipt = self._mined(hashes, self.tx_timeout_s if tx is not None else self.wait_s)
            if receipt is not None:
                break
            if tx is None or replacements >= self.max_replacements:
                raise TimeoutError(f"transaction {hashes[-1]} not mined yet")
            tx, new_hash = self._replace(ev, tx, hashes[-1], method, label)
            hashes.append(new_hash)
            replacements += 1
        mined = "0x" + bytes(receipt["transactionHash"]).hex()
        # the block it is in: watched like the blocks read, so a reorg that drops it reopens
        # the request (RelayStore.rewind)
        block = int(receipt["blockNumber"])
        self.store.remember_blocks({block: "0x" + bytes(receipt["blockHash"]).hex()})
        if receipt["status"] == 1:
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "fulfilled", reason=None,
                              tx_hash=mined, mined_block=block)
            log.info("relayer: fulfilled %s by %s (label %s, gas %d, tx %s)", ev.rid, method,
                     label, receipt["gasUsed"], mined)
            return "fulfilled"
        # reverted when mined: someone else fulfilled first, or it was cancelled meanwhile
        status = self._status(ev.request_id)
        state = {STATUS_FULFILLED: "answered_elsewhere", STATUS_CANCELLED: "cancelled"}.get(
            status, "failed")
        self.store.upsert(ev.rid, mid, ev.block, ev.log_index, state,
                          reason=f"transaction {mined} reverted", mined_block=block)
        return state

    def _mined(self, hashes: list[str], timeout_s: float):
        from web3.exceptions import TransactionNotFound

        end = time.monotonic() + timeout_s
        while True:
            for h in hashes:
                try:
                    return self.w3.eth.get_transaction_receipt(h)
                except TransactionNotFound:
                    continue
            if time.monotonic() >= end:
                return None
            time.sleep(self.receipt_poll_s)

    def _replace(self, ev, tx: dict, old_hash: str, method: str,
                 label: int | None) -> tuple[dict, str]:
        """The same transaction at the same nonce with its fees raised by ``fee_bump`` (the
        fee check is made again at the new price)."""
        new = dict(tx)
        keys = ("maxFeePerGas", "maxPriorityFeePerGas") if "maxFeePerGas" in tx else ("gasPrice",)
        for k in keys:
            new[k] = int(tx[k] * self.fee_bump) + 1
        try:
            self.check_fee(ev, new["gas"], new[keys[0]])
        except Unpaid as exc:  # broadcast already, so not skipped: it is mined at its own price
            log.warning("relayer: request %s: tx %s not mined in %.0f s; not replaced, since the "
                        "fee would not pay for it (%s); waiting on it", ev.rid, old_hash,
                        self.tx_timeout_s, exc)
            return tx, old_hash
        signed = self._account.sign_transaction(new)
        new_hash = "0x" + bytes(signed.hash).hex()
        mid = "0x" + ev.model_id.hex()
        with self._lock:
            try:
                self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except Exception as exc:  # noqa: BLE001 - mined meanwhile ("nonce too low"), ...
                log.info("relayer: request %s: replacement of %s refused (%s); waiting on",
                         ev.rid, old_hash, str(exc)[:200])
                return tx, old_hash
            hook = self.hooks.get("mid_replace")  # test seam: broadcast, not recorded yet
            if hook is not None:
                hook(ev)
            # recorded once the node has it: a restart before this finds the old hash, which the
            # node dropped for this one, and waits for the nonce (the record's) they share. Had
            # the new hash been recorded first, a restart in between found a hash no node knew,
            # and sent a second transaction, queued behind the stuck one it could not replace
            self.store.upsert(ev.rid, mid, ev.block, ev.log_index, "sending", method=method,
                              label=label, tx_hash=new_hash)
        log.warning("relayer: request %s: tx %s not mined in %.0f s; replaced by %s (nonce %d, "
                    "%s x %.2f)", ev.rid, old_hash, self.tx_timeout_s, new_hash, tx["nonce"],
                    keys[0], self.fee_bump)
        hook = self.hooks.get("after_replace")
        if hook is not None:
            hook(ev)
        return new, new_hash

    def wait_for_nonce(self, rec: RequestRecord) -> None:
        """A transaction sent at ``rec.nonce`` before a restart whose hash the node does not
        know (the node's unlocked account: its hash was not recorded yet; a local key: a
        replacement took its place): if the node took a transaction at that nonce, wait until
        it is mined (the relayer then reads the request's status on chain: fulfilled by it, or
        still open and sent again); if not, return at once (send again)."""
        sender = self.chain.sender
        if self.w3.eth.get_transaction_count(sender, "pending") <= rec.nonce:
            log.info("relayer: request %s: nothing was sent at nonce %d; sending", rec.request_id,
                     rec.nonce)
            return
        end = time.monotonic() + self.wait_s
        while self.w3.eth.get_transaction_count(sender, "latest") <= rec.nonce:
            if time.monotonic() >= end:
                raise TimeoutError(f"transaction at nonce {rec.nonce} of {sender} not mined yet")
            time.sleep(self.receipt_poll_s)

    def resume(self, ev, rec: RequestRecord) -> str | None:
        """A transaction recorded before a restart: done if mined, waited for if pending,
        ``None`` (send again) if the node does not know it."""
        from web3.exceptions import TransactionNotFound

        try:
            sent = self.w3.eth.get_transaction(rec.tx_hash)
        except TransactionNotFound:
            log.info("relayer: request %s: recorded tx %s is unknown to the node", ev.rid,
                     rec.tx_hash)
            return None
        # still pending, and signed here: replaced after tx_timeout_s as before the restart
        # (waited on without it, a transaction stuck at too low a fee held up every later one)
        tx = self._as_sent(sent) if sent.get("blockNumber") is None else None
        return self.wait(ev, rec.tx_hash, rec.method or "?", rec.label, tx)

    def _as_sent(self, sent) -> dict | None:
        """The fields :meth:`_replace` signs again, of a pending transaction as the node has it;
        None unless it is this relayer's own, signed with its local key."""
        if self._account is None or sent["from"].lower() != self._account.address.lower():
            return None
        tx = {"from": self._account.address, "to": sent["to"], "value": int(sent["value"]),
              "data": bytes(sent["input"]), "gas": int(sent["gas"]),
              "nonce": int(sent["nonce"]), "chainId": self.chain.chain_id}
        if sent.get("maxFeePerGas") is not None:
            tx["maxFeePerGas"] = int(sent["maxFeePerGas"])
            tx["maxPriorityFeePerGas"] = int(sent["maxPriorityFeePerGas"])
        else:
            tx["gasPrice"] = int(sent["gasPrice"])
        return tx
