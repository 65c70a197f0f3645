"""Compile and deploy verinfer's contracts; register models; write the deployment file.

Core logic only (no argparse, no printing): the CLI in :mod:`contracts.cli` and the tests
call these functions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from contracts.chain import Chain, ChainError
from contracts.solc import EIP170_LIMIT, EVM_VERSION, OPTIMIZER_RUNS, CompiledContract, compiled
from verifier.errors import InputError, PackageError, VerinferError

DEPLOYMENT_FORMAT = "verinfer.deployment/v1"
DEFAULT_REQUEST_TIMEOUT = 3600  # seconds before a requester may cancel
DEFAULT_UPDATE_DELAY = 86_400  # seconds between announcing a model update and its effect

# Chains where a development SRS may back a verifier without --allow-dev-srs: anvil/hardhat
# (31337) and ganache/geth --dev (1337); the embedded chain ends with its process.
DEV_CHAIN_IDS = frozenset({31337, 1337})

MAX_INPUT_BOUND = 2**128 - 1  # the oracle's largest maxAbsInput (uint128)

# Oracle.Policy, by name (the Solidity enum's order).
POLICIES = {"proof": 1, "signature": 2, "either": 3}
POLICY_NAMES = {v: k for k, v in POLICIES.items()}


def oracle_abi() -> list:
    return compiled()["VerinferOracle"].abi


@dataclass(frozen=True)
class VerifierArtifact:
    """A Halo2Verifier from a circuit package (``Verifier.json``) or compiled here."""

    abi: list
    bytecode: str
    deployed_bytecode: str

    @property
    def runtime_size(self) -> int:
        return (len(self.deployed_bytecode) - 2) // 2

    @classmethod
    def from_compiled(cls, c: CompiledContract) -> VerifierArtifact:
        return cls(c.abi, c.bytecode, c.deployed_bytecode)


@dataclass(frozen=True)
class PackageModel:
    """What the oracle needs to know about a circuit package."""

    name: str
    model_id: bytes  # 32 bytes: sha256 of model.onnx
    input_length: int
    input_scale: int
    verifier: VerifierArtifact
    package_dir: Path
    num_instances: int  # public instances: the input, the outputs (logits, label)
    max_abs_input: int  # largest |q| the circuit's range checks represent
    dev_srs: bool = True  # the SRS is not the pinned public ceremony file (verifier.srs)
    # "logits": the outputs are the logits then the label; "label": the label alone. The oracle
    # records the shape as numInstances (inputLength + 1 for a label-only model)
    public_output: str = "logits"


def load_package(folder: Path) -> PackageModel:
    """Read a circuit package's manifest and compiled verifier (``Verifier.json``), which
    must hash as the manifest records: the bytecode deployed is the package's."""
    from verifier.packages import read_manifest
    from verifier.srs import is_ceremony_srs

    folder = Path(folder)
    m = read_manifest(folder)
    if m.input_visibility != "public":
        raise PackageError(f"{folder}: the oracle needs a circuit with public input "
                           f"(this one is {m.input_visibility!r})")
    if not m.label_is_last_instance:
        raise PackageError(f"{folder}: {label_position(m)}")
    vj = folder / "Verifier.json"
    if "Verifier.json" not in m.artifacts:
        raise PackageError(f"{folder}: the manifest records no Verifier.json hash")
    m.check_artifacts(folder, ["Verifier.json"])
    try:
        v = json.loads(vj.read_text())
        art = VerifierArtifact(v["abi"], v["bytecode"], v["deployed_bytecode"])
    except (OSError, ValueError, KeyError) as exc:
        raise PackageError(f"{vj}: no usable compiled verifier ({type(exc).__name__})") from None
    if m.input.scale is None:
        raise PackageError(f"{folder}: manifest has no input scale")
    m.check_artifacts(folder, ["settings.json"])
    ra = json.loads((folder / "settings.json").read_text())["run_args"]
    # EZKL range-checks values by decomposing them into decomp_legs digits of decomp_base: it
    # represents |q| < base**legs / 2 and no more (an input beyond cannot even be witnessed).
    max_abs = int(ra["decomp_base"]) ** int(ra["decomp_legs"]) // 2 - 1
    return PackageModel(
        name=m.name,
        model_id=bytes.fromhex(m.model_sha256),
        input_length=math.prod(m.input.shape),
        input_scale=m.input.scale,
        verifier=art,
        package_dir=folder,
        num_instances=m.num_instances,
        max_abs_input=min(max_abs, MAX_INPUT_BOUND),
        dev_srs=not is_ceremony_srs(m),
        public_output=m.public_output,
    )


