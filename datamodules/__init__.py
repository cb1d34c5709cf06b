"""Where images come from: sources, splits and augmentation."""

from datamodules.cifar10 import CIFAR10DataModule
from datamodules.image_datamodule import ImageDataModule
from datamodules.mnist import MNISTDataModule

__all__ = ["CIFAR10DataModule", "ImageDataModule", "MNISTDataModule"]
