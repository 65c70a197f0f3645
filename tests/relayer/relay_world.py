"""Helpers for the relayer tests: deployments, consumers, requests, chain records."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from contracts import deploy
from contracts.chain import Chain

REPO_ROOT = Path(__file__).resolve().parents[2]
SCALE = 13  # iris_mlp's input scale in the chain tests without a circuit package
IRIS_ONNX = REPO_ROOT / "models" / "artifacts" / "iris_mlp" / "model.onnx"


def held_out(name: str, n: int) -> np.ndarray:
    from models import load_split

    _, x_test, _, _ = load_split(name)
    return x_test[:n]


def quantized(x: np.ndarray, scale: int) -> list[int]:
    from verifier.fixedpoint import quantize

    return quantize(np.asarray(x, dtype=np.float32), scale)


def onnx_label(onnx_path: Path, q: list[int], scale: int, shape) -> int:
    """The float model's label for the input the chain carries (q / 2**scale)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = (np.asarray(q, dtype=np.float64) / 2**scale).astype(np.float32).reshape(shape)
    name = sess.get_inputs()[0].name
    return int(np.ravel(sess.run(["label"], {name: x})[0])[0])


def consumer(chain: Chain, oracle_address: str, model_id: bytes, gas: int = 100_000):
    c, _ = deploy.deploy_consumer(chain, oracle_address, model_id, gas)
    return c


def request(chain: Chain, cons, q: list[int]) -> bytes:
    chain.transact(cons.functions.classify(list(q)))
    return bytes(cons.functions.lastRequestId().call())


def answer(cons, rid: bytes) -> tuple[bool, int]:
    answered, label = cons.functions.answers(rid).call()
    return bool(answered), int(label)


def fulfilled_events(chain: Chain, oracle_address: str) -> list[dict]:
    """Every ClassificationFulfilled the oracle ever emitted."""
    o = chain.contract(oracle_address, deploy.oracle_abi())
    ev = o.events.ClassificationFulfilled()
    logs = chain.w3.eth.get_logs({"address": o.address, "fromBlock": 0, "toBlock": "latest"})
    out = []
    for lg in logs:
        try:
            out.append(dict(ev.process_log(lg)["args"]))
        except Exception:  # noqa: BLE001, S112
            continue
    return out


def funded_key_file(chain: Chain, folder: Path, eth: int = 10) -> tuple[str, Path]:
    """A fresh account funded from the node's first account; its key in a 0600 file."""
    from eth_account import Account

    acct = Account.create()
    path = folder / "relayer.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(acct.key.hex())
    tx = chain.w3.eth.send_transaction({"from": chain.sender, "to": acct.address,
                                        "value": eth * 10**18})
    chain.w3.eth.wait_for_transaction_receipt(tx)
    return acct.address, path


# -- an oracle with a stand-in verifier, for the tests without EZKL -----------------


def mock_verifier(chain) -> str:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contracts"))
    from world import helpers

    h = helpers()["MockVerifier"]
    address, _ = chain.deploy(h.abi, h.bytecode)
    return address


def setup_oracle(chain, model, policy: str, signer: str | None, *, model_id=None,
           input_length=None):
    oracle, _ = deploy.deploy_oracle(chain, 600)
    verifier = mock_verifier(chain) if policy != "signature" else None
    mid = model_id or model.model_id
    deploy.register_model(chain, oracle, model_id=mid, verifier=verifier,
                          input_length=input_length or model.input_length, input_scale=SCALE,
                          policy=policy, signer=signer,
                          num_instances=(input_length or model.input_length) + 4)
    return oracle, consumer(chain, oracle.address, mid)


def relayer_for(chain, oracle, model, tmp_path, key, **kw):
    """A relayer answering unpaid requests (fee_margin 0) unless told otherwise."""
    from server.relayer.relayer import Relayer, RelayStore

    store = RelayStore(tmp_path / "relayer.sqlite3", chain.chain_id, oracle.address)
    kw.setdefault("fee_margin", 0)
    return Relayer(chain, oracle.address, {model.model_id: model}, store, eth_key=key, **kw)


def new_key() -> tuple[bytes, str]:
    from eth_keys import keys

    k = os.urandom(32)
    return k, keys.PrivateKey(k).public_key.to_checksum_address()


def samples(n=3):
    return [quantized(x, SCALE) for x in held_out("iris_mlp", n)]
