"""A multilayer perceptron on flattened pixels: the no-spatial-prior baseline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_modules.base import ImageClassifier

__all__ = ["MLP", "MLPClassifier"]


class MLP(nn.Module):
    """Flatten -> (Linear -> ReLU -> Dropout) per hidden size -> Linear. About 1.7 M parameters on CIFAR-10."""

    explainable_layers = ()  # no spatial feature maps: nothing for Grad-CAM to explain

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int] = (512, 256), dropout: float = 0.2
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class MLPClassifier(ImageClassifier):
    """The MLP recipe.

    Args:
        hidden: Widths of the hidden layers.
        dropout: Dropout after each hidden layer.
        **kwargs: See ``ImageClassifier``.
    """

    def __init__(self, hidden: Sequence[int] = (512, 256), dropout: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        channels, height, width = self.input_shape
        self.net = MLP(channels * height * width, self.num_classes, hidden, dropout)
