"""VGG with batch norm for 32x32 inputs, built from a layer table.

The source called its network VGG16 but used the VGG-11 table; here ``depth``
picks the real table of VGG-11, -13, -16 or -19. Five max-pools take 32x32
to 1x1, so the classifier is a single Linear(512, classes).
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.base import ImageClassifier

from common.user_input import UserInputError

__all__ = ["VGG", "VGG_CONFIGS", "VGGClassifier", "make_layers"]

# Integers are conv widths (3x3, padding 1); "M" is a 2x2 max-pool.
VGG_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_layers(config: list[int | str], in_channels: int) -> nn.Sequential:
    """Conv 3x3 -> BatchNorm -> ReLU for each width, MaxPool for each "M"."""
    layers: list[nn.Module] = []
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(in_channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(True)]
            in_channels = item
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``features`` (the conv stack) then ``fc``.

    ``explainable_layers``: the last ReLU of stages 2 and up (``features.12``,
    ``features.22``, ``features.32``, ``features.42`` for VGG-16: 16, 8, 4, 2 px);
    the first stage's 32 px maps are too close to the pixels to say much.
    """

    def __init__(self, depth: int, in_channels: int, num_classes: int, image_size: tuple[int, int] = (32, 32)):
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise UserInputError(f"VGG depth={depth} is not one of {sorted(VGG_CONFIGS)}.")
        config = VGG_CONFIGS[depth]
        self.features = make_layers(config, in_channels)
        stage_ends = [i - 1 for i, layer in enumerate(self.features) if isinstance(layer, nn.MaxPool2d)]
        self.explainable_layers = tuple(f"features.{i}" for i in stage_ends[1:])
        pools = config.count("M")
        height, width = (size // 2**pools for size in image_size)
        if min(height, width) < 1:
            raise UserInputError(f"VGG needs images of at least {2**pools}x{2**pools} pixels, got {image_size}.")
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(config[-2] * height * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.features(x)))


class VGGClassifier(ImageClassifier):
    """The VGG recipe.

    Args:
        depth: Which VGG layer table: 11, 13, 16 or 19.
        **kwargs: See ``ImageClassifier``.
    """

    def __init__(self, depth: int = 16, **kwargs) -> None:
        super().__init__(**kwargs)
        channels, height, width = self.input_shape
        self.net = VGG(depth, channels, self.num_classes, (height, width))
