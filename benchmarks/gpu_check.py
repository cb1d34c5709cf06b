"""GPU check (issue 13): every CUDA path we ship, measured in one command, one Markdown table.

On the borrowed GPU machine, after ``bash benchmarks/gpu_prepare.sh`` here
(the exact device call is in docs/gpu_check.md):

    python -m benchmarks.gpu_check --out gpu_check.md

The same code paths on CPU, on tiny generated images, in well under a minute
(tests/test_gpu_check.py runs it, so it cannot rot between GPU loans):

    python -m benchmarks.gpu_check --smoke

Rows, in the order they run (the cheapest and most telling first; a row that
would start after ``--budget`` seconds is skipped and says so):

1. ``fit`` images/s of the CNN and ResNet18+CBAM on the 45,000 real training
   images, fp32 / bf16-mixed x NCHW / channels_last x keep_on_device off / on,
   next to the bare forward+backward+Adam step on random tensors already on the
   device (the ceiling) and ``fit`` as a share of it. ``fit`` runs through
   ``cli.main`` with ``configs/cnn.yaml`` or ``configs/resnet_cbam.yaml``, so
   every callback a user gets runs (RNG state, run record, the NaN-loss check,
   the loss plots, ...); the ResNet's unfreeze schedule is set to train every
   layer from the start, the work the bare step does;
2. ``cudnn``: rows of (1) with ``--trainer.benchmark true`` (cuDNN autotuning)
   beside the same setting without (GPU only: cuDNN does not exist on CPU);
3. ``configs/resnet_cbam.yaml`` as shipped, ``--model.pretrained false`` and
   bf16-mixed, for 6 epochs: s/epoch, the unfreeze stage of each epoch against
   the configured one (epoch 5 is the first stage change), pictures written and
   none blank; then a short fit with the stages at epochs 0/1/2 times a step of
   each stage, and the 50-epoch projection counts each epoch at its stage's
   step time;
4. the same recipe, stages moved to epochs 0/1/2, under ``--trainer.strategy ddp
   --trainer.devices 1`` (NCCL on a GPU): one process on one device, so the DDP
   code path, NCCL's set-up and the re-wrap at each stage change, never traffic
   between devices;
5. ``test --ckpt_path best`` of that run;
6. the ``compile`` rows of (1), last because each one compiles first.

Every row catches its own failure and prints the error in the table.
The recipe, DDP and test rows run ``cli.py`` in a subprocess, as a user would.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from PIL import Image

from benchmarks.common import REPO, machine_line, print_table
from benchmarks.training_throughput import MODELS, _StepTimer, make_step

PREPARED = REPO / ".gpu_check"  # filled by benchmarks/gpu_prepare.sh
RECIPE = REPO / "configs" / "resnet_cbam.yaml"
PRECISIONS = ("32-true", "bf16-mixed")
CHECKS = ("throughput", "cudnn", "recipe", "ddp", "test", "compile")  # row groups, in the order they run
HEADER = ["check", "setting", "fit images/s", "bare step images/s", "fit / bare", "result"]


@dataclass(frozen=True)
class Plan:
    """How much each row does: the real check, and its CPU smoke twin that runs the same code on less."""

    train_per_class: int  # training files per class on disk (45,000 trained + 5,000 validated on the GPU)
    test_per_class: int  # the stand-in test split: copies of training images
    val_size: int
    batch_size: int
    warmup: int  # steps before timing starts: compile, cuDNN autotuning (the cudnn rows), allocator warm-up
    steps: int  # timed steps, within the first epoch
    recipe_epochs: int  # 6 reaches the shipped schedule's first change, at epoch 5
    stage_steps: int  # timed steps of each unfreeze stage, after `warmup` steps of it
    recipe_flags: tuple[str, ...]
    ddp_flags: tuple[str, ...]
    accelerator: str = "cuda"
    # bf16 convolutions on a CPU without bf16 units take a minute a ResNet step,
    # so the smoke run's recipe and DDP rows train in fp32.
    cli_precision: str = "bf16-mixed"


GPU = Plan(
    train_per_class=5000, test_per_class=100, val_size=5000, batch_size=64, warmup=30, steps=300,
    recipe_epochs=6, stage_steps=100, recipe_flags=(),
    ddp_flags=("--trainer.limit_train_batches", "100", "--trainer.limit_val_batches", "20"),
)
SMOKE = Plan(
    train_per_class=12, test_per_class=2, val_size=6, batch_size=8, warmup=1, steps=2,
    recipe_epochs=2, stage_steps=1,
    # 2 training batches an epoch, not 1: LightningCLI reads a limit of "1" as the float 1.0, all batches.
    # Faithfulness curves sampled at 2 steps (ROAD 1), not 8 (4), Grad-CAM and the baselines only (the guided
    # methods are scored by the test suite): the same code and tags, a fraction of the passes.
    recipe_flags=("--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                  "--faithfulness.steps", "2", "--faithfulness.road_steps", "1", "--faithfulness.methods", "[]"),
    ddp_flags=("--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"),
    accelerator="cpu", cli_precision="32-true",
)


@dataclass(frozen=True)
class Setting:
    model: str
    precision: str
    channels_last: bool
    compile: bool
    keep_on_device: bool = False
    cudnn_benchmark: bool = False

    def __str__(self) -> str:
        layout = "channels_last" if self.channels_last else "NCHW"
        return (f"{self.model}, {self.precision}, {layout}, compile {'on' if self.compile else 'off'}"
                + (", cudnn.benchmark on" if self.cudnn_benchmark else "")
                + f", keep_on_device {'on' if self.keep_on_device else 'off'}")


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


# ---- throughput ---------------------------------------------------------------------------


def _synchronize() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextlib.contextmanager
def _compile_backend(smoke: bool) -> Iterator[None]:
    """In the smoke run, ``torch.compile`` traces with dynamo but skips Inductor's C++ build (minutes on 2 cores)."""
    if not smoke:
        yield
        return
    original = torch.compile
    torch.compile = lambda model, **kwargs: original(model, **{**kwargs, "backend": "eager"})
    try:
        yield
    finally:
        torch.compile = original


