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
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from benchmarks.common import machine_line, print_table
from benchmarks.gpu_cli_rows import (
    FIT_CONFIGS,
    _common_flags,
    _run_cli,
    _synchronize,
    _timer,
    ddp_row,
    fit_config,
    recipe_row,
    test_row,
)
from benchmarks.gpu_data import PREPARED, prepare_data
from benchmarks.training_throughput import MODELS, make_step

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


# ---- throughput ---------------------------------------------------------------------------


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
        "--trainer.callbacks+=benchmarks.gpu_cli_rows.SyncedStepTimer",
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
