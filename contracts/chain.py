"""A connection to a chain, with an account that can send transactions.

Two kinds of chain:

- ``rpc=None``: the embedded chain, py-evm in this process through eth-tester. Its
  accounts are pre-funded and unlocked; it lives as long as the process.
- ``rpc=URL``: any JSON-RPC node (anvil in the tests). Transactions are signed here with a
  key loaded from a file (``key_file``, 0600, never printed) or, when none is given, sent
  from the node's first unlocked account (``eth_accounts``), which is how anvil and other
  development nodes work.

Reverts come back as :class:`ContractRevert` with the custom error decoded by name, so
callers and tests can say exactly which error a contract threw.
"""

from __future__ import annotations

import ast
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verifier.errors import InputError, VerinferError


class ChainError(VerinferError):
    """The node could not be reached, or a transaction failed for a reason of its own."""


class ContractRevert(ChainError):
    """A call or transaction reverted. ``error`` is the custom error's name (or None)."""

    def __init__(self, error: str | None, args: tuple, data: bytes):
        self.error, self.error_args, self.data = error, args, data
        shown = f"{error}{args!r}" if error else (data.hex() or "no reason")
        super().__init__(f"reverted: {shown}")


@dataclass
class Chain:
    w3: Any  # web3.Web3
    sender: str  # checksum address that pays for transactions
    embedded: bool
    rpc: str | None
    _account: Any = field(default=None, repr=False)  # LocalAccount when we sign here

    @property
    def chain_id(self) -> int:
        return self.w3.eth.chain_id

    # -- transactions --------------------------------------------------------
    def transact(self, fn, *, value: int = 0, gas: int | None = None, abi: list | None = None,
                 sender: str | None = None) -> dict:
        """Send ``fn`` (a web3 ContractFunction); return the receipt. Reverts raise
        :class:`ContractRevert` (decoded against ``abi``, default the function's contract)."""
        abi = abi if abi is not None else fn.contract_abi
        tx: dict = {"from": sender or self.sender, "value": value}
        try:
            if gas is None:
                tx["gas"] = int(fn.estimate_gas(tx) * 1.2) + 20_000
            else:
                tx["gas"] = gas
            tx = fn.build_transaction(tx)
        except Exception as exc:  # estimate_gas runs the call: reverts show up here  # noqa: BLE001
            raise decode_revert(exc, abi) from None
        return self._send(tx, abi)

    def deploy(self, abi: list, bytecode: str, *args, value: int = 0) -> tuple[str, dict]:
        """Deploy a contract; return (address, receipt)."""
        factory = self.w3.eth.contract(abi=abi, bytecode=bytecode)
        ctor = factory.constructor(*args)
        tx: dict = {"from": self.sender, "value": value}
        try:
            tx["gas"] = int(ctor.estimate_gas(tx) * 1.2) + 50_000
            tx = ctor.build_transaction(tx)
        except Exception as exc:  # noqa: BLE001
            raise decode_revert(exc, abi) from None
        receipt = self._send(tx, abi)
        return receipt["contractAddress"], receipt

    def call(self, fn, *, sender: str | None = None, abi: list | None = None):
        """``eth_call``; reverts raise :class:`ContractRevert`."""
        try:
            return fn.call({"from": sender or self.sender})
        except Exception as exc:  # noqa: BLE001
            raise decode_revert(exc, abi if abi is not None else fn.contract_abi) from None

    def contract(self, address: str, abi: list):
        return self.w3.eth.contract(address=self.w3.to_checksum_address(address), abi=abi)

    def _send(self, tx: dict, abi: list) -> dict:
        w3 = self.w3
        try:
            if self._account is not None and not self.embedded:
                tx.setdefault("nonce", w3.eth.get_transaction_count(self._account.address, "pending"))
                tx.setdefault("chainId", self.chain_id)
                signed = self._account.sign_transaction(tx)
                tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
            else:
                tx_hash = w3.eth.send_transaction(tx)
            receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
        except Exception as exc:  # the node refused it (funds, nonce, fee) or never mined it  # noqa: BLE001
            raise decode_revert(exc, abi) from None  # one line (exit 2), not a traceback
        if receipt["status"] != 1:
            # Only reached with an explicit gas limit (estimation would have raised the
            # decoded error); the receipt carries no reason.
            raise ChainError(f"transaction {tx_hash.hex()} reverted (gas used {receipt['gasUsed']})")
        return receipt

    # -- test conveniences (development chains only) ------------------------
    def advance_time(self, seconds: int) -> None:
        """Move the chain's clock forward and mine a block (embedded chain or anvil)."""
        if self.embedded:
            tester = self.w3.provider.ethereum_tester
            ts = self.w3.eth.get_block("latest")["timestamp"] + seconds
            tester.time_travel(ts)
            tester.mine_blocks(1)
        else:
            self.w3.provider.make_request("evm_increaseTime", [seconds])
            self.w3.provider.make_request("evm_mine", [])