def _model(setting: Setting, num_classes: int) -> L.LightningModule:
    return MODELS[setting.model](num_classes=num_classes, channels_last=setting.channels_last, compile=setting.compile)


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

    Named on the command line (``--trainer.callbacks+=benchmarks.gpu_check.SyncedStepTimer``);
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
    # By name: run as ``python -m``, this file is ``__main__``, and the CLI imports its own
    # ``benchmarks.gpu_check``, whose class is another object.
    return next(c for c in run.trainer.callbacks if type(c).__name__ == SyncedStepTimer.__name__)


def fit_images_per_second(setting: Setting, data: Path, sizes: Plan, work: Path) -> float:
    """Our ``fit`` as ``cli.py fit --config`` runs it, timed over ``sizes.steps`` steps of the first epoch.

    Validation and checkpoint saving are off (they would run after the timed steps anyway), and
    so is the progress bar (on a terminal it reads the loss back each refresh).
    """
    pretrained = "pretrained" in inspect.signature(MODELS[setting.model]).parameters
    flags = _common_flags(data, work, sizes, f"fit_{setting.model}", pretrained)
    flags = [*flags[: flags.index("--trainer.precision")], *flags[flags.index("--trainer.precision") + 2:]]
    run = _run_cli([
        "fit", "--config", str(fit_config(setting.model, work)), *flags,
        "--trainer.precision", setting.precision, "--trainer.devices", "1",
        "--trainer.max_steps", str(sizes.warmup + sizes.steps), "--trainer.limit_val_batches", "0",
        "--trainer.enable_checkpointing", "false",
        "--trainer.benchmark", str(setting.cudnn_benchmark).lower(),
        "--trainer.enable_model_summary", "false",
        "--model.channels_last", str(setting.channels_last).lower(), "--model.compile", str(setting.compile).lower(),
        "--data.keep_on_device", str(setting.keep_on_device).lower(),
        "--trainer.callbacks+=benchmarks.gpu_check.SyncedStepTimer",
        "--trainer.callbacks.warmup", str(sizes.warmup), "--trainer.callbacks.last", str(sizes.warmup + sizes.steps - 1),
    ])
    timer = _timer(run)
    if timer.images == 0:
        raise RuntimeError(f"no timed steps: an epoch has fewer than {sizes.warmup + sizes.steps} batches")
    return timer.images / (timer.end - timer.start)


