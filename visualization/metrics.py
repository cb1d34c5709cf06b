"""Scores of a saliency map against ground truth, as opposed to explanations themselves.

:func:`pointing_game` asks whether a map peaks on the object; the
faithfulness curves (:mod:`visualization.faithfulness`) ask whether the model
uses what a map shows.
"""

from __future__ import annotations

from torch import Tensor

from visualization.attributions import EPS

__all__ = ["pointing_game"]


def pointing_game(cams: Tensor, masks: Tensor) -> float:
    """Share of images whose CAM maximum falls inside the object mask.

    The pointing game (Zhang et al., https://arxiv.org/abs/1608.00507) is a
    cheap faithfulness check: a map that peaks on the background hints at a
    shortcut. A constant map (e.g. all zeros) does not point anywhere and
    counts as a miss; ties between maxima go to the first in row-major order.

    Args:
        cams: ``[N, H, W]`` saliency maps.
        masks: ``[N, H, W]`` boolean object masks of the same size.

    Returns:
        Hits divided by ``N``, in ``[0, 1]``.

    Raises:
        ValueError: The shapes differ, are not ``[N, H, W]``, or ``N`` is 0.
    """
    if cams.dim() != 3 or cams.shape != masks.shape:
        raise ValueError(
            f"cams {tuple(cams.shape)} and masks {tuple(masks.shape)} must both "
            "be [N, H, W] with the same shape.\n"
            "HINT: upsample the CAMs to the mask size (gradcam() returns input size)."
        )
    if cams.shape[0] == 0:
        raise ValueError("pointing_game needs at least one image, got 0.")
    flat = cams.detach().float().flatten(1)
    peak = flat.argmax(dim=1)
    hit = masks.flatten(1).bool().gather(1, peak[:, None])[:, 0]
    pointing = (flat.max(dim=1).values - flat.min(dim=1).values) > EPS
    return (hit & pointing).float().mean().item()
