"""What the model sees of stored images: the one place that conversion is written.

Probe images are kept as uint8 (a quarter of float32's bytes in every
checkpoint). The pictures, the faithfulness scores, ``explain.py`` and the
inference timing all turn them into the model's input here, so none can forget
a step: when a copy forgot the pixel permutation of ``cnn_permuted.yaml``, the
scores were computed on images the model never saw. Augmentation is left out
on purpose: the same images are compared across epochs and checkpoints.

No Lightning import: the view is built from a datamodule's public attributes
(``permute_pixels``, ``permutation``) or from a checkpoint's data
hyperparameters, which Lightning stores under ``datamodule_hyper_parameters``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["ModelView", "seeded_permutation"]


def seeded_permutation(num_pixels: int, seed: int) -> Tensor:
    """The pixel permutation ``ImageDataModule.permutation`` draws for ``permutation_seed=seed``."""
    return torch.randperm(num_pixels, generator=torch.Generator().manual_seed(seed))


class ModelView:
    """Turn stored images ``[N, C, H, W]`` into the model's input: floats in ``[0, 1]``, pixel-permuted if the data are.

    Args:
        permutation: Index of the pixel each position takes (flattened ``H * W``), or ``None``.
    """

    def __init__(self, permutation: Tensor | None = None) -> None:
        self.permutation = None if permutation is None else torch.as_tensor(permutation).long().cpu()

    @classmethod
    def of_datamodule(cls, datamodule: Any, num_pixels: int) -> ModelView:
        """The view a datamodule's batches get (``permute_pixels``/``permutation``); plain for any other."""
        if getattr(datamodule, "permute_pixels", False):
            return cls(datamodule.permutation(num_pixels))
        return cls()

    @classmethod
    def of_checkpoint(cls, checkpoint: Mapping[str, Any], num_pixels: int) -> ModelView:
        """The view of the run that wrote ``checkpoint``, from its stored data hyperparameters.

        Checkpoints from before the probe state kept its view: Lightning saved
        the datamodule's ``permute_pixels`` and ``permutation_seed`` beside the weights.
        """
        data = checkpoint.get("datamodule_hyper_parameters") or {}
        if data.get("permute_pixels"):
            return cls(seeded_permutation(num_pixels, int(data.get("permutation_seed", 0))))
        return cls()

    def __call__(self, images: Tensor) -> Tensor:
        """Floats in ``[0, 1]`` (uint8 is divided by 255, floats are taken as they are), permuted if set."""
        x = images.float().div(255) if images.dtype == torch.uint8 else images
        if self.permutation is None:
            return x
        flat = x.flatten(2)
        if flat.shape[-1] != len(self.permutation):
            raise ValueError(
                f"The pixel permutation has {len(self.permutation)} positions, the images {flat.shape[-1]} "
                f"({tuple(x.shape[-2:])}).\nHINT: give images of the size the model was trained on."
            )
        return flat[:, :, self.permutation.to(flat.device)].view_as(x)

    def state_dict(self) -> dict[str, Tensor | None]:
        """What a callback keeps so ``explain.py`` sees the checkpoint's images as the run did."""
        return {"pixel_permutation": self.permutation}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ModelView | None:
        """The view kept in a callback's state, or ``None`` when the state predates it."""
        if "pixel_permutation" not in state:
            return None
        return cls(state["pixel_permutation"])