def bare_images_per_second(setting: Setting, num_classes: int, sizes: Plan) -> float:
    """Forward+backward+Adam on random tensors already on the device: what ``fit`` could reach."""
    device = torch.device(sizes.accelerator)
    torch.backends.cudnn.benchmark = setting.cudnn_benchmark  # as the Trainer's benchmark flag sets it
    model = _model(setting, num_classes).to(device)
    model.configure_model()  # channels_last and compile, as Lightning's fit applies them
    images = torch.rand(sizes.batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, num_classes, (sizes.batch_size,), device=device)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setting.precision == "bf16-mixed"):
            return model(x)

    step = make_step(forward, torch.optim.Adam(model.parameters(), lr=1e-3))
    for _ in range(sizes.warmup):
        step((images, labels))
    _synchronize()
    start = time.perf_counter()
    for _ in range(sizes.steps):
        step((images, labels))
    _synchronize()
    return sizes.steps * sizes.batch_size / (time.perf_counter() - start)


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
        "--trainer.callbacks+=benchmarks.gpu_check.SyncedStepTimer", "--trainer.callbacks.warmup", str(sizes.warmup),
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


# ---- the table ----------------------------------------------------------------------------------


class Table:
    """Rows of the one table; each row runs guarded, and the table so far is rewritten after each."""

    def __init__(self, budget: float, out: Path | None) -> None:
        self.rows: list[list[str]] = []
        self.deadline = time.perf_counter() + budget
        self.out = out
        self.preamble: list[str] = []

    def run(self, check: str, setting: str, measure: Callable[[], list[str]]) -> None:
        """Append ``[check, setting, *measure()]``; an error or the time budget fills the row instead."""
        if time.perf_counter() > self.deadline:
            cells = ["", "", "", "skipped: over the time budget (--budget)"]
        else:
            start = time.perf_counter()
            try:
                cells = measure()
            except Exception as error:  # one broken path must not hide the others
                message = " ".join(str(error).split())[:300]
                cells = ["", "", "", f"**error** {type(error).__name__}: {message}"]
            finally:
                gc.collect()
                if torch.cuda.is_initialized():
                    torch.cuda.empty_cache()
            cells[-1] = f"{cells[-1]} ({time.perf_counter() - start:.0f} s)".strip()
        row = [check, setting, *(c.replace("|", "/") for c in cells)]
        self.rows.append(row)
        print("| " + " | ".join(row) + " |", file=sys.stderr, flush=True)
        self.write()

    def write(self) -> None:
        if self.out is None:
            return
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            self.print()
        self.out.write_text(buffer.getvalue())

    def print(self) -> None:
        print("\n".join(self.preamble))
        print_table("GPU check", HEADER, self.rows)


def throughput_rows(table: Table, data: Path, sizes: Plan, settings: list[Setting], num_classes: int,
                    bare: dict[Setting, float], work: Path) -> None:
    """A ``fit`` row per setting, after the bare-step row of its model, precision, layout and compile."""
    for setting in settings:
        key = Setting(setting.model, setting.precision, setting.channels_last, setting.compile,
                      cudnn_benchmark=setting.cudnn_benchmark)
        if key not in bare:
            bare[key] = float("nan")  # stays so if the bare step fails or is skipped

            def measure_bare(key: Setting = key) -> list[str]:
                bare[key] = bare_images_per_second(key, num_classes, sizes)
                return ["", f"{bare[key]:,.0f}", "", ""]

            table.run("bare step", str(key).rsplit(", keep_on_device", 1)[0], measure_bare)

        def measure(setting: Setting = setting, ceiling: float = bare[key]) -> list[str]:
            speed = fit_images_per_second(setting, data, sizes, work)
            known = ceiling == ceiling and ceiling > 0
            return [f"{speed:,.0f}", f"{ceiling:,.0f}" if known else "", f"{speed / ceiling:.0%}" if known else "", ""]

        table.run("fit", str(setting), measure)


