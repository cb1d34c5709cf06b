"""The GPU check's runs of ``cli.py``: the configs it times, its step timer, and the rows run as a user would.

Split from ``benchmarks/gpu_check.py``, which builds the table: the recipe with its unfreeze stages,
pictures and test; the DDP and test rows; and the timed ``fit`` of the throughput rows. Each row
returns its result text, or raises with what went wrong.
"""

from __future__ import annotations

import io
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml
from PIL import Image

from benchmarks.common import REPO
from benchmarks.training_throughput import _StepTimer

if TYPE_CHECKING:
    from benchmarks.gpu_check import Plan

RECIPE = REPO / "configs" / "resnet_cbam.yaml"


def _synchronize() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


# The standard callbacks (cli.STANDARD_CALLBACKS) that only draw or score at epoch ends:
# switched off (set to null) where a row times steps or stages.
PICTURE_KEYS = ("confusion_matrix", "mistakes", "pictures", "faithfulness")


def without_pictures(config: dict) -> dict:
    """The config with the drawing and scoring callbacks switched off, as ``--pictures null`` does."""
    return config | dict.fromkeys(PICTURE_KEYS)


# The models of the fit grid and the shipped config each runs (training_throughput may time more models).
FIT_CONFIGS = {"cnn": REPO / "configs" / "cnn.yaml", "resnet_cbam": RECIPE}


