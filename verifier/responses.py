"""An Open Inference Protocol v2 response checked against the receipt it carries.

A receipt that verifies says what the server attested; a client acts on the response's
``outputs`` and ``parameters.label``. This module checks that they are the same answer: the
response is from the model the receipt names, its ids are the receipt's, its label is the
attested label, and each output it holds (those the request asked for, any order) has the
attested name, datatype and shape, and data whose tensor digest is the attested one. So an
answer altered on its way (a proxy, a cache, a client's own bug) fails even when the receipt
beside it is intact.

The receipt also names the input the answer was computed on (its tensor digest) and the
request's ``id``. Given the request a client sent, :func:`check_request` holds them to it: so
a server cannot hand one client an answer, with its valid receipt, made for another input
(a cached answer, another client's).

Outputs sent as binary data (``parameters.binary_data_size``) are not in the JSON document:
such a response cannot be checked from it alone (:class:`InputError`); likewise an input sent
as binary data. A client that holds them as numpy arrays (tritonclient on its defaults) passes
them: ``verify_response(doc, jwks, outputs={name: array}, input=x)``. A sync proof's bundle
(``parameters.proof_bundle``) needs its circuit package: ``verinfer audit`` verifies it and
holds it to the answer (:func:`check_proof_of_answer`); :func:`verify_response` does not.
"""

from __future__ import annotations

import json
from typing import Any

from verifier.errors import DigestMismatch, InputError, LinkBroken
from verifier.tensors import json_array, tensor_digest


def is_response(doc: Any) -> bool:
    """Whether a parsed JSON document looks like a response with its receipt (the body of
    ``POST /v2/models/{m}/infer``)."""
    return (isinstance(doc, dict) and "outputs" in doc and isinstance(doc.get("parameters"), dict)
            and "receipt" in doc["parameters"])


def parse_response(text: str | bytes) -> dict[str, Any]:
    """A response document, parsed; :class:`InputError` for one that is not a JSON object or
    holds a key twice in one object (parsers differ on which one counts: the answer audited
    could be another than the one a client read)."""
    doc = _strict_json(text, "response")
    if not is_response(doc):
        raise InputError("not an inference response holding a receipt (parameters.receipt)")
    return doc


def parse_request(text: str | bytes) -> dict[str, Any]:
    """An inference request's JSON body (``POST /v2/models/{m}/infer``), parsed as strictly as
    :func:`parse_response`."""
    doc = _strict_json(text, "request")
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise InputError("not an inference request (a JSON object with inputs)")
    return doc


def _strict_json(text: str | bytes, what: str) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) != len(items):
            seen: set[str] = set()
            twice = next(k for k, _ in items if k in seen or seen.add(k))  # (one pass: no n² on a crafted file)
            raise InputError(f"the {what} holds key {twice!r} twice in one object")
        return obj

    try:
        return json.loads(text, object_pairs_hook=pairs)
    except ValueError as exc:
        raise InputError(f"the {what} is not JSON: {exc}") from None


def receipt_of(doc: dict[str, Any]) -> Any:
    """The receipt a response carries: its JSON text (as the server sends it), or an object."""
    receipt = doc["parameters"]["receipt"]
    if not isinstance(receipt, (str, dict)):
        raise InputError("parameters.receipt is neither the receipt's JSON text nor an object")
    return receipt


