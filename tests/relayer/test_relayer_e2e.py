"""End to end on anvil with the real circuit packages and the real ``verinfer`` command:
an ExampleConsumer asks for classifications of held-out iris_mlp and digits_cnn samples,
``verinfer relay`` proves them with EZKL and fulfils them; the consumer's stored label is the
model's. Killing the relayer mid-stream and restarting it loses and duplicates nothing.
``verinfer verify BUNDLE --rpc --verifier`` checks a bundle with the deployed verifier."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prover_support import run_cli
from relay_world import (
    answer,
    consumer,
    fulfilled_events,
    funded_key_file,
    held_out,
    onnx_label,
    quantized,
    request,
)

from contracts import deploy

pytestmark = [pytest.mark.chain, pytest.mark.ezkl, pytest.mark.e2e]


def _model(record: dict, name: str) -> dict:
    return next(m for m in record["models"] if m["name"] == name)


def _requests(chain, record, name, n, start=0):
    m = _model(record, name)
    cons = consumer(chain, record["oracle"]["address"], bytes.fromhex(m["model_id"][2:]))
    shape = (1, 4) if name == "iris_mlp" else (1, 1, 8, 8)
    out = []
    for x in held_out(name, start + n)[start:]:
        q = quantized(x, m["input_scale"])
        out.append((request(chain, cons, q), q))
    onnx = Path(m["package"]) / "model.onnx"
    return cons, out, lambda q: onnx_label(onnx, q, m["input_scale"], shape)


def test_consumer_gets_the_models_label_by_proof(anvil_chain, relay_anvil_url, packages_home,
                                                 iris_package, digits_package):
    chain = anvil_chain
    record = deploy.deploy_all(chain, [iris_package, digits_package], policy="proof")
    oracle = record["oracle"]["address"]
    iris_c, iris_reqs, iris_label = _requests(chain, record, "iris_mlp", 2)
    dig_c, dig_reqs, dig_label = _requests(chain, record, "digits_cnn", 1)

    proc = run_cli("relay", "--rpc", relay_anvil_url, "--oracle", oracle, "--fee-margin", "0", "--once", "--json",
                   home=packages_home)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    rids = ["0x" + r.hex() for r, _ in iris_reqs + dig_reqs]
    assert out["fulfilled"] == rids and not out["skipped"] and not out["failed"]
    for cons, reqs, label in ((iris_c, iris_reqs, iris_label), (dig_c, dig_reqs, dig_label)):
        for rid, q in reqs:
            assert answer(cons, rid) == (True, label(q))
    evs = fulfilled_events(chain, oracle)
    assert len(evs) == 3 and all(e["byProof"] for e in evs)

    again = run_cli("relay", "--rpc", relay_anvil_url, "--oracle", oracle, "--fee-margin", "0", "--once", "--json",
                    "--withdraw-min", "0", home=packages_home)
    assert again.returncode == 0 and json.loads(again.stdout)["events"] == 0
    assert json.loads(again.stdout)["withdrawn"] == []  # unpaid requests: no fees to withdraw
    bad = run_cli("relay", "--rpc", relay_anvil_url, "--oracle", oracle, "--withdraw-min", "-1",
                  "--once", home=packages_home)
    assert bad.returncode == 2 and "--withdraw-min must be between" in bad.stderr.strip().splitlines()[-1]


def test_verify_bundle_on_chain(anvil_chain, relay_anvil_url, packages_home, iris_package,
                                digits_package, tmp_path):
    from prover.package import CircuitPackage
    from prover.proving import Prover

    chain = anvil_chain
    record = deploy.deploy_all(chain, [iris_package, digits_package], policy="proof")
    x = held_out("iris_mlp", 1)[0].reshape(1, 4).astype("float32")
    bundle = Prover(CircuitPackage.open(iris_package, check=[])).prove(x)
    path = bundle.write(tmp_path / "bundle")
    iris_v, digits_v = (_model(record, n)["verifier"] for n in ("iris_mlp", "digits_cnn"))
    ok = run_cli("verify", path, "--package", iris_package, "--rpc", relay_anvil_url,
                 "--verifier", iris_v, "--json", "--allow-dev-srs", home=packages_home)
    assert ok.returncode == 0, ok.stderr
    assert "accepted on chain" in ok.stderr and json.loads(ok.stdout)["onchain"] == iris_v
    bad = run_cli("verify", path, "--package", iris_package, "--rpc", relay_anvil_url,
                  "--verifier", digits_v, "--allow-dev-srs", home=packages_home)
    assert bad.returncode == 1 and "FAIL" in bad.stderr
    usage = run_cli("verify", path, "--rpc", relay_anvil_url, home=packages_home)
    assert usage.returncode == 2 and "--verifier" in usage.stderr


def test_kill_and_restart_loses_and_duplicates_nothing(anvil_chain, relay_anvil_url,
                                                       packages_home, iris_package, tmp_path):
    chain = anvil_chain
    record = deploy.deploy_all(chain, [iris_package], policy="proof")
    oracle = record["oracle"]["address"]
    account, key_file = funded_key_file(chain, tmp_path)
    cons, reqs, label = _requests(chain, record, "iris_mlp", 6, start=5)
    args = ["relay", "--rpc", relay_anvil_url, "--oracle", oracle, "--key-file", key_file,
            "--fee-margin", "0"]

    env = {**os.environ, "VERINFER_HOME": str(packages_home)}
    log = open(tmp_path / "relay.log", "wb")  # noqa: SIM115 - the relayer's, closed below
    proc = subprocess.Popen([sys.executable, "-m", "verifier.cli", *map(str, args),
                             "--poll-interval", "0.2"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 180
        while not fulfilled_events(chain, oracle):
            assert proc.poll() is None, (tmp_path / "relay.log").read_text()
            assert time.monotonic() < end, "the relayer fulfilled nothing in 180 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
    done_before = len(fulfilled_events(chain, oracle))
    assert 1 <= done_before < len(reqs), "the relayer was not stopped mid-stream"

    again = run_cli(*args, "--once", "--json", home=packages_home)
    assert again.returncode == 0, again.stderr
    assert len(json.loads(again.stdout)["fulfilled"]) >= len(reqs) - done_before

    evs = fulfilled_events(chain, oracle)
    assert sorted(bytes(e["requestId"]) for e in evs) == sorted(r for r, _ in reqs)  # once each
    for rid, q in reqs:
        assert answer(cons, rid) == (True, label(q))
    # one transaction per request: nothing was sent twice (not even a reverted duplicate)
    assert chain.w3.eth.get_transaction_count(account) == len(reqs)


def test_an_unprovable_input_fails_alone(anvil_chain, relay_anvil_url, packages_home,
                                         iris_package):
    """iris_mlp registered without its input bound (the widest): the oracle takes
    [2^36, 0, 0, 0], which EZKL cannot witness. That request fails, logged; the valid one
    after it is proven and fulfilled in the same ``relay --once`` run, which exits 0."""
    chain = anvil_chain
    pm = deploy.load_package(iris_package)
    oracle, _ = deploy.deploy_oracle(chain)
    verifier, _ = deploy.deploy_verifier(chain, pm.verifier)
    deploy.register_model(chain, oracle, model_id=pm.model_id, verifier=verifier,
                          input_length=4, input_scale=pm.input_scale, policy="proof",
                          signer=None, num_instances=pm.num_instances)  # no input bound
    cons = consumer(chain, oracle.address, pm.model_id)
    bad = request(chain, cons, [2**36, 0, 0, 0])
    q = quantized(held_out("iris_mlp", 1)[0], pm.input_scale)
    good = request(chain, cons, q)

    proc = run_cli("relay", "--rpc", relay_anvil_url, "--oracle", oracle.address,
                   "--fee-margin", "0", "--model", "iris_mlp", "--once", "--json",
                   home=packages_home)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["failed"] == ["0x" + bad.hex()] and out["fulfilled"] == ["0x" + good.hex()]
    assert f"request 0x{bad.hex()} failed: InputOutOfRange: the circuit cannot compute this input" in proc.stderr
    label = onnx_label(Path(iris_package) / "model.onnx", q, pm.input_scale, (1, 4))
    assert answer(cons, good) == (True, label) and answer(cons, bad) == (False, 0)
    again = run_cli("relay", "--rpc", relay_anvil_url, "--oracle", oracle.address,
                    "--fee-margin", "0", "--model", "iris_mlp", "--once", "--json",
                    home=packages_home)
    assert again.returncode == 0 and json.loads(again.stdout)["events"] == 0  # final


def test_a_first_proof_request_that_pays_for_its_proof_is_fulfilled(anvil_chain, relay_anvil_url,
                                                                    packages_home, iris_package):
    """Before the relayer has estimated a proof fulfilment of the model, its fee pre-check
    counts the floor (300,000 gas), not a guess above the real cost: a request that pays for
    its proof's fulfilment (iris_mlp: under 1,020,000 gas with the callback) is proven and
    fulfilled, where a 1,000,000-gas guess (+ the 100,000 callback) refused it for good."""
    chain = anvil_chain
    record = deploy.deploy_all(chain, [iris_package], policy="proof")
    oracle = record["oracle"]["address"]
    m = _model(record, "iris_mlp")
    cons = consumer(chain, oracle, bytes.fromhex(m["model_id"][2:]))
    q = quantized(held_out("iris_mlp", 1)[0], m["input_scale"])
    w3 = chain.w3
    # the price the relayer's send pays: twice the base fee of the block the request lands in
    # (nothing is mined after it before the relayer sends), plus the tip
    per_gas = 2 * int(w3.eth.get_block("pending")["baseFeePerGas"]) + int(w3.eth.max_priority_fee)
    chain.transact(cons.functions.classify(list(q)), value=1_020_000 * per_gas)
    rid = "0x" + bytes(cons.functions.lastRequestId().call()).hex()
    proc = run_cli("relay", "--rpc", relay_anvil_url, "--oracle", oracle, "--fee-margin", "1",
                   "--once", "--json", home=packages_home)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["fulfilled"] == [rid] and not out["skipped"], proc.stderr
    label = onnx_label(Path(m["package"]) / "model.onnx", q, m["input_scale"], (1, 4))
    assert answer(cons, bytes.fromhex(rid[2:])) == (True, label)


def test_a_request_paying_between_the_floor_and_the_proof_costs_one_proof_per_model(
        anvil_chain, relay_anvil_url, packages_home, iris_package):
    """The floor lets a request through the pre-check that pays more than 300,000 gas but less
    than the proof's fulfilment; the relayer proves it, estimates, and skips it as unpaid. That
    estimate is learned even though the fee fell short, so the next such request is skipped
    before proving: an attacker gets one proof per model, not one per request."""
    from server.relayer.models import InProcessProofs
    from server.relayer.relayer import make_relayer

    chain = anvil_chain
    record = deploy.deploy_all(chain, [iris_package], policy="proof")
    oracle = record["oracle"]["address"]
    m = _model(record, "iris_mlp")
    cons = consumer(chain, oracle, bytes.fromhex(m["model_id"][2:]))
    w3 = chain.w3
    per_gas = 2 * int(w3.eth.get_block("pending")["baseFeePerGas"]) + int(w3.eth.max_priority_fee)

    class Counting(InProcessProofs):
        calls = 0

        def prove(self, model, x):
            Counting.calls += 1
            return super().prove(model, x)

    r = make_relayer(rpc=relay_anvil_url, oracle=oracle, home=packages_home, proofs=Counting(),
                     fee_margin=1.0)
    # one request a poll (the requests of one poll are proven side by side, before any estimate)
    for x, proofs in zip(held_out("iris_mlp", 2), (1, 1)):
        chain.transact(cons.functions.classify(list(quantized(x, m["input_scale"]))),
                       value=(100_000 + 400_000) * per_gas)
        rid = "0x" + bytes(cons.functions.lastRequestId().call()).hex()
        res = r.poll()
        assert res.skipped == [rid] and not res.fulfilled
        assert "does not cover" in r.store.get(rid).reason
        assert Counting.calls == proofs  # the first was proven to learn the cost; the second was not


def test_relay_once_says_in_one_line_that_a_transaction_is_not_mined_yet(
        anvil_chain, relay_anvil_url, packages_home, iris_package, tmp_path):
    """Blocks stop being mined: ``relay --once`` replaces its fulfilment until it gives up,
    then exits 2 with one line (not a traceback), as for any node error, the request left for the next pass; once
    blocks come again, the next pass finishes it with one fulfilment."""
    chain = anvil_chain
    record = deploy.deploy_all(chain, [iris_package], policy="proof")
    oracle = record["oracle"]["address"]
    _account, key_file = funded_key_file(chain, tmp_path)
    cons, reqs, label = _requests(chain, record, "iris_mlp", 1, start=3)
    args = ["relay", "--rpc", relay_anvil_url, "--oracle", oracle, "--key-file", key_file,
            "--fee-margin", "0", "--once", "--json"]
    chain.w3.provider.make_request("evm_setAutomine", [False])
    try:
        stuck = run_cli(*args, "--tx-timeout", "0.2", home=packages_home)
    finally:
        chain.w3.provider.make_request("evm_setAutomine", [True])
    assert stuck.returncode == 2, stuck.stderr
    assert "Traceback" not in stuck.stderr, stuck.stderr
    assert stuck.stderr.strip().splitlines()[-1].startswith(
        "verinfer relay: the pass did not finish (TimeoutError: transaction 0x"), stuck.stderr
    chain.w3.provider.make_request("evm_mine", [])
    again = run_cli(*args, home=packages_home)
    assert again.returncode == 0, again.stderr
    (rid, q), = reqs
    assert answer(cons, rid) == (True, label(q))
    assert [bytes(e["requestId"]) for e in fulfilled_events(chain, oracle)] == [rid]


def test_a_fulfilment_the_node_refuses_is_not_proven_again(anvil_chain, relay_anvil_url,
                                                            packages_home, iris_package,
                                                            tmp_path, monkeypatch):
    """The relayer's account has no ether: each pass proves, then the node refuses the
    fulfilment and the request stays for the next pass. The proof is made once: the next
    passes, and the one after the account is funded, send the proof already made. Before,
    each pass (every 2 s with `verinfer relay`) proved every such request again, for as long
    as the account stayed empty."""
    import os

    from eth_account import Account

    from prover.proving import Prover
    from server.relayer.relayer import make_relayer

    chain = anvil_chain
    record = deploy.deploy_all(chain, [iris_package], policy="proof")
    oracle = record["oracle"]["address"]
    cons, reqs, label = _requests(chain, record, "iris_mlp", 1, start=5)
    acct = Account.create()
    key_file = tmp_path / "empty.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(acct.key.hex())
    proofs = []
    real_prove = Prover.prove

    def counted(self, x):
        proofs.append(x)
        return real_prove(self, x)

    monkeypatch.setattr(Prover, "prove", counted)
    r = make_relayer(rpc=relay_anvil_url, oracle=oracle, home=packages_home, key_file=key_file,
                     fee_margin=0)
    for _ in range(2):
        with pytest.raises(Exception, match="(?i)insufficient funds"):
            r.poll()
    tx = chain.w3.eth.send_transaction({"from": chain.sender, "to": acct.address,
                                        "value": 10**18})
    chain.w3.eth.wait_for_transaction_receipt(tx)
    (rid, q), = reqs
    assert r.poll().fulfilled == ["0x" + rid.hex()]
    assert answer(cons, rid) == (True, label(q))
    assert len(proofs) == 1
