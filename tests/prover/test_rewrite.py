"""``max_ops="range-checks"`` (prover/rewrite.py): MaxPool and ArgMax rebuilt from ReLU and
comparisons give the original's values (onnxruntime, ties included), forms the rules do not
cover are left alone, and in EZKL the rewritten circuit has no sort arguments and takes the
first of equal maxima, as ``numpy.argmax`` does."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from prover.rewrite import rewrite_max_ops


def _run(model, x: np.ndarray) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def _pool_model(shape, kernel, strides, relu=True, opset=18, dtype=TensorProto.FLOAT, **attrs):
    nodes, src = [], "x"
    if relu:
        nodes.append(helper.make_node("Relu", ["x"], ["r"]))
        src = "r"
    nodes.append(helper.make_node("MaxPool", [src], ["y"], kernel_shape=kernel,
                                  strides=strides, **attrs))
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info(
        "x", dtype, ["batch", *shape[1:]])],
        [helper.make_tensor_value_info("y", dtype, ["batch", shape[1], "h", "w"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _argmax_model(n, keepdims=0, axis=1, rank=2, opset=18):
    dims = ["batch", n] if rank == 2 else ["batch", 3, n]
    graph = helper.make_graph(
        [helper.make_node("ArgMax", ["x"], ["label"], axis=axis, keepdims=keepdims)], "am",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("label", TensorProto.INT64,
                                       ["batch", 1][:1 + keepdims] if rank == 2 else None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ops(model) -> set[str]:
    return {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("shape, kernel, strides, relu", [
    ((2, 3, 8, 8), [2, 2], [2, 2], True),    # digits_cnn's: the ReLU moves after the tree
    ((2, 3, 8, 8), [2, 2], [2, 2], False),
    ((1, 2, 7, 5), [3, 3], [1, 1], True),    # overlapping windows, odd sizes
    ((1, 2, 9, 6), [3, 2], [2, 1], False),   # non-square kernel and strides, a ragged edge
    ((1, 1, 4, 4), [4, 4], [4, 4], True),    # one window: the global maximum
])
def test_maxpool_tree_equals_maxpool(shape, kernel, strides, relu):
    model = _pool_model(shape, kernel, strides, relu)
    rewritten = onnx.load_from_string(model.SerializeToString())
    assert rewrite_max_ops(rewritten) == 1
    onnx.checker.check_model(rewritten, full_check=True)
    assert "MaxPool" not in _ops(rewritten)
    if relu:  # fused: one ReLU on the window's maximum, none left on the input
        assert not any(n.op_type == "Relu" and n.input[0] == "x" for n in rewritten.graph.node)
    rng = np.random.default_rng(0)
    for x in (rng.standard_normal(shape).astype(np.float32),
              rng.integers(-3, 4, shape).astype(np.float32)):  # many equal values
        want, = _run(model, x)
        got, = _run(rewritten, x)
        assert got.shape == want.shape
        # a + (b - a) is b up to float32 rounding; integers exactly
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    x = rng.integers(-3, 4, shape).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, x)[0], _run(model, x)[0])


@pytest.mark.parametrize("keepdims", [0, 1])
def test_argmax_by_comparisons_takes_the_first_maximum(keepdims):
    model = _argmax_model(6, keepdims=keepdims)
    rewritten = onnx.load_from_string(model.SerializeToString())
    assert rewrite_max_ops(rewritten) == 1
    onnx.checker.check_model(rewritten, full_check=True)
    assert "ArgMax" not in _ops(rewritten)
    ties = np.array([[1, 3, 3, 0, 3, 2], [2, 2, 2, 2, 2, 2], [0, 0, 0, 0, 0, 5],
                     [-1, -1, -2, -1, -3, -1], [4, 1, 1, 1, 1, 4], [-0.0, 0.0, -1, -1, -1, -1]],
                    np.float32)
    rng = np.random.default_rng(1)
    for x in (ties, rng.standard_normal((200, 6)).astype(np.float32),
              rng.integers(0, 3, (200, 6)).astype(np.float32)):
        want, = _run(model, x)
        got, = _run(rewritten, x)
        assert got.dtype == np.int64 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got.reshape(-1), np.argmax(x, axis=1))


def test_a_maxpool_without_strides_steps_by_one():
    """ONNX's default stride is 1 on each axis (not the kernel, as in torch)."""
    graph = helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2])], "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 5, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    rewritten = onnx.load_from_string(model.SerializeToString())
    assert rewrite_max_ops(rewritten) == 1
    onnx.checker.check_model(rewritten, full_check=True)
    x = np.random.default_rng(4).integers(-5, 6, (1, 1, 6, 6)).astype(np.float32)
    want, = _run(model, x)
    got, = _run(rewritten, x)
    assert want.shape == got.shape == (1, 1, 5, 5)
    np.testing.assert_array_equal(got, want)