def check_response(doc: dict[str, Any], statement: Any, arrays: dict[str, Any] | None = None) -> None:
    """Raise unless ``doc``'s answer is the one ``statement`` (its verified receipt's, v1 or v2)
    attests: :class:`LinkBroken` for another model, id or label, :class:`DigestMismatch` for
    an output that is not the attested one, :class:`InputError` for what cannot be checked.
    ``arrays``: the outputs a client received as binary data, as numpy arrays by name
    (tritonclient's ``result.as_numpy(name)``); each is held to its attested digest."""
    p = statement.predicate
    params = doc["parameters"]
    _same("model_name", doc.get("model_name"), p.model.name, "model")
    if "model_version" in doc:
        _same("model_version", doc["model_version"], p.model.version, "model version")
    if "receipt_id" in params:
        _same("parameters.receipt_id", params["receipt_id"], p.requestId, "request id")
    if "id" in doc:  # the request's own id, echoed
        _same("id", doc["id"], p.clientRequestId, "client request id")
    if "label" in params:
        _same("parameters.label", params["label"], p.label, "label")
    outputs = doc["outputs"]
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
        raise InputError("the response's outputs are not a list of tensors")
    attested = {o.name: o for o in p.outputs}
    seen: set[str] = set()
    for out in outputs:
        name = out.get("name")
        if not isinstance(name, str) or name not in attested:
            raise LinkBroken(f"the response holds output {name!r}, which the receipt does not attest "
                             f"(it attests {', '.join(repr(n) for n in attested)})")
        if name in seen:
            raise LinkBroken(f"the response holds output {name!r} twice")
        seen.add(name)
        want = attested[name]
        _same_kind(out, want, f"output {name!r} in the response")
        if "data" in out:
            digest = _digest(out, want, DigestMismatch(f"output {name!r} in the response does not fit its "
                                                       "shape and datatype"))
        elif arrays is not None and name in arrays:
            digest = _array_digest(arrays[name], want, f"output {name!r}")
        else:
            raise InputError(f"output {name!r} came as binary data, which this JSON document does not "
                             "hold: ask for JSON outputs to check a saved response (or pass the arrays)")
        if digest != want.digest:
            raise DigestMismatch(f"output {name!r} in the response is not the output the receipt attests")
    if arrays is not None and (extra := arrays.keys() - seen):
        raise InputError(f"arrays given for outputs the response does not hold: {', '.join(sorted(extra))}")


def check_request(request: dict[str, Any], statement: Any) -> None:
    """Raise unless ``statement`` (a verified receipt's) attests an answer to ``request``, the
    parsed JSON body a client sent: its one input's name, datatype and shape, data whose tensor
    digest is the attested input digest (flat or nested lists, as the server reads them), and
    its ``id`` (or none). :class:`LinkBroken` for another id or input name,
    :class:`DigestMismatch` for another input, :class:`InputError` for what cannot be checked."""
    p = statement.predicate
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InputError("the request does not hold one input tensor (inputs)")
    inp = inputs[0]
    if request.get("id") != p.clientRequestId or type(request.get("id")) is not type(p.clientRequestId):
        raise LinkBroken(f"the request's id is {request.get('id')!r}; the receipt attests client request id "
                         f"{p.clientRequestId!r}")
    want = p.input
    if inp.get("name") != want.name:
        raise LinkBroken(f"the request's input is {inp.get('name')!r}; the receipt attests input {want.name!r}")
    _same_kind(inp, want, "the request's input")
    if "data" not in inp:
        raise InputError("the request's input was sent as binary data, which this JSON document does not "
                         "hold: check a request sent as JSON")
    digest = _digest(inp, want, InputError("the request's input data does not fit its shape and datatype"))
    if digest != want.digest:
        raise DigestMismatch("the receipt attests an answer to another input than the request's")


def check_input(array: Any, statement: Any) -> None:
    """Raise unless ``statement`` attests an answer to this input tensor (a numpy array, as a
    client sent it: of the datatype and shape the statement names): :class:`DigestMismatch`
    if not. For a request sent as binary data (tritonclient's default)."""
    want = statement.predicate.input
    if _array_digest(array, want, "the input") != want.digest:
        raise DigestMismatch("the receipt attests an answer to another input than the one sent")


def proof_bundle_of(doc: dict[str, Any]) -> Any:
    """The proof bundle a response to ``"proof": "sync"`` carries (``parameters.proof_bundle``,
    its JSON text), parsed; None without one."""
    from verifier.bundle import ProofBundle

    text = doc["parameters"].get("proof_bundle")
    if text is None:
        return None
    if not isinstance(text, str):
        raise InputError("parameters.proof_bundle is not the bundle's JSON text")
    return ProofBundle.parse(text, "parameters.proof_bundle")