def label_position(m) -> str:
    """Why the oracle cannot take a circuit whose label is not its last public instance."""
    names = ", ".join(o.name for o in m.outputs)
    return (f"the oracle reads the label from a proof's last public instance, and this "
            f"circuit's label {m.outputs[m.label_output].name!r} is not it (public outputs, in "
            f"order: {names}); register the model again with '--public-output label'")


def deploy_oracle(chain: Chain, request_timeout: int = DEFAULT_REQUEST_TIMEOUT,
                  update_delay: int = DEFAULT_UPDATE_DELAY):
    """Deploy VerinferOracle; return (web3 contract, receipt)."""
    c = compiled()["VerinferOracle"]
    address, receipt = chain.deploy(c.abi, c.bytecode, request_timeout, update_delay)
    return chain.contract(address, c.abi), receipt


def deploy_verifier(chain: Chain, verifier: VerifierArtifact):
    """Deploy a Halo2Verifier; return (address, receipt)."""
    if verifier.runtime_size > EIP170_LIMIT:
        raise InputError(f"verifier runtime is {verifier.runtime_size:,} bytes, over EIP-170's "
                         f"{EIP170_LIMIT:,}: no chain deploys it (the package's proofs are checked "
                         "offline)")
    return chain.deploy(verifier.abi, verifier.bytecode)


def deploy_consumer(chain: Chain, oracle_address: str, model_id: bytes,
                    callback_gas_limit: int = 100_000):
    c = compiled()["ExampleConsumer"]
    address, receipt = chain.deploy(c.abi, c.bytecode, oracle_address, model_id,
                                    callback_gas_limit)
    return chain.contract(address, c.abi), receipt


def register_model(chain: Chain, oracle, *, model_id: bytes, verifier: str | None,
                   input_length: int, input_scale: int, policy: str,
                   signer: str | None, num_instances: int,
                   max_abs_input: int = MAX_INPUT_BOUND, min_fee: int = 0,
                   payee: str | None = None) -> dict:
    """Register a model; its fees go to ``payee`` (default: the oracle's owner, who
    registers). Returns the registration's receipt."""
    if policy not in POLICIES:
        raise InputError(f"policy must be one of {sorted(POLICIES)}, not {policy!r}")
    zero = "0x" + "00" * 20
    fn = oracle.functions.registerModel(
        model_id, verifier or zero, input_length, input_scale, POLICIES[policy], signer or zero,
        num_instances, max_abs_input, min_fee,
    )
    receipt = chain.transact(fn)
    if payee is not None and payee.lower() != chain.sender.lower():
        chain.transact(oracle.functions.setPayee(model_id, payee))
    return receipt


@dataclass(frozen=True)
class ModelFees:
    """A model's fee account in the oracle (``models(id)`` fields 3, 8, 9)."""

    registered: bool
    payee: str
    accrued: int  # wei, paid to ``payee`` by withdrawFees


