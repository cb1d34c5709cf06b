"""LeNet-5 style CNN: two 5x5 convolutions with pooling, then three linear layers."""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.base import ImageClassifier

from common.user_input import UserInputError

__all__ = ["LeNet", "LeNetClassifier"]


class LeNet(nn.Module):
    """Conv(6, 5) -> pool -> Conv(16, 5) -> pool -> 120 -> 84 -> classes."""

    explainable_layers = ("conv1", "conv2")  # the two conv blocks, low to high

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int] = (32, 32)) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, 6, 5), nn.ReLU(inplace=True))
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True))
        self.pool2 = nn.MaxPool2d(2)
        # Each 5x5 valid conv trims 4 pixels, each pool halves: 32 -> 28 -> 14 -> 10 -> 5.
        height, width = (((size - 4) // 2 - 4) // 2 for size in image_size)
        if min(height, width) < 1:
            raise UserInputError(f"LeNet needs images of at least 16x16 pixels, got {image_size}.")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * height * width, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        return self.classifier(x)


class LeNetClassifier(ImageClassifier):
    """The LeNet recipe. Args: see ``ImageClassifier``."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        channels, height, width = self.input_shape
        self.net = LeNet(channels, self.num_classes, (height, width))