def test_forms_the_rules_do_not_cover_are_left_as_they_are():
    cases = [
        _pool_model((1, 1, 6, 6), [2, 2], [2, 2], pads=[1, 1, 1, 1]),
        _pool_model((1, 1, 6, 6), [2, 2], [2, 2], dilations=[2, 2]),
        _pool_model((1, 1, 6, 6), [2, 2], [2, 2], ceil_mode=1),
        _pool_model((1, 1, 6, 6), [2, 2], [2, 2], opset=12),
        _argmax_model(5, axis=0),
        # integers: ReLU has no uint8 kernel and b - a wraps around
        _pool_model((1, 1, 6, 6), [2, 2], [2, 2], relu=False, dtype=TensorProto.UINT8),
        _pool_model((1, 1, 6, 6), [2, 2], [2, 2], relu=False, dtype=TensorProto.INT8),
        _argmax_model(5, rank=3, axis=2),
    ]
    for model in cases:
        before = model.SerializeToString()
        assert rewrite_max_ops(model) == 0
        assert model.SerializeToString() == before


def test_a_relu_with_another_reader_is_not_moved():
    """The ReLU's output is also a graph output: it stays, and the pool reads it."""
    model = _pool_model((1, 2, 4, 4), [2, 2], [2, 2], relu=True)
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT,
                                                            ["batch", 2, 4, 4]))
    assert rewrite_max_ops(model) == 1
    x = np.random.default_rng(2).standard_normal((1, 2, 4, 4)).astype(np.float32)
    pooled, relu = _run(model, x)
    np.testing.assert_array_equal(relu, np.maximum(x, 0))
    assert pooled.min() >= 0


@pytest.mark.ezkl
def test_the_circuit_has_no_sorts_and_breaks_ties_as_argmax(tmp_path):
    """Real EZKL: a small CNN (conv, ReLU, MaxPool, linear, ArgMax) has shuffles and a dynamic
    lookup as given, none rewritten; and an ArgMax of the input itself, rewritten, labels tied
    inputs with the first maximum in the circuit."""
    from prover.backend import MODEL, CircuitOptions
    from prover.ezkl_backend import EZKLBackend

    rng = np.random.default_rng(3)
    conv_w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 3, 3],
                                rng.standard_normal(18).astype(np.float32))
    fc_w = helper.make_tensor("fc", TensorProto.FLOAT, [8, 3],
                              rng.standard_normal(24).astype(np.float32))
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 8])
    graph = helper.make_graph([
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1],
                         dilations=[1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ], "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3]),
         helper.make_tensor_value_info("label", TensorProto.INT64, [1])],
        initializer=[conv_w, fc_w, shape])
    cnn = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    samples = rng.standard_normal((8, 16)).astype(np.float32)
    backend = EZKLBackend()

    def circuit(model, ops: str, name: str, x: np.ndarray):
        folder = tmp_path / name
        folder.mkdir()
        (folder / MODEL).write_bytes(model.SerializeToString())
        backend.calibrate(folder, x, "public", (), 1, CircuitOptions(max_ops=ops))
        return folder, json.loads((folder / "settings.json").read_text())

    _, given = circuit(cnn, "ezkl", "given", samples)
    assert given["num_shuffles"] > 0 and given["num_dynamic_lookups"] > 0
    rewritten = onnx.load_from_string(cnn.SerializeToString())
    assert rewrite_max_ops(rewritten) == 2
    folder, rw = circuit(rewritten, "range-checks", "rewritten", samples)
    assert rw["num_shuffles"] == 0 and rw["num_dynamic_lookups"] == 0
    want = _run(cnn, samples.reshape(-1, 1, 4, 4)[:1])[1]
    got = backend.witness(folder, samples[0], tmp_path / "w.json").outputs[1][0]
    assert int(round(got)) == int(want[0])

    ties = np.array([[2, 5, 5, 1, 5], [0, 0, 0, 0, 0], [-1, -1, -2, -1, -3], [1, 2, 3, 4, 4],
                     [3, 1, 2, 0, 3]], np.float32)
    am = _argmax_model(5)
    am.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    assert rewrite_max_ops(am) == 1
    folder, s = circuit(am, "range-checks", "argmax", ties)
    assert s["num_shuffles"] == 0 and s["num_dynamic_lookups"] == 0
    for x in ties:
        label = backend.witness(folder, x, tmp_path / "w.json").outputs[0][0]
        assert int(round(label)) == int(np.argmax(x)), x


def test_max_ops_range_checks_with_nothing_to_rewrite_is_refused_in_one_line(tmp_path):
    """Built, such a package was the model as given (EZKL's sorts) under another circuit
    (rebase_frac_zero_constants) and labelled "max via range checks"."""
    from prover_support import model_with_nothing_to_rewrite, run_cli

    path, cal = model_with_nothing_to_rewrite(tmp_path)
    home = tmp_path / "home"
    proc = run_cli("models", "add", path, "--calibration-data", cal, "--max-ops",
                   "range-checks", home=home)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("verinfer: error: --max-ops range-checks: nothing in the model "
                               "to rewrite"), proc.stderr
    assert not (home / "names").exists()