def connect(rpc: str | None = None, *, key_file: Path | None = None) -> Chain:
    """The embedded chain (``rpc=None``) or a JSON-RPC node at ``rpc``."""
    try:
        from web3 import Web3
    except ImportError:  # pragma: no cover - the [chain] extra is missing
        raise InputError("web3 is not installed: pip install 'verinfer[chain]'") from None

    if rpc is None:
        from web3 import EthereumTesterProvider

        w3 = Web3(EthereumTesterProvider())
        return Chain(w3=w3, sender=w3.eth.accounts[0], embedded=True, rpc=None)

    w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 60}))
    try:
        _ = w3.eth.chain_id  # reading it asks the node
    except Exception as exc:  # noqa: BLE001
        raise ChainError(f"cannot reach the node at {rpc}: {type(exc).__name__}") from None
    if key_file is not None:
        account = load_account(key_file)
        return Chain(w3=w3, sender=account.address, embedded=False, rpc=rpc, _account=account)
    accounts = w3.eth.accounts
    if not accounts:
        raise InputError(f"the node at {rpc} has no unlocked account: pass --key-file")
    return Chain(w3=w3, sender=accounts[0], embedded=False, rpc=rpc)


def load_account(path: Path):
    """A private key (hex, one line) from a file that only its owner can read."""
    from eth_account import Account

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: no such key file") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"{path}: key file is readable by others; chmod 600 it")
    text = path.read_text().strip()
    try:
        return Account.from_key(text)
    except Exception:  # noqa: BLE001
        raise InputError(f"{path}: not a hex private key") from None  # never echo the key


def key_file_from_env() -> Path | None:
    p = os.environ.get("VERINFER_CHAIN_KEY_FILE")
    return Path(p) if p else None


# -- revert decoding -----------------------------------------------------------


def error_selectors(abi: list) -> dict[bytes, tuple[str, list[str]]]:
    """4-byte selector -> (name, input types) for each custom error in ``abi``."""
    from eth_utils import keccak

    out = {}
    for item in abi:
        if item.get("type") != "error":
            continue
        types = [_abi_type(i) for i in item.get("inputs", [])]
        sig = f"{item['name']}({','.join(types)})"
        out[keccak(text=sig)[:4]] = (item["name"], types)
    return out


def _abi_type(inp: dict) -> str:
    if inp["type"].startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in inp["components"])
        return f"({inner}){inp['type'][5:]}"
    return inp["type"]


def revert_data(exc: BaseException) -> bytes | None:
    """The raw revert data carried by a web3/eth-tester exception, if any."""
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, bytes):
        return data
    if isinstance(data, str) and data.startswith("0x"):
        return bytes.fromhex(data[2:])
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, bytes):
            return arg
        if isinstance(arg, str) and arg.startswith("execution reverted: b"):
            try:  # eth-tester: the revert data as a Python bytes literal
                value = ast.literal_eval(arg[len("execution reverted: "):])
            except (ValueError, SyntaxError):
                value = None
            if isinstance(value, bytes):
                return value
        if isinstance(arg, str) and arg.startswith("0x") and len(arg) >= 10:
            try:
                return bytes.fromhex(arg[2:])
            except ValueError:
                continue
        if isinstance(arg, dict) and isinstance(arg.get("data"), str):
            try:
                return bytes.fromhex(arg["data"].removeprefix("0x"))
            except ValueError:
                continue
    return None


def decode_revert(exc: BaseException, abi: list) -> VerinferError:
    """Turn an exception from web3 into :class:`ContractRevert` when it is a revert."""
    from eth_abi import decode
    from eth_utils import to_checksum_address

    data = revert_data(exc)
    if data is None:
        if "revert" in str(exc).lower():
            return ContractRevert(None, (), b"")
        return ChainError(f"{type(exc).__name__}: {str(exc)[:300]}")
    known = error_selectors(abi)
    sel = data[:4]
    if sel not in known:  # bubbled up from another of our contracts (e.g. consumer -> oracle)
        from contracts.solc import compiled

        for c in compiled().values():
            known = {**error_selectors(c.abi), **known}
    if sel in known:
        name, types = known[sel]
        try:
            args = tuple(to_checksum_address(a) if t == "address" else a
                         for t, a in zip(types, decode(types, data[4:])))
        except Exception:  # noqa: BLE001
            args = ()
        return ContractRevert(name, args, data)
    if sel == bytes.fromhex("08c379a0"):  # Error(string)
        try:
            return ContractRevert("Error", tuple(decode(["string"], data[4:])), data)
        except Exception:  # noqa: BLE001, S110
            pass
    return ContractRevert(None, (), data)
