"""Reading a user's ONNX model: parse, describe its tensors, check its ops.

The circuit needs the class index as a public output. A model whose outputs
hold no integer tensor gets an ``ArgMax`` over the last axis of its first
output appended, so users can register a plain logits model. A label-only
package (``--public-output label``) then drops every other output, so that the
label is the circuit's one public output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from verifier.errors import InputError, UnsupportedModel

# ONNX ops EZKL 23 turns into circuits (its tract-based graph loader and op
# table). A model with an op outside this list is still tried: EZKL's own
# answer decides, and the preflight report shows "unknown" for it.
EZKL_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
Cast Ceil Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
Div Dropout Einsum Elu Equal Erf Exp Expand Flatten Floor Gather GatherElements GatherND Gemm
GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual HardSigmoid HardSwish Identity
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
LpNormalization MatMul Max MaxPool Mean Min Mod Mul Neg Not OneHot Or Pad Pow PRelu Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Reshape Resize Round ScatterElements ScatterND Selu Shape
Sigmoid Sign Sin Sinh Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum
Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Where Xor
""".split())

_ONNX_TO_OIP = {1: "FP32", 11: "FP64", 6: "INT32", 7: "INT64", 2: "UINT8", 3: "INT8"}
_INTEGER_TYPES = {6, 7, 2, 3, 4, 5, 12, 13}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]  # batch axis pinned to 1


@dataclass(frozen=True)
class ModelInfo:
    input: TensorInfo
    outputs: tuple[TensorInfo, ...]
    label_output: int
    ops: tuple[dict, ...]  # [{"op", "count", "supported": "yes"|"unknown"}]
    label_added: bool
    batch_symbols: tuple[str, ...]  # names of dynamic batch axes; the circuit pins them to 1


def load(path: Path):
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        # The package keeps the file's bytes as the model (its sha256 is the model's
        # identity): weights in another file would be neither in it nor in that hash (and
        # EZKL, given the file alone, failed with "Translating proto model to model")
        external = any(t.data_location == onnx.TensorProto.EXTERNAL
                       for t in model.graph.initializer)
        if not external:
            onnx.checker.check_model(model)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...  # noqa: BLE001
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
        raise InputError(f"{path}: not a valid ONNX model: {first}") from None
    if external:
        raise UnsupportedModel(f"{path}: its weights are in external data files; save the model "
                               f"as one file (onnx.save_model(model, path, "
                               f"save_as_external_data=False))")
    return model


def _tensor(value_info) -> TensorInfo:
    t = value_info.type.tensor_type
    dims = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(d.dim_value)
        elif i == 0:
            dims.append(1)  # dynamic batch: the circuit proves one sample
        else:
            raise UnsupportedModel(f"input/output {value_info.name!r} has a dynamic axis {i}; "
                                   f"only the batch axis may be dynamic")
    datatype = _ONNX_TO_OIP.get(t.elem_type)
    if datatype is None:
        raise UnsupportedModel(f"tensor {value_info.name!r} has an unsupported element type "
                               f"{t.elem_type}")
    return TensorInfo(value_info.name, datatype, tuple(dims))


def tensor_names(graph) -> set[str]:
    """Every tensor name the graph uses (inputs, outputs, shapes, initializers, node edges)."""
    return ({v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
            | {t for n in graph.node for t in (*n.input, *n.output)})


def ensure_label_output(model) -> bool:
    """Append ArgMax(last axis) of the first output when no output is an integer; True if so."""
    from onnx import TensorProto, helper

    graph = model.graph
    if not graph.output:
        raise UnsupportedModel("the model has no outputs; verinfer proves a classifier's "
                               "logits or label")
    if any(o.type.tensor_type.elem_type in _INTEGER_TYPES for o in graph.output):
        return False
    first = graph.output[0]
    if not first.type.tensor_type.shape.dim:
        raise UnsupportedModel(f"output {first.name!r} is a scalar: no class axis to take the "
                               f"label (ArgMax) over; give the model logits or a label output")
    # "label", unless the graph already names a tensor so (then ArgMax would feed itself)
    taken = tensor_names(graph)
    name, i = "label", 0
    while name in taken:
        i += 1
        name = f"label_{i}"
    node = helper.make_node("ArgMax", [first.name], [name], axis=-1, keepdims=0,
                            name="verinfer_label")
    graph.node.append(node)
    batch = first.type.tensor_type.shape.dim[0]
    label = helper.make_tensor_value_info(name, TensorProto.INT64, [batch.dim_value or 1])
    graph.output.append(label)
    return True


def keep_label_only(model) -> None:
    """Make the label the graph's only output (``--public-output label``): the circuit proves
    the label and keeps the logits private. Call after :func:`ensure_label_output`."""
    graph = model.graph
    labels = [o for o in graph.output if o.type.tensor_type.elem_type in _INTEGER_TYPES]
    if not labels:
        raise UnsupportedModel("the model has no integer (label) output to keep")
    keep = labels[-1]
    for o in [o for o in graph.output if o is not keep]:
        graph.output.remove(o)


def apply_public_output(model, public_output: str) -> bool:
    """The graph for a package's ``public_output`` ("logits": as it is; "label": the label
    alone, :func:`keep_label_only`); whether the graph was changed."""
    if public_output == "label":
        keep_label_only(model)
        return True
    if public_output != "logits":
        raise InputError(f"public output {public_output!r}: 'logits' or 'label'")
    return False


def describe(model, label_added: bool = False) -> ModelInfo:
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UnsupportedModel(f"the model has {len(inputs)} inputs; verinfer proves models "
                               f"with exactly one input tensor")
    inp = _tensor(inputs[0])
    if inp.datatype not in ("FP32", "FP64"):
        raise UnsupportedModel(f"the model's input is {inp.datatype}; a float input is needed")
    outputs = tuple(_tensor(o) for o in graph.output)
    labels = [i for i, o in enumerate(graph.output)
              if o.type.tensor_type.elem_type in _INTEGER_TYPES]
    symbols = sorted({d.dim_param for v in (*inputs, *graph.output)
                      for d in v.type.tensor_type.shape.dim[:1] if d.dim_param})
    counts: dict[str, int] = {}
    for n in graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    ops = tuple({"op": op, "count": c, "supported": "yes" if op in EZKL_SUPPORTED_OPS else "unknown"}
                for op, c in sorted(counts.items()))
    return ModelInfo(inp, outputs, labels[-1], ops, label_added, tuple(symbols))
