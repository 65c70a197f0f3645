"""Gas table for the contracts, measured on a real anvil node (from node_modules).

Per model (iris_mlp, digits_cnn), on the project's real circuit packages (``verinfer models
add``, built in ``--home`` when missing): the EZKL per-model verifier's deploy gas and runtime
size, verifyProof gas (a transaction) for a held-out sample's proof, and the oracle's
requestClassification / fulfillWithProof / fulfillWithSignature gas (ExampleConsumer as the
requester, storing the label in its callback; a fee escrowed and accrued to the payee). With
``--reusable``: EZKL's reusable verifier + the model's VK artifact (deploy, registerVka,
verifyProof).

    .venv/bin/python -m bench.gas [--models iris_mlp digits_cnn] [--variants logits label label:1]
                                  [--eval-samples N] [--reusable] [--home DIR]
    .venv/bin/python -m bench.gas --signature-only   # seconds: fulfillWithSignature only

Each model is measured in each variant ``SHAPE[:COLS][+rc]``: SHAPE is the public output
(``models add --public-output``: logits = the logits and the label are public instances, label =
the label alone), COLS the inner columns (default: the build's rule; 1 = one inner column: more
rows, fewer columns), ``+rc`` the maxima rewritten (``models add --max-ops range-checks``). A COLS variant that the default already is (iris_mlp has one column) is
not built twice. ``hashed-logits``/``hashed-label``: the input hashed (EZKL Poseidon, ``models
add --input-visibility hashed``): verifier and verifyProof only, since the oracle takes no such
circuit. ``--eval-samples N``: the packages' float-vs-circuit agreement on the first N
held-out samples only (quicker builds; neither the shape nor the columns change the circuit's
arithmetic, only which values are public and how rows are laid out).

Prints a table; writes bench/results/gas.json. Packages use a local, insecure development SRS
(gas does not depend on the SRS). Numbers are figures, never asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # chain_support: anvil from node_modules
sys.path.insert(0, str(REPO / "tests" / "contracts"))  # world: test contracts and helpers

TARGETS = {"fulfillWithSignature": 80_000,
           "fulfillWithProof": {"iris_mlp": 700_000, "digits_cnn": 1_000_000},
           # issue 18: with the sound input check (the input instances public, compared with
           # the request's input), in the best of the measured variants
           "fulfillWithProof_best_variant": {"digits_cnn": 750_000}}


def _sample(name: str):
    from models import load_split

    _, x_test, _, _ = load_split(name)
    return x_test[0]


def variant_name(name: str, shape: str = "logits", inner_cols: str = "auto") -> str:
    """The name a variant's package is registered under in the bench's data dir."""
    cols, _, rc = inner_cols.partition("+")
    return name + ("" if shape == "logits" else f"-{shape}") + (
        "" if cols == "auto" else f"-cols{cols}") + ("-rc" if rc else "")


def _options(inner_cols: str):
    """``COLS[+rc]`` as CircuitOptions (None: the defaults); ``+rc``: max_ops range-checks."""
    from prover.backend import CircuitOptions

    cols, _, rc = inner_cols.partition("+")
    if cols == "auto" and not rc:
        return None
    return CircuitOptions(inner_cols=None if cols == "auto" else int(cols),
                          max_ops="range-checks" if rc else "ezkl")


def ensure_package(home: Path, name: str, shape: str = "logits",
                   inner_cols: str = "auto", eval_samples: int | None = None):
    """The data dir's circuit package for ``name`` in this shape (``[hashed-]logits|label``),
    built (``verinfer models add``) if absent."""
    from dataclasses import replace

    from prover.package import find_package, list_names
    from verifier.config import Settings

    settings = Settings(home=home)
    registered = variant_name(name, shape, inner_cols)
    if registered in list_names(settings):
        return find_package(settings, registered)
    from prover.build import build_package, reference_source

    print(f"building the {registered} circuit package in {home} ...", file=sys.stderr)
    options = _options(inner_cols)
    source = replace(reference_source(name), name=registered)
    if eval_samples is not None:
        source = replace(source, eval_inputs=source.eval_inputs[:eval_samples],
                         eval_labels=source.eval_labels[:eval_samples],
                         eval_set=f"first {eval_samples} of the held-out split")
    visibility = "hashed" if shape.startswith("hashed-") else "public"
    return build_package(settings, source, public_output=shape.removeprefix("hashed-"),
                         options=options, visibility=visibility)


def measure_model(name: str, chain, home: Path, work: Path, reusable: bool,
                  shape: str = "logits", inner_cols: str = "auto",
                  eval_samples: int | None = None) -> dict:
    from world import make_world

    from contracts import deploy
    from prover.proving import Prover
    from verifier.fixedpoint import felt_to_int
    from verifier.onchain import proof_parts

    pkg = ensure_package(home, name, shape, inner_cols, eval_samples)
    m = pkg.manifest
    settings = json.loads(pkg.path("settings.json").read_text())
    ra = settings["run_args"]
    x = _sample(name).reshape(m.input.shape).astype("float32")
    t0 = time.perf_counter()
    bundle = Prover(pkg).prove(x)
    prove_s = time.perf_counter() - t0
    proof, instances = proof_parts(bundle.proof)
    n = math.prod(m.input.shape)
    q = [felt_to_int(f) for f in instances[:n]]
    row: dict = {"model": name, "public_output": m.public_output,
                 "input_visibility": m.input_visibility,
                 "variant": variant_name(name, shape, inner_cols),
                 "package_id": pkg.id, "logrows": m.srs.logrows,
                 "input_length": n, "instances": len(instances), "proof_bytes": len(proof),
                 "circuit": {k: ra.get(k) for k in ("num_inner_cols", "decomp_base", "decomp_legs",
                                                     "lookup_range", "input_scale", "param_scale",
                                                     "disable_freivalds", "check_mode")},
                 "num_rows": settings.get("num_rows"), "prove_s": round(prove_s, 2)}

    w = make_world(chain)
    art = deploy.VerifierArtifact(**{k: json.loads(pkg.path("Verifier.json").read_text())[k]
                                     for k in ("abi", "bytecode", "deployed_bytecode")})
    address, vrec = chain.deploy(art.abi, art.bytecode)
    row["verifier_deploy_gas"] = vrec["gasUsed"]
    row["verifier_runtime_bytes"] = art.runtime_size
    v = chain.contract(address, art.abi)
    r = chain.transact(v.functions.verifyProof(proof, instances))
    row["verifyProof_gas"] = r["gasUsed"]
    row["proof_calldata_gas"] = _calldata_gas(v.functions.verifyProof(proof, instances))
    if m.input_visibility != "public":  # chain deploy refuses it: nothing binds the hash
        row["oracle"] = "not registrable: the oracle checks a public input"
        return row

    model_id = bytes.fromhex(m.model_sha256)
    deploy.register_model(chain, w.oracle, model_id=model_id, verifier=address,
                          input_length=n, input_scale=m.input.scale,
                          policy="either", signer=w.signer.address,
                          num_instances=len(instances))
    fee = 10**15
    rid, rrec = w.request(q=q, model_id=model_id, fee=fee)
    row["requestClassification_gas"] = rrec["gasUsed"]
    r = chain.transact(w.oracle.functions.fulfillWithProof(rid, proof, instances),
                       sender=w.relayer)
    assert not w.events(r, "CallbackFailed")
    row["fulfillWithProof_gas"] = r["gasUsed"]
    row["fulfillWithProof_overhead_gas"] = r["gasUsed"] - row["verifyProof_gas"]
    row.update(signature_gas(w, model_id, q, instances[-1]))

    if reusable:
        row["reusable"] = measure_reusable(pkg, chain, work / f"{name}-reusable", proof,
                                           instances)
    return row


def signature_gas(w, model_id: bytes, q: list[int], label: int, fee: int = 10**15) -> dict:
    """fulfillWithSignature of a request with ``fee`` (accrued to the payee) and of one
    without, by the world's relayer account, ExampleConsumer as the requester."""
    row = {}
    for key, f in (("fulfillWithSignature_gas", fee), ("fulfillWithSignature_nofee_gas", 0)):
        rid, _ = w.request(q=q, model_id=model_id, fee=f)
        deadline, sig = w.sign(rid, label, q=q, model_id=model_id)
        r = w.fulfil_sig(rid, label, deadline, sig)
        assert not w.events(r, "CallbackFailed")
        row[key] = r["gasUsed"]
    return row


