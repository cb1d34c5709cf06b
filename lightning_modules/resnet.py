"""ResNet18 adapted to 32x32 images, with an optional attention block after each residual stage.

torchvision's ResNet18 (optionally with its ImageNet weights), changed for
CIFAR-sized inputs: the 7x7 stride-2 stem becomes a newly initialised 3x3
stride-1 conv and the max-pool goes, so layer1..layer4 see 32, 16, 8 and 4
pixels. With ``attention="cbam"`` a CBAM module follows each stage (``cbam.layer1`` ..
``cbam.layer4``; another kind is named after itself, ``eca.layer1`` ...), outside
the residual blocks, so the pretrained blocks and their skip connections are
untouched. The classifier is a new Linear(512, classes).

Layer names are torchvision's (``conv1, bn1, layer1..layer4, fc``) and are public:
Grad-CAM targets and the unfreeze schedule address them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from lightning_modules.attention import alias_arguments, attention_name, create_attention
from lightning_modules.base import ImageClassifier

from common.user_input import UserInputError

__all__ = ["CifarResNet18", "ResNet18Classifier", "ResNet18CBAMClassifier", "PretrainedWeightsError"]

STAGES = ("layer1", "layer2", "layer3", "layer4")


class PretrainedWeightsError(UserInputError):
    """ImageNet weights were asked for but could not be found or downloaded."""


def imagenet_resnet18() -> nn.Module:
    """torchvision's ResNet18 with ImageNet weights, from the torch hub cache or a download.

    Raises:
        PretrainedWeightsError: offline and not cached; names where the file belongs.
    """
    weights = ResNet18_Weights.IMAGENET1K_V1
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return resnet18(weights=weights)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a corrupt file is a RuntimeError
        raise PretrainedWeightsError(
            f"Could not load the ImageNet weights for ResNet18: {error}.\n"
            f"HINT: download {weights.url} on a machine with network and place it at {target} "
            "(or set TORCH_HOME), or train from scratch with --model.pretrained false."
        ) from error


class CifarResNet18(nn.Module):
    """ResNet18 with a 3x3 stride-1 stem, no max-pool and an optional attention block per stage.

    The blocks sit in a ``ModuleDict`` named after their kind (``cbam``, ``se`` ...), so
    checkpoint keys and unfreeze schedules name it as before (``cbam``); ``attention``
    holds that name, or ``None``.
    """

    explainable_layers = STAGES  # each residual stage's output, low to high

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        pretrained: bool = False,
        attention: str | None = "cbam",
        rd_ratio: int = 16,
    ) -> None:
        super().__init__()
        self.attention = attention_name(attention)
        base = imagenet_resnet18() if pretrained else resnet18()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = base.bn1
        self.relu = base.relu
        self.layer1, self.layer2, self.layer3, self.layer4 = base.layer1, base.layer2, base.layer3, base.layer4
        widths = [getattr(self, name)[-1].bn2.num_features for name in STAGES]
        if self.attention is not None:
            blocks = {name: create_attention(self.attention, width, rd_ratio) for name, width in zip(STAGES, widths)}
            self.add_module(self.attention, nn.ModuleDict(blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        blocks = self.attention_blocks()
        for name in STAGES:
            x = getattr(self, name)(x)
            if blocks is not None:
                x = blocks[name](x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def new_modules(self) -> list[str]:
        """Names of the modules that never come from ImageNet (stem, attention, classifier)."""
        return ["conv1", "fc"] + ([self.attention] if self.attention is not None else [])

    def attention_blocks(self) -> nn.ModuleDict | None:
        """The attention block of each stage by stage name, or ``None`` without attention."""
        return None if self.attention is None else self.get_submodule(self.attention)


class ResNet18Classifier(ImageClassifier):
    """ResNet18 for 32x32 images, with the attention block after each stage chosen by name.

    Args:
        pretrained: Start from torchvision's ImageNet weights (needs network or
            the weights file in the torch hub cache).
        backbone_lr: When set, the pretrained layers train at this learning rate
            and the new modules (stem, attention, classifier) at the optimiser's
            own: discriminative learning rates in one optimiser.
        attention: The block after each residual stage (``<attention>.layerN``): ``none``,
            or a name of ``lightning_modules.attention.ATTENTION`` (``se``, ``cbam``, ``eca``,
            ``gc``, ``ge``, ``coord``).
        rd_ratio: Channel reduction of the attention's bottleneck (C -> C / rd_ratio).
        **kwargs: See ``ImageClassifier``.
    """

    accepts_any_image_size = True  # adaptive average pooling before fc

    def __init__(
        self,
        pretrained: bool = False,
        backbone_lr: float | None = None,
        attention: str | None = None,
        rd_ratio: int = 16,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if backbone_lr is not None and backbone_lr <= 0:
            raise UserInputError(
                f"model.backbone_lr={backbone_lr} must be positive.\nHINT: e.g. --model.backbone_lr 1e-5, "
                "or leave it unset for one learning rate."
            )
        self.backbone_lr = backbone_lr
        self.net = CifarResNet18(self.in_channels, self.num_classes, pretrained, attention, rd_ratio)

    def parameter_groups(self) -> list[dict]:
        if self.backbone_lr is None:
            return super().parameter_groups()
        new = {id(p) for name in self.net.new_modules() for p in self.net.get_submodule(name).parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in trainable if id(p) in new], "name": "new"},
            {"params": [p for p in trainable if id(p) not in new], "lr": self.backbone_lr, "name": "pretrained"},
        ]


class ResNet18CBAMClassifier(ResNet18Classifier):
    """``ResNet18Classifier(attention="cbam")`` under its old name, so old configs and checkpoints load.

    Args:
        **kwargs: See ``ResNet18Classifier``.
    """

    def __init__(self, **kwargs) -> None:
        alias_arguments(kwargs, attention="cbam")
        super().__init__(attention="cbam", **kwargs)