def is_oracle(oracle) -> bool:
    """Whether the contract at ``oracle.address`` answers ``CLASSIFICATION_TYPEHASH()`` as
    VerinferOracle does: another contract (a model's verifier, a consumer) reverts or answers
    otherwise, and its ``models()`` would raise web3's errors instead of a clear refusal. A
    node's failure is raised as :func:`contracts.chain.decode_revert` makes it."""
    from web3.exceptions import BadFunctionCallOutput

    from contracts.chain import ContractRevert, decode_revert
    from verifier.eip712 import CLASSIFICATION_TYPEHASH

    fn = oracle.functions.CLASSIFICATION_TYPEHASH()
    try:
        value = fn.call()
    except BadFunctionCallOutput:  # a fallback that answered nothing decodable
        return False
    except Exception as exc:  # noqa: BLE001 - web3's or eth-tester's revert, or the node's error
        err = decode_revert(exc, fn.contract_abi)
        if isinstance(err, ContractRevert):
            return False
        raise err from None
    return bytes(value) == CLASSIFICATION_TYPEHASH


def model_fees(oracle, model_id: bytes) -> ModelFees:
    fields = oracle.functions.models(model_id).call()
    return ModelFees(registered=fields[3] != 0, payee=fields[8], accrued=fields[9])


def withdraw_fees(chain: Chain, oracle, model_id: bytes) -> dict:
    """Send withdrawFees: the model's accrued fees go to its payee (whoever sends it).
    Returns what the FeesWithdrawn event says was paid (payee, amount) and the tx hash;
    reverts (NoFeesAccrued, FeeTransferFailed) raise ContractRevert."""
    from web3.logs import DISCARD

    receipt = chain.transact(oracle.functions.withdrawFees(model_id))
    (ev,) = oracle.events.FeesWithdrawn().process_receipt(receipt, errors=DISCARD)
    return {"payee": ev["args"]["payee"], "amount": ev["args"]["amount"],
            "tx": tx_hex(receipt["transactionHash"])}


def announce_signer(chain: Chain, oracle, model_id: bytes, signer: str) -> dict:
    """Send updateModel with the model's verifier and policy as they are and a new EIP-712
    ``signer`` (after ``verinfer keys rotate --eip712``). It takes effect when applied
    (:func:`apply_update`), the oracle's update delay from now at the earliest, and only for
    requests made after that. Returns ``{"effective_at", "tx"}``; reverts (not the owner, a
    policy without a signature path...) raise ContractRevert."""
    from web3.logs import DISCARD

    fields = oracle.functions.models(model_id).call()  # signer, ..., policy [3], verifier [4]
    receipt = chain.transact(oracle.functions.updateModel(model_id, fields[4], fields[3], signer))
    (ev,) = oracle.events.ModelUpdateScheduled().process_receipt(receipt, errors=DISCARD)
    return {"effective_at": ev["args"]["effectiveAt"], "tx": tx_hex(receipt["transactionHash"])}


def apply_update(chain: Chain, oracle, model_id: bytes) -> dict:
    """Send applyModelUpdate (anyone may, once the update's delay has passed). Returns what the
    ModelUpdated event says (``signer``, ``verifier``, ``policy``) and the tx hash; reverts
    (NoPendingUpdate, UpdateNotReady) raise ContractRevert."""
    from web3.logs import DISCARD

    receipt = chain.transact(oracle.functions.applyModelUpdate(model_id))
    (ev,) = oracle.events.ModelUpdated().process_receipt(receipt, errors=DISCARD)
    return {"signer": ev["args"]["signer"], "verifier": ev["args"]["verifier"],
            "policy": ev["args"]["policy"], "tx": tx_hex(receipt["transactionHash"])}


def tx_hex(tx_hash) -> str:
    """A transaction hash as ``0x`` + 64 hex digits, as the relayer's log and store write it
    (HexBytes.hex() drops the ``0x`` since hexbytes 1.0)."""
    return "0x" + bytes(tx_hash).hex()