def measure_signature_path(chain, row: dict) -> dict:
    """The signature path alone for a model shaped like ``row`` (its input length and
    instance count), registered with the test world's stand-in verifier: fulfillWithSignature
    never calls the verifier, so no circuit or proof is needed (seconds, not an EZKL build)."""
    from world import make_world

    from contracts import deploy

    w = make_world(chain)
    n = row["input_length"]
    model_id = hashlib.sha256(row["variant"].encode()).digest()
    deploy.register_model(chain, w.oracle, model_id=model_id, verifier=w.mock.address,
                          input_length=n, input_scale=13, policy="either",
                          signer=w.signer.address, num_instances=row["instances"])
    return signature_gas(w, model_id, [1] * n, 1)


def _calldata_gas(fn) -> int:
    data = bytes.fromhex(fn._encode_transaction_data()[2:])
    return sum(16 if b else 4 for b in data)


def _ezkl(fn, *args):
    import asyncio
    import inspect

    async def go():
        r = fn(*args)
        return await r if inspect.isawaitable(r) else r

    return asyncio.run(go())


def read_vka(path: Path) -> list[bytes]:
    """EZKL's VK artifact file: a little-endian u64 word count, then the bytes32 words."""
    raw = path.read_bytes()
    count = int.from_bytes(raw[:8], "little")
    words = [raw[8 + 32 * i: 8 + 32 * (i + 1)] for i in range(count)]
    if len(raw) != 8 + 32 * count:
        raise ValueError(f"{path}: {len(raw)} bytes, expected 8 + 32 x {count}")
    return words


