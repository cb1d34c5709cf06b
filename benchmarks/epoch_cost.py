"""Quiet seconds per epoch of shipped recipes, side by side, and what their full length costs.

Issue 32 counts a recipe's time as its epochs times the quiet seconds of one epoch, measured here:
each config is built exactly as ``cli.py fit --config`` builds it (network, optimiser, batch,
augmentation, precision choice), trains ``--steps`` batches after ``--warmup`` untimed ones, and
classifies validation batches in inference mode. The configs take turns for ``--rounds`` rounds and
each keeps its best round (this machine is shared; a round that collided with other work says
nothing about the code). An epoch is the training split at the training speed plus the validation
split at the inference speed; pictures and checkpoints are left out (a few percent, docs/performance.md).

    python -m benchmarks.epoch_cost --configs resnet18_fast resnet_cbam_fast --data ../shared/cifar10-jpg
    python -m benchmarks.epoch_cost --configs cnn_fast --threads 1 --budget-hours 1

``--progressive-resize 0.75`` adds a row per config for the same recipe with
``--data.progressive_resize`` (that ``min_scale``, the schedule's default ramp): its training speed is
measured at every size the schedule passes through, and its full run is the sum of its epochs, each
at its own size's speed (validation stays at full size).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import cli
from common.precision_choice import choose_precision
from datamodules.progressive_resize import ProgressiveResize
from benchmarks.common import DEFAULT_DATA, REPO, machine_line, print_table
from benchmarks.training_throughput import _StepTimer

QUIET_FLAGS = ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
               "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
               "--trainer.limit_val_batches", "0", *(arg for key in cli.STANDARD_CALLBACKS for arg in (f"--{key}", "null"))]


def _built(config: str, data: Path, steps: int, overrides: list[str] = ()) -> cli.ProjectCLI:
    """The config's model, datamodule and trainer, as ``fit`` builds them.

    ``run=False`` builds them without a subcommand, so without ``fit``'s automatic precision: it is
    chosen here the same way (``--override trainer.precision ...`` still wins).
    """
    # The run's folder (fit saves its config.yaml there) is a temporary one, not the caller's directory.
    args = ["--config", str(REPO / "configs" / f"{config}.yaml"), "--data.data_dir", str(data),
            "--trainer.default_root_dir", tempfile.mkdtemp(prefix="epoch_cost_"),
            "--trainer.max_steps", str(steps), "--trainer.precision", choose_precision("cpu").precision,
            *QUIET_FLAGS, *overrides]
    return cli.main(args, run=False)


def training_images_per_second(config: str, data: Path, steps: int, warmup: int, overrides: list[str] = ()) -> float:
    """The recipe's ``fit`` speed, after ``warmup`` untimed batches."""
    built = _built(config, data, warmup + steps, overrides)
    timer = _StepTimer(warmup)
    built.trainer.callbacks.append(timer)
    built.trainer.fit(built.model, datamodule=built.datamodule)
    return timer.images / (timer.end - timer.start)


def inference_images_per_second(config: str, data: Path, batches: int,
                                overrides: list[str] = ()) -> tuple[float, int, int, int, str, int]:
    """Validation speed in inference mode, the sizes of the training and validation splits, and the
    recipe's epochs, precision and image height (read from the same build, so none is built again to ask)."""
    built = _built(config, data, 1, overrides)
    model, datamodule = built.model, built.datamodule
    datamodule.setup("fit")
    model.configure_model()
    model.eval()
    loader = datamodule.val_dataloader()
    images, seen = [], 0
    while len(images) < batches + 1:  # a split smaller than that is gone through again
        for batch in loader:
            images.append(datamodule.on_after_batch_transfer(batch, 0)[0])
            if len(images) == batches + 1:
                break
    with torch.inference_mode(), built.trainer.precision_plugin.forward_context():
        model(images[0])  # warm-up
        start = time.perf_counter()
        for batch in images[1:]:
            model(batch)
            seen += len(batch)
        seconds = time.perf_counter() - start
    return (seen / seconds, len(datamodule.train_set), len(datamodule.val_set), int(built.trainer.max_epochs),
            built.trainer.precision, datamodule.input_shape[1])


