"""``verinfer models tune``: real EZKL, real solc, real anvil; a tiny budget.

The search registers a package whose proofs verify offline and on chain with every
held-out label kept; a setting known to change a label (iris_mlp at input scale 2^0,
whose circuit is also the smallest) is measured, rejected and never chosen.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from chain_support import run_anvil
from prover_support import dead_and_running, oip_request, run_cli

from models import load_split
from prover.backend import CircuitOptions
from prover.costs import circuit_costs
from prover.progress import SILENT
from prover.tune import Measurement, SearchFailed, choose, pareto_front, table
from verifier.errors import ProofInvalid
from verifier.manifest import Manifest
from verifier.onchain import proof_parts, verify_onchain

pytestmark = pytest.mark.ezkl


@pytest.fixture(scope="module")
def tuned(prover_home):
    """``verinfer models tune iris_mlp`` with a 1-minute budget (the defaults are always
    measured; whatever else fits is too)."""
    proc = run_cli("models", "tune", "iris_mlp", "--name", "iris_tuned", "--budget", "1",
                   "--json", home=prover_home, check=True)
    return json.loads(proc.stdout), proc.stderr


def test_tune_registers_a_package_that_keeps_every_label(tuned, prover_home):
    out, stderr = tuned
    pkg = prover_home / "packages" / out["package_id"]
    manifest = Manifest.load(pkg / "manifest.json")
    assert manifest.package_id == out["package_id"]
    manifest.check_artifacts(pkg)
    assert (prover_home / "names" / "iris_tuned").read_text().strip() == out["package_id"]
    # every held-out label as the float model's, in the package's own preflight
    agreement = manifest.preflight["agreement"]
    assert agreement["samples"] == 45 and agreement["percent"] == 100.0
    t = manifest.tuning
    assert t == out["tuning"] and t["objective"] == "prove"
    assert t["eval_set"] == "held-out split"
    assert t["baseline"]["baseline"] and t["baseline"]["status"] == "ok"
    assert t["chosen"]["agreement"]["percent"] == 100.0
    assert t["chosen"]["logrows"] == manifest.preflight["logrows"]
    # the chosen candidate is the one with the least proving time among those measured
    ok = [c for c in t["candidates"] if c["status"] == "ok"]
    assert t["chosen"]["prove_s"] == min(c["prove_s"] for c in ok)
    assert all(c["agreement"]["percent"] == 100.0 for c in ok)
    assert all(c["verify_gas"] > 100_000 for c in ok)
    # the front was printed, with the defaults, and progress went to stderr
    assert "chosen for prove" in stderr and "defaults" in stderr
    assert "Tuning iris_tuned for prove" in stderr


def test_tuned_package_proves_and_verifies_offline_and_on_chain(tuned, prover_home, tmp_path):
    _, x_test, _, y_test = load_split("iris_mlp")
    bundles = []
    for i in (0, 7):
        req = tmp_path / f"req{i}.json"
        req.write_text(oip_request(x_test[i].reshape(1, 4)))
        run_cli("prove", "iris_tuned", "--input", req, "--out", tmp_path / f"b{i}",
                home=prover_home, check=True)
        proc = run_cli("verify", tmp_path / f"b{i}", "--allow-dev-srs", home=prover_home)
        assert proc.returncode == 0, proc.stderr
        bundle = json.loads((tmp_path / f"b{i}" / "bundle.json").read_text())
        assert bundle["outputs"]["label"] == y_test[i] and bundle["agreement"]["agree"]
        bundles.append(tmp_path / f"b{i}")
    with run_anvil() as url:
        record = tmp_path / "deployment.json"
        run_cli("chain", "deploy", "--rpc", url, "--package", "iris_tuned", "--out", record,
                home=prover_home, check=True)
        verifier = json.loads(record.read_text())["models"][0]["verifier"]
        for b in bundles:
            proc = run_cli("verify", b, "--allow-dev-srs", "--rpc", url, "--verifier", verifier, home=prover_home)
            assert proc.returncode == 0, proc.stderr
        # and the same deployed verifier refuses a bit-flipped proof and altered instances
        proof, instances = proof_parts(json.loads((bundles[0] / "bundle.json").read_text())
                                       ["proof"])
        verify_onchain(url, verifier, proof, instances)
        flipped = bytearray(proof)
        flipped[50] ^= 0x01
        with pytest.raises(ProofInvalid):
            verify_onchain(url, verifier, bytes(flipped), instances)
        with pytest.raises(ProofInvalid):
            verify_onchain(url, verifier, proof, [*instances[:-1], (instances[-1] + 1)])


def test_a_candidate_that_flips_a_label_is_never_chosen(prover_home):
    """Input scale 2^0 gives iris_mlp's smallest circuit (logrows 10 against 12) and changes
    a held-out label; scale 2^4 keeps them all. The search measures both (real EZKL)."""
    from prover.build import reference_source
    from prover.tune import search
    from verifier.config import Settings

    flip = CircuitOptions(scale=0, inner_cols=1)
    keep = CircuitOptions(scale=4, inner_cols=1)
    result = search(Settings(home=prover_home), reference_source("iris_mlp"),
                    objective="pk", budget_minutes=30, candidates=[flip, keep])
    by = {m.options: m for m in result.measurements}
    flipped, kept = by[flip], by[keep]
    assert flipped.status == "labels-changed"
    a = flipped.agreement
    assert a["percent"] < 100.0 and a["float_label"] != a["circuit_label"]
    assert "label differs" in flipped.reason
    assert flipped.logrows < kept.logrows  # it would have been the smallest circuit
    assert kept.status == "ok" and kept.agreement["percent"] == 100.0
    assert result.chosen is not flipped
    assert result.chosen.agreement["percent"] == 100.0
    assert flipped not in result.front
    record = result.record()
    assert {c["status"] for c in record["candidates"]} >= {"ok", "labels-changed"}


def _m(label: str, *, pct: float, prove: float, pk: int, gas: int) -> Measurement:
    m = Measurement(CircuitOptions(scale=len(label)), status="ok" if pct == 100 else
                    "labels-changed", logrows=10, num_rows=100, inner_cols=1)
    m.agreement = {"percent": pct, "samples": 10}
    m.prove_s, m.pk_bytes, m.verify_gas, m.verifier_runtime_bytes = prove, pk, gas, 1000
    m.verify_s = 0.01
    return m


def test_offline_choice_takes_circuits_whose_verifier_no_chain_would_deploy():
    """--verifier offline: a circuit with a verifier over EIP-170 (and so no gas figure) is
    eligible, and the front compares verification time instead of gas; on chain it is not."""
    from prover.tune import EIP170_LIMIT

    fits = _m("aa", pct=100.0, prove=2.0, pk=30, gas=600_000)
    wide = _m("bbb", pct=100.0, prove=1.0, pk=40, gas=0)
    wide.verify_gas, wide.verifier_runtime_bytes, wide.offline_only = None, EIP170_LIMIT + 1, True
    ms = [fits, wide]
    assert choose(ms, "prove") is fits  # the chain's choice (what 'models tune' did before)
    assert choose(ms, "prove", "offline") is wide and choose(ms, "pk", "offline") is fits
    assert pareto_front(ms) == [fits] and pareto_front(ms, "offline") == [wide, fits]
    flipped = _m("c", pct=90.0, prove=0.1, pk=1, gas=1)
    flipped.offline_only = True
    assert choose([*ms, flipped], "prove", "offline") is wide  # labels still decide first


def test_choose_skips_label_changes_even_when_they_are_best():
    flipped = _m("a", pct=90.0, prove=0.1, pk=1, gas=1)  # best on every figure
    fast = _m("bb", pct=100.0, prove=1.0, pk=30, gas=600_000)
    small = _m("ccc", pct=100.0, prove=2.0, pk=10, gas=500_000)
    ms = [flipped, fast, small]
    assert choose(ms, "prove") is fast
    assert choose(ms, "pk") is small and choose(ms, "gas") is small
    assert pareto_front(ms) == [fast, small]
    with pytest.raises(SearchFailed):
        choose([flipped], "prove")


def test_a_search_whose_verifiers_are_all_too_large_says_so():
    # every candidate kept its labels but no verifier fit EIP-170 (a big model, on chain):
    # the search said "no candidate kept every label (not even the defaults)"
    from prover.tune import EIP170_LIMIT

    wide = _m("aa", pct=100.0, prove=1.0, pk=30, gas=0)
    wide.status, wide.verify_gas, wide.verifier_runtime_bytes = (
        "verifier-too-large", None, EIP170_LIMIT + 1)
    with pytest.raises(SearchFailed, match="EIP-170.*--verifier offline"):
        choose([wide], "prove")


def test_costs_name_the_sigmoid_lookup_and_suggest_tune(tmp_path):
    """A 6->4 Linear+BatchNorm+Sigmoid model at EZKL's calibrated scale: the Sigmoid lookup
    table, not the layout, sets logrows; the report says so and suggests tune."""
    import torch

    from prover import onnx_model
    from prover.build import calibrate
    from prover.ezkl_backend import EZKLBackend

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4),
                              torch.nn.Sigmoid()).eval()
    torch.onnx.export(net, torch.randn(1, 6), tmp_path / "m.onnx", input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}},
                      dynamo=False)
    model = onnx_model.load(tmp_path / "m.onnx")
    onnx_model.ensure_label_output(model)
    info = onnx_model.describe(model, True)
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    samples = np.random.default_rng(0).standard_normal((20, 6)).astype(np.float32)
    calibrate(EZKLBackend(), tmp_path, samples, "public", info.batch_symbols)
    costs = circuit_costs(json.loads((tmp_path / "settings.json").read_text()))
    assert costs["biggest"]["what"] == "Sigmoid lookup table"
    assert costs["biggest"]["rows"] > 10 * costs["parts"][0]["rows"]
    assert costs["suggest_tune"] and "scale" in costs["suggest_tune"]
    # and at a low scale the table shrinks below the old logrows
    low = tmp_path / "low"
    low.mkdir()
    (low / "model.onnx").write_bytes(model.SerializeToString())
    shape = calibrate(EZKLBackend(), low, samples, "public", info.batch_symbols,
                      CircuitOptions(scale=6))
    assert shape.logrows <= costs["logrows"] - 2


def test_show_names_the_biggest_cost(prover_home, iris_package):
    text = run_cli("models", "show", "iris_mlp", home=prover_home, check=True).stdout
    line = next(ln for ln in text.splitlines() if ln.startswith("biggest"))
    assert "layout" in line and "rows" in line and "%" in line
    # its ArgMax is a sort in EZKL: the report says what that costs and what rewrites it
    line = next(ln for ln in text.splitlines() if ln.startswith("suggest"))
    assert "shuffles" in line and "--max-ops range-checks" in line


def test_manifest_without_tuning_keeps_its_id(iris_package):
    raw = json.loads((iris_package / "manifest.json").read_text())
    assert "tuning" not in raw  # made by 'models add': no search recorded
    m = Manifest.model_validate(raw)
    assert m.tuning is None and m.package_id == iris_package.name
    with_tuning = Manifest.model_validate(raw | {"tuning": {"objective": "prove"}})
    assert with_tuning.package_id != m.package_id


@pytest.mark.parametrize("args, message", [
    (["models", "add", "iris_mlp", "--budget", "3"], "go with --tune"),
    (["models", "tune", "iris_mlp", "--budget", "0"], "positive number of minutes"),
    (["models", "tune", "iris_mlp", "--verifier", "offline", "--objective", "gas"],
     "needs a verifier on chain"),
    (["models", "add", "iris_mlp", "--verifier", "offline"], "go with --tune"),
])
def test_bad_tune_flags_are_refused_in_one_line(home, args, message):
    proc = run_cli(*args, home=home)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert message in lines[-1] and "Traceback" not in proc.stderr
    assert not (home / "names").exists()


def _proves_and_verifies(name: str, sample: int, home, tmp_path) -> None:
    """``verinfer prove NAME`` on held-out iris sample ``sample``; ``verify`` accepts the bundle."""
    _, x_test, _, _ = load_split("iris_mlp")
    req = tmp_path / "req.json"
    req.write_text(oip_request(x_test[sample].reshape(1, 4)))
    run_cli("prove", name, "--input", req, "--out", tmp_path / "b", home=home, check=True)
    proc = run_cli("verify", tmp_path / "b", "--allow-dev-srs", home=home)
    assert proc.returncode == 0, proc.stderr


def test_separate_scales_are_recorded_and_used_by_the_package(prover_home, tmp_path):
    """Input scale 2^4 with parameters at 2^8 (EZKL's calibration takes one scale for both):
    the search measures the pair, and the package registered with it (as ``models tune``
    registers its choice) runs its circuit at that pair, records it, and its proofs verify."""
    from dataclasses import replace

    from prover.build import build_package, reference_source
    from prover.tune import search
    from verifier.config import Settings

    settings, source = Settings(home=prover_home), reference_source("iris_mlp")
    split = CircuitOptions(scale=4, param_scale=8, inner_cols=1)
    result = search(settings, source, objective="pk", budget_minutes=30, candidates=[split])
    m = next(m for m in result.measurements if m.options == split)
    assert m.status == "ok" and m.agreement["percent"] == 100.0
    assert m.label == "scale 4/params 8, decomp 512x4, cols 1"
    source = replace(source, name="iris_split")
    pkg = build_package(settings, source, options=split, tuning=result.record()
                        | {"chosen": m.as_dict()})
    folder = pkg.dir
    ra = json.loads((folder / "settings.json").read_text())["run_args"]
    assert (ra["input_scale"], ra["param_scale"]) == (4, 8)
    manifest = Manifest.load(folder / "manifest.json")
    assert manifest.input.scale == 4
    assert manifest.preflight["agreement"]["percent"] == 100.0
    assert manifest.tuning["chosen"]["options"] == split.as_dict()
    recorded = next(c for c in manifest.tuning["candidates"] if c["label"] == m.label)
    assert recorded["options"]["param_scale"] == 8
    _proves_and_verifies("iris_split", 3, prover_home, tmp_path)


def test_tune_searches_and_registers_a_label_only_package(prover_home, tmp_path):
    """``models tune --public-output label``: the candidates are the label-only circuit (one
    public output), the labels are still checked against the float model's, and the package
    registered is label-only and proves and verifies."""
    from dataclasses import replace

    from prover.build import reference_source
    from prover.tune import tune_and_register
    from verifier.config import Settings

    settings = Settings(home=prover_home)
    source = replace(reference_source("iris_mlp"), name="iris_label_tuned")
    one = CircuitOptions(inner_cols=1)
    result, pkg = tune_and_register(settings, source, objective="pk", budget_minutes=30,
                                    candidates=[one], public_output="label")
    assert all(m.agreement is None or m.agreement["percent"] == 100.0 for m in result.measurements)
    manifest = Manifest.load(pkg.dir / "manifest.json")
    assert manifest.public_output == "label" and [o.name for o in manifest.outputs] == ["label"]
    assert manifest.tuning["chosen"]["agreement"]["percent"] == 100.0
    assert manifest.tuning["public_output"] == "label"  # what the candidates were measured as
    _proves_and_verifies("iris_label_tuned", 5, prover_home, tmp_path)


def test_wider_layouts_wait_and_are_skipped_once_a_verifier_is_too_large(prover_home):
    """Candidates whose verifier likely fits EIP-170 are measured first; once a circuit N
    columns wide was over the limit, none as wide is keyed (no EZKL: the plan's own rules)."""
    from prover.build import reference_source
    from prover.tune import EIP170_LIMIT, _Search
    from verifier.config import Settings

    base = Measurement(CircuitOptions(), baseline=True, inner_cols=2, logrows=15,
                       num_rows=26_921)
    base.verifier_runtime_bytes = 19_610  # digits_cnn's defaults, measured
    assert Measurement(CircuitOptions(), inner_cols=2).verifier_guess(base) == 19_610
    assert Measurement(CircuitOptions(), inner_cols=3).verifier_guess(base) <= EIP170_LIMIT
    assert Measurement(CircuitOptions(), inner_cols=4).verifier_guess(base) > EIP170_LIMIT
    s = _Search(Settings(home=prover_home), reference_source("iris_mlp"), "prove", 60.0,
                SILENT, None, "public")
    try:
        wide = Measurement(CircuitOptions(inner_cols=4), inner_cols=4, logrows=14,
                           num_rows=11_871)
        assert s._worth(wide, base)
        s.too_wide["ezkl"] = 3  # a 3-column verifier was over the limit
        assert not s._worth(wide, base) and wide.status == "verifier-too-large"
        assert "circuit 3 wide" in wide.reason
        # the maxima rewritten make smaller verifiers: that one says nothing of theirs
        rc = Measurement(CircuitOptions(inner_cols=4, max_ops="range-checks"), inner_cols=4,
                         logrows=14, num_rows=11_871)
        assert s._worth(rc, base)
        # under a logrows cap EZKL lays 3 inner columns out in 2 blocks: 6 wide
        capped = Measurement(CircuitOptions(inner_cols=3, max_logrows=13), inner_cols=3,
                             logrows=13, num_rows=14_768)
        assert capped.width == 6 and capped.verifier_guess(base) > EIP170_LIMIT
        s.too_wide["ezkl"] = capped.width  # its verifier was over: 3 columns in one block still run
        three = Measurement(CircuitOptions(inner_cols=3), inner_cols=3, logrows=14,
                            num_rows=14_768)
        assert three.width == 3 and s._worth(three, base)
        narrow = Measurement(CircuitOptions(inner_cols=2), inner_cols=2, logrows=15,
                             num_rows=21_047)
        assert s._worth(narrow, base)
    finally:
        s.close()


def test_offline_tune_measures_and_registers_circuits_over_eip170(prover_home, tmp_path):
    """``models tune --verifier offline`` (real EZKL and solc): iris_mlp at 4 inner columns
    has a verifier no chain would deploy; the search measures it anyway (prove, pk, verify
    time; no gas) instead of leaving it out, the manifest records the mode, and the package
    registered proves and verifies offline. The same candidate on chain is out."""
    from dataclasses import replace

    from prover.build import reference_source
    from prover.tune import EIP170_LIMIT, search, tune_and_register
    from verifier.config import Settings

    settings = Settings(home=prover_home)
    source = replace(reference_source("iris_mlp"), name="iris_offline")
    wide = CircuitOptions(inner_cols=4)
    result, pkg = tune_and_register(settings, source, objective="prove", budget_minutes=30,
                                    candidates=[wide], verifier="offline")
    m = next(m for m in result.measurements if m.options == wide)
    assert m.verifier_runtime_bytes > EIP170_LIMIT, m.verifier_runtime_bytes
    assert m.status == "ok" and m.offline_only and m.measured and m.verify_gas is None
    assert m.prove_s > 0 and m.verify_s > 0 and m.agreement["percent"] == 100.0
    assert m in result.front
    manifest = Manifest.load(pkg.dir / "manifest.json")
    assert manifest.tuning["verifier"] == "offline"
    recorded = next(c for c in manifest.tuning["candidates"] if c["label"] == m.label)
    assert recorded["offline_only"] is True
    _proves_and_verifies("iris_offline", 7, prover_home, tmp_path)
    shown = run_cli("models", "show", "iris_offline", home=prover_home, check=True).stdout
    assert "TOO LARGE to deploy, proofs checked offline" in shown and "verified offline" in shown
    # no chain deploys its verifier: refused before anything is spent, in one line
    proc = run_cli("chain", "deploy", "--package", "iris_offline", home=prover_home)
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert proc.returncode == 2 and "over EIP-170" in last and "Traceback" not in proc.stderr, proc.stderr
    assert "deploying to" in proc.stderr and "OK: oracle" not in proc.stderr
    on_chain = search(settings, source, objective="prove", budget_minutes=30, candidates=[wide])
    assert next(x for x in on_chain.measurements if x.options == wide).status == "verifier-too-large"
    assert on_chain.chosen.baseline


def test_the_search_works_in_the_data_dir_and_removes_a_killed_ones_folder(home, tmp_path, monkeypatch):
    """The search's folder (candidates' proving keys, hundreds of MB) was a mkdtemp in /tmp,
    kept for good by a search killed outright; it is now a held folder under packages/, as a
    build's, and a dead one is removed by the next search (or build)."""
    import tempfile

    from prover.build import reference_source
    from prover.tune import search
    from verifier.config import Settings
    from verifier.errors import UnsupportedModel

    system_tmp = tmp_path / "tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    seen = []

    class Refuses:
        version = "test"

        def calibrate(self, folder, *a, **k):
            seen.append(folder)
            raise UnsupportedModel("not this one")

    packages = home / "packages"
    with dead_and_running(packages, ".tmp-tune-"):
        with pytest.raises(SearchFailed, match="not this one"):
            search(Settings(), reference_source("iris_mlp"), backend=Refuses())
        (folder,) = seen
        assert folder.parent.parent == packages and folder.parent.name.startswith(".tmp-tune-")
        assert sorted(p.name for p in packages.iterdir()) == [".tmp-tune-running",
                                                             ".tmp-tune-running.lock"]
    assert list(system_tmp.iterdir()) == []


def test_rewritten_maxima_are_searched_registered_and_verify_on_chain(prover_home, tmp_path):
    """``max_ops="range-checks"`` (real EZKL, solc and anvil): iris_mlp's ArgMax rebuilt from
    comparisons keeps every held-out label, drops EZKL's sort arguments (a smaller circuit
    than the same layout as given), and the package registered runs the rewritten graph,
    names the model it came from, and its proofs verify offline and on chain, where a proof
    with another label is refused."""
    import hashlib
    from dataclasses import replace

    import onnx

    from models import get_reference_model
    from prover.build import reference_source
    from prover.tune import tune_and_register
    from verifier.config import Settings

    settings = Settings(home=prover_home)
    source = replace(reference_source("iris_mlp"), name="iris_rc")
    rc = CircuitOptions(inner_cols=1, max_ops="range-checks")  # the defaults' layout (1 column)
    result, pkg = tune_and_register(settings, source, objective="pk", budget_minutes=30,
                                    candidates=[rc])
    by = {m.options: m for m in result.measurements}
    given = result.baseline
    assert given.inner_cols == 1 and given.logrows == by[rc].logrows
    assert by[rc].status == "ok" and by[rc].agreement["percent"] == 100.0
    assert by[rc].sort_args == 0 and given.sort_args > 0
    assert by[rc].pk_bytes < given.pk_bytes
    assert result.chosen is by[rc] and by[rc].label.endswith("max via range checks")
    manifest = Manifest.load(pkg.dir / "manifest.json")
    assert manifest.tuning["chosen"]["options"]["max_ops"] == "range-checks"
    assert manifest.preflight["agreement"]["percent"] == 100.0
    graph = onnx.load(pkg.dir / "model.onnx")
    assert "ArgMax" not in {n.op_type for n in graph.graph.node}
    original = get_reference_model("iris_mlp").onnx_path.read_bytes()
    assert manifest.preflight["rewritten_from_sha256"] == hashlib.sha256(original).hexdigest()
    assert manifest.model_sha256 != manifest.preflight["rewritten_from_sha256"]
    settings_json = json.loads((pkg.dir / "settings.json").read_text())
    assert settings_json["num_shuffles"] == 0 and settings_json["num_dynamic_lookups"] == 0
    shown = run_cli("models", "show", "iris_rc", home=prover_home, check=True).stdout
    assert "maxima rewritten from sha256:" in shown
    _, x_test, _, y_test = load_split("iris_mlp")
    req = tmp_path / "req.json"
    req.write_text(oip_request(x_test[3].reshape(1, 4)))
    run_cli("prove", "iris_rc", "--input", req, "--out", tmp_path / "b", home=prover_home,
            check=True)
    proc = run_cli("verify", tmp_path / "b", "--allow-dev-srs", home=prover_home)
    assert proc.returncode == 0, proc.stderr
    bundle = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert bundle["outputs"]["label"] == y_test[3]
    proof, instances = proof_parts(bundle["proof"])
    with run_anvil() as url:
        record = tmp_path / "deployment.json"
        run_cli("chain", "deploy", "--rpc", url, "--package", "iris_rc", "--out", record,
                home=prover_home, check=True)
        verifier = json.loads(record.read_text())["models"][0]["verifier"]
        verify_onchain(url, verifier, proof, instances)
        other = (instances[-1] + 1) % 3  # another class as the label (the last instance)
        with pytest.raises(ProofInvalid):
            verify_onchain(url, verifier, proof, [*instances[:-1], other])


def test_under_a_reference_models_name_the_rewrite_is_not_registered(prover_home):
    """The server answers iris_mlp from the reference file: a package of the rewritten graph
    under that name could not prove what it answers, so tuning under that name leaves the
    rewrite out (the candidate fails, saying why), and the defaults are chosen."""
    from prover.build import reference_source
    from prover.tune import tune_and_register
    from verifier.config import Settings

    rc = CircuitOptions(inner_cols=1, max_ops="range-checks")
    result, pkg = tune_and_register(Settings(home=prover_home), reference_source("iris_mlp"),
                                    objective="pk", budget_minutes=30, candidates=[rc])
    m = next(m for m in result.measurements if m.options == rc)
    assert m.status == "failed" and "reference file" in m.reason and "--name" in m.reason
    assert result.chosen.baseline
    # and the table the CLI prints last says what was left out, and how to try it
    assert "Not tried: the server serves iris_mlp from its reference file" in table(result)
    assert "--name" in table(result).splitlines()[-1]
    assert "preflight" in pkg.manifest.model_dump() and \
        "rewritten_from_sha256" not in pkg.manifest.preflight


def test_a_range_checks_candidate_with_nothing_to_rewrite_fails_before_calibration(
        prover_home, tmp_path):
    """A model whose maxima the rewrite does not cover (opset 12): a ``max_ops="range-checks"``
    candidate was calibrated as the model given with rebase_frac_zero_constants on, and could
    be chosen and registered as "max via range checks"; it now fails, as ``models add
    --max-ops range-checks`` refuses it (no EZKL reached: the backend is None)."""
    from prover_support import model_with_nothing_to_rewrite

    from prover.build import file_source
    from prover.tune import _Search
    from verifier.config import Settings

    path, cal = model_with_nothing_to_rewrite(tmp_path)
    s = _Search(Settings(home=prover_home), file_source("linear", path, cal), "prove", 60.0,
                SILENT, None, "public")
    try:
        assert s.rewritten is None
        m = Measurement(CircuitOptions(max_ops="range-checks"))
        assert not s.calibrate(m)
        assert m.status == "failed" and "nothing in the model to rewrite" in m.reason
        assert m in s.ms and m.folder is None
    finally:
        s.close()
