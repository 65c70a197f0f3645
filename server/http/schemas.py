"""OIP v2 shapes for the OpenAPI docs (the handlers parse bodies in ``server.inference.oip``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype", "data"],
    "properties": {
        "name": {"type": "string", "example": "input"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "example": [1, 4]},
        "datatype": {"type": "string", "enum": ["FP32", "FP64", "INT8", "INT16", "INT32", "INT64",
                                                "UINT8", "UINT16", "UINT32", "UINT64"]},
        "parameters": {"type": "object"},
        "data": {"type": "array", "description": "flat (row-major) or nested like shape",
                 "items": {}, "example": [5.1, 3.5, 1.4, 0.2]},
    },
}

INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "title": "InferenceRequest",
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1, "maxItems": 1},
        "outputs": {
            "type": "array",
            "items": {"type": "object", "required": ["name"],
                      "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}},
        },
    },
}


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class OutputTensor(BaseModel):
    """``data``, or with the binary data extension ``parameters.binary_data_size`` (the bytes
    follow the JSON header)."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    """Every error answer: one line saying what is wrong."""

    error: str


_CALLBACK = {"type": "string", "format": "uri"}
PROOF_REQUEST_SCHEMA: dict[str, Any] = {
    "title": "ProofRequest",
    "description": "either receipt_id, or model and inputs (one sample)",
    "oneOf": [
        {"type": "object", "required": ["receipt_id"], "additionalProperties": False,
         "properties": {"receipt_id": {"type": "string", "pattern": "^0x[0-9a-f]{64}$"}, "callback_url": _CALLBACK}},
        {"type": "object", "required": ["model", "inputs"], "additionalProperties": False,
         "properties": {"model": {"type": "string", "example": "iris_mlp"},
                        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1, "maxItems": 1},
                        "callback_url": _CALLBACK}},
    ],
}


class InferResponse(BaseModel):
    """``parameters.receipt`` is the receipt (verifier.receipts.Receipt) as a JSON string;
    ``parameters.receipt_id`` its id (GET /v1/receipts/{id}); ``parameters.label`` the class."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[OutputTensor]
