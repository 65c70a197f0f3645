"""Exact graph rewrites that make a circuit cheaper (``CircuitOptions.max_ops``).

EZKL 23 lays a maximum out as a sort: MaxPool and ArgMax become shuffle arguments and
ArgMax a dynamic lookup as well. Each of those is a lookup whose table is advice, which
raises the constraint system's degree from 5 to 6 and so doubles halo2's extended domain
(2^(k+3) instead of 2^(k+2)) for the whole proof, and adds commitments per argument.
The same values can be computed from ReLU and comparisons, which EZKL checks with range
checks only:

- MaxPool: max(a, b) = a + ReLU(b - a), over a balanced tree of the window's strided
  slices; a ReLU feeding only the MaxPool moves after it (max and ReLU commute).
- ArgMax over the class axis of a (batch, n) tensor: ``c[i][j] = x_i > x_j`` for j < i and
  ``x_i >= x_j`` (= not ``x_j > x_i``) for j > i; exactly one i, the first maximum, has all
  n true, so the label is ``sum_i i * ReLU(sum_j c[i][j] - (n - 1))``. Ties go to the first
  index, as ``torch.argmax`` and ``numpy.argmax`` break them.

In the circuit both are exact: sums, differences and ReLU of fixed-point integers. In
float32 the max tree can differ from MaxPool by rounding in ``a + (b - a)`` (an ulp of the
larger of |a|, |b|: with the ReLU moved after it, a very negative a costs a small b digits); the
labels of a rewritten package are checked against the user's own model, as every
candidate's are. Only forms these rules cover are rewritten (2-D MaxPool of floats without
padding or dilation, ArgMax of a rank-2 tensor, opset >= 13); anything else is left as it is.
"""

from __future__ import annotations

import numpy as np

MAX_OPS = ("ezkl", "range-checks")
# what rewrite_max_ops rewrites, in words
COVERED = ("2-D MaxPool of floats without padding or dilation, ArgMax over the last axis of a "
           "rank-2 tensor, at opset 13 or later")
_FLOATS = (1, 10, 11, 16)  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def rewrite_max_ops(model) -> int:
    """Rewrite the graph's MaxPool and ArgMax nodes in place as above; how many were."""
    from onnx import shape_inference

    if _opset(model) < 13:
        return 0
    shapes, types = _static_shapes(shape_inference.infer_shapes(model))
    g = model.graph
    names = _Names(model)
    out_names = {o.name for o in g.output}
    rewritten = 0
    new_nodes = []
    consumers: dict[str, int] = {}
    for n in g.node:
        for t in n.input:
            consumers[t] = consumers.get(t, 0) + 1
    producer = {t: n for n in g.node for t in n.output}
    fused = set()  # ReLU nodes moved after the MaxPool they fed
    for n in g.node:
        nodes, fuse = None, False
        if n.op_type == "MaxPool":
            src = n.input[0]
            relu = producer.get(src)
            fuse = (relu is not None and relu.op_type == "Relu" and consumers.get(src) == 1
                    and src not in out_names)
            # floats only: ReLU has no uint8 kernel, and b - a of integers wraps around
            nodes = None if types.get(src) not in _FLOATS else _maxpool(
                n, relu.input[0] if fuse else src, shapes.get(src), names, relu_after=fuse)
        elif n.op_type == "ArgMax":
            nodes = _argmax(n, shapes.get(n.input[0]), names)
        if nodes is None:
            new_nodes.append(n)
            continue
        if fuse:
            fused.add(id(relu))
        new_nodes.extend(nodes)
        rewritten += 1
    if rewritten:
        kept = [n for n in new_nodes if id(n) not in fused]
        del g.node[:]
        g.node.extend(kept)
        del g.value_info[:]  # stale shapes of removed tensors; ONNX infers them again
    return rewritten


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _static_shapes(model) -> tuple[dict[str, tuple], dict[str, int]]:
    """Tensor name -> shape, with None for an axis that is not a fixed size; and tensor name
    -> element type (onnx.TensorProto's)."""
    shapes, types = {}, {}
    for v in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        types[v.name] = v.type.tensor_type.elem_type
    return shapes, types


class _Names:
    """Fresh tensor and node names, none of them already in the graph."""

    def __init__(self, model) -> None:
        from prover.onnx_model import tensor_names

        self.taken = tensor_names(model.graph) | {n.name for n in model.graph.node}
        self.i = 0

    def __call__(self, stem: str) -> str:
        while True:
            self.i += 1
            name = f"verinfer_{stem}_{self.i}"
            if name not in self.taken:
                self.taken.add(name)
                return name


def _attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _const(names: _Names, stem: str, value: np.ndarray):
    from onnx import helper, numpy_helper

    out = names(stem)
    node = helper.make_node("Constant", [], [out], name=names(stem + "_node"),
                            value=numpy_helper.from_array(np.asarray(value), out))
    return node, out


