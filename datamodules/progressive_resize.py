"""Progressive resizing: train the early epochs on smaller images, the last ones at full size.

A convolution's cost grows with the pixels it sees, so an epoch at 24x24 costs about
(24/32)^2 = 0.56 of one at 32x32. fastai and FFCV spend the saving on more epochs: the
network learns coarse shapes cheaply at first and fine detail at the end, at the size it is
validated and tested at. Here the size is a pure function of the epoch and the fit's length,
so every DDP rank agrees on it and a resumed fit trains each epoch at the size the straight
one did, with nothing to save.

Only networks that end in a global pooling (the ResNet18 recipes) accept other sizes; the
classifiers with a fixed ``Flatten -> Linear`` head refuse the option when the fit starts.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from common.user_input import UserInputError

__all__ = ["ProgressiveResize", "resize_batch"]


class ProgressiveResize:
    """Training image size, from ``min_scale`` of the full size up to the full size, by epoch.

    The fit's epochs run at ``min_scale`` until ``ramp_start`` of them have passed, grow
    linearly until ``ramp_end``, and stay at full size after it (FFCV's schedule, with the
    ramp given as shares of ``max_epochs`` so ``--trainer.max_epochs N`` scales it). Sizes are
    rounded to the nearest multiple of ``multiple`` pixels (as FFCV does), so a ramp passes
    through a few sizes, not one per epoch: each new size is a new shape for cuDNN's autotuner
    and ``torch.compile``. Validation, test and predict always see full-size images.

    Args:
        min_scale: The first epochs' side length, as a share of the full one, in (0, 1].
        ramp_start: Share of the epochs trained at ``min_scale`` before the size grows, in [0, 1].
        ramp_end: Share of the epochs after which every epoch is full size, in [ramp_start, 1].
        multiple: Sizes are multiples of this many pixels (at least 1); never above the full size.
    """

    def __init__(self, min_scale: float = 0.75, ramp_start: float = 0.25, ramp_end: float = 0.75,
                 multiple: int = 4) -> None:
        if not 0.0 < min_scale <= 1.0:
            raise UserInputError(
                f"progressive_resize min_scale={min_scale} must be in (0, 1]: the first epochs' size as a "
                "share of the full size.\nHINT: e.g. min_scale: 0.75 (24x24 for CIFAR-10's 32x32)."
            )
        if not 0.0 <= ramp_start <= ramp_end <= 1.0:
            raise UserInputError(
                f"progressive_resize needs 0 <= ramp_start <= ramp_end <= 1, got ramp_start={ramp_start}, "
                f"ramp_end={ramp_end}.\nHINT: shares of the fit's epochs, e.g. ramp_start: 0.25, ramp_end: 0.75."
            )
        if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
            raise UserInputError(f"progressive_resize multiple={multiple!r} must be an integer >= 1 (pixels).")
        self.min_scale = float(min_scale)
        self.ramp_start = float(ramp_start)
        self.ramp_end = float(ramp_end)
        self.multiple = multiple

    def settings(self) -> dict[str, float | int]:
        """The constructor's arguments, as plain values (for hyperparameters and checkpoints)."""
        return {name: getattr(self, name) for name in ("min_scale", "ramp_start", "ramp_end", "multiple")}

    def __repr__(self) -> str:
        return f"ProgressiveResize({', '.join(f'{k}={v}' for k, v in self.settings().items())})"

    def scale_at(self, epoch: int, max_epochs: int) -> float:
        """The share of the full side length that epoch ``epoch`` (0-based) of ``max_epochs`` trains at."""
        if max_epochs is None or max_epochs < 1:
            raise UserInputError(
                f"progressive_resize sizes its ramp from the fit's epochs, but max_epochs={max_epochs}.\n"
                "HINT: set --trainer.max_epochs, or leave --data.progressive_resize out."
            )
        done = epoch / max_epochs
        if done <= self.ramp_start:
            return self.min_scale
        if done >= self.ramp_end:
            return 1.0
        return self.min_scale + (1.0 - self.min_scale) * (done - self.ramp_start) / (self.ramp_end - self.ramp_start)

    def size_at(self, epoch: int, max_epochs: int, full: tuple[int, int]) -> tuple[int, int]:
        """``(height, width)`` of epoch ``epoch``'s training images, for full-size images of ``full``."""
        scale = self.scale_at(epoch, max_epochs)
        if scale == 1.0:
            return full
        nearest = (math.floor(side * scale / self.multiple + 0.5) * self.multiple for side in full)
        return tuple(min(side, max(self.multiple, size)) for side, size in zip(full, nearest))

    def epoch_sizes(self, max_epochs: int, full: tuple[int, int]) -> list[tuple[int, int]]:
        """Every epoch's size, for a fit of ``max_epochs``: what a benchmark prices and a log shows."""
        return [self.size_at(epoch, max_epochs, full) for epoch in range(max_epochs)]


def resize_batch(images: Tensor, size: tuple[int, int]) -> Tensor:
    """``images`` ``[N, C, H, W]`` in [0, 1], resized to ``size`` (bilinear, antialiased when shrinking)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False).clamp_(0.0, 1.0)