def fit_config(model: str, work: Path) -> Path:
    """The model's shipped config; a ResNet's unfreeze schedule becomes one stage, every layer from epoch 0.

    The bare step trains every layer, so ``fit / bare`` compares the same work; the recipe row
    times each stage of the shipped schedule. The picture callbacks are left out: they act at
    epoch ends and at the end of fit, after the timed steps (the recipe row draws them).
    """
    config = without_pictures(yaml.safe_load(FIT_CONFIGS[model].read_text()))
    for callback in config["trainer"].get("callbacks", []):
        if callback["class_path"].endswith("ProgressiveUnfreeze"):
            last = callback["init_args"]["stages"][-1]
            callback["init_args"]["stages"] = [{"epoch": 0, "train": "all", "lr": last["lr"]}]
    path = work / f"fit_{model}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class SyncedStepTimer(_StepTimer):
    """``training_throughput``'s timer, with the GPU drained where timing starts and stops.

    Named on the command line (``--trainer.callbacks+=benchmarks.gpu_cli_rows.SyncedStepTimer``);
    ``per_epoch`` restarts the warm-up at each epoch and keeps each epoch's (images, seconds), so
    an unfreeze stage change (new parameters, a DDP re-wrap) is not timed as a step.
    """

    def __init__(self, warmup: int, last: int, per_epoch: bool = False) -> None:
        super().__init__(warmup)
        self.last = last
        self.per_epoch = per_epoch
        self.epochs: list[tuple[int, float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.per_epoch:
            self.images, self.start, self.end = 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            _synchronize()
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.last:
            _synchronize()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.per_epoch:
            self.epochs.append((self.images, self.end - self.start))


def _run_cli(args: list[str]):
    """``cli.main(args)`` in this process; a user's exit code turns into an error for the row."""
    import cli

    try:
        return cli.main(args)
    except SystemExit as stop:
        raise RuntimeError(f"cli.py exited {stop.code}") from stop


def _timer(run) -> SyncedStepTimer:
    # By name: the CLI imports the class from its --trainer.callbacks path; should that module be
    # ``__main__`` somewhere (run as ``python -m``), its class would be another object.
    return next(c for c in run.trainer.callbacks if type(c).__name__ == SyncedStepTimer.__name__)


# ---- CLI runs -------------------------------------------------------------------------------


def cli(work: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python cli.py ARGS`` in ``work`` (hpc checkpoints and stray files land there)."""
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=work, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": python_path, **(env or {})}, timeout=timeout)


def _check_returncode(result: subprocess.CompletedProcess) -> None:
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise RuntimeError(f"exit {result.returncode}: {' / '.join(lines[-3:])}")


def _events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def expected_stages(config: Path, epochs: int) -> list[int]:
    """The ProgressiveUnfreeze stage index of each epoch, read from the config."""
    callbacks = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    (unfreeze,) = [c for c in callbacks if c["class_path"].endswith("ProgressiveUnfreeze")]
    starts = [stage["epoch"] for stage in unfreeze["init_args"]["stages"]]
    return [max(i for i, start in enumerate(starts) if start <= epoch) for epoch in range(epochs)]


def _stage_check(events, config: Path, epochs: int) -> str:
    seen = [int(s.value) for s in events.Scalars("unfreeze/stage")]
    wanted = expected_stages(config, epochs)
    if seen != wanted:
        raise RuntimeError(f"unfreeze stage by epoch {seen}, configured {wanted}")
    return f"stages by epoch {','.join(map(str, seen))} as configured"


def blank_pictures(events) -> tuple[int, list[str]]:
    """How many pictures were logged, and the tags of those that are blank (one colour covers 98 %)."""
    tags = events.Tags()["images"]
    blank = []
    count = 0
    for tag in tags:
        for event in events.Images(tag):
            count += 1
            pixels = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")).reshape(-1, 3)
            _, frequency = np.unique(pixels, axis=0, return_counts=True)
            if frequency.max() > 0.98 * len(pixels):
                blank.append(tag)
    return count, blank


def _common_flags(data: Path, work: Path, sizes: Plan, name: str, pretrained_flag: bool = True) -> list[str]:
    flags = ["--data.data_dir", str(data), "--data.download", "false", "--data.val_size", str(sizes.val_size),
             *(["--model.pretrained", "false"] if pretrained_flag else []),
             "--trainer.precision", sizes.cli_precision,
             "--trainer.enable_progress_bar", "false",
             "--trainer.logger.init_args.save_dir", str(work / "lightning_logs"),
             "--trainer.logger.init_args.name", name,
             "--trainer.accelerator", sizes.accelerator, "--data.batch_size", str(sizes.batch_size)]
    return flags


def recipe_row(data: Path, work: Path, sizes: Plan) -> str:
    """``configs/resnet_cbam.yaml`` as shipped (pretrained off, bf16-mixed): speed, stages, pictures."""
    result = cli(work, "fit", "--config", str(RECIPE), *_common_flags(data, work, sizes, "recipe"),
                 "--trainer.max_epochs", str(sizes.recipe_epochs), *sizes.recipe_flags)
    _check_returncode(result)
    events = _events(work / "lightning_logs" / "recipe" / "version_0")
    seconds = [s.value for s in events.Scalars("time/epoch_seconds")]
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    count, blank = blank_pictures(events)
    if count == 0 or blank:
        raise RuntimeError(f"{count} pictures, blank: {sorted(set(blank))}")
    val_acc = events.Scalars("val/acc")[-1].value
    step_seconds = stage_step_seconds(data, work, sizes)
    stages = expected_stages(RECIPE, 50)
    # An epoch at stage s: the measured steady epoch at stage 0, plus its batches' extra step time at s.
    batches = _train_batches(data, sizes)
    steady_stage0 = statistics.median(
        [t for t, stage in zip(seconds[1:], stages[1:len(seconds)]) if stage == 0] or [steady])
    total = seconds[0] + sum(steady_stage0 + batches * (step_seconds[s] - step_seconds[0]) for s in stages[1:])
    by_stage = "/".join(f"{1000 * t:.1f}" for t in step_seconds)
    return (f"{len(seconds)} epochs: {steady:.1f} s/epoch after the first ({seconds[0]:.1f} s); ms/step by stage "
            f"{by_stage}; 50 epochs at the shipped stages about {total / 60:.1f} min; "
            f"{_stage_check(events, RECIPE, len(seconds))}; {count} pictures, none blank; last val/acc {val_acc:.3f}")


def _train_batches(data: Path, sizes: Plan) -> int:
    """Training batches per epoch of the recipe rows: the trained images, or the flags' limit."""
    classes = len([p for p in (data / "train").iterdir() if p.is_dir()])
    batches = -(-(classes * sizes.train_per_class - sizes.val_size) // sizes.batch_size)
    if "--trainer.limit_train_batches" in sizes.recipe_flags:
        batches = min(batches, int(sizes.recipe_flags[sizes.recipe_flags.index("--trainer.limit_train_batches") + 1]))
    return batches


def stage_step_seconds(data: Path, work: Path, sizes: Plan) -> list[float]:
    """Seconds per training step in each unfreeze stage of the recipe (stages at epochs 0, 1, 2).

    No pictures, validation or checkpoints: they come after the timed steps of an epoch.
    """
    config, epochs = squeezed_recipe(work, keep_callbacks=True)
    run = _run_cli([
        "fit", "--config", str(config), *_common_flags(data, work, sizes, "stages"),
        "--trainer.max_epochs", str(epochs), "--trainer.devices", "1", "--trainer.benchmark", "false",
        "--trainer.limit_train_batches", str(sizes.warmup + sizes.stage_steps), "--trainer.limit_val_batches", "0",
        "--model.scheduler", "null",  # the plateau schedule needs validation; a rate's value costs no time
        "--trainer.enable_model_summary", "false", "--trainer.enable_checkpointing", "false",
        "--trainer.callbacks+=benchmarks.gpu_cli_rows.SyncedStepTimer", "--trainer.callbacks.warmup", str(sizes.warmup),
        "--trainer.callbacks.last", str(sizes.warmup + sizes.stage_steps - 1), "--trainer.callbacks.per_epoch", "true",
    ])
    timed = _timer(run).epochs
    if len(timed) != epochs or any(images == 0 for images, _ in timed):
        raise RuntimeError(f"timed steps per stage: {timed}")
    return [seconds / (images / sizes.batch_size) for images, seconds in timed]


def squeezed_recipe(work: Path, keep_callbacks: bool = False) -> tuple[Path, int]:
    """The recipe with its three stages at epochs 0, 1, 2: three stage changes quickly.

    The drawing and scoring callbacks are off either way. Without ``keep_callbacks`` the other
    standard ones are off too and only the unfreeze callback stays (the DDP row).
    """
    config = without_pictures(yaml.safe_load(RECIPE.read_text()))
    callbacks = config["trainer"]["callbacks"]
    (unfreeze,) = [c for c in callbacks if c["class_path"].endswith("ProgressiveUnfreeze")]
    for epoch, stage in enumerate(unfreeze["init_args"]["stages"]):
        stage["epoch"] = epoch
    if not keep_callbacks:
        config["trainer"]["callbacks"] = [unfreeze]
        config |= dict.fromkeys(("predictions", "loss_plots"))
    path = work / ("resnet_cbam_stages.yaml" if keep_callbacks else "resnet_cbam_ddp.yaml")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, len(unfreeze["init_args"]["stages"])


def ddp_row(data: Path, work: Path, sizes: Plan) -> str:
    config, epochs = squeezed_recipe(work)  # one epoch per stage
    result = cli(work, "fit", "--config", str(config), *_common_flags(data, work, sizes, "ddp"),
                 "--trainer.strategy", "ddp", "--trainer.devices", "1", "--trainer.max_epochs", str(epochs),
                 *sizes.ddp_flags, env={"NCCL_DEBUG": "VERSION"})
    _check_returncode(result)
    backend = "NCCL " + m.group(1) if (m := re.search(r"NCCL version ([\w.+]+)", result.stdout + result.stderr)) else "gloo"
    if sizes.accelerator == "cuda" and backend == "gloo":
        raise RuntimeError("no 'NCCL version' line: the process group did not use NCCL")
    events = _events(work / "lightning_logs" / "ddp" / "version_0")
    return f"{backend}; {_stage_check(events, config, epochs)} (a re-wrap at each change)"


def test_row(data: Path, work: Path, sizes: Plan) -> str:
    result = cli(work, "test", "--config", str(work / "resnet_cbam_ddp.yaml"), *_common_flags(data, work, sizes, "ddp"),
                 "--ckpt_path", "best")
    _check_returncode(result)
    found = re.search(r"test/acc\W+([0-9.]+)", result.stdout)
    if found is None:
        raise RuntimeError("no test/acc in the output")
    return f"test/acc {float(found.group(1)):.3f} on the stand-in test split"
