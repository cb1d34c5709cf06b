"""What the pictures cost: interpretability dumps and loss plots as a share of a CNN epoch.

    python -m benchmarks.interpretability_cost [--data ../shared/cifar10-jpg] [--limit 1000]

Trains the CNN of ``configs/cnn.yaml`` (batch 64, Adam 1e-3) for one epoch
twice on the same data: without picture callbacks, then with
``InterpretabilityDumps`` (every epoch, conv1..conv3, one probe per class),
``LossPlots`` and ``FaithfulnessScores`` (its defaults, but scored in this one
epoch; its share is also given per epoch at its default ``every_n_epochs``). Each callback's drawing is timed where it runs, so the share is
not buried in the run-to-run noise of a shared machine. ``--limit`` keeps that
many training images per class (the dumps cost the same at any data size; the
epoch shrinks), and the table extrapolates the share to the full 50,000 images.
``--no-augment`` trains without augmentation. ``--threads`` sets torch's CPU
threads for the whole run (both epochs): on cores shared with other processes,
two threads wait on each other and an epoch can take ten times as long, which
would shrink the share for the wrong reason. The goal is under 3 % of an epoch for all of them together.
"""

from __future__ import annotations

import argparse
import inspect
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks import FaithfulnessScores, InterpretabilityDumps, LossPlots
from datamodules import CIFAR10DataModule
from datamodules.image_folder import IMAGE_SUFFIXES
from lightning_modules import CNNClassifier

FULL_TRAIN_IMAGES = 50_000  # CIFAR-10's training split; 10 % of it is held out for validation
FAITHFULNESS_EVERY = inspect.signature(FaithfulnessScores).parameters["every_n_epochs"].default


class TimedDump:
    """Mixin for a ``ProbeSchedule`` callback: adds up the seconds and the calls of its ``_probe``."""

    seconds = 0.0
    calls = 0

    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        start = time.perf_counter()
        super()._probe(trainer, pl_module)
        self.seconds += time.perf_counter() - start
        self.calls += 1


class TimedDumps(TimedDump, InterpretabilityDumps):
    """InterpretabilityDumps, timed."""


class TimedFaithfulness(TimedDump, FaithfulnessScores):
    """FaithfulnessScores, timed."""


class TimedLossPlots(LossPlots):
    """LossPlots that adds up the seconds of its drawing."""

    seconds = 0.0

    def _draw(self, trainer: L.Trainer) -> None:
        start = time.perf_counter()
        super()._draw(trainer)
        self.seconds += time.perf_counter() - start


class EpochTimer(L.Callback):
    """Wall time of the training epoch including its validation (put it last)."""

    seconds = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self._start


def subset(data: Path, per_class: int, into: Path) -> Path:
    """``into/train/<class>/`` with links to the first ``per_class`` images of each class."""
    for class_dir in sorted(p for p in (data / "train").iterdir() if p.is_dir()):
        target = into / "train" / class_dir.name
        target.mkdir(parents=True)
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:per_class]
        for path in files:
            (target / path.name).symlink_to(path.resolve())
    return into


def run_epoch(datamodule: CIFAR10DataModule, log_dir: Path, callbacks: list, **limits: int) -> float:
    """Seconds of one training epoch (with validation) of the CNN."""
    L.seed_everything(0, verbose=False)
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=1,
        **limits,
        accelerator="cpu",
        logger=TensorBoardLogger(log_dir, name="bench"),
        callbacks=[*callbacks, timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(CNNClassifier(num_classes=datamodule.num_classes), datamodule)
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/cifar10-jpg")
    parser.add_argument("--limit", type=int, help="training images per class (default: all)")
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--threads", type=int, help="torch CPU threads for both epochs (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data = subset(args.data, args.limit, Path(tmp) / "data") if args.limit else args.data
        images = sum(1 for _ in (data / "train").rglob("*") if _.suffix.lower() in IMAGE_SUFFIXES)
        datamodule = CIFAR10DataModule(
            data_dir=str(data), val_size=images // 10, batch_size=64, augment=not args.no_augment
        )
        start = time.perf_counter()
        datamodule.setup("fit")  # decode once; both runs share the images
        print(f"decoded {images} images in {time.perf_counter() - start:.1f} s; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")

        # The first steps of a process build kernels and caches: pay that outside the measurements.
        run_epoch(datamodule, Path(tmp) / "logs", [], limit_train_batches=10, limit_val_batches=2)
        plain = run_epoch(datamodule, Path(tmp) / "logs", [])
        dumps = TimedDumps(["conv1", "conv2", "conv3"], every_n_epochs=1)
        plots = TimedLossPlots()
        # Scored in this epoch to be timed; the config scores every FAITHFULNESS_EVERY epochs.
        scores = TimedFaithfulness(["conv1", "conv2", "conv3"], every_n_epochs=1)
        with_pictures = run_epoch(datamodule, Path(tmp) / "logs", [dumps, plots, scores])

    scale = FULL_TRAIN_IMAGES / images
    rows = [
        ("epoch without pictures", plain, None),
        ("epoch with pictures", with_pictures, None),
        (f"InterpretabilityDumps ({dumps.calls} dump)", dumps.seconds, dumps.seconds / plain),
        ("LossPlots (1 redraw)", plots.seconds, plots.seconds / plain),
        (f"FaithfulnessScores ({scores.calls} scoring)", scores.seconds, scores.seconds / plain),
        (f"  per epoch at every_n_epochs={FAITHFULNESS_EVERY}", scores.seconds / FAITHFULNESS_EVERY,
         scores.seconds / FAITHFULNESS_EVERY / plain),
    ]
    print(f"\n{'what':<34} {'seconds':>8} {'share':>8} {'share, full data':>17}")
    for name, seconds, share in rows:
        shares = f"{100 * share:>7.2f}% {100 * share / scale:>16.2f}%" if share is not None else ""
        print(f"{name:<34} {seconds:>8.2f} {shares}")
    print(f"\n{images} training images ({images - images // 10} trained on, {images // 10} validated), "
          f"augmentation {'off' if args.no_augment else 'on'}; 'full data' scales the epoch to {FULL_TRAIN_IMAGES}.")


if __name__ == "__main__":
    main()
