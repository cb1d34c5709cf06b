"""Wall time to a validation accuracy: our ``fit`` against the reference loop, or recipes against each other.

Both train the same CNN (Adam 1e-3, batch 64, ReduceLROnPlateau on the
validation loss, validation once an epoch) on the same 45,000/5,000 split of the
real training images and stop at the first epoch whose validation accuracy
reaches ``--target``. The reference loop decodes with PIL and augments per image
in 2 loader workers, as the source did; ours is ``cli.py``'s datamodule and
module under a Trainer.

One seed says little: whether 60 % falls in epoch 2 or 3 is a coin toss on
either side. So each seed runs both sides, interleaved (the side that goes first
alternates, so machine load drifting over the run hits both alike), with that
seed for the split, the initial weights (identical on both sides) and the
shuffling; the summary is the median over seeds.

    python -m benchmarks.time_to_accuracy --seeds 0 1 2 --channels-last

With ``--configs``, the sides are instead whole recipes from ``configs/``, each
run as ``python cli.py fit --config configs/<name>.yaml`` runs it (its model,
optimiser, schedule, batch size and epochs; logs to a temporary folder), on the
same data and seeds, stopping at the first epoch at or above ``--target``. The
speed-up is against the first config named:

    python -m benchmarks.time_to_accuracy --configs cnn cnn_fast --target 0.8 --seeds 0 1

The name ``reference`` among ``--configs`` is the reference loop, so a recipe
races the source's way of training directly (issue 24's "8x sooner"):

    python -m benchmarks.time_to_accuracy --configs reference cnn_fast --target 0.99 --max-epochs 20

A one-cycle recipe stopped early is still sized for its full length (the
schedule is fixed when fit starts), so it is timed as a user running it to the
end would see it pass the target.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shlex
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from benchmarks.common import CIFAR_MEAN, CIFAR_STD, REPO, base_parser, machine_line, print_table, reference_transform
from datamodules import CIFAR10DataModule
from datamodules.image_datamodule import split_indices
from lightning_modules import CNNClassifier
from lightning_modules.base import reference_plateau

DEFAULT_MAX_EPOCHS = 5  # the built-in sides' cap; enough for 60 %, not for 80 %
# (epoch, seconds since training started, validation accuracy), one per epoch.
History = list[tuple[int, float, float]]
OURS, REFERENCE = "ours (cli.py datamodule + module)", "reference loop (PIL, 2 workers)"
REFERENCE_SIDE = "reference"  # the reference loop's name among --configs


class StopAtAccuracy(L.Callback):
    """Record (epoch, seconds since training started, val/acc) each epoch; stop at the first at ``target``.

    Public so a recipe run through ``cli.py`` can name it as a callback.
    """

    def __init__(self, target: float) -> None:
        self.target, self.start, self.history = target, 0.0, []

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        accuracy = float(trainer.callback_metrics["val/acc"])
        self.history.append((trainer.current_epoch + 1, time.perf_counter() - self.start, accuracy))
        if accuracy >= self.target:
            trainer.should_stop = True


def _model(seed: int, **kwargs) -> CNNClassifier:
    """The CNN with this seed's initial weights; both sides build it right after seeding."""
    torch.manual_seed(seed)
    return CNNClassifier(**kwargs)


def ours(args, seed: int) -> History:
    L.seed_everything(seed, verbose=False)  # also seeds our shuffle (the sampler reads PL_GLOBAL_SEED)
    datamodule = CIFAR10DataModule(data_dir=args.data, batch_size=64, num_workers=0, val_size=args.val_size,
                                   split_seed=seed)
    datamodule.setup("fit")  # decode/cache outside the timed part, as the reference's ImageFolder scan is
    stopper = StopAtAccuracy(args.target)
    trainer = L.Trainer(accelerator="cpu", max_epochs=args.max_epochs or DEFAULT_MAX_EPOCHS, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0,
                        callbacks=[stopper])
    trainer.fit(_model(seed, channels_last=args.channels_last), datamodule=datamodule)
    return stopper.history


