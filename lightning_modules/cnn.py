"""The main small CNN, with an optional attention block after each conv block.

Three blocks of Conv 3x3 -> BatchNorm -> ReLU (-> attention) -> MaxPool 2,
widths 32/64/128 (32x32 -> 16 -> 8 -> 4), then Linear 512 -> Dropout 0.5 ->
classes. Blocks are named ``conv1..conv3`` (their outputs are the post-ReLU,
post-attention feature maps that Grad-CAM and the feature-map plots address);
the attention module of a block is named after its kind (``convN.se``,
``convN.cbam``, ``convN.eca`` ...: ``lightning_modules.attention.ATTENTION``), the
same classes the ResNet uses, so the pictures find their gates the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from lightning_modules.attention import alias_arguments, attention_name, create_attention
from lightning_modules.base import ImageClassifier

from common.user_input import UserInputError

__all__ = ["CNN", "ConvBlock", "CNNClassifier", "CNNSEClassifier", "CNNCBAMClassifier"]


class ConvBlock(nn.Sequential):
    """Conv 3x3 -> BatchNorm -> ReLU, then the ``attention`` block when one is named."""

    def __init__(
        self, in_channels: int, out_channels: int, attention: str | None = None, rd_ratio: int = 16
    ) -> None:
        layers: dict[str, nn.Module] = {
            "conv": nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            "bn": nn.BatchNorm2d(out_channels),
            "relu": nn.ReLU(inplace=True),
        }
        block = create_attention(attention, out_channels, rd_ratio)
        if block is not None:
            layers[attention] = block
        super().__init__(OrderedDict(layers))


class CNN(nn.Module):
    """Three conv blocks and a two-layer classifier (about 1.15 M parameters on CIFAR-10)."""

    # The blocks Grad-CAM, feature maps and faithfulness scores explain, low to high.
    explainable_layers = ("conv1", "conv2", "conv3")

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int] = (32, 32),
        widths: Sequence[int] = (32, 64, 128),
        hidden: int = 512,
        dropout: float = 0.5,
        attention: str | None = None,
        rd_ratio: int = 16,
    ) -> None:
        super().__init__()
        self.attention = attention_name(attention)
        if len(widths) != 3:
            raise UserInputError(f"widths={list(widths)} must name 3 block widths (conv1..conv3).")
        self.conv1 = ConvBlock(in_channels, widths[0], attention, rd_ratio)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = ConvBlock(widths[0], widths[1], attention, rd_ratio)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = ConvBlock(widths[1], widths[2], attention, rd_ratio)
        self.pool3 = nn.MaxPool2d(2)
        height, width = (size // 8 for size in image_size)
        if min(height, width) < 1:
            raise UserInputError(f"The CNN needs images of at least 8x8 pixels, got {image_size}.")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(widths[2] * height * width, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.pool3(self.conv3(x))
        return self.classifier(x)


class CNNClassifier(ImageClassifier):
    """The CNN recipe, with the attention block chosen by name.

    Args:
        widths: Channels of conv1..conv3.
        hidden: Width of the hidden linear layer.
        dropout: Dropout before the last layer.
        attention: The block after each conv block's ReLU (``convN.<attention>``): ``none``,
            or a name of ``lightning_modules.attention.ATTENTION`` (``se``, ``cbam``, ``eca``,
            ``gc``, ``ge``, ``coord``).
        rd_ratio: Channel reduction of the attention's bottleneck (C -> C / rd_ratio).
        **kwargs: See ``ImageClassifier``.
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128),
        hidden: int = 512,
        dropout: float = 0.5,
        attention: str | None = None,
        rd_ratio: int = 16,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        channels, height, width = self.input_shape
        self.net = CNN(channels, self.num_classes, (height, width), widths, hidden, dropout, attention, rd_ratio)


class CNNSEClassifier(CNNClassifier):
    """``CNNClassifier(attention="se")`` under its old name, so old configs and checkpoints load.

    Args:
        se_ratio: Channel reduction of the SE bottleneck (the base's ``rd_ratio``).
        **kwargs: See ``CNNClassifier``.
    """

    def __init__(self, se_ratio: int = 16, **kwargs) -> None:
        alias_arguments(kwargs, attention="se", rd_ratio=se_ratio)
        super().__init__(attention="se", rd_ratio=se_ratio, **kwargs)


class CNNCBAMClassifier(CNNClassifier):
    """``CNNClassifier(attention="cbam")`` under its old name, so old configs and checkpoints load.

    Args:
        rd_ratio: Channel reduction of CBAM's channel-attention bottleneck.
        **kwargs: See ``CNNClassifier``.
    """

    def __init__(self, rd_ratio: int = 16, **kwargs) -> None:
        alias_arguments(kwargs, attention="cbam")
        super().__init__(attention="cbam", rd_ratio=rd_ratio, **kwargs)
