"""What each attention block costs: parameters, training step and inference images/s, each against no attention.

    python -m benchmarks.attention_cost                       # every registered kind on the CNN and the ResNet18, bf16
    python -m benchmarks.attention_cost --families cnn --kinds se eca --precision 32-true --rounds 5
    python -m benchmarks.attention_cost --families cnn --record results/attention_cost.json  # the README's costs

The accuracy side of the question is `report.py`'s (test accuracy and paired
comparisons over published runs); this is the price side, measured side by
side in one process so that the ratios hold on a shared, noisy machine: the
models take turns within each round, and each figure is its best round.
Training steps are the bare forward+backward+Adam on random tensors, channels_last,
as in `benchmarks.training_throughput`; inference is eval mode under
`torch.inference_mode`, as in `benchmarks.inference_throughput`. Run it quiet:
nothing else on the machine, as the figures the README quotes.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch

from benchmarks.common import base_parser, images_per_second, machine_line, print_table
from benchmarks.training_throughput import _autocast, bare_step_seconds
from callbacks import run_record
from lightning_modules import CNNClassifier, ResNet18Classifier
from lightning_modules.attention import ATTENTION, NONE

# Each network with the batch it trains at in its fast recipe (ResNet: 128, the precision table's, as 512
# does not fit one CPU step in reasonable time); every kind is priced against the same network with none.
FAMILIES = {"cnn": (CNNClassifier, 256), "resnet18": (ResNet18Classifier, 128)}
KINDS = [NONE, *ATTENTION]


def inference_images_per_second(cls, precision: str, batch_size: int, steps: int, warmup: int) -> float:
    model = cls(channels_last=True).eval()
    model.configure_model()
    images = torch.rand(batch_size, 3, 32, 32)
    @torch.inference_mode()
    def step(batch) -> None:
        with _autocast(precision):  # the training step's autocast, as Lightning's bf16-mixed plugin
            model(batch[0])

    return images_per_second(iter(lambda: (images,), None), steps, warmup, step)


def measure(
    families: list[str], kinds: list[str], precision: str, rounds: int, steps: int, warmup: int
) -> list[dict[str, object]]:
    """One row per family and kind, ``none`` first: parameters, and train and inference images/s (best round)."""
    kinds = [NONE, *(kind for kind in kinds if kind != NONE)]
    best: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for family in families:
            base, batch_size = FAMILIES[family]
            for kind in kinds:
                build = partial(base, attention=kind)
                train = bare_step_seconds(build, precision, False, batch_size, steps, warmup)[0]
                infer = inference_images_per_second(build, precision, batch_size, steps, warmup)
                previous = best.get((family, kind), [0.0, 0.0])
                best[(family, kind)] = [max(previous[0], train), max(previous[1], infer)]
    return [{"network": family, "attention": kind, "batch": FAMILIES[family][1],
             "parameters": _parameters(FAMILIES[family][0], kind),
             "train_images_per_second": best[(family, kind)][0],
             "inference_images_per_second": best[(family, kind)][1]}
            for family in families for kind in kinds]


def table_rows(measured: list[dict[str, object]]) -> list[list[object]]:
    """``measure``'s rows for the printed table, each with its ratios to its own network without attention."""
    base = {row["network"]: row for row in measured if row["attention"] == NONE}
    rows = []
    for row in measured:
        none = base[row["network"]]
        train, infer = row["train_images_per_second"], row["inference_images_per_second"]
        rows.append([row["network"], row["attention"], row["batch"], f"{row['parameters']:,}",
                     f"{100 * (row['parameters'] / none['parameters'] - 1):+.2f} %",
                     f"{train:,.0f}", f"{train / none['train_images_per_second']:.2f}x",
                     f"{infer:,.0f}", f"{infer / none['inference_images_per_second']:.2f}x"])
    return rows


def write_record(path: Path, measured: list[dict[str, object]], precision: str, rounds: int, steps: int) -> None:
    """The figures as JSON for ``report.py``'s attention table (``results/attention_cost.json``): with the
    machine, versions, commit and load, so that the table says where and how quietly they were measured."""
    record = {
        "command": "python -m benchmarks.attention_cost " + " ".join(sys.argv[1:]),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": run_record.git_commit(),
        "machine": run_record.hardware(torch.device("cpu")),
        "versions": run_record.versions(),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "steps": steps,
        "load_average": os.getloadavg()[0],
        "rows": measured,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def _parameters(base, kind: str) -> int:
    return sum(p.numel() for p in base(attention=kind).parameters())


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(steps=8, warmup=2)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS, help="none is always measured")
    parser.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32-true"])
    parser.add_argument("--rounds", type=int, default=3, help="each figure is the best of these rounds")
    parser.add_argument("--record", type=Path, metavar="JSON",
                        help="also write the figures there, e.g. results/attention_cost.json for the README's table")
    args = parser.parse_args()
    print(machine_line())
    measured = measure(args.families, args.kinds, args.precision, args.rounds, args.steps, args.warmup)
    print_table(f"attention's cost, {args.precision}, channels_last, {torch.get_num_threads()} threads, "
                f"best of {args.rounds} rounds",
                ["network", "attention", "batch", "parameters", "vs none", "train img/s", "vs none",
                 "inference img/s", "vs none"],
                table_rows(measured))
    if args.record is not None:
        write_record(args.record, measured, args.precision, args.rounds, args.steps)
        print(f"Wrote {args.record}")


if __name__ == "__main__":
    main()
