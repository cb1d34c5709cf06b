"""Input pipeline images/s: ours (decoded once, batched augmentation) against the reference.

The reference opens each JPEG with PIL and runs the per-image torchvision
transforms (SPEC section 2) in a DataLoader. Ours gathers uint8 batches from the
in-memory tensor and augments them in one vectorised pass, in the training
process. Both produce augmented, float training batches; no model runs.

Every pipeline is measured ``--repeats`` times in interleaved rounds and the
median is reported with its range: the machine is shared, and a round that
collided with other work should not decide the figure. ``--threads 1 2``
also times our augmentation on two intra-op threads (``BatchAugment``'s
``cpu_threads``; one is the default, see why there).

    python -m benchmarks.input_pipeline --steps 100
    python -m benchmarks.input_pipeline --threads 1 2 --reference-workers 0
"""

from __future__ import annotations

import os
import statistics
import time

from benchmarks.common import base_parser, images_per_second, machine_line, print_table, reference_loader
from datamodules import CIFAR10DataModule
from datamodules.augment import BatchAugment


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--reference-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="intra-op threads of our augmentation")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians reported")
    args = parser.parse_args()
    print(f"{machine_line()}; load average {os.getloadavg()[0]:.1f} at start")

    runs = {}
    for workers in args.reference_workers:
        loader = reference_loader(args.data, args.batch_size, workers, limit=None)
        runs[f"reference: PIL + per-image transforms, {workers} workers, batch {args.batch_size}"] = (
            loader, args.steps, lambda batch: None)

    start = time.perf_counter()
    datamodules = {b: CIFAR10DataModule(data_dir=args.data, batch_size=b, num_workers=0) for b in args.batch_sizes}
    for datamodule in datamodules.values():
        datamodule.setup("fit")
    ready = (time.perf_counter() - start) / len(datamodules)
    for batch_size, datamodule in datamodules.items():
        for threads in args.threads:
            augment = BatchAugment(cpu_threads=threads)

            def step(batch, augment=augment) -> None:
                augment(batch[0].float().div_(255))

            runs[f"ours: uint8 in memory + batched augmentation, 1 process, batch {batch_size}, "
                 f"{threads} thread(s)"] = (datamodule.train_dataloader(), max(1, args.steps * args.batch_size // batch_size), step)

    speeds = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (loader, steps, step) in runs.items():
            speeds[name].append(images_per_second(loader, steps, args.warmup, step))
    reference = statistics.median(speeds[next(iter(runs))])
    print(f"our data ready in {ready:.1f} s (decode or cache) per datamodule")
    print_table(f"input pipeline, augmented training batches, median of {args.repeats} interleaved rounds",
                ["pipeline", "images/s", "range", "x reference (1st row)"],
                [(name, statistics.median(v), f"{min(v):,.0f}-{max(v):,.0f}", statistics.median(v) / reference)
                 for name, v in speeds.items()])
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
