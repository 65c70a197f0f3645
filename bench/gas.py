"""Gas table for the contracts, measured on a real anvil node (from node_modules).

Per model (iris_mlp, digits_cnn): the EZKL per-model verifier's deploy gas and runtime size,
verifyProof gas (a transaction), and the oracle's requestClassification /
fulfillWithProof / fulfillWithSignature gas (ExampleConsumer as the requester, storing the
label in its callback; a fee escrowed and paid out). Optionally EZKL's reusable verifier.

    .venv/bin/python -m bench.gas [--models iris_mlp digits_cnn] [--reusable]

Prints a table; writes bench/results/gas.json. Circuits are built with a local, insecure
development SRS (gas does not depend on the SRS). Numbers are figures, never asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "contracts"))

TARGETS = {"fulfillWithSignature": 80_000,
           "fulfillWithProof": {"iris_mlp": 700_000, "digits_cnn": 1_000_000}}


def _samples(name: str):
    from models import load_split

    x_train, x_test, _, _ = load_split(name)
    cal = [x.reshape(-1).tolist() for x in x_train[:8]]
    return cal, x_test[0].reshape(-1).tolist()


def measure_model(name: str, chain, work: Path, reusable: bool) -> dict:
    import ezkl_circuit
    from world import make_world

    from contracts import deploy
    from contracts.deploy import VerifierArtifact

    cal, sample = _samples(name)
    onnx = REPO / "models" / "artifacts" / name / "model.onnx"
    t0 = time.perf_counter()
    circuit = ezkl_circuit.build_circuit(onnx, work / name, cal)
    proof = ezkl_circuit.prove(circuit, sample, "bench")
    build_s = time.perf_counter() - t0
    row: dict = {"model": name, "logrows": circuit.logrows, "input_length": len(sample),
                 "instances": len(proof.instances), "proof_bytes": len(proof.proof),
                 "build_and_prove_s": round(build_s, 1)}

    w = make_world(chain)
    art = VerifierArtifact.from_compiled(circuit.verifier)
    address, vrec = chain.deploy(art.abi, art.bytecode)
    row["verifier_deploy_gas"] = vrec["gasUsed"]
    row["verifier_runtime_bytes"] = art.runtime_size
    v = chain.contract(address, art.abi)
    r = chain.transact(v.functions.verifyProof(proof.proof, proof.instances))
    row["verifyProof_gas"] = r["gasUsed"]

    model_id = bytes(31) + bytes([len(name)])
    deploy.register_model(chain, w.oracle, model_id=model_id, verifier=address,
                          input_length=len(sample), input_scale=circuit.input_scale,
                          policy="either", signer=w.signer.address)
    fee = 10**15
    rid, rrec = w.request(q=proof.quantized, model_id=model_id, fee=fee)
    row["requestClassification_gas"] = rrec["gasUsed"]
    r = chain.transact(w.oracle.functions.fulfillWithProof(rid, proof.proof, proof.instances),
                       sender=w.relayer)
    assert not w.events(r, "CallbackFailed")
    row["fulfillWithProof_gas"] = r["gasUsed"]
    row["fulfillWithProof_overhead_gas"] = r["gasUsed"] - row["verifyProof_gas"]
    rid2, _ = w.request(q=proof.quantized, model_id=model_id, fee=fee)
    deadline, sig = w.sign(rid2, proof.instances[-1], q=proof.quantized, model_id=model_id)
    r = w.fulfil_sig(rid2, proof.instances[-1], deadline, sig)
    assert not w.events(r, "CallbackFailed")
    row["fulfillWithSignature_gas"] = r["gasUsed"]
    rid3, _ = w.request(q=proof.quantized, model_id=model_id, fee=0)
    deadline, sig = w.sign(rid3, proof.instances[-1], q=proof.quantized, model_id=model_id)
    r = w.fulfil_sig(rid3, proof.instances[-1], deadline, sig)
    row["fulfillWithSignature_nofee_gas"] = r["gasUsed"]

    if reusable:
        row["reusable"] = measure_reusable(name, chain, work, cal, proof)
    return row


def measure_reusable(name: str, chain, work: Path, cal, proof) -> dict:
    """EZKL's reusable verifier: one contract for all circuits, plus a per-model VK artifact."""
    import ezkl_circuit

    try:
        c = ezkl_circuit.build_circuit(REPO / "models" / "artifacts" / name / "model.onnx",
                                       work / f"{name}-reusable", cal, reusable=True)
    except Exception as exc:  # keep the rest of the table
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    art = c.verifier
    out = {"contracts": sorted(ezkl_circuit.compile_sources(
        {"Verifier.sol": c.verifier_sol.read_text()})),
        "runtime_bytes": art.runtime_size, "vka_bytes": len(c.vka) if c.vka else None}
    try:
        _, rec = chain.deploy(art.abi, art.bytecode)
        out["deploy_gas"] = rec["gasUsed"]
    except Exception as exc:
        out["deploy_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    out["functions"] = [f"{i['name']}({','.join(x['type'] for x in i['inputs'])})"
                        for i in art.abi if i.get("type") == "function"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["iris_mlp", "digits_cnn"])
    parser.add_argument("--reusable", action="store_true",
                        help="also build EZKL's reusable verifier and report its size/gas")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gas.json")
    args = parser.parse_args(argv)

    from conftest import run_anvil

    from contracts.chain import connect
    from contracts.deploy import compiled, deploy_oracle
    from contracts.solc import EVM_VERSION, OPTIMIZER_RUNS, solc_version

    rows = []
    with run_anvil() as url, tempfile.TemporaryDirectory() as tmp:
        chain = connect(url)
        _, orec = deploy_oracle(chain)
        oracle = {"deploy_gas": orec["gasUsed"],
                  "runtime_bytes": compiled()["VerinferOracle"].runtime_size,
                  "example_consumer_runtime_bytes": compiled()["ExampleConsumer"].runtime_size}
        for name in args.models:
            print(f"measuring {name} ...", file=sys.stderr)
            rows.append(measure_model(name, chain, Path(tmp), args.reusable))

    result = {
        "chain": "anvil 1.7.1 (node_modules), EVM cancun",
        "solc": solc_version(), "evm_version": EVM_VERSION, "optimizer_runs": OPTIMIZER_RUNS,
        "ezkl": __import__("ezkl").__version__, "machine": platform.machine(),
        "targets": TARGETS, "oracle": oracle, "models": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"VerinferOracle: deploy {oracle['deploy_gas']:,} gas, "
          f"{oracle['runtime_bytes']:,} bytes runtime")
    cols = ["verifier_deploy_gas", "verifier_runtime_bytes", "verifyProof_gas",
            "requestClassification_gas", "fulfillWithProof_gas", "fulfillWithProof_overhead_gas",
            "fulfillWithSignature_gas", "fulfillWithSignature_nofee_gas"]
    print(f"{'':32}" + "".join(f"{r['model']:>14}" for r in rows))
    for c in ["logrows", "input_length", "instances", "proof_bytes", *cols]:
        print(f"{c:32}" + "".join(f"{r[c]:>14,}" for r in rows))
    for r in rows:
        if "reusable" in r:
            print(f"{r['model']} reusable verifier: {json.dumps(r['reusable'])}")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