def check_proof_of_answer(statement: Any, manifest: Any, bundle: Any, proven: Any) -> None:
    """:class:`LinkBroken` unless a verified proof bundle (its package's ``manifest``, and
    ``proven``, the statement of the receipt it carries) proves the answer ``statement`` attests:
    its model, its input in fixed point and its label. The bundle may be a cached one, made for
    an earlier answer to the same input, so its receipt need not be this answer's."""
    p = statement.predicate
    if proven is None:
        raise LinkBroken("the proof bundle names no answer (it carries no receipt)")
    if manifest.model_sha256 != p.model.sha256:
        raise LinkBroken("the proof bundle is for another model than the answer's")
    if (proven.predicate.input.commitment, proven.predicate.input.scale) != (p.input.commitment, p.input.scale):
        raise LinkBroken("the proof bundle is for another input than the answer's")
    if bundle.outputs.label != p.label:
        raise LinkBroken(f"the proof gives label {bundle.outputs.label}; the answer is {p.label}")


def _same_kind(tensor: dict[str, Any], want: Any, what: str) -> None:
    """:class:`DigestMismatch` unless a JSON tensor has the attested datatype and shape."""
    shape = tensor.get("shape")
    if tensor.get("datatype") != want.datatype or not (
            isinstance(shape, list) and [type(d) for d in shape] == [int] * len(shape)
            and tuple(shape) == tuple(want.shape)):
        raise DigestMismatch(f"{what} is {tensor.get('datatype')} {shape}; the receipt attests "
                             f"{want.datatype} {list(want.shape)}")


def _digest(tensor: dict[str, Any], want: Any, unfit: Exception) -> str:
    """The tensor digest of a JSON tensor's ``data`` (of the attested kind); ``unfit`` raised
    when the data does not fit it."""
    try:
        return tensor_digest(json_array(tensor["data"], tuple(want.shape), want.datatype), want.datatype)
    except (ValueError, TypeError, InputError):
        raise unfit from None


def _array_digest(array: Any, want: Any, what: str) -> str:
    """The tensor digest of a numpy array of the attested kind (its dtype the datatype's)."""
    import numpy as np

    from verifier.tensors import numpy_dtype

    array = np.asarray(array)
    dtype = numpy_dtype(want.datatype)
    if array.dtype.newbyteorder("<") != dtype or tuple(array.shape) != tuple(want.shape):
        raise DigestMismatch(f"{what} is a {array.dtype} array of shape {list(array.shape)}; the receipt "
                             f"attests {want.datatype} {list(want.shape)}")
    return tensor_digest(array, want.datatype)


def _same(field: str, got: Any, want: Any, what: str) -> None:
    # type first: True == 1 and 1.0 == 1 in Python, not in the JSON a client reads
    if type(got) is not type(want) or got != want:
        raise LinkBroken(f"the response's {field} is {got!r}; the receipt attests {what} {want!r}")


def verify_response(doc: dict[str, Any], jwks: dict[str, Any], request: dict[str, Any] | None = None, *,
                    outputs: dict[str, Any] | None = None, input: Any = None, **kw: Any) -> Any:
    """Verify the receipt a response carries (:func:`verifier.receipts_v2.verify_any_receipt`,
    ``kw`` passed on), then that the response is the answer it attests and, given the
    ``request`` (its parsed JSON body) or the ``input`` array sent as binary data, that it
    answers that request; the statement. ``outputs``: the outputs received as binary data, as
    numpy arrays by name. With tritonclient: ``verify_response(result.get_response(), jwks,
    outputs={n: result.as_numpy(n) for n in names}, input=x)``."""
    from verifier.receipts_v2 import parse_any_receipt, verify_any_receipt

    statement = verify_any_receipt(parse_any_receipt(receipt_of(doc)), jwks, **kw)
    check_response(doc, statement, outputs)
    if request is not None:
        check_request(request, statement)
    if input is not None:
        check_input(input, statement)
    return statement
