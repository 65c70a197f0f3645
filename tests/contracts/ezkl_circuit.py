"""Build a small EZKL circuit, its Solidity verifier and real proofs — for chain tests and bench.

A development stand-in for the lead's ``prover`` package: same EZKL pipeline (public input,
public outputs, fixed params), with a locally generated SRS that is **insecure, for tests
only**. Everything lands in one work directory; nothing is committed.

The Solidity verifier is written by ``ezkl.create_evm_verifier`` and compiled here with the
pinned solcjs (EZKL's own compile step tries to download solc and fails offline).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

from contracts.solc import CompiledContract, compile_sources


@dataclass
class Circuit:
    workdir: Path
    settings: dict
    logrows: int
    input_scale: int
    verifier_sol: Path
    verifier: CompiledContract  # Halo2Verifier (per-model, vk baked in, or reusable)
    reusable: bool = False
    vka: bytes | None = None  # VK artifact for the reusable verifier


@dataclass
class Proof:
    input: list[float]
    quantized: list[int]
    proof: bytes
    instances: list[int]  # field elements: inputs..., outputs..., label (last)


def _run(fn, *args):
    """Call an EZKL function that may be async (some need a running event loop)."""

    async def go():
        r = fn(*args)
        return await r if inspect.isawaitable(r) else r

    return asyncio.run(go())


def build_circuit(onnx_path: Path, workdir: Path, calibration: list[list[float]],
                  *, reusable: bool = False, srs_path: Path | None = None,
                  target: str = "accuracy") -> Circuit:
    import ezkl

    workdir.mkdir(parents=True, exist_ok=True)
    model = workdir / "model.onnx"
    model.write_bytes(Path(onnx_path).read_bytes())
    settings_p, compiled = workdir / "settings.json", workdir / "model.compiled"
    vk, pk = workdir / "vk.key", workdir / "pk.key"
    cal = workdir / "calibration.json"
    cal.write_text(json.dumps({"input_data": [[v for row in calibration for v in row]]}))

    args = ezkl.PyRunArgs()
    args.input_visibility = "public"
    args.output_visibility = "public"
    args.param_visibility = "fixed"
    args.variables = [("batch", 1)]
    assert ezkl.gen_settings(str(model), str(settings_p), py_run_args=args)
    assert _run(ezkl.calibrate_settings, str(cal), str(model), str(settings_p), target)
    settings = json.loads(settings_p.read_text())
    logrows = settings["run_args"]["logrows"]
    srs = srs_path or workdir / f"kzg{logrows}.srs"
    if not srs.exists():
        ezkl.gen_srs(str(srs), logrows)  # insecure, local, tests only
    assert ezkl.compile_circuit(str(model), str(compiled), str(settings_p))
    first = workdir / "first.json"
    first.write_text(json.dumps({"input_data": [calibration[0]]}))
    witness = workdir / "witness0.json"
    _run(ezkl.gen_witness, str(first), str(compiled), str(witness))
    assert ezkl.setup(str(compiled), str(vk), str(pk), str(srs))

    sol, abi = workdir / "Verifier.sol", workdir / "Verifier.abi"
    try:
        _run(ezkl.create_evm_verifier, str(vk), str(settings_p), str(sol), str(abi), str(srs),
             reusable)
    except Exception:  # writes the .sol, then fails downloading solc: expected offline  # noqa: BLE001, S110
        pass
    if not sol.exists():
        raise RuntimeError("ezkl did not write the Solidity verifier")
    contracts = compile_sources({"Verifier.sol": sol.read_text()})
    verifier = contracts["Halo2Verifier"] if "Halo2Verifier" in contracts else \
        next(iter(contracts.values()))
    vka = None
    if reusable:
        vka_p = workdir / "vka.bytes"
        try:
            _run(ezkl.create_evm_vka, str(vk), str(settings_p), str(vka_p), str(srs))
        except Exception:  # noqa: BLE001, S110
            pass
        if vka_p.exists():
            vka = vka_p.read_bytes()
    scale = settings["run_args"]["input_scale"]
    return Circuit(workdir, settings, logrows, scale, sol, verifier, reusable, vka)


def prove(circuit: Circuit, values: list[float], tag: str) -> Proof:
    import ezkl

    w = circuit.workdir
    data, witness, proof_p = w / f"in_{tag}.json", w / f"wit_{tag}.json", w / f"proof_{tag}.json"
    data.write_text(json.dumps({"input_data": [values]}))
    _run(ezkl.gen_witness, str(data), str(w / "model.compiled"), str(witness))
    srs = next(w.glob("kzg*.srs"))
    assert ezkl.prove(str(witness), str(w / "model.compiled"), str(w / "pk.key"), str(proof_p),
                      str(srs))
    p = json.loads(proof_p.read_text())
    proof = bytes.fromhex(p["hex_proof"].removeprefix("0x"))
    instances = [int.from_bytes(bytes.fromhex(f), "little") for f in p["instances"][0]]
    import numpy as np

    from verifier.fixedpoint import quantize
    q = quantize(np.asarray(values, dtype=np.float32), circuit.input_scale)
    return Proof(list(values), q, proof, instances)
