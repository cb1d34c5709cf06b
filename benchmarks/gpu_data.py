"""The GPU check's data: generated images for the smoke run, or the carried CIFAR-10 copy laid out.

Split from ``benchmarks/gpu_check.py``. The device machine cannot see ``../shared``: what
``benchmarks/gpu_prepare.sh`` packed into ``.gpu_check/`` is unpacked and tiled to the sizes the
check's plan asks for.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from benchmarks.common import REPO

if TYPE_CHECKING:
    from benchmarks.gpu_check import Plan

PREPARED = REPO / ".gpu_check"  # filled by benchmarks/gpu_prepare.sh


# ---- data -------------------------------------------------------------------------------


def write_generated_images(folder: Path, classes: int = 3, per_class: int = 4, seed: int = 0, size: int = 16) -> Path:
    """``folder/train/<class>/*.png``: noise around a class colour, for the CPU smoke run.

    16x16, not CIFAR's 32x32: the same code paths at a quarter of the ResNet's work (the
    recipe row's pictures and scores were most of the smoke run's time).
    """
    rng = np.random.default_rng(seed)
    for label in range(classes):
        target = folder / "train" / f"class{label}"
        target.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.normal((label + 1) * 255 / (classes + 1), 40, size=(size, size, 3)).clip(0, 255)
            Image.fromarray(pixels.astype(np.uint8), "RGB").save(target / f"{index:04d}.png")
    return folder


def unpack(archive: Path, folder: Path) -> Path:
    """Extract the carried ``train/<class>/*.jpg`` archive into ``folder``."""
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(folder, filter="data")
        else:  # Python < 3.12 without the backported filters
            tar.extractall(folder)
    return folder


def lay_out(carried: Path, data: Path, train_per_class: int, test_per_class: int) -> dict[str, int]:
    """An image folder ``data/{train,test}/<class>`` of hard links to the carried images.

    ``train`` holds ``train_per_class`` files per class: the carried ones, repeated
    when fewer were carried. ``test`` holds the first ``test_per_class`` of each
    class again: a stand-in, since only training images travel (its accuracy
    says nothing; that ``test`` runs is the point).

    Returns:
        Counts of distinct carried images and of training files laid out.
    """
    distinct = laid = 0
    for class_dir in sorted(p for p in (carried / "train").iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if p.is_file())
        distinct += len(files)
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            target = data / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                source = files[index % len(files)]
                _link(source, target / f"{index // len(files):02d}_{source.name}")
            laid += count if split == "train" else 0
    return {"distinct": distinct, "train_files": laid}


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)


def prepare_data(args: argparse.Namespace, sizes: Plan) -> tuple[Path, str]:
    """The image folder every row reads, and a line that says what it holds."""
    data = args.work / "data"
    for stale in (data, args.work / "carried", args.work / "lightning_logs"):  # rows read version_0
        shutil.rmtree(stale, ignore_errors=True)
    if args.smoke:
        carried = write_generated_images(args.work / "carried")
        what = "generated noise images"
    else:
        carried = unpack(args.archive, args.work / "carried")
        what = f"real CIFAR-10 training JPEGs from {args.archive.name}"
    counts = lay_out(carried, data, sizes.train_per_class, sizes.test_per_class)
    tiled = counts["train_files"] > counts["distinct"]
    line = (f"data: {counts['train_files']:,} training files ({counts['train_files'] - sizes.val_size:,} trained, "
            f"{sizes.val_size:,} validated) from {counts['distinct']:,} {what}"
            + (", tiled (hard links)" if tiled else ", each once")
            + f"; test: {sizes.test_per_class} training images per class again (a stand-in)")
    return data, line
