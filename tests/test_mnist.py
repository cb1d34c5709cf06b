"""MNIST: torchvision's on-disk format and grayscale image folders both become N x 1 x 28 x 28 uint8."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from datamodules import MNISTDataModule


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file, the format of MNIST's raw files: magic, big-endian sizes, bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_torchvision_mnist(root: Path, train: int = 40, test: int = 10) -> Path:
    """``root/MNIST/raw`` with random digits, laid out as torchvision's downloader leaves it."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)
    return root


def test_torchvision_format_gains_a_channel_axis(tmp_path):
    data = MNISTDataModule(fake_torchvision_mnist(tmp_path), val_size=8, augment=False)
    assert data.source == "torchvision"
    assert data.num_classes == 10
    assert data.input_shape == (1, 28, 28)
    data.setup("fit")
    data.setup("test")
    assert data.train_set.images.shape == (32, 1, 28, 28)
    assert data.val_set.images.shape == (8, 1, 28, 28)
    assert data.test_set.images.shape == (10, 1, 28, 28)
    assert data.train_set.images.dtype == torch.uint8


def test_grayscale_image_folder(tiny_mnist):
    data = MNISTDataModule(tiny_mnist, val_size=6, augment=False)
    assert data.source == "folder"
    assert data.classes == ["bird", "cat", "ship"]
    assert data.input_shape == (1, 28, 28)
    data.setup("fit")
    assert data.train_set.images.shape == (66, 1, 28, 28)
    images, labels = data.on_after_batch_transfer(next(iter(data.val_dataloader())), 0)
    assert images.shape == (6, 1, 28, 28) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_mnist_normalisation_is_the_sources():
    assert MNISTDataModule.default_mean == (0.1307,)
    assert MNISTDataModule.default_std == (0.3081,)
