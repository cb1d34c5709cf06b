"""CIFAR-10: 32x32 RGB images in 10 classes."""

from __future__ import annotations

from torchvision.datasets import CIFAR10

from datamodules.image_datamodule import ImageDataModule

__all__ = ["CIFAR10DataModule", "CIFAR10_MEAN", "CIFAR10_STD"]

# The reference recipe's normalisation statistics (SPEC section 2): the one place they are written.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 from torchvision's format, a download, or an image folder.

    Normalisation statistics are the reference recipe's (SPEC section 2).
    """

    torchvision_dataset = CIFAR10
    torchvision_folder = "cifar-10-batches-py"
    channels = 3
    default_mean = CIFAR10_MEAN
    default_std = CIFAR10_STD
