"""Channel and spatial attention blocks: squeeze-and-excitation and CBAM.

SE: Hu et al., "Squeeze-and-Excitation Networks" (arXiv:1709.01507).
CBAM: Woo et al., "CBAM: Convolutional Block Attention Module" (arXiv:1807.06521).

Both only rescale their input, so they can be dropped after a pretrained stage
without changing the shape the next stage expects. Freshly initialised, their
gate logits are small, the sigmoid gates sit near 0.5 and the block scales its
input by about a half; training moves the gates where they help.

The layer that produces each gate's logits starts with small weights
(``GATE_INIT_STD``): with PyTorch's default init, CBAM's max-pooled
descriptors push gates as far as 0.15 or 0.85 on real activations, which is not
the "about a half everywhere" start that keeps pretrained features intact.

Submodules follow one vocabulary (``fc1, act, fc2, gate``) so that a forward
hook on ``gate`` reads the attention itself (channel weights ``[N, C, 1, 1]`` or
a spatial map ``[N, 1, H, W]``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from user_input import UserInputError

__all__ = ["SqueezeExcite", "ChannelAttention", "SpatialAttention", "CBAM"]

# Standard deviation of the weights that produce gate logits: small enough that
# every gate starts within a few hundredths of 0.5, large enough to break symmetry.
GATE_INIT_STD = 1e-2


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
        x_se = self.mlp(x.mean(dim=(2, 3)))
        return x * self.gate(x_se[:, :, None, None])


class ChannelAttention(_ChannelGate):
    """CBAM's channel half: average- and max-pooled descriptors share one MLP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_avg = self.mlp(x.mean(dim=(2, 3)))
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
        x_avg = x.mean(dim=1, keepdim=True)
        # The max by index, not amax: the same values, and a backward that routes each gradient to
        # the argmax instead of comparing the whole input with the maximum and dividing by the ties
        # (a fifth of the CBAM block's training time on CPU). Ties only arise between ReLU zeros,
        # whose gradient the ReLU drops either way.
        x_max = x.max(dim=1, keepdim=True).values
        return x * self.gate(self.conv(torch.cat([x_avg, x_max], dim=1)))


class CBAM(nn.Module):
    """Channel attention, then spatial attention."""

    def __init__(self, channels: int, rd_ratio: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, rd_ratio)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
