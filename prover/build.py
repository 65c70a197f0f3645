"""``verinfer models add``: ONNX in, a complete, content-addressed circuit package out.

Everything is made in a temporary folder under ``packages/`` and renamed into
place only when the package is whole, so a failure at any step leaves nothing
half-written behind (and the folder of a build killed outright, which cleaned up
nothing, is removed by the next one).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contracts.solc import EIP170_LIMIT
from prover import backend as files
from prover import onnx_model, srs
from prover.backend import CircuitOptions, ProofSystem, Visibility
from prover.costs import circuit_costs, describe
from prover.package import CircuitPackage
from prover.progress import SILENT, Progress, captured_output
from prover.workdirs import held_dir, release, remove_dead
from verifier.config import Settings
from verifier.digests import canonical_json, sha256_bytes, sha256_file
from verifier.errors import InputError, UnsupportedModel, VerinferError
from verifier.manifest import MANIFEST_FILE, Artifact, Manifest, PublicOutput, SRSInfo, TensorSpec
from verifier.packages import check_name, package_dir, point_name
from verifier.proofs import ezkl_verify

CALIBRATION_SAMPLES = 40
# The EVM verifier's gas follows the circuit's columns, not its rows: one inner
# column instead of EZKL's two doubles the rows (one more logrows) but cuts
# verifyProof gas by a quarter (iris_mlp: 779k -> 576k gas, docs/contracts.md).
# Small circuits take the trade; past this many logrows proving time wins.
SINGLE_COLUMN_MAX_LOGROWS = 12
# The largest circuit a package is built for: 2^24 rows. Past it a development SRS alone is
# hours of work and gigabytes, and the keys and each proof need more memory than a server has;
# a tiny model can land there by one op (a Cast to INT64 asks for a 2^26-row range check).
MAX_LOGROWS = 24
# What a package was built from (build_key), beside its manifest; not hashed into the id
BUILD_KEY_FILE = "build.json"
BUILD_KEY_FORMAT = "verinfer.build-key/v1"  # a new one when the build's defaults change


@dataclass(frozen=True)
class ModelSource:
    """Where a model and its data come from."""

    name: str
    onnx_path: Path
    calibration: np.ndarray  # samples, shaped (n, *input_shape_without_batch)
    eval_inputs: np.ndarray  # samples to measure float-vs-circuit agreement on
    eval_labels: np.ndarray | None  # true labels of eval_inputs, when known
    eval_set: str  # what eval_inputs are, for the report


def reference_source(name: str) -> ModelSource:
    from models import get_reference_model, load_split

    try:
        ref = get_reference_model(name)
    except KeyError as exc:
        raise InputError(str(exc.args[0])) from None
    x_train, x_test, _, y_test = load_split(name)
    return ModelSource(name, ref.onnx_path, x_train[:CALIBRATION_SAMPLES], x_test, y_test,
                       "held-out split")


def load_samples(path: Path) -> np.ndarray:
    """Calibration samples, shaped (samples, ...), from ``.npy`` or JSON: an OIP v2 request
    body (one input tensor; its first axis counts the samples, as every other command takes
    inputs), EZKL's ``{"input_data": [[flat values]]}``, or a list of samples."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            raw = np.load(path, allow_pickle=False)
        else:
            raw = _json_samples(json.loads(path.read_text()), path)
        arr = np.asarray(raw, dtype=np.float32)
    except FileNotFoundError:
        raise InputError(f"{path}: no such calibration file") from None
    except (ValueError, TypeError, OSError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot read calibration data: {why}") from None
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: calibration data is empty or has NaN/infinity")
    return arr


def samples_for(calibration, input_shape) -> np.ndarray:
    """Calibration samples as rows of the model's input, ``(samples, inputs)``. A flat array
    (EZKL's ``input_data``) is cut into samples; else the first axis counts the samples and
    each must hold the model's input (``[40, 3]`` for an input of 4 was cut into 30 samples
    that each mixed features of two, and built). :class:`InputError` otherwise."""
    arr = np.asarray(calibration, dtype=np.float32)
    n_in = int(np.prod(input_shape))
    fits = arr.size % n_in == 0 if arr.ndim <= 1 else int(np.prod(arr.shape[1:])) == n_in
    if not fits:
        raise InputError(f"calibration samples of shape {list(arr.shape[1:])} (after the first "
                         f"axis, which counts the samples) do not fit the model's input shape "
                         f"{list(input_shape)}")
    return arr.reshape(-1, n_in)


def _json_samples(raw, path: Path):
    if isinstance(raw, dict) and "inputs" in raw:  # an OIP v2 request body
        from verifier.oip import parse_request

        req = parse_request(raw, str(path))
        if len(req.inputs) != 1:
            raise InputError(f"{path}: calibration data must be one input tensor, not "
                             f"{len(req.inputs)}")
        t = req.inputs[0]
        arr = np.asarray(t.data, dtype=np.float64)
        if arr.size != int(np.prod(t.shape)):
            raise InputError(f"{path}: input {t.name!r}: {arr.size} values for shape {t.shape}")
        return arr.reshape(t.shape)
    if isinstance(raw, dict) and "input_data" in raw:  # EZKL's input file
        data = raw["input_data"]
        if not isinstance(data, list) or len(data) != 1:
            raise InputError(f"{path}: input_data must hold one input (a list of values)")
        return data[0]
    if isinstance(raw, dict):
        raise InputError(f"{path}: a JSON object that is neither an OIP v2 request body "
                         f"(\"inputs\") nor EZKL's input (\"input_data\")")
    return raw


def file_source(name: str, onnx_path: Path, calibration_file: Path | None) -> ModelSource:
    if calibration_file is None:
        raise InputError("--calibration-data FILE is needed for a model that is not a "
                         "reference model (real samples of its input)")
    samples = load_samples(calibration_file)
    return ModelSource(name, onnx_path, samples, samples, None, "calibration samples")


def float_labels(onnx_bytes: bytes, info: onnx_model.ModelInfo, x: np.ndarray) -> np.ndarray:
    """The float model's labels, one sample at a time (as the circuit sees them)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    out_name = info.outputs[info.label_output].name
    dtype = np.float32 if info.input.datatype == "FP32" else np.float64
    return np.array([int(np.ravel(sess.run([out_name], {info.input.name:
                     s.reshape(info.input.shape).astype(dtype)})[0])[0]) for s in x])


def build_package(
    settings: Settings,
    source: ModelSource,
    *,
    visibility: Visibility = "public",
    srs_file: Path | None = None,
    srs_sha256: str | None = None,
    backend: ProofSystem | None = None,
    progress: Progress = SILENT,
    options: CircuitOptions | None = None,
    tuning: dict | None = None,
    public_output: PublicOutput = "logits",
) -> CircuitPackage:
    """``options``: circuit settings instead of the defaults (``verinfer models tune``);
    ``tuning``: the search that chose them, recorded in the manifest; ``public_output``:
    "logits" (every output public) or "label" (the label alone: the graph's other outputs are
    dropped, so ``model.onnx`` and its sha256 differ from the user's file)."""
    from contracts.solc import compile_sources, solc_version
    from prover.ezkl_backend import EZKLBackend, use_ezkl_dir

    check_name(source.name)
    use_ezkl_dir(settings)
    backend = backend or EZKLBackend()
    info, label_added, onnx_bytes, reference = package_model(
        source, public_output, (options or CircuitOptions()).max_ops)
    if reference is not onnx_bytes and served_from_reference_file(source.name):
        raise InputError(f"{source.name} is a reference model, which the server serves from its "
                         f"own file: a package of its rewritten graph (--max-ops range-checks) "
                         f"could not prove what the server answers; register it under "
                         f"another --name")
    key = None if tuning is not None else build_key(
        source, onnx_bytes, visibility=visibility, public_output=public_output, options=options,
        srs_file=srs_file, ezkl_version=backend.version, solc=solc_version())
    progress.note(f"Registering {source.name} from {source.onnx_path}")
    n_in = int(np.prod(info.input.shape))
    calibration = samples_for(source.calibration, info.input.shape)
    settings.packages_dir.mkdir(parents=True, exist_ok=True)
    remove_dead(settings.packages_dir, ".tmp-")  # builds killed outright (SIGKILL, OOM)
    work, held = held_dir(".tmp-", settings.packages_dir)  # renamed into place when whole
    log = work / "ezkl.log"
    try:
        (work / files.MODEL).write_bytes(onnx_bytes)
        with progress.step("Calibrating the circuit on real samples"), captured_output(log):
            samples = calibration.reshape(-1, n_in)
            shape = calibrate(backend, work, samples, visibility, info.batch_symbols, options)
        if shape.logrows > MAX_LOGROWS:  # before hours of SRS and keys, say why in one line
            costs = describe(circuit_costs(json.loads((work / files.SETTINGS).read_text())))
            raise UnsupportedModel(f"the circuit needs 2^{shape.logrows} rows, more than the 2^"
                                   f"{MAX_LOGROWS} verinfer builds: {costs}")
        if srs_file is not None:
            srs_info = srs.ceremony_srs(Path(srs_file), shape.logrows, srs_sha256)
        else:
            how = "cached" if srs.has_dev_srs(settings.srs_dir, shape.logrows) else "generating, insecure"
            with progress.step(f"Development SRS for logrows={shape.logrows} ({how})"), \
                    captured_output(log):
                srs_info = srs.dev_srs(settings.srs_dir, shape.logrows, backend)
        srs.place(srs_info, work / files.SRS)
        with progress.step("Key setup (vk, pk)"), captured_output(log):
            t0 = time.perf_counter()
            backend.setup(work)
            setup_s = time.perf_counter() - t0
        with progress.step("Solidity verifier (pinned solcjs)"), captured_output(log):
            sol = backend.solidity_verifier(work)
            compiled = compile_sources({files.SOLIDITY: sol})["Halo2Verifier"]
            (work / "Verifier.json").write_text(json.dumps(
                {"contract": compiled.name, "abi": compiled.abi, "bytecode": compiled.bytecode,
                 "deployed_bytecode": compiled.deployed_bytecode}))
        eval_x = np.asarray(source.eval_inputs, dtype=np.float32).reshape(-1, n_in)
        with progress.step(f"Float vs circuit labels on {len(eval_x)} samples "
                           f"({source.eval_set})"), captured_output(log):
            agreement = _agreement(backend, work, info, reference, eval_x, source.eval_labels)
        with progress.step("Timing one proof"), captured_output(log):
            sample = eval_x[0]
            wit = backend.witness(work, sample, work / "witness.json")
            rss_before = _rss_bytes()
            t0 = time.perf_counter()
            proof = backend.prove(work, wit.path, work / "proof.json")
            prove_s = time.perf_counter() - t0
            rss_growth = max(0, _peak_rss_bytes() - rss_before) if rss_before else None
            t0 = time.perf_counter()
            ezkl_verify(proof, work / files.SETTINGS, work / files.VK, work / files.SRS)
            verify_s = time.perf_counter() - t0
        for tmp in ("witness.json", "proof.json", "calibration.json"):
            (work / tmp).unlink(missing_ok=True)

        preflight = {
            "ops": list(info.ops),
            "label_output_added": label_added,
            # the graph's maxima were rewritten (prover/rewrite.py): model_sha256 is the
            # rewritten graph's, this the model's it was rewritten from
            **({"rewritten_from_sha256": sha256_bytes(reference)}
               if reference is not onnx_bytes else {}),
            "logrows": shape.logrows,
            "num_rows": shape.num_rows,
            "pk_bytes": (work / files.PK).stat().st_size,
            "vk_bytes": (work / files.VK).stat().st_size,
            "setup_seconds": round(setup_s, 3),
            "prove_seconds": round(prove_s, 3),
            "verify_seconds": round(verify_s, 4),
            "prove_rss_growth_bytes": rss_growth,
            "verifier_runtime_bytes": compiled.runtime_size,
            "verifier_size_limit": EIP170_LIMIT,
            "verifier_fits": compiled.runtime_size <= EIP170_LIMIT,
            "agreement": agreement,
            "machine": {"cpus": os.cpu_count()},
            "costs": circuit_costs(json.loads((work / files.SETTINGS).read_text())),
        }
        artifact_names = [files.MODEL, files.SETTINGS, files.COMPILED, files.VK, files.PK,
                          files.SRS, files.SOLIDITY, "Verifier.json"]
        manifest = Manifest(
            name=source.name,
            model_sha256=sha256_file(work / files.MODEL),
            ezkl_version=backend.version,
            solc_version=solc_version(),
            input_visibility=visibility,
            input=TensorSpec(name=info.input.name, datatype=info.input.datatype,
                             shape=info.input.shape, scale=shape.input_scale),
            outputs=tuple(TensorSpec(name=o.name, datatype=o.datatype, shape=o.shape, scale=s)
                          for o, s in zip(info.outputs, shape.output_scales)),
            label_output=info.label_output,
            public_output=public_output,
            srs=SRSInfo(logrows=srs_info.logrows, sha256=srs_info.sha256,
                        source=srs_info.source, insecure=srs_info.insecure),
            artifacts={n: Artifact(sha256=sha256_file(work / n), bytes=(work / n).stat().st_size)
                       for n in artifact_names},
            calibration={"target": "accuracy", "samples": len(calibration.reshape(-1, n_in)),
                         **shape.report},
            preflight=preflight,
            tuning=tuning,
        )
        (work / MANIFEST_FILE).write_bytes(manifest.canonical_bytes())
        if key is not None:  # what it was built from, for 'models add' of the same again
            (work / BUILD_KEY_FILE).write_bytes(canonical_json(key))
        final = package_dir(settings, manifest.package_id)
        if final.exists():
            shutil.rmtree(work)
        else:
            os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        release(work, held)
    point_name(settings, source.name, manifest.package_id)
    return CircuitPackage.open(final, check=[])


def remove_package(settings: Settings, package_id: str) -> bool:
    """Remove a package folder from the data dir; False when there is none. It leaves
    ``packages/`` at once, by a rename into a held working folder (as a build's), so no reader
    finds half a package under its id, and a removal killed midway is finished by the next
    build's :func:`remove_dead`."""
    folder = package_dir(settings, package_id)
    if not folder.is_dir():
        return False
    remove_dead(settings.packages_dir, ".tmp-")
    work, held = held_dir(".tmp-", settings.packages_dir)
    try:
        os.rename(folder, work)  # over the new, empty folder
    finally:
        shutil.rmtree(work, ignore_errors=True)
        release(work, held)
    return True


def served_from_reference_file(name: str) -> bool:
    """Whether ``verinfer serve`` runs the model of this name from the reference model's own
    file (server/inference/registry.py), whatever package is registered under the name."""
    from models import REFERENCE_MODELS

    return name in REFERENCE_MODELS


def package_model(source: ModelSource, public_output: PublicOutput, max_ops: str = "ezkl"):
    """The model as the package holds it: (its description, whether a label output was added,
    the bytes of ``model.onnx``, the bytes whose float labels the circuit's must equal: the
    model before any rewrite of ``max_ops``)."""
    from prover.rewrite import COVERED, MAX_OPS, rewrite_max_ops

    if max_ops not in MAX_OPS:
        raise InputError(f"max_ops {max_ops!r}: one of {', '.join(MAX_OPS)}")
    model = onnx_model.load(source.onnx_path)
    label_added = onnx_model.ensure_label_output(model)
    changed = onnx_model.apply_public_output(model, public_output) or label_added
    # Keep the user's bytes when nothing was added: the model's sha256 is its
    # identity in receipts, and it must be the file the server runs.
    onnx_bytes = model.SerializeToString() if changed else source.onnx_path.read_bytes()
    reference = onnx_bytes
    if max_ops == "range-checks":
        if not rewrite_max_ops(model):  # else: the model as given, under another circuit
            raise InputError(f"--max-ops range-checks: nothing in the model to rewrite ("
                             f"{COVERED}); build it without --max-ops")
        onnx_bytes = model.SerializeToString()
    return onnx_model.describe(model, label_added), label_added, onnx_bytes, reference


def _array_sha256(x) -> str | None:
    """SHA-256 of an array's shape and values (as float32 or int64: what the build uses)."""
    if x is None:
        return None
    a = np.ascontiguousarray(x, dtype=np.float32 if np.asarray(x).dtype.kind == "f" else np.int64)
    return sha256_bytes(canonical_json(list(a.shape)) + a.tobytes())


def build_key(source: ModelSource, onnx_bytes: bytes, *, visibility: Visibility,
              public_output: PublicOutput, options: CircuitOptions | None,
              srs_file: Path | None, ezkl_version: str, solc: str) -> dict:
    """Everything a package built without a search (``models add``) is made from: the same key
    builds the same circuit, keys and verifier (up to the timings the manifest records, which
    is why the package id cannot be this identity). Written beside the manifest as
    ``build.json``; docs/formats.md says why each field is in it."""
    return {
        "format": BUILD_KEY_FORMAT,
        "name": source.name,
        "model_sha256": sha256_bytes(onnx_bytes),
        "calibration_sha256": _array_sha256(source.calibration),
        "eval_sha256": _array_sha256(source.eval_inputs),
        "eval_labels_sha256": _array_sha256(source.eval_labels),
        "input_visibility": visibility,
        "public_output": public_output,
        "options": (options or CircuitOptions()).as_dict(),
        "single_column_max_logrows": SINGLE_COLUMN_MAX_LOGROWS,
        "srs": {"source": "development"} if srs_file is None else
               {"source": "ceremony", "sha256": sha256_file(Path(srs_file))},
        "ezkl_version": ezkl_version,
        "solc_version": solc,
    }


def find_build(settings: Settings, source: ModelSource, *, visibility: Visibility = "public",
               public_output: PublicOutput = "logits", options: CircuitOptions | None = None,
               srs_file: Path | None = None, srs_sha256: str | None = None
               ) -> CircuitPackage | None:
    """The package in the data dir already built from exactly what ``build_package`` would
    build now (same :func:`build_key`), its manifest agreeing and every artifact hashing as
    recorded; None when there is none (or its package is altered: then it is built anew).
    A ceremony ``srs_file`` is checked as a build checks it (:func:`srs.ceremony_srs`, with
    ``srs_sha256``): refused (``InputError``) where a build would refuse it."""
    from contracts.solc import solc_version
    from prover.package import installed_ezkl_version

    if not settings.packages_dir.is_dir():
        return None
    _, _, onnx_bytes, _ = package_model(source, public_output, (options or CircuitOptions()).max_ops)
    key = build_key(source, onnx_bytes, visibility=visibility, public_output=public_output,
                    options=options, srs_file=srs_file, ezkl_version=installed_ezkl_version(),
                    solc=solc_version())
    want = canonical_json(key)
    for folder in sorted(settings.packages_dir.iterdir()):
        try:
            if (folder / BUILD_KEY_FILE).read_bytes() != want:
                continue
            pkg = CircuitPackage.open(folder)  # the manifest's hash, EZKL, every artifact
        except (OSError, VerinferError):
            continue
        m = pkg.manifest
        # build.json is not hashed: what the manifest records must agree with it
        srs_ok = m.srs.source == key["srs"]["source"] and (
            srs_file is None or m.srs.sha256 == key["srs"]["sha256"])
        cols = options.inner_cols if options is not None else None
        cols_ok = cols is None or m.calibration.get("num_inner_cols") == cols
        if (m.name, m.model_sha256, m.input_visibility, m.public_output, m.ezkl_version,
                m.solc_version, m.tuning, srs_ok, cols_ok) == (
                source.name, key["model_sha256"], visibility, public_output,
                key["ezkl_version"], key["solc_version"], None, True, True):
            if srs_file is not None:  # the hashes given now, as a build would check them
                srs.ceremony_srs(Path(srs_file), m.srs.logrows, srs_sha256)
            return pkg
    return None


def _rss_bytes() -> int:
    """This process's resident memory now (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _peak_rss_bytes() -> int:
    """This process's peak resident memory so far. Its excess over the RSS before a proof
    bounds from above what proving added (exact when the proof set the peak): what a
    prover node must hold beyond a warm process (server/proofs/ray_node.py)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def calibrate(backend: ProofSystem, work: Path, samples: np.ndarray, visibility: Visibility,
              batch_symbols: tuple[str, ...], options: CircuitOptions | None = None):
    """Settings and compiled circuit in ``work``; the default column rule unless
    ``options.inner_cols`` is set."""
    if options is not None and options.inner_cols is not None:
        return backend.calibrate(work, samples, visibility, batch_symbols, options.inner_cols,
                                 options)
    shape = backend.calibrate(work, samples, visibility, batch_symbols, 2, options)
    if shape.logrows < SINGLE_COLUMN_MAX_LOGROWS:  # one column: ~2x rows, fits
        shape = backend.calibrate(work, samples, visibility, batch_symbols, 1, options)
    return shape


def _agreement(backend, folder, info, onnx_bytes, x, truth) -> dict:
    floats = float_labels(onnx_bytes, info, x)
    circuit = np.array([int(round(backend.witness(folder, s, folder / "witness.json")
                                  .outputs[info.label_output][0])) for s in x])
    agree = int((floats == circuit).sum())
    report = {"samples": len(x), "agree": agree,
              "percent": round(100.0 * agree / len(x), 3),
              "disagreeing_indices": [int(i) for i in np.flatnonzero(floats != circuit)][:20]}
    if truth is not None:
        report["float_accuracy"] = round(float((floats == truth).mean()), 4)
        report["circuit_accuracy"] = round(float((circuit == truth).mean()), 4)
    return report