def fixed_size_flags(size: int, full: int) -> list[str]:
    """``cli.py`` flags that train every epoch at ``size`` (a progressive schedule held at its start)."""
    key = "--data.progressive_resize"
    return [key, "datamodules.progressive_resize.ProgressiveResize", f"{key}.min_scale", str(size / full),
            f"{key}.ramp_start", "1.0", f"{key}.ramp_end", "1.0", f"{key}.multiple", "1"]


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["resnet18_fast", "resnet_cbam_fast"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding train/<class>/*.jpg")
    parser.add_argument("--steps", type=int, default=6, help="timed training batches per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--val-batches", type=int, default=4, help="timed validation batches per round")
    parser.add_argument("--rounds", type=int, default=2, help="the configs take turns; each keeps its best round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--budget-hours", type=float, default=4.0, help="the time goal a full run is held to")
    parser.add_argument("--progressive-resize", type=float, default=None, metavar="MIN_SCALE",
                        help="also price each config with data.progressive_resize at this min_scale")
    parser.add_argument("--override", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a setting for every config, as cli.py takes it (e.g. data.val_size 500)")
    args = parser.parse_args(argv)
    overrides = [arg for key, value in args.override for arg in (f"--{key}", value)]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    schedule = None if args.progressive_resize is None else ProgressiveResize(min_scale=args.progressive_resize)
    train, infer, sizes, epoch_sizes = {}, {}, {}, {}
    for _ in range(args.rounds):
        for config in args.configs:
            train[config] = max(train.get(config, 0.0),
                                training_images_per_second(config, args.data, args.steps, args.warmup, overrides))
            speed, *sizes[config] = inference_images_per_second(config, args.data, args.val_batches, overrides)
            infer[config] = max(infer.get(config, 0.0), speed)
            if schedule is None:
                continue
            full, epochs = sizes[config][4], sizes[config][2]
            epoch_sizes[config] = [height for height, _ in schedule.epoch_sizes(epochs, (full, full))]
            for size in sorted(set(epoch_sizes[config]) - {full}):  # full size: the shipped row's speed
                speed = training_images_per_second(config, args.data, args.steps, args.warmup,
                                                   [*overrides, *fixed_size_flags(size, full)])
                train[config, size] = max(train.get((config, size), 0.0), speed)
    rows, results = [], []
    for config in args.configs:
        train_images, val_images, epochs, _, full = sizes[config]
        variants = [(config, {full: train[config]}, [full] * epochs)]
        if schedule is not None:  # each epoch's training at its own size's speed
            speeds = {size: train.get((config, size), train[config]) for size in set(epoch_sizes[config])}
            variants.append((f"{config} + progressive_resize {schedule.min_scale:g}", speeds, epoch_sizes[config]))
        for name, speeds, each_epoch in variants:
            train_seconds = sum(train_images / speeds[size] for size in each_epoch)
            epoch_seconds = (train_seconds + epochs * val_images / infer[config]) / epochs
            total_hours = epochs * epoch_seconds / 3600
            results.append({"config": name, "train_images_per_second": epochs * train_images / train_seconds,
                            "train_images_per_second_by_size": speeds, "epoch_sizes": each_epoch,
                            "inference_images_per_second": infer[config], "epoch_seconds": epoch_seconds,
                            "epochs": epochs, "total_hours": total_hours})
            train_cell = ", ".join(f"{size} px: {speeds[size]:.1f}" for size in sorted(speeds)) if len(speeds) > 1 \
                else f"{speeds[full]:.1f}"
            rows.append([name, train_cell, f"{infer[config]:.1f}", f"{epoch_seconds:.0f}", epochs,
                         f"{total_hours:.2f}", f"{total_hours / args.budget_hours:.2f}"])
    print(machine_line())
    precision = sizes[args.configs[0]][3]
    print_table(f"quiet seconds per epoch, {precision}, {torch.get_num_threads()} threads, best of {args.rounds} rounds, "
                f"{args.steps} timed batches", ["config", "train img/s", "inference img/s", "s/epoch", "epochs",
                                                 "full run (h)", f"x the {args.budget_hours:g} h budget"], rows)
    if len(results) > 1:
        first = results[0]
        for other in results[1:]:
            print(f"{other['config']} / {first['config']}: epoch x{other['epoch_seconds'] / first['epoch_seconds']:.2f}, "
                  f"full run x{other['total_hours'] / first['total_hours']:.2f}")
    return results


if __name__ == "__main__":
    main()
