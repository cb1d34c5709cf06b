"""Augmented images per second: the per-image PIL reference against decode-once + BatchAugment.

Reference: what the source did for every training image, every epoch: PIL opens and decodes the
JPEG, the per-image torchvision transforms of SPEC section 2 augment and normalise it, and the
results are stacked into a batch. Ours: the split is decoded once into a uint8 tensor (cached on
disk by ``load_image_folder``); each batch is gathered from it, converted to float, augmented by
``BatchAugment`` and normalised. Both run in this one process on the CPU, no model, no DataLoader.

    python benchmarks/augment_throughput.py                # ../shared/cifar10-jpg, 5,000 images
    python benchmarks/augment_throughput.py --cold         # also time a cold decode of the split

Rates are medians over interleaved repeats, because shared machines are noisy; the machine's
load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, against this checkout

from datamodules.augment import BatchAugment, reference_transform  # noqa: E402
from datamodules.image_folder import load_image_folder  # noqa: E402

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "cifar10-jpg",
                        help="folder holding train/<class>/*.jpg")
    parser.add_argument("--limit", type=int, default=5000,
                        help="images for the reference pass (a seeded random subset)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians reported")
    # One thread by default: the reference uses one core, and on a shared 2-core box two OpenMP
    # threads measured far slower than one for these small tensors (see BatchAugment's docs).
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--cold", action="store_true",
                        help="also decode the whole split into a fresh temporary cache and time it")
    return parser.parse_args()


def timed_rate(step: Callable[[], int], seconds: float) -> float:
    """Images/s of ``step`` (which returns how many images it made), after one warm-up call."""
    step()
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images += step()
    return images / (time.perf_counter() - start)


def reference_step(paths: list[Path], batch_size: int) -> Callable[[], int]:
    transform = reference_transform(CIFAR_MEAN, CIFAR_STD)
    position = 0

    def step() -> int:
        nonlocal position
        batch = []
        for _ in range(batch_size):
            with Image.open(paths[position % len(paths)]) as image:
                batch.append(transform(image.convert("RGB")))
            position += 1
        torch.stack(batch)  # the DataLoader's collate
        return batch_size

    return step


def batched_step(images: torch.Tensor, batch_size: int) -> Callable[[], int]:
    augment = BatchAugment()
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(0)

    def step() -> int:
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        batch = images[index].float().div_(255)  # uint8 gather, then float on the fly
        augment(batch, generator).sub_(mean).div_(std)
        return batch_size

    return step


def time_load(split: Path, cache_dir: Path | None) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    data = load_image_folder(split, cache_dir=cache_dir)
    return time.perf_counter() - start, data.images


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    split = args.data / "train"
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {args.threads} intra-op thread(s), load average "
          f"{os.getloadavg()[0]:.1f} at start")

    if args.cold:
        with tempfile.TemporaryDirectory() as tmp:
            cold, images = time_load(split, Path(tmp))
            warm, _ = time_load(split, Path(tmp))
        print(f"load_image_folder, {len(images)} images: cold decode {cold:.1f} s, from cache {warm:.1f} s")
    seconds, images = time_load(split, None)  # default cache location; decodes only the first time
    print(f"load_image_folder at the default cache location: {seconds:.1f} s for {len(images)} images")

    generator = torch.Generator().manual_seed(0)
    paths = sorted(split.glob("*/*.jpg"))
    paths = [paths[i] for i in torch.randperm(len(paths), generator=generator)[: args.limit]]

    pipelines: dict[tuple[str, int], Callable[[], int]] = {("reference: PIL + per-image transforms", 64): reference_step(paths, 64)}
    for batch_size in args.batch_sizes:
        pipelines[("cached uint8 + BatchAugment", batch_size)] = batched_step(images, batch_size)
    rates: dict[tuple[str, int], list[float]] = {key: [] for key in pipelines}
    for _ in range(args.repeats):
        for key, step in pipelines.items():
            rates[key].append(timed_rate(step, args.seconds))

    reference = statistics.median(next(iter(rates.values())))
    print(f"\n| pipeline | batch | images/s (median of {args.repeats}) | range | vs reference |")
    print("|---|---:|---:|---:|---:|")
    for (name, batch_size), values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {batch_size} | {median:,.0f} | {min(values):,.0f}-{max(values):,.0f} "
              f"| {median / reference:.1f}x |")
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
