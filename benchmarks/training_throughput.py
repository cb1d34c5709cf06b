"""Training images/s: our ``fit`` against a plain PyTorch loop, and fp32 against bf16 and bf16 + compile.

Two tables per model, in one run (``--tables``):

``precision``: the bare step and our ``fit`` (channels_last) in fp32, in bf16
autocast and in bf16 autocast with ``torch.compile``, with what compiling cost
and after how many steps it pays back. The goal is a ``fit`` at 85 % or more of
the bare bf16 step.

``pipeline``: for the same batch size and optimiser:

- bare step: forward+backward+Adam on random tensors already in memory (the ceiling);
- reference loop: PIL decode + per-image transforms in a DataLoader, plain loop;
- plain loop on our pipeline: uint8 tensors + batched augmentation, plain loop;
- our fit: the LightningModule under a Lightning Trainer with our datamodule.

"our fit / plain loop on our pipeline" is Lightning's own overhead.

    python -m benchmarks.training_throughput --steps 60
    python -m benchmarks.training_throughput --tables precision --models cnn resnet18 --batch-size 128
"""

from __future__ import annotations

import contextlib
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
from lightning_modules import CNNClassifier, ResNet18CBAMClassifier, ResNet18Classifier

MODELS = {"cnn": CNNClassifier, "resnet18": ResNet18Classifier, "resnet_cbam": ResNet18CBAMClassifier}
# (label, Lightning precision, compile): the rows of the precision table.
PRECISIONS = {"fp32": ("32-true", False), "bf16": ("bf16-mixed", False), "bf16 + compile": ("bf16-mixed", True)}


def make_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, prepare=lambda x: x, precision: str = "32-true"):
    """One optimiser step; under ``bf16-mixed`` the forward and loss run in CPU bf16 autocast, as Lightning's plugin does."""
    def step(batch) -> None:
        images, labels = batch
        optimizer.zero_grad(set_to_none=True)
        with _autocast(precision):
            loss = F.cross_entropy(net(prepare(images)), labels)
        loss.backward()
        optimizer.step()

    return step


def _autocast(precision: str):
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bare_step(cls, channels_last: bool, batch_size: int, steps: int, warmup: int) -> float:
    return bare_step_seconds(cls, "32-true", False, batch_size, steps, warmup, channels_last)[0]


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


def our_fit(cls, datamodule: CIFAR10DataModule, channels_last: bool, args, precision: str = "32-true",
            compile: bool = False) -> float:
    """images/s of our ``fit`` (Trainer, datamodule, augmentation) after the warm-up."""
    timer = _StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator="cpu", precision=precision, max_steps=args.warmup + args.steps, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer],
    )
    model = cls(num_classes=datamodule.num_classes, channels_last=channels_last, compile=compile)
    trainer.fit(model, datamodule=datamodule)
    return timer.images / (timer.end - timer.start)


def bare_step_seconds(cls, precision: str, compile: bool, batch_size: int, steps: int, warmup: int,
                      channels_last: bool = True) -> tuple[float, float]:
    """(images/s of the bare step, seconds the warm-up cost beyond its steps: the compile)."""
    model = cls(channels_last=channels_last, compile=compile)
    model.configure_model()
    images = torch.rand(batch_size, 3, 32, 32)
    labels = torch.randint(0, 10, (batch_size,))
    # Adam, as the fit it is compared with (the models' default optimiser) and the pipeline table's bare step.
    step = make_step(model, torch.optim.Adam(model.parameters(), lr=1e-3), precision=precision)
    start = time.perf_counter()
    step((images, labels))  # the first step compiles, if anything does
    first = time.perf_counter() - start
    speed = images_per_second(iter(lambda: (images, labels), None), steps, max(warmup - 1, 0), step)
    return speed, max(first - batch_size / speed, 0.0)


def precision_table(name: str, cls, datamodule: CIFAR10DataModule, args) -> None:
    """Bare step and fit in fp32, bf16 and bf16 + compile; the compile's payback in steps."""
    bare, fit, compile_seconds = {}, {}, {}
    for _ in range(args.repeats):  # round-robin, best of each: the machine is shared
        for label, (precision, compiled) in PRECISIONS.items():
            speed, warmup_cost = bare_step_seconds(cls, precision, compiled, args.batch_size, args.steps, args.warmup)
            bare[label] = max(bare.get(label, 0.0), speed)
            compile_seconds.setdefault(label, warmup_cost)  # round one's: later rounds reuse dynamo's cache
            fit[label] = max(fit.get(label, 0.0), our_fit(cls, datamodule, True, args, precision, compiled))
    rows = []
    for label in PRECISIONS:
        rows.append((f"bare step, {label}", bare[label], f"{bare[label] / bare['fp32']:.2f}x", ""))
        rows.append((f"our fit, {label}", fit[label], f"{fit[label] / fit['fp32']:.2f}x", f"{fit[label] / bare[label]:.0%}"))
    print_table(f"{name}: training images/s by precision, channels_last, batch {args.batch_size}, "
                f"{args.steps} timed steps, best of {args.repeats}",
                ["run", "images/s", "x fp32", "fit / its bare step"], rows)
    step_saving = args.batch_size / fit["bf16"] - args.batch_size / fit["bf16 + compile"]
    paid = (f"pays back after {compile_seconds['bf16 + compile'] / step_saving:,.0f} steps"
            if step_saving > 0 else "never pays back (no faster per step)")
    print(f"{name}: our bf16 fit = {fit['bf16'] / bare['bf16']:.0%} of the bare bf16 step (goal 85 %); "
          f"compile cost {compile_seconds['bf16 + compile']:.0f} s and {paid} "
          f"({len(datamodule.train_set) // args.batch_size} steps an epoch here)")


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet_cbam"], choices=list(MODELS))
    parser.add_argument("--tables", nargs="+", default=["pipeline", "precision"], choices=["pipeline", "precision"])
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
        if "precision" in args.tables:
            precision_table(name, cls, datamodule, args)
        if "pipeline" not in args.tables:
            continue
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
