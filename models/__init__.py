"""Reference models: PyTorch definitions, deterministic training, exported ONNX.

Every model here trains on data that ships with scikit-learn (no download) and
is exported with two outputs: the float ``logits`` and the ArgMax ``label``, so
that a circuit made from the ONNX has the class index as a public output.

This package only needs numpy and scikit-learn to load data and artifact paths;
torch is imported lazily by :func:`load_torch_model` and the training script.
"""

from models.registry import (
    REFERENCE_MODELS,
    ReferenceModel,
    get_reference_model,
    load_split,
    load_torch_model,
)

__all__ = [
    "REFERENCE_MODELS",
    "ReferenceModel",
    "get_reference_model",
    "load_split",
    "load_torch_model",
]