def measure_reusable(pkg, chain, work: Path, proof: bytes, instances: list[int]) -> dict:
    """EZKL's reusable verifier (one contract for every circuit) + this model's VK artifact
    (registered once with registerVka, sent with every verifyProof)."""
    import ezkl

    from contracts.deploy import VerifierArtifact
    from contracts.solc import compile_sources

    work.mkdir(parents=True, exist_ok=True)
    sol, abi, vka = work / "Reusable.sol", work / "Reusable.abi", work / "vka.bytes"
    args = (str(pkg.path("vk.key")), str(pkg.path("settings.json")))
    try:  # writes the .sol, then fails downloading solc offline: expected
        _ezkl(ezkl.create_evm_verifier, *args, str(sol), str(abi), str(pkg.path("kzg.srs")), True)
    except Exception:  # noqa: BLE001, S110
        pass
    try:
        _ezkl(ezkl.create_evm_vka, *args, str(vka), str(pkg.path("kzg.srs")))
    except Exception:  # noqa: BLE001, S110
        pass
    if not sol.exists() or not vka.exists():
        return {"error": "ezkl wrote no reusable verifier or VK artifact"}
    c = compile_sources({"Reusable.sol": sol.read_text()})["Halo2VerifierReusable"]
    art = VerifierArtifact.from_compiled(c)
    words = read_vka(vka)
    out: dict = {"runtime_bytes": art.runtime_size, "vka_words": len(words),
                 "vka_bytes": 32 * len(words)}
    address, rec = chain.deploy(art.abi, art.bytecode)
    out["deploy_gas"] = rec["gasUsed"]
    v = chain.contract(address, art.abi)
    r = chain.transact(v.functions.registerVka(words))
    out["registerVka_gas"] = r["gasUsed"]
    fn = v.functions.verifyProof(proof, instances, words)
    # its return data (the rescaled instances) does not decode as declared: read word 0
    raw = chain.w3.eth.call({"from": chain.sender, "to": address,
                             "data": fn._encode_transaction_data()})
    out["accepts_proof"] = int.from_bytes(bytes(raw[:32]), "big") == 1
    r = chain.transact(fn)
    out["verifyProof_gas"] = r["gasUsed"]
    out["verifyProof_calldata_gas"] = _calldata_gas(fn)
    return out


def _variant(text: str) -> tuple[str, str]:
    body, plus, rc = text.partition("+")
    shape, _, cols = body.partition(":")
    if (shape.removeprefix("hashed-") not in ("logits", "label") or cols not in ("", "1", "2", "3")
            or (plus and rc != "rc")):
        raise argparse.ArgumentTypeError(f"{text!r}: SHAPE[:COLS][+rc], SHAPE "
                                         f"[hashed-]logits|label, COLS 1|2|3")
    return shape, (cols or "auto") + ("+rc" if plus else "")


