"""Input pipeline images/s: ours (decoded once, batched augmentation) against the reference.

The reference opens each JPEG with PIL and runs the per-image torchvision
transforms (SPEC section 2) in a DataLoader. Ours gathers uint8 batches from the
in-memory tensor and augments them in one vectorised pass, in the training
process. Both produce augmented, float training batches; no model runs.

    python -m benchmarks.input_pipeline --steps 100
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import base_parser, images_per_second, machine_line, print_table, reference_loader
from datamodules import CIFAR10DataModule


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--reference-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    print(machine_line())

    rows = []
    reference_one_process = None
    for workers in args.reference_workers:
        loader = reference_loader(args.data, args.batch_size, workers, limit=None)
        speed = images_per_second(loader, args.steps, args.warmup, lambda batch: None)
        reference_one_process = reference_one_process or speed
        rows.append((f"reference: PIL + per-image transforms, {workers} workers, batch {args.batch_size}", speed))

    for batch_size in args.batch_sizes:
        datamodule = CIFAR10DataModule(data_dir=args.data, batch_size=batch_size, num_workers=0)
        start = time.perf_counter()
        datamodule.setup("fit")
        ready = time.perf_counter() - start
        augment = datamodule.augmenter

        def step(batch) -> None:
            augment(batch[0].float().div_(255))

        steps = max(1, args.steps * args.batch_size // batch_size)
        speed = images_per_second(datamodule.train_dataloader(), steps, args.warmup, step)
        rows.append((f"ours: uint8 in memory + batched augmentation, 1 process, batch {batch_size} "
                     f"(data ready in {ready:.1f} s)", speed))

    print_table("input pipeline, augmented training batches", ["pipeline", "images/s", "x reference (1 process)"],
                [(name, speed, speed / reference_one_process) for name, speed in rows])


if __name__ == "__main__":
    main()
