"""Attention blocks that follow a feature map and rescale it, chosen by name (:func:`create_attention`).

SE: Hu et al., "Squeeze-and-Excitation Networks" (arXiv:1709.01507).
CBAM: Woo et al., "CBAM: Convolutional Block Attention Module" (arXiv:1807.06521).
ECA: Wang et al., "ECA-Net: Efficient Channel Attention for Deep CNNs" (arXiv:1910.03151).
GC: Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond" (arXiv:1904.11492).
GE: Hu et al., "Gather-Excite: Exploiting Feature Context in CNNs" (arXiv:1810.12348).
Coordinate attention: Hou et al., "Coordinate Attention for Efficient Mobile Network Design" (arXiv:2103.02907).

All keep their input's shape, so they can be dropped after a pretrained stage
without changing what the next stage expects. Freshly initialised they are
close to a fixed transform: the gated ones scale their input by about a half
everywhere, GC adds almost nothing; training moves them where they help.

The layer that produces each gate's logits (GC: its added term) starts with
small weights (``GATE_INIT_STD``): with PyTorch's default init, CBAM's
max-pooled descriptors push gates as far as 0.15 or 0.85 on real activations,
which is not the "about a half everywhere" start that keeps pretrained features intact.

Gates are public by name: every module that multiplies its input by a gate in
(0, 1) computes that gate in a submodule named ``gate`` (CBAM: ``channel.gate``
and ``spatial.gate``), whose output a forward hook reads and the pictures draw.
Its shape says what it weighs: ``[N, C, 1, 1]`` channels (SE, ECA, CBAM's
channel half), ``[N, 1, H, W]`` positions (CBAM's spatial half), ``[N, C, h, w]``
both (GE's coarse map before upsampling, coordinate attention's product of its
row and column gates). GC has no gate: its fusion is additive. What it attends
with is the softmax over positions that pools its context, ``context``
(``[N, 1, H, W]``, summing to 1 over each image), which is not a gate.

Submodules follow one vocabulary (``fc1, act, fc2, gate``) where the papers have
the same parts, as timm does.

Written here rather than taken from timm's ``create_attn`` (checked against timm
1.0.31, ``tests/test_attention_timm.py``): its ECA and its ``gca`` are these ECA
and GC, but its ``gc`` scales instead of adding, its ``se`` has biases and rounds
the bottleneck up to 8 channels and its CBAM puts a BatchNorm in the spatial half
(not SPEC 3's), its ``ge`` is SE with biases by default and its GE cannot be built
in 1.0.31; with those set aside, a dependency (and huggingface_hub with it) would
bring two small blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from common.user_input import UserInputError

__all__ = [
    "ATTENTION",
    "CBAM",
    "ChannelAttention",
    "CoordinateAttention",
    "EfficientChannelAttention",
    "GatherExcite",
    "GlobalContext",
    "SpatialAttention",
    "NONE",
    "SqueezeExcite",
    "alias_arguments",
    "attention_name",
    "create_attention",
]

# Standard deviation of the weights that produce gate logits: small enough that
# every gate starts within a few hundredths of 0.5, large enough to break symmetry.
GATE_INIT_STD = 1e-2


def _mean(x: torch.Tensor, dim: int | tuple[int, ...], keepdim: bool = False) -> torch.Tensor:
    """``x.mean(dim)`` written as a sum and a scale, for the speed of its backward on CPU.

    The same numbers and gradients (bit for bit at the networks' power-of-two sizes, in bf16 and
    fp32: ``tests/test_attention.py``), but the gradient is broadcast, not materialised:
    ``mean``'s backward writes a full NCHW tensor, and adding it to the channels_last gradient
    of the block's other path took a strided loop, half of an SE block's training step on CPU.
    """
    dims = (dim,) if isinstance(dim, int) else dim
    return x.sum(dim=dims, keepdim=keepdim) * (1.0 / math.prod(x.shape[d] for d in dims))


def _reduced(channels: int, rd_ratio: int) -> int:
    if channels < 1 or rd_ratio < 1:
        raise UserInputError(f"channels ({channels}) and rd_ratio ({rd_ratio}) must be positive.")
    return max(1, channels // rd_ratio)


class _ChannelGate(nn.Module):
    """The bottleneck MLP and sigmoid gate SE and CBAM's channel half share (``fc1, act, fc2, gate``).

    The last layer starts near zero (``GATE_INIT_STD``), so every gate starts at about 0.5.
    """

    def __init__(self, channels: int, rd_ratio: int = 16) -> None:
        super().__init__()
        rd_channels = _reduced(channels, rd_ratio)
        self.fc1 = nn.Linear(channels, rd_channels, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(rd_channels, channels, bias=False)
        self.gate = nn.Sigmoid()
        nn.init.normal_(self.fc2.weight, std=GATE_INIT_STD)

    def mlp(self, x_pooled: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x_pooled)))


class SqueezeExcite(_ChannelGate):
    """Global average pool -> bottleneck MLP -> sigmoid -> channel-wise scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = self.mlp(_mean(x, (2, 3)))
        return x * self.gate(x_se[:, :, None, None])


