"""Execution engines: PyTorch (CUDA when available, else CPU) and onnxruntime.

An engine runs one batch: ``run(x) -> {output name: array}`` with the batch on
axis 0. Engines are called from one worker thread per model (the batcher's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from verifier.errors import InputError

ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int16)": "INT16",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str  # OIP v2 name
    shape: tuple[int, ...]  # -1 for a free axis (the batch axis first)


class Engine(Protocol):
    device: str
    platform: str

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]: ...


def onnx_signature(path: Path) -> tuple[list[TensorMeta], list[TensorMeta]]:
    """Inputs and outputs of an ONNX model, in OIP v2 terms."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def meta(args) -> list[TensorMeta]:
        out = []
        for a in args:
            if a.type not in ORT_TYPES:
                raise InputError(f"{path}: tensor {a.name} has unsupported type {a.type}")
            shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in a.shape)
            out.append(TensorMeta(a.name, ORT_TYPES[a.type], shape))
        return out

    return meta(sess.get_inputs()), meta(sess.get_outputs())


class OnnxEngine:
    platform = "onnxruntime"

    def __init__(self, path: Path, output_names: list[str]) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # small models: threads cost more than they give
        providers = [p for p in ("CUDAExecutionProvider",) if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(
            str(path), opts, providers=providers + ["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = output_names
        used = self.session.get_providers()[0]
        self.device = "cuda" if used == "CUDAExecutionProvider" else "cpu"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: x})
        return dict(zip(self.output_names, outs))


class TorchEngine:
    platform = "pytorch"

    def __init__(
        self, name: str, output_names: list[str], device: str | None = None, threads: int = 1
    ) -> None:
        import torch

        from models import load_torch_model

        self.torch = torch
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = load_torch_model(name).to(dev)
        self.dev = dev
        self.output_names = output_names
        if dev.type == "cuda":
            self.device = f"{dev} ({torch.cuda.get_device_name(dev)})"
        else:
            self.device = "cpu"
            # one intra-op thread: these models are far too small to split, and OpenMP
            # spin-waits cost tens of ms when the cores are shared with other work
            torch.set_num_threads(threads)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        if not x.flags.writeable:  # a binary tensor is a view of the request's bytes
            x = x.copy()  # (torch warns of, and would allow, writes into a read-only array)
        with torch.inference_mode():
            outs = self.module(torch.from_numpy(x).to(self.dev))
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        return {n: t.cpu().numpy() for n, t in zip(self.output_names, outs)}