def deploy_all(chain: Chain, packages: list[Path], *, policy: str = "proof",
               signer: str | None = None,
               request_timeout: int = DEFAULT_REQUEST_TIMEOUT,
               allow_dev_srs: bool = False, update_delay: int = DEFAULT_UPDATE_DELAY,
               min_fee: int = 0, payee: str | None = None) -> dict:
    """Deploy the oracle, one verifier per package, register each model; return the
    deployment record (what ``verinfer chain deploy`` writes). A package with a development
    SRS is refused on any chain but the embedded one and :data:`DEV_CHAIN_IDS`, unless
    ``allow_dev_srs``: whoever made that SRS could forge proofs its verifier accepts."""
    from contracts.solc import solc_version

    models = [load_package(p) for p in packages]  # fail on a bad package before spending gas
    too_large = [m for m in models if m.verifier.runtime_size > EIP170_LIMIT]
    if too_large:
        raise InputError("; ".join(f"{m.name}: verifier {m.verifier.runtime_size:,} bytes, over "
                                   f"EIP-170's {EIP170_LIMIT:,}" for m in too_large)
                         + ": no chain deploys it; such a package's proofs are checked offline "
                         "(register the model again without 'models tune --verifier offline')")
    ids = [m.model_id for m in models]
    if len(set(ids)) != len(ids):
        raise InputError("two packages are the same model (same model sha256)")
    if policy != "proof" and not signer:
        raise InputError(f"policy {policy!r} needs --signer ADDRESS")
    insecure = [m.name for m in models if m.dev_srs]
    if insecure and not allow_dev_srs and not chain.embedded \
            and chain.chain_id not in DEV_CHAIN_IDS:
        raise InputError(f"{', '.join(insecure)}: development SRS (proofs could be forged); "
                         f"refusing to deploy to chain id {chain.chain_id} without "
                         f"--allow-dev-srs")
    oracle, oracle_receipt = deploy_oracle(chain, request_timeout, update_delay)
    record = {
        "format": DEPLOYMENT_FORMAT,
        "chain_id": chain.chain_id,
        "rpc": chain.rpc or "embedded",
        "embedded": chain.embedded,
        "deployer": chain.sender,
        "solc": {"version": solc_version(), "evm_version": EVM_VERSION,
                 "optimizer_runs": OPTIMIZER_RUNS},
        "oracle": {
            "address": oracle.address,
            "tx": tx_hex(oracle_receipt["transactionHash"]),
            "gas_used": oracle_receipt["gasUsed"],
            "request_timeout": request_timeout,
            "update_delay": update_delay,
        },
        "models": [],
    }
    for m in models:
        address = None
        try:
            address, vrec = deploy_verifier(chain, m.verifier)
            rrec = register_model(chain, oracle, model_id=m.model_id, verifier=address,
                                  input_length=m.input_length, input_scale=m.input_scale,
                                  policy=policy, signer=signer, num_instances=m.num_instances,
                                  max_abs_input=m.max_abs_input, min_fee=min_fee, payee=payee)
        except VerinferError as exc:
            # what is on chain already, paid for: said, or the operator loses its addresses
            done = [f"oracle {oracle.address}"] + [
                f"{r['name']} (verifier {r['verifier']}, registered)" for r in record["models"]]
            if address is not None:
                done.append(f"{m.name}'s verifier {address} (not registered)")
            raise ChainError(f"{m.name}: {exc}; deployed before that, in no deployment file: "
                             + ", ".join(done)) from None
        record["models"].append({
            "name": m.name,
            "model_id": "0x" + m.model_id.hex(),
            "package": str(m.package_dir),
            "verifier": address,
            "verifier_gas_used": vrec["gasUsed"],
            "verifier_runtime_bytes": m.verifier.runtime_size,
            "input_length": m.input_length,
            "input_scale": m.input_scale,
            "num_instances": m.num_instances,
            "public_output": m.public_output,
            "max_abs_input": m.max_abs_input,
            "min_fee": min_fee,
            "payee": payee or chain.sender,
            "policy": policy,
            "signer": signer,
            "register_tx": tx_hex(rrec["transactionHash"]),
        })
    return record