class ChannelAttention(_ChannelGate):
    """CBAM's channel half: average- and max-pooled descriptors share one MLP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_avg = self.mlp(_mean(x, (2, 3)))
        x_max = self.mlp(F.adaptive_max_pool2d(x, 1).flatten(1))  # = amax over (H, W); see SpatialAttention
        return x * self.gate((x_avg + x_max)[:, :, None, None])


class SpatialAttention(nn.Module):
    """CBAM's spatial half: a 7x7 conv over per-pixel channel mean and max."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise UserInputError(f"kernel_size must be a positive odd number, got {kernel_size}.")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.gate = nn.Sigmoid()
        nn.init.normal_(self.conv.weight, std=GATE_INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_avg = _mean(x, 1, keepdim=True)
        # The max by index, not amax: the same values, and a backward that routes each gradient to
        # the argmax instead of comparing the whole input with the maximum and dividing by the ties
        # (a fifth of the CBAM block's training time on CPU). Ties only arise between ReLU zeros,
        # whose gradient the ReLU drops either way.
        # Taken over the last dimension of an NHWC view: for a channels_last input (the configs' layout)
        # the backward's scatter then writes a channels_last gradient, which adds to the other paths'
        # quickly (see _mean). The same values as x.max(dim=1); autograd adds the block's three
        # gradient paths in another order, so the input's gradient can differ by a rounding.
        x_max = x.permute(0, 2, 3, 1).max(dim=-1).values[:, None]
        return x * self.gate(self.conv(torch.cat([x_avg, x_max], dim=1)))


class CBAM(nn.Module):
    """Channel attention, then spatial attention."""

    def __init__(self, channels: int, rd_ratio: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, rd_ratio)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class EfficientChannelAttention(nn.Module):
    """ECA: global average pool -> 1-D conv across neighbouring channels -> sigmoid -> channel-wise scale.

    No bottleneck (and so no reduction ratio): the paper's point is that SE's dimensionality
    reduction hurts, and that each channel's gate needs only its ``k`` neighbours, with
    ``k`` the odd number nearest ``(log2(C) + 1) / 2`` (3 for 32 and 64 channels, 5 for 128).
    """

    def __init__(self, channels: int, gamma: int = 2, beta: int = 1) -> None:
        super().__init__()
        _reduced(channels, 1)  # refuses a non-positive channel count
        t = int(abs(math.log2(channels) + beta) / gamma)
        kernel_size = max(t if t % 2 else t + 1, 3)
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.gate = nn.Sigmoid()
        nn.init.normal_(self.conv.weight, std=GATE_INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.conv(_mean(x, (2, 3))[:, None, :])  # [N, 1, C]: channels as a sequence
        return x * self.gate(logits.view(x.shape[0], -1, 1, 1))


class SpatialSoftmax(nn.Module):
    """Softmax over all positions of a one-channel map, keeping its ``[N, 1, H, W]`` shape (a hook point)."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.flatten(2).softmax(dim=-1).view_as(logits)


class GlobalContext(nn.Module):
    """GC block: attention-pooled context -> bottleneck with LayerNorm -> added to every position.

    The paper's default configuration (attention pooling, add fusion): a 1x1 conv and a
    softmax over positions weigh the pixels into one context vector, a ``C -> C/r ->
    C`` transform with LayerNorm and ReLU turns it into a per-channel offset, and the
    offset is *added* everywhere. No gate: ``context`` holds the pooling weights.
    """

    def __init__(self, channels: int, rd_ratio: int = 16) -> None:
        super().__init__()
        rd_channels = _reduced(channels, rd_ratio)
        self.conv_attn = nn.Conv2d(channels, 1, 1, bias=False)  # a bias would cancel in the softmax
        self.context = SpatialSoftmax()
        self.fc1 = nn.Linear(channels, rd_channels)
        self.norm = nn.LayerNorm(rd_channels)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(rd_channels, channels)
        # The paper zero-initialises the last layer so the block starts as the identity; a small
        # start does the same to a few hundredths and still passes gradients to the layers before it.
        nn.init.normal_(self.fc2.weight, std=GATE_INIT_STD)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.context(self.conv_attn(x)).flatten(2)  # [N, 1, HW]
        pooled = (x.flatten(2) @ weights.transpose(1, 2)).flatten(1)  # [N, C]
        offset = self.fc2(self.act(self.norm(self.fc1(pooled))))
        return x + offset[:, :, None, None]


class GatherExcite(nn.Module):
    """GE-θ+: depthwise strided convs gather each channel over an ``extent`` -> SE-style excite -> sigmoid.

    ``log2(extent)`` depthwise 3x3 stride-2 convs with BatchNorm (ReLU between) pool
    each channel over about ``extent x extent`` pixels; a ``C -> C/r -> C`` 1x1-conv
    bottleneck turns the coarse map into gate logits; the gate, nearest-upsampled, scales
    the input. Extent 8, not the paper's best "global": a global depthwise gather needs the
    feature size at construction, and 8 already reaches 1x1 at the 8x8 and 4x4 stages here.
    The gate hooked at ``gate`` is the coarse ``[N, C, H/8, W/8]`` map.
    """

    def __init__(self, channels: int, rd_ratio: int = 16, extent: int = 8) -> None:
        super().__init__()
        if extent < 2 or extent & (extent - 1):
            raise UserInputError(f"extent must be a power of 2 of at least 2, got {extent}.")
        rd_channels = _reduced(channels, rd_ratio)
        steps = int(math.log2(extent))
        layers: list[nn.Module] = []
        for step in range(steps):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False),
                       nn.BatchNorm2d(channels)]
            if step < steps - 1:
                layers.append(nn.ReLU(inplace=True))
        self.gather = nn.Sequential(*layers)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=False)
        self.gate = nn.Sigmoid()
        nn.init.normal_(self.fc2.weight, std=GATE_INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The gather in its weights' precision even under a bf16 autocast: on CPU the backward of a
        # bf16 depthwise conv took 14x the fp32 one's time (7x the whole fp32 conv), most of the
        # block's step; the gather is a sliver of the network's arithmetic either way.
        with torch.autocast(x.device.type, enabled=False):
            context = self.gather(x.to(self.gather[0].weight.dtype))
        gates = self.gate(self.fc2(self.act(self.fc1(context))))
        # Nearest upsampling commutes with the sigmoid: the coarse gate is the one applied.
        return x * F.interpolate(gates, size=x.shape[-2:], mode="nearest")


class ProductGate(nn.Module):
    """Sigmoid of row logits ``[N, C, H, 1]`` times sigmoid of column logits ``[N, C, 1, W]``: one hook point."""

    def forward(self, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(rows) * torch.sigmoid(columns)


class CoordinateAttention(nn.Module):
    """Coordinate attention: pool along rows and along columns -> shared bottleneck -> a gate per row and per column.

    The two strip descriptors (each channel's mean over every row, ``[N, C, H]``, and
    over every column, ``[N, C, W]``) share a ``C -> max(8, C/r)`` 1x1 conv with BatchNorm
    and h-swish, then split into one gate over rows and one over columns per channel; their
    product (hooked at ``gate``, ``[N, C, H, W]``) scales the input, so the block knows
    *where* along each axis as well as *which* channel. The paper's bottleneck uses r = 32;
    here r is the shared ``rd_ratio`` (16 by default), with the paper's floor of 8 channels.
    The 1x1 convs over the strips are ``Linear`` layers over the channels (the same
    weights): as convs over ``[N, C, H + W, 1]`` maps, CPU convolution and BatchNorm took a
    slow path for channels_last inputs.
    """

    def __init__(self, channels: int, rd_ratio: int = 16) -> None:
        super().__init__()
        rd_channels = max(8, _reduced(channels, rd_ratio))
        self.fc1 = nn.Linear(channels, rd_channels, bias=False)
        self.bn1 = nn.BatchNorm1d(rd_channels)
        self.act = nn.Hardswish()
        self.fc_h = nn.Linear(rd_channels, channels, bias=False)
        self.fc_w = nn.Linear(rd_channels, channels, bias=False)
        self.gate = ProductGate()
        nn.init.normal_(self.fc_h.weight, std=GATE_INIT_STD)
        nn.init.normal_(self.fc_w.weight, std=GATE_INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        strips = torch.cat([_mean(x, 3), _mean(x, 2)], dim=2)  # [N, C, H + W]
        y = self.fc1(strips.transpose(1, 2)).transpose(1, 2)  # [N, C/r, H + W]
        y = self.act(self.bn1(y)).transpose(1, 2)  # [N, H + W, C/r]
        rows = self.fc_h(y[:, :height]).transpose(1, 2)[:, :, :, None]  # [N, C, H, 1]
        columns = self.fc_w(y[:, height:]).transpose(1, 2)[:, :, None, :]  # [N, C, 1, W]
        return x * self.gate(rows, columns)


# Each block by the name `--model.attention` takes, which is also the name its modules get in the
# networks (`convN.<name>`, `<name>.layerN`); built from (channels, reduction ratio).
ATTENTION: dict[str, Callable[[int, int], nn.Module]] = {
    "se": SqueezeExcite,
    "cbam": CBAM,
    "eca": lambda channels, rd_ratio: EfficientChannelAttention(channels),  # no bottleneck to reduce
    "gc": GlobalContext,
    "ge": GatherExcite,
    "coord": CoordinateAttention,
}
NONE = "none"


def attention_name(name: str | None) -> str | None:
    """The registry's name for ``name`` (``None`` and ``"none"``: no attention).

    Raises:
        UserInputError: ``name`` is not registered; lists those that are.
    """
    if name is None or name == NONE:
        return None
    if name not in ATTENTION:
        raise UserInputError(
            f"attention={name!r} is not an attention block this project has.\n"
            f"HINT: use one of {[NONE, *ATTENTION]}, e.g. --model.attention eca."
        )
    return name


def create_attention(name: str | None, channels: int, rd_ratio: int = 16) -> nn.Module | None:
    """The attention block ``name`` for ``channels`` channels, or ``None`` for none (timm's ``create_attn``).

    Args:
        name: A key of ``ATTENTION``, ``"none"`` or ``None``.
        channels: Channels of the feature map it follows.
        rd_ratio: Channel reduction of the block's bottleneck (ignored by ECA, which has none).

    Raises:
        UserInputError: An unknown name (the message lists the known ones) or a non-positive ratio.
    """
    name = attention_name(name)
    return None if name is None else ATTENTION[name](channels, rd_ratio)


def alias_arguments(kwargs: dict, **fixed) -> dict:
    """``kwargs`` less the arguments an alias class fixes (``attention="se"``), refusing other values.

    An alias's saved hyperparameters repeat what it passed to its base class, so loading
    its checkpoint hands them back; a different value is a contradiction, not a choice.
    """
    for key, value in fixed.items():
        if key in kwargs and kwargs.pop(key) != value:
            raise UserInputError(
                f"This class fixes {key}={value!r}.\n"
                f"HINT: use the base class (CNNClassifier, ResNet18Classifier) with --model.{key} to choose it."
            )
    return kwargs
