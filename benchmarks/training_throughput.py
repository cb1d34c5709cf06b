"""Training images/s: our ``fit`` against a plain PyTorch loop on the reference pipeline.

Prints, for the CNN and ResNet18+CBAM at the same batch size and optimiser:

- bare step: forward+backward+Adam on random tensors already in memory (the ceiling);
- reference loop: PIL decode + per-image transforms in a DataLoader, plain loop;
- plain loop on our pipeline: uint8 tensors + batched augmentation, plain loop;
- our fit: the LightningModule under a Lightning Trainer with our datamodule.

"our fit / plain loop on our pipeline" is Lightning's own overhead.

    python -m benchmarks.training_throughput --steps 60
"""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F

from benchmarks.common import (
    base_parser,
    images_per_second,
    machine_line,
    print_table,
    reference_loader,
)
from datamodules import CIFAR10DataModule
from lightning_modules import CNNClassifier, ResNet18CBAMClassifier

MODELS = {"cnn": CNNClassifier, "resnet_cbam": ResNet18CBAMClassifier}


def make_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, prepare=lambda x: x):
    def step(batch) -> None:
        images, labels = batch
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(prepare(images)), labels).backward()
        optimizer.step()

    return step


def bare_step(cls, channels_last: bool, batch_size: int, steps: int, warmup: int) -> float:
    model = cls(channels_last=channels_last)
    model.configure_model()
    images = torch.rand(batch_size, 3, 32, 32)
    labels = torch.randint(0, 10, (batch_size,))
    step = make_step(model, torch.optim.Adam(model.parameters(), lr=1e-3))
    return images_per_second(iter(lambda: (images, labels), None), steps, warmup, step)


def reference_loop(cls, args, num_workers: int) -> float:
    model = cls()  # the reference normalises in its transform: feed the bare network
    loader = reference_loader(args.data, args.batch_size, num_workers, limit=None)
    step = make_step(model.net, torch.optim.Adam(model.parameters(), lr=1e-3))
    return images_per_second(loader, args.steps, args.warmup, step)


def plain_loop_on_our_pipeline(cls, datamodule: CIFAR10DataModule, channels_last: bool, args) -> float:
    model = cls(channels_last=channels_last)
    model.configure_model()
    augment = datamodule.augmenter

    def prepare(images: torch.Tensor) -> torch.Tensor:
        return augment(images.float().div_(255))

    step = make_step(model, torch.optim.Adam(model.parameters(), lr=1e-3), prepare)
    return images_per_second(datamodule.train_dataloader(), args.steps, args.warmup, step)


class _StepTimer(L.Callback):
    """Times the training batches after a warm-up, as the loops above are timed."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.images, self.start, self.end = warmup, 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.images += len(batch[0])
            self.end = time.perf_counter()


def our_fit(cls, datamodule: CIFAR10DataModule, channels_last: bool, args) -> float:
    timer = _StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=args.warmup + args.steps, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )
    model = cls(num_classes=datamodule.num_classes, channels_last=channels_last)
    trainer.fit(model, datamodule=datamodule)
    return timer.images / (timer.end - timer.start)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--reference-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each figure is the best round")
    args = parser.parse_args()

    datamodule = CIFAR10DataModule(data_dir=args.data, batch_size=args.batch_size, num_workers=0)
    start = time.perf_counter()
    datamodule.setup("fit")
    print(f"{machine_line()}\nour pipeline: {len(datamodule.train_set)} training images in memory after "
          f"{time.perf_counter() - start:.1f} s (decode or cache)")

    for name in args.models:
        cls = MODELS[name]
        runs = {f"reference loop, PIL + per-image transforms, {w} workers (NCHW)": (reference_loop, (cls, args, w))
                for w in args.reference_workers}
        for channels_last in (False, True):
            layout = "channels_last" if channels_last else "NCHW"
            runs[f"bare step on random tensors ({layout}): the ceiling"] = (
                bare_step, (cls, channels_last, args.batch_size, args.steps, args.warmup))
            runs[f"plain loop on our pipeline ({layout})"] = (plain_loop_on_our_pipeline, (cls, datamodule, channels_last, args))
            runs[f"our fit ({layout})"] = (our_fit, (cls, datamodule, channels_last, args))
        # Round-robin rounds, best of each: this machine is shared, and a round
        # that collided with other work says nothing about the code.
        best = dict.fromkeys(runs, 0.0)
        for _ in range(args.repeats):
            for label, (function, function_args) in runs.items():
                best[label] = max(best[label], function(*function_args))
        reference = max(v for k, v in best.items() if k.startswith("reference"))
        rows = [(label, speed, speed / reference) for label, speed in best.items()]
        print_table(f"{name}: training images/s, batch {args.batch_size}, {args.steps} timed steps, best of {args.repeats}",
                    ["pipeline", "images/s", "x best reference"], rows)
        for layout in ("NCHW", "channels_last"):
            ours, bare = best[f"our fit ({layout})"], best[f"bare step on random tensors ({layout}): the ceiling"]
            plain = best[f"plain loop on our pipeline ({layout})"]
            print(f"{name} {layout}: our fit = {ours / reference:.2f}x the best reference loop, {ours / bare:.0%} of "
                  f"the bare step, {ours / plain:.0%} of the plain loop on our pipeline (Lightning overhead)")


if __name__ == "__main__":
    main()
