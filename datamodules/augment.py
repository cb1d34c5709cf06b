"""The reference CIFAR-10 training augmentation, applied to a whole batch at once.

SPEC section 2, in order: random crop 32 with 4 pixels of zero padding,
horizontal flip (p = 0.5), colour jitter (brightness, contrast, saturation 0.2,
hue 0.1) and random rotation up to 15 degrees (nearest, zero fill). The
reference draws each image's parameters in the loader process and transforms
PIL images one by one; here every image still gets its own draws, but each
step is one vectorised tensor op over the batch, on whatever device the batch
is on (so on a GPU nothing is done per image or on the host).

Faithful details worth knowing:
- The crop's zero padding is jittered like the rest of the image (contrast
  lifts it towards the mean), the rotation's corners are not: the same order
  as the reference, so crop and rotation stay two steps.
- torchvision's ``ColorJitter`` applies its four adjustments in a random order
  per call; here each image draws its own order too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BatchAugment", "rgb_to_hsv", "hsv_to_rgb"]

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` RGB in [0, 1] to HSV, each channel in [0, 1]."""
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(
        maxc == r, (g - b) / safe, torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
    )
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    saturation = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack((hue, saturation, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_hsv``."""
    hue, saturation, value = x.unbind(dim=1)
    sector = hue * 6.0
    # Each channel is value minus a piecewise-linear dip, the standard closed form.
    def channel(n: float) -> torch.Tensor:
        k = (n + sector) % 6.0
        return value - value * saturation * (torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))

    return torch.stack((channel(5.0), channel(3.0), channel(1.0)), dim=1)


class BatchAugment(nn.Module):
    """Random crop with padding, flip, colour jitter and rotation, per image, on a batch.

    Args:
        padding: Zero padding before the random crop back to the input size.
        flip_p: Probability of a horizontal flip.
        brightness: Brightness factor drawn from [1 - b, 1 + b].
        contrast: Contrast factor drawn from [1 - c, 1 + c].
        saturation: Saturation factor drawn from [1 - s, 1 + s].
        hue: Hue shift drawn from [-h, h], in turns of the colour wheel (at most 0.5).
        degrees: Rotation angle drawn from [-degrees, degrees].

    Raises:
        ValueError: an argument outside its range (named, with the range).
    """

    def __init__(
        self,
        padding: int = 4,
        flip_p: float = 0.5,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.1,
        degrees: float = 15.0,
    ) -> None:
        super().__init__()
        checks = {
            "padding": (padding, 0, math.inf),
            "flip_p": (flip_p, 0.0, 1.0),
            "brightness": (brightness, 0.0, 1.0),
            "contrast": (contrast, 0.0, 1.0),
            "saturation": (saturation, 0.0, 1.0),
            "hue": (hue, 0.0, 0.5),
            "degrees": (degrees, 0.0, 180.0),
        }
        for name, (value, low, high) in checks.items():
            if not low <= value <= high:
                raise ValueError(f"BatchAugment {name}={value} is outside [{low}, {high}].")
        self.padding = int(padding)
        self.flip_p = flip_p
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.degrees = degrees

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``x`` (float ``[N, C, H, W]`` in [0, 1]); each image draws its own parameters."""
        n = x.shape[0]

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return torch.rand(n, *shape, generator=generator, device=x.device) * (high - low) + low

        x = self._crop_and_flip(x, uniform)
        if x.shape[1] == 3 and (self.brightness or self.contrast or self.saturation or self.hue):
            x = self._jitter(x, uniform, generator)
        if self.degrees:
            x = self._rotate(x, uniform(-self.degrees, self.degrees))
        return x

    def _crop_and_flip(self, x: torch.Tensor, uniform) -> torch.Tensor:
        """Gather each image's window from the zero-padded batch; flipped images read columns backwards."""
        n, _, h, w = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p)) if p else x
        top = (uniform(0, 1) * (2 * p + 1)).long().clamp_max(2 * p)  # uniform over 0..2p, as RandomCrop
        left = (uniform(0, 1) * (2 * p + 1)).long().clamp_max(2 * p)
        flip = uniform(0, 1) < self.flip_p
        rows = top[:, None] + torch.arange(h, device=x.device)  # [N, H]
        columns = torch.arange(w, device=x.device).expand(n, w)
        columns = torch.where(flip[:, None], columns.flip(1), columns) + left[:, None]  # [N, W]
        index = torch.arange(n, device=x.device)[:, None, None]
        # Advanced indexing puts the gathered axes first: [N, H, W, C] -> [N, C, H, W].
        return padded.permute(0, 2, 3, 1)[index, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)

    def _jitter(self, x: torch.Tensor, uniform, generator: torch.Generator | None) -> torch.Tensor:
        n = x.shape[0]
        factors = {
            0: uniform(1 - self.brightness, 1 + self.brightness, 1, 1, 1),
            1: uniform(1 - self.contrast, 1 + self.contrast, 1, 1, 1),
            2: uniform(1 - self.saturation, 1 + self.saturation, 1, 1, 1),
            3: uniform(-self.hue, self.hue),
        }
        # Each image's own order of the four adjustments (ColorJitter permutes per call).
        order = torch.rand(n, 4, generator=generator, device=x.device).argsort(dim=1)
        x = x.contiguous()
        for position in range(4):
            for op in range(4):
                chosen = (order[:, position] == op).nonzero().squeeze(1)
                if chosen.numel():
                    x[chosen] = self._adjust(op, x[chosen], factors[op][chosen])
        return x

    @staticmethod
    def _adjust(op: int, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        if op == 0:  # brightness: blend with black
            return (x * factor).clamp_(0, 1)
        if op == 1:  # contrast: blend with the image's mean grey level
            mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
            return (factor * x + (1 - factor) * mean).clamp_(0, 1)
        if op == 2:  # saturation: blend with the grey image
            return (factor * x + (1 - factor) * _grayscale(x)).clamp_(0, 1)
        hsv = rgb_to_hsv(x)  # hue: turn the colour wheel
        hsv[:, 0] = (hsv[:, 0] + factor[:, None, None]) % 1.0
        return hsv_to_rgb(hsv)

    @staticmethod
    def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
        """Rotate each image about its centre; nearest neighbour, zero fill, like RandomRotation."""
        radians = degrees * (math.pi / 180.0)
        cos, sin = radians.cos(), radians.sin()
        zero = torch.zeros_like(cos)
        theta = torch.stack((torch.stack((cos, -sin, zero), 1), torch.stack((sin, cos, zero), 1)), 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
