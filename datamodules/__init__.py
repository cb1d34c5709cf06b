"""Where images come from: sources, splits and augmentation."""

from datamodules.cifar10 import CIFAR10DataModule
from datamodules.image_datamodule import ImageDataModule

__all__ = ["CIFAR10DataModule", "ImageDataModule"]
