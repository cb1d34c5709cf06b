"""Wall time to a validation accuracy with the CNN recipe: our ``fit`` against the reference loop.

Both train the same CNN (Adam 1e-3, batch 64, ReduceLROnPlateau on the
validation loss) on the same 45,000/5,000 split of the real training images and
stop at the first epoch whose validation accuracy reaches ``--target``. The
reference loop decodes with PIL and augments per image in 2 loader workers, as
the source did; ours is ``cli.py``'s datamodule and module under a Trainer.

    python -m benchmarks.time_to_accuracy --target 0.6 --max-epochs 5
"""

from __future__ import annotations

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


def ours(args) -> list[tuple[int, float, float]]:
    L.seed_everything(0)
    datamodule = CIFAR10DataModule(data_dir=args.data, batch_size=64, num_workers=0)
    stopper = _StopAtAccuracy(args.target)
    trainer = L.Trainer(accelerator="cpu", max_epochs=args.max_epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[stopper])
    datamodule.setup("fit")  # decode/cache outside the timed part, as the reference's ImageFolder scan is
    trainer.fit(CNNClassifier(channels_last=args.channels_last), datamodule=datamodule)
    return stopper.history


def reference(args) -> list[tuple[int, float, float]]:
    torch.manual_seed(0)
    train_index, val_index = split_indices(50_000, 5_000, seed=0)
    plain = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    root = str(args.data / "train")
    train = Subset(datasets.ImageFolder(root, transform=reference_transform()), train_index.tolist())
    val = Subset(datasets.ImageFolder(root, transform=plain), val_index.tolist())
    train_loader = DataLoader(train, batch_size=64, shuffle=True, num_workers=2, persistent_workers=True)
    val_loader = DataLoader(val, batch_size=64, num_workers=2, persistent_workers=True)
    net = CNNClassifier().net
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


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    print(machine_line())
    results = {"ours (cli.py datamodule + module)": ours(args), "reference loop (PIL, 2 workers)": reference(args)}
    rows = []
    for name, history in results.items():
        for epoch, seconds, accuracy in history:
            rows.append((name, epoch, seconds, f"{accuracy:.4f}"))
    print_table(f"validation accuracy by wall time, CNN recipe, target {args.target}",
                ["run", "epoch", "seconds", "val/acc"], rows)
    reached = {name: next((s for _, s, a in h if a >= args.target), None) for name, h in results.items()}
    ours_time, reference_time = reached.values()
    if ours_time and reference_time:
        print(f"time to {args.target:.0%}: ours {ours_time:.0f} s, reference {reference_time:.0f} s, "
              f"{reference_time / ours_time:.2f}x faster")
    else:
        print(f"time to {args.target:.0%}: {reached} (None: not reached within {args.max_epochs} epochs)")


if __name__ == "__main__":
    main()