def _maxpool(node, src: str, shape, names: _Names, relu_after: bool):
    from onnx import helper

    if len(node.output) != 1 or shape is None or len(shape) != 4 or None in shape[2:]:
        return None
    kernel = list(_attr(node, "kernel_shape", []))
    strides = list(_attr(node, "strides", [1, 1]))  # ONNX's default, unlike torch's kernel
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    dilations = list(_attr(node, "dilations", [1, 1]))
    if (len(kernel) != 2 or any(pads) or dilations != [1, 1] or _attr(node, "ceil_mode", 0)
            or _attr(node, "storage_order", 0) or _attr(node, "auto_pad", b"NOTSET")
            not in (b"NOTSET", "NOTSET", b"VALID", "VALID")):
        return None
    (kh, kw), (sh, sw), (h, w) = kernel, strides, shape[2:]
    if kh > h or kw > w:
        return None
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    nodes, parts = [], []
    axes_n, axes = _const(names, "axes", np.array([2, 3], np.int64))
    steps_n, steps = _const(names, "steps", np.array([sh, sw], np.int64))
    nodes += [axes_n, steps_n]
    for i in range(kh):
        for j in range(kw):
            s_n, s = _const(names, "starts", np.array([i, j], np.int64))
            e_n, e = _const(names, "ends", np.array([i + (oh - 1) * sh + 1,
                                                      j + (ow - 1) * sw + 1], np.int64))
            part = names("window")
            nodes += [s_n, e_n, helper.make_node("Slice", [src, s, e, axes, steps], [part],
                                                 name=names("slice"))]
            parts.append(part)
    while len(parts) > 1:  # balanced tree: max(a, b) = a + ReLU(b - a)
        nxt = []
        for a, b in zip(parts[0::2], parts[1::2]):
            d, r, m = names("diff"), names("relu"), names("max")
            nodes += [helper.make_node("Sub", [b, a], [d], name=names("sub")),
                      helper.make_node("Relu", [d], [r], name=names("relu_node")),
                      helper.make_node("Add", [a, r], [m], name=names("add"))]
            nxt.append(m)
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    if relu_after:
        nodes.append(helper.make_node("Relu", [parts[0]], [node.output[0]], name=names("relu")))
    else:
        nodes.append(helper.make_node("Identity", [parts[0]], [node.output[0]],
                                      name=names("pool")))
    return nodes


def _argmax(node, shape, names: _Names):
    from onnx import TensorProto, helper

    if shape is None or len(shape) != 2 or shape[1] is None or shape[1] < 2:
        return None
    axis = _attr(node, "axis", 0)
    if axis not in (1, -1) or _attr(node, "select_last_index", 0):
        return None
    keep = _attr(node, "keepdims", 1)
    n = int(shape[1])
    x = node.input[0]
    nodes = []
    ax2_n, ax2 = _const(names, "axis", np.array([2], np.int64))
    ax1_n, ax1 = _const(names, "axis", np.array([1], np.int64))
    lower = np.tril(np.ones((n, n), dtype=bool), -1)  # [i, j]: j < i
    low_n, low = _const(names, "lower", lower)
    one_n, one = _const(names, "one", np.array(1.0, np.float32))
    nm1_n, nm1 = _const(names, "n_minus_1", np.array(n - 1, np.float32))
    idx_n, idx = _const(names, "index", np.arange(n, dtype=np.float32))
    xi, xj, gt, gtf, gtt, ge, c, s, f, r, w, lab = (names(k) for k in (
        "xi", "xj", "gt", "gtf", "gtt", "ge", "c", "count", "first", "firstr", "weighted",
        "labelf"))
    nodes += [ax2_n, ax1_n, low_n, one_n, nm1_n, idx_n,
              helper.make_node("Unsqueeze", [x, ax2], [xi], name=names("unsq")),
              helper.make_node("Unsqueeze", [x, ax1], [xj], name=names("unsq")),
              helper.make_node("Greater", [xi, xj], [gt], name=names("greater")),  # x_i > x_j
              helper.make_node("Cast", [gt], [gtf], to=TensorProto.FLOAT, name=names("cast")),
              helper.make_node("Transpose", [gtf], [gtt], perm=[0, 2, 1], name=names("tr")),
              helper.make_node("Sub", [one, gtt], [ge], name=names("sub")),  # x_i >= x_j
              helper.make_node("Where", [low, gtf, ge], [c], name=names("where")),
              helper.make_node("ReduceSum", [c, ax2], [s], keepdims=0, name=names("sum")),
              helper.make_node("Sub", [s, nm1], [f], name=names("sub")),
              helper.make_node("Relu", [f], [r], name=names("relu")),  # 1 at the first max
              helper.make_node("Mul", [r, idx], [w], name=names("mul")),
              helper.make_node("ReduceSum", [w, ax1], [lab], keepdims=keep, name=names("sum")),
              helper.make_node("Cast", [lab], [node.output[0]], to=TensorProto.INT64,
                               name=names("cast"))]
    return nodes