def reference(args, seed: int) -> History:
    plain = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    root = str(args.data / "train")
    folder = datasets.ImageFolder(root, transform=reference_transform())
    train_index, val_index = split_indices(len(folder), args.val_size, seed=seed)  # the datamodule's split
    train = Subset(folder, train_index.tolist())
    val = Subset(datasets.ImageFolder(root, transform=plain), val_index.tolist())
    net = _model(seed).net  # seeds the global generator, which the shuffle then draws from
    train_loader = DataLoader(train, batch_size=64, shuffle=True, num_workers=2, persistent_workers=True)
    val_loader = DataLoader(val, batch_size=64, num_workers=2, persistent_workers=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    scheduler = reference_plateau(optimizer)
    history, start = [], time.perf_counter()
    for epoch in range(args.max_epochs or DEFAULT_MAX_EPOCHS):
        net.train()
        for images, labels in train_loader:
            optimizer.zero_grad()
            F.cross_entropy(net(images), labels).backward()
            optimizer.step()
        net.eval()
        correct = loss = 0.0
        with torch.no_grad():
            for images, labels in val_loader:
                logits = net(images)
                loss += F.cross_entropy(logits, labels, reduction="sum").item()
                correct += (logits.argmax(1) == labels).sum().item()
        scheduler.step(loss / len(val))
        history.append((epoch + 1, time.perf_counter() - start, correct / len(val)))
        # A 20-epoch reference run takes an hour or more: show each epoch as it ends.
        print(f"reference loop, seed {seed}: epoch {epoch + 1}, {correct / len(val):.1%} at {history[-1][1]:.0f} s",
              flush=True)
        if correct / len(val) >= args.target:
            break
    return history


def recipe(config: str, args, seed: int, extra: Sequence[str] = ()) -> History:
    """One config from ``configs/`` through ``cli.py fit`` as a user runs it, stopped at the target.

    The seed sets the split, the weights and the shuffle, and ``args.val_size`` the split's size, as on the
    built-in sides. ``extra``: more ``cli.py`` flags.
    """
    import cli

    path = Path(config) if config.endswith(".yaml") else REPO / "configs" / f"{config}.yaml"
    stop = {"class_path": "benchmarks.time_to_accuracy.StopAtAccuracy", "init_args": {"target": args.target}}
    with tempfile.TemporaryDirectory(prefix="time_to_accuracy-") as logs:
        argv = ["fit", "--config", str(path), "--data.data_dir", str(args.data), "--data.download", "false",
                "--seed_everything", str(seed), "--data.split_seed", str(seed),
                "--data.val_size", str(args.val_size),
                "--trainer.default_root_dir", logs, "--trainer.enable_checkpointing", "false",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                "--trainer.num_sanity_val_steps", "0", f"--trainer.callbacks+={json.dumps(stop)}"]
        if args.max_epochs:
            argv += ["--trainer.max_epochs", str(args.max_epochs)]
        run = cli.main([*argv, *extra])
    # The CLI built the callback from its class path, so under ``python -m`` it is the class of the
    # imported module, not of ``__main__``: look it up there.
    from benchmarks import time_to_accuracy

    (stopper,) = [c for c in run.trainer.callbacks if isinstance(c, time_to_accuracy.StopAtAccuracy)]
    return stopper.history


def time_to_target(history: History, target: float) -> float:
    """Seconds to the first epoch at or above ``target``; ``inf`` when no epoch got there."""
    return next((seconds for _, seconds, accuracy in history if accuracy >= target), math.inf)


def _ratio(baseline: float, side: float) -> float | None:
    """How many times faster ``side`` reached the target than ``baseline``; ``None`` unless both did."""
    return baseline / side if math.isfinite(baseline) and math.isfinite(side) else None


def _seconds(value: float, history: History) -> str:
    if math.isinf(value):
        return f"not reached (> {history[-1][1]:.0f} s)" if history else "not reached"
    return f"{value:.0f} s"


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.6, help="validation accuracy to reach, e.g. 0.8")
    parser.add_argument("--max-epochs", type=int, default=None,
                        help=f"per side and seed; a cap on the runtime (default {DEFAULT_MAX_EPOCHS}, "
                             "or each config's own max_epochs with --configs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="e.g. 0 1 2; the summary is the median")
    parser.add_argument("--channels-last", action="store_true", help="the built-in CNN side only")
    parser.add_argument("--configs", nargs="+", default=None, metavar="NAME",
                        help=f"compare these recipes (configs/<NAME>.yaml or a path; '{REFERENCE_SIDE}' is the "
                             "reference loop) instead of ours and the reference loop; the speed-up is against the first")
    parser.add_argument("--val-size", type=int, default=5_000,
                        help="validation images carved from train/, on every side (the configs ship 5,000)")
    parser.add_argument("--cli", default="", metavar="FLAGS",
                        help='more cli.py flags for every --configs side, as one string, e.g. "--trainer.precision 32-true"')
    args = parser.parse_args()
    if not 0 < args.target <= 1:
        parser.error(f"--target {args.target} is not an accuracy in (0, 1]; e.g. --target 0.8")
    if not (args.data / "train").is_dir():  # before any side starts: the reference loop would fail with a traceback
        parser.error(f"--data {args.data} holds no train/ folder of class folders.\n"
                     "HINT: point --data at the folder with train/<class>/*.jpg, e.g. --data ../shared/cifar10-jpg")
    print(f"{machine_line()}; load average {os.getloadavg()[0]:.1f} at start")
    if args.configs:
        extra = shlex.split(args.cli)
        sides = {name: reference if name == REFERENCE_SIDE else functools.partial(recipe, name, extra=extra)
                 for name in args.configs}
        baseline = args.configs[0]
    else:
        sides, baseline = {OURS: ours, REFERENCE: reference}, REFERENCE
    results: dict[int, dict[str, History]] = {}
    for position, seed in enumerate(args.seeds):
        order = list(sides) if position % 2 == 0 else list(sides)[::-1]
        results[seed] = {}
        for name in order:
            results[seed][name] = sides[name](args, seed)
            # Progress as each side ends: a long run shows where it is, and a cut-short one keeps its rows.
            print(f"seed {seed}, {name}: " + ", ".join(f"{a:.1%} at {s:.0f} s" for _, s, a in results[seed][name])
                  + f" (load average {os.getloadavg()[0]:.1f})", flush=True)

    rows = []
    for seed, by_side in results.items():
        times = {name: time_to_target(history, args.target) for name, history in by_side.items()}
        for name in sides:
            history = by_side[name]
            ratio = _ratio(times[baseline], times[name]) if name != baseline else None
            rows.append((seed, name, " / ".join(f"{a:.1%}" for _, _, a in history),
                         f"{history[-1][1] / len(history):.1f}" if history else "-",
                         _seconds(times[name], history), f"{ratio:.2f}x" if ratio else ""))
    what = "recipes " + ", ".join(args.configs) if args.configs else "CNN recipe"
    cap = f"at most {args.max_epochs} epochs" if args.max_epochs else (
        "each config's own epochs" if args.configs else f"at most {DEFAULT_MAX_EPOCHS} epochs")
    print_table(f"validation accuracy by epoch and time to {args.target:.0%}, {what}, {cap}",
                ["seed", "run", "val/acc by epoch", "s/epoch", f"time to {args.target:.0%}", f"speed-up vs {baseline}"],
                rows)

    # inf (not reached) sorts last, so a median is still meaningful when most seeds got there.
    medians = {name: statistics.median(time_to_target(results[s][name], args.target) for s in results) for name in sides}
    summary = ", ".join(f"{name} {_seconds(value, [])}" for name, value in medians.items())
    for name in sides:
        if name == baseline:
            continue
        if math.isfinite(medians[name]) and math.isfinite(medians[baseline]):
            summary += f"; {name} {medians[baseline] / medians[name]:.2f}x faster than {baseline}"
        # Each seed's sides ran back to back, so their ratio saw one load; read this one when load drifted.
        ratios = [r for s in results
                  if (r := _ratio(time_to_target(results[s][baseline], args.target),
                                  time_to_target(results[s][name], args.target))) is not None]
        if ratios:
            summary += f"; median of the per-seed speed-ups {statistics.median(ratios):.2f}x ({len(ratios)} seeds)"
    print(f"\nmedian time to {args.target:.0%} over seeds {args.seeds}: {summary}; "
          f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
