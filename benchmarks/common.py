"""Shared pieces of the benchmarks: the reference pipeline, timing and tables.

The reference is the source's input pipeline: PIL decodes each JPEG, then
per-image torchvision transforms augment and normalise it, in a DataLoader.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from datamodules.cifar10 import CIFAR10_MEAN as CIFAR_MEAN, CIFAR10_STD as CIFAR_STD
from visualization.tables import markdown_table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "cifar10-jpg"


def reference_transform(mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD) -> transforms.Compose:
    """The source's training transform, one PIL image at a time (SPEC section 2)."""
    return transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
            transforms.RandomRotation(15),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def reference_loader(data: Path, batch_size: int, num_workers: int, limit: int | None, train: bool = True) -> DataLoader:
    """ImageFolder + PIL + per-image transforms, as the reference trains."""
    tf = reference_transform() if train else transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    dataset = datasets.ImageFolder(str(data / "train"), transform=tf)
    if limit is not None:
        dataset = Subset(dataset, torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit].tolist())
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=num_workers,
                      persistent_workers=num_workers > 0)


def images_per_second(batches: Iterable, steps: int, warmup: int, step: Callable[[object], None]) -> float:
    """Run ``step`` on ``warmup`` then ``steps`` batches; images/s over the timed part."""
    iterator = iter(batches)
    for _ in range(warmup):
        step(next(iterator))
    images = 0
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(iterator)
        step(batch)
        images += len(batch[0])
    return images / (time.perf_counter() - start)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table, so results paste straight into the README."""
    print(f"\n### {title}\n")
    print(markdown_table(header, [[f"{v:,.1f}" if isinstance(v, float) else v for v in row] for row in rows]))


def machine_line() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {gpu}; "
            f"torch {torch.__version__}")


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding train/<class>/*.jpg")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    return parser
