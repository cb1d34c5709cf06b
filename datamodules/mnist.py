"""MNIST: 28x28 grayscale handwritten digits in 10 classes, the source's second benchmark for the MLP and CNN."""

from __future__ import annotations

from torchvision.datasets import MNIST

from datamodules.image_datamodule import ImageDataModule

__all__ = ["MNISTDataModule"]


class MNISTDataModule(ImageDataModule):
    """MNIST from torchvision's format, a download, or a grayscale image folder.

    Normalisation statistics are the source's (SPEC section 2). The base's
    training augmentation is CIFAR-style (flips, colour jitter) and the source
    trained MNIST without any, so the MNIST configs set ``augment: false``: a
    flipped 2 or 5 is no longer the same digit.
    """

    torchvision_dataset = MNIST
    torchvision_folder = "MNIST"
    channels = 1
    default_mean = (0.1307,)
    default_std = (0.3081,)