def _default_cols(home: Path, name: str, shape: str) -> int | None:
    """Inner columns of the default-layout package of this shape, when it is built."""
    from prover.package import find_package, list_names
    from verifier.config import Settings

    settings = Settings(home=home)
    if variant_name(name, shape) not in list_names(settings):
        return None
    pkg = find_package(settings, variant_name(name, shape))
    return json.loads(pkg.path("settings.json").read_text())["run_args"]["num_inner_cols"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["iris_mlp", "digits_cnn"])
    parser.add_argument("--variants", nargs="+", type=_variant, default=[("logits", "auto"),
                        ("label", "auto")], metavar="SHAPE[:COLS]",
                        help="public output (logits|label), optionally :inner columns (1|2)")
    parser.add_argument("--eval-samples", type=int, metavar="N",
                        help="agreement on the first N held-out samples (quicker builds)")
    parser.add_argument("--reusable", action="store_true",
                        help="also build EZKL's reusable verifier and report its size/gas")
    parser.add_argument("--home", type=Path,
                        help="data dir whose circuit packages to measure (built there with "
                        "'verinfer models add' when missing; default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gas.json")
    parser.add_argument("--signature-only", action="store_true",
                        help="re-measure only fulfillWithSignature (fee / no fee) for each model "
                        "row already in --out, with a stand-in verifier, and the oracle's deploy "
                        "gas and size; update those fields")
    args = parser.parse_args(argv)
    if args.signature_only:
        return signature_only(args.out)

    from chain_support import run_anvil

    from contracts.chain import connect
    from contracts.deploy import compiled, deploy_oracle
    from contracts.solc import EVM_VERSION, OPTIMIZER_RUNS, solc_version

    rows = []
    with run_anvil() as url, tempfile.TemporaryDirectory() as tmp:
        home = args.home or Path(tmp) / "home"
        chain = connect(url)
        _, orec = deploy_oracle(chain)
        oracle = {"deploy_gas": orec["gasUsed"],
                  "runtime_bytes": compiled()["VerinferOracle"].runtime_size,
                  "example_consumer_runtime_bytes": compiled()["ExampleConsumer"].runtime_size}
        for name in args.models:
            for shape, cols in args.variants:
                if "+" not in cols and cols != "auto" and _default_cols(home, name, shape) == int(cols):
                    print(f"{variant_name(name, shape, cols)}: the default layout already",
                          file=sys.stderr)
                    continue
                print(f"measuring {variant_name(name, shape, cols)} ...", file=sys.stderr)
                rows.append(measure_model(name, chain, home, Path(tmp), args.reusable,
                                          shape, cols, args.eval_samples))

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
    print(f"{'':32}" + "".join(f"{r['variant']:>20}" for r in rows))
    for c in ["logrows", "input_length", "instances", "proof_bytes", *cols]:
        print(f"{c:32}" + "".join(f"{r[c]:>20,}" if c in r else f"{'-':>20}" for r in rows))
    reus = [r.get("reusable") or {} for r in rows]
    if any(reus):
        print("EZKL reusable verifier + VK artifact:")
        for c in ["runtime_bytes", "deploy_gas", "vka_bytes", "registerVka_gas",
                  "verifyProof_gas", "verifyProof_calldata_gas"]:
            print(f"{'  ' + c:32}" + "".join(f"{u.get(c, '-'):>20,}" if isinstance(
                u.get(c), int) else f"{'-':>20}" for u in reus))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def signature_only(out: Path) -> int:
    """Update the fulfillWithSignature fields of ``out``'s rows and the oracle's deploy gas
    and size in place (seconds: no circuit)."""
    from chain_support import run_anvil

    from contracts.chain import connect
    from contracts.deploy import compiled, deploy_oracle

    result = json.loads(out.read_text())
    with run_anvil() as url:
        chain = connect(url)
        _, orec = deploy_oracle(chain)
        result["oracle"].update(deploy_gas=orec["gasUsed"],
                                runtime_bytes=compiled()["VerinferOracle"].runtime_size)
        for row in result["models"]:
            if "fulfillWithSignature_gas" in row:
                row.update(measure_signature_path(chain, row))
                print(f"{row['variant']:32}{row['fulfillWithSignature_gas']:>10,} / "
                      f"{row['fulfillWithSignature_nofee_gas']:,} (fee / no fee)")
    result["fulfillWithSignature_measured_by"] = (
        "python -m bench.gas --signature-only (stand-in verifier, the model's input length and "
        "instance count; the other fields are from the full run)")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