def main(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny generated images, every code path")
    parser.add_argument("--archive", type=Path, default=PREPARED / "cifar10.tar.gz",
                        help="the JPEG archive benchmarks/gpu_prepare.sh writes")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (rewritten after each row)")
    parser.add_argument("--budget", type=float, default=390.0,
                        help="seconds; rows that would start later are skipped (390: set-up and the last row fit in 8 minutes)")
    parser.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS),
                        help="row groups to run (a rerun of some; 'test' reads the checkpoint of 'ddp')")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else GPU
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device.\nHINT: add --smoke to run the same paths on CPU.")
    if not args.smoke and not args.archive.is_file():
        parser.error(f"no {args.archive}.\nHINT: run `bash benchmarks/gpu_prepare.sh` first and carry .gpu_check.")
    args.work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    args.work.mkdir(parents=True, exist_ok=True)

    table = Table(args.budget, args.out)
    start = time.perf_counter()
    data, data_line = prepare_data(args, sizes)
    num_classes = len([p for p in (data / "train").iterdir() if p.is_dir()])
    table.preamble = [f"{machine_line()}; lightning {L.__version__}; {time.strftime('%Y-%m-%d %H:%M %Z')}",
                      f"{data_line}; laid out in {time.perf_counter() - start:.0f} s",
                      f"batch {sizes.batch_size}; images/s over {sizes.steps} steps after {sizes.warmup} warm-up "
                      "steps; 'bare step' is forward+backward+Adam on random tensors on the device"
                      + ("; SMOKE RUN on CPU: compile uses the eager backend, numbers mean nothing" if args.smoke else "")]
    print("\n".join(table.preamble), file=sys.stderr)

    grid = [Setting(model, precision, channels_last, False, keep) for model in FIT_CONFIGS
            for precision in PRECISIONS for channels_last in (False, True) for keep in (False, True)]
    compiled = [Setting(model, precision, True, True, True)
                for model in ("resnet_cbam", "cnn") for precision in ("bf16-mixed", "32-true")]
    # cuDNN autotuning (``--trainer.benchmark``, off by default) for the fixed-size batches, against the grid's
    # same setting with it off: the fastest setting of each model.
    autotuned = [Setting(model, "bf16-mixed", True, False, True, cudnn_benchmark=True) for model in ("resnet_cbam", "cnn")]
    if args.smoke:  # every switch once, on the CNN; the recipe, DDP and test rows train the ResNet
        grid = [Setting("cnn", "32-true", False, False, False), Setting("cnn", "bf16-mixed", True, False, True)]
        compiled = [Setting("cnn", "bf16-mixed", True, True, True)]
    bare: dict[Setting, float] = {}
    with _compile_backend(args.smoke):
        if "throughput" in args.checks:
            throughput_rows(table, data, sizes, grid, num_classes, bare, args.work)
        if "cudnn" in args.checks:
            if sizes.accelerator == "cuda":
                throughput_rows(table, data, sizes, autotuned, num_classes, bare, args.work)
            else:
                table.run("cudnn", "cudnn.benchmark on", lambda: ["", "", "", "skipped: cuDNN runs on CUDA only"])
        if "recipe" in args.checks:
            table.run("recipe", f"configs/resnet_cbam.yaml, pretrained false, {sizes.cli_precision}",
                      lambda: ["", "", "", recipe_row(data, args.work, sizes)])
        if "ddp" in args.checks:
            table.run("DDP", f"stages at epochs 0/1/2, ddp on ONE device (one process, no cross-device traffic), "
                             f"{sizes.cli_precision}",
                      lambda: ["", "", "", ddp_row(data, args.work, sizes)])
        if "test" in args.checks:
            table.run("test", "test --ckpt_path best of the DDP run",
                      lambda: ["", "", "", test_row(data, args.work, sizes)])
        if "compile" in args.checks:
            throughput_rows(table, data, sizes, compiled, num_classes, bare, args.work)
    table.preamble.append(f"total {time.perf_counter() - start:.0f} s")
    table.print()
    table.write()
    return table


if __name__ == "__main__":
    main()
