"""Wall time to a validation accuracy with the CNN recipe: our ``fit`` against the reference loop.

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
"""

from __future__ import annotations

import math
import os
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from benchmarks.common import CIFAR_MEAN, CIFAR_STD, base_parser, machine_line, print_table, reference_transform
from datamodules import CIFAR10DataModule
from datamodules.image_datamodule import split_indices
from lightning_modules import CNNClassifier
from lightning_modules.base import reference_plateau

# (epoch, seconds since training started, validation accuracy), one per epoch.
History = list[tuple[int, float, float]]
OURS, REFERENCE = "ours (cli.py datamodule + module)", "reference loop (PIL, 2 workers)"


class _StopAtAccuracy(L.Callback):
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
    datamodule = CIFAR10DataModule(data_dir=args.data, batch_size=64, num_workers=0, split_seed=seed)
    datamodule.setup("fit")  # decode/cache outside the timed part, as the reference's ImageFolder scan is
    stopper = _StopAtAccuracy(args.target)
    trainer = L.Trainer(accelerator="cpu", max_epochs=args.max_epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[stopper])
    trainer.fit(_model(seed, channels_last=args.channels_last), datamodule=datamodule)
    return stopper.history


def reference(args, seed: int) -> History:
    plain = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    root = str(args.data / "train")
    folder = datasets.ImageFolder(root, transform=reference_transform())
    train_index, val_index = split_indices(len(folder), 5_000, seed=seed)  # the datamodule's split
    train = Subset(folder, train_index.tolist())
    val = Subset(datasets.ImageFolder(root, transform=plain), val_index.tolist())
    net = _model(seed).net  # seeds the global generator, which the shuffle then draws from
    train_loader = DataLoader(train, batch_size=64, shuffle=True, num_workers=2, persistent_workers=True)
    val_loader = DataLoader(val, batch_size=64, num_workers=2, persistent_workers=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    scheduler = reference_plateau(optimizer)
    history, start = [], time.perf_counter()
    for epoch in range(args.max_epochs):
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
        if correct / len(val) >= args.target:
            break
    return history


def time_to_target(history: History, target: float) -> float:
    """Seconds to the first epoch at or above ``target``; ``inf`` when no epoch got there."""
    return next((seconds for _, seconds, accuracy in history if accuracy >= target), math.inf)


def _seconds(value: float, history: History) -> str:
    if math.isinf(value):
        return f"not reached (> {history[-1][1]:.0f} s)" if history else "not reached"
    return f"{value:.0f} s"


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--max-epochs", type=int, default=5, help="per side and seed; a cap on the runtime")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="e.g. 0 1 2; the summary is the median")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    print(f"{machine_line()}; load average {os.getloadavg()[0]:.1f} at start")
    sides = {OURS: ours, REFERENCE: reference}
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
        ratio = times[REFERENCE] / times[OURS] if math.isfinite(times[OURS]) and math.isfinite(times[REFERENCE]) else None
        for name in sides:
            history = by_side[name]
            rows.append((seed, name, " / ".join(f"{a:.1%}" for _, _, a in history),
                         f"{history[-1][1] / len(history):.1f}" if history else "-",
                         _seconds(times[name], history), f"{ratio:.2f}x" if ratio and name == OURS else ""))
    print_table(f"validation accuracy by epoch and time to {args.target:.0%}, CNN recipe, at most {args.max_epochs} "
                f"epochs", ["seed", "run", "val/acc by epoch", "s/epoch", f"time to {args.target:.0%}", "speed-up"], rows)

    # inf (not reached) sorts last, so a median is still meaningful when most seeds got there.
    medians = {name: statistics.median(time_to_target(results[s][name], args.target) for s in results) for name in sides}
    summary = ", ".join(f"{name} {_seconds(value, [])}" for name, value in medians.items())
    if all(math.isfinite(v) for v in medians.values()):
        summary += f"; {medians[REFERENCE] / medians[OURS]:.2f}x faster"
    # Each seed's two sides ran back to back, so their ratio saw one load; read this one when load drifted.
    pairs = [(time_to_target(results[s][REFERENCE], args.target), time_to_target(results[s][OURS], args.target))
             for s in results]
    ratios = [reference_time / ours_time for reference_time, ours_time in pairs
              if math.isfinite(reference_time) and math.isfinite(ours_time)]
    if ratios:
        summary += f"; median of the per-seed speed-ups {statistics.median(ratios):.2f}x ({len(ratios)} seeds)"
    print(f"\nmedian time to {args.target:.0%} over seeds {args.seeds}: {summary}; "
          f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
