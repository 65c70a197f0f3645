"""Where the reference models live and how to load their data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SPLIT_SEED = 0
TEST_FRACTION = 0.3


@dataclass(frozen=True)
class ReferenceModel:
    name: str
    dataset: str  # scikit-learn loader name
    input_shape: tuple[int, ...]  # one sample, without the batch axis
    classes: int

    @property
    def dir(self) -> Path:
        return ARTIFACTS / self.name

    @property
    def onnx_path(self) -> Path:
        return self.dir / "model.onnx"

    @property
    def weights_path(self) -> Path:
        return self.dir / "weights.pt"

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.json"


REFERENCE_MODELS: dict[str, ReferenceModel] = {
    m.name: m
    for m in (
        ReferenceModel("iris_mlp", "iris", (4,), 3),
        ReferenceModel("digits_cnn", "digits", (1, 8, 8), 10),
    )
}


def get_reference_model(name: str) -> ReferenceModel:
    try:
        return REFERENCE_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(REFERENCE_MODELS))
        raise KeyError(f"no reference model named {name!r} (known: {known})") from None


def load_split(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed train/held-out split: ``(x_train, x_test, y_train, y_test)``.

    Stratified, 30% held out, seed 0; inputs as float32 shaped like the model's input.
    """
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    ref = get_reference_model(name)
    loader = {"iris": datasets.load_iris, "digits": datasets.load_digits}[ref.dataset]
    x, y = loader(return_X_y=True)
    x = x.astype(np.float32).reshape((-1, *ref.input_shape))
    return train_test_split(
        x, y.astype(np.int64), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )


def load_torch_model(name: str):
    """The trained PyTorch module in eval mode (imports torch)."""
    import torch

    from models.nets import NETS

    ref = get_reference_model(name)
    net = NETS[name]()
    net.load_state_dict(torch.load(ref.weights_path, map_location="cpu", weights_only=True))
    return net.eval()
