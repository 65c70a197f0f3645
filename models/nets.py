"""PyTorch definitions of the reference models.

Both nets take raw feature values (iris: centimetres; digits: pixel intensities
0..16) and normalise inside the graph, so clients send the data as it comes and
the circuit proves the normalisation too. Both return ``(logits, label)``.
"""

from __future__ import annotations

import torch
from torch import nn

# Iris feature means / standard deviations over the whole data set, rounded.
# Baked into the graph so the model's input is the measurement itself.
IRIS_MEAN = (5.843, 3.057, 3.758, 1.199)
IRIS_STD = (0.825, 0.434, 1.759, 0.760)


class IrisMLP(nn.Module):
    """4 features -> 3 classes; one hidden layer of 16 ReLU units."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IRIS_MEAN))
        self.register_buffer("inv_std", 1.0 / torch.tensor(IRIS_STD))
        self.body = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.body((x - self.mean) * self.inv_std)
        return logits, torch.argmax(logits, dim=1)


class DigitsCNN(nn.Module):
    """1x8x8 image (values 0..16) -> 10 classes; two small conv blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4x4
            nn.Conv2d(4, 8, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x2x2
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x * (1.0 / 16.0))
        logits = self.head(torch.flatten(h, 1))
        return logits, torch.argmax(logits, dim=1)


NETS = {"iris_mlp": IrisMLP, "digits_cnn": DigitsCNN}
