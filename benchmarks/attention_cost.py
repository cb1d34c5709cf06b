"""What each attention block costs: parameters, training step and inference images/s, each against no attention.

    python -m benchmarks.attention_cost                       # every registered kind on the CNN and the ResNet18, bf16
    python -m benchmarks.attention_cost --families cnn --kinds se eca --precision 32-true --rounds 5

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

from functools import partial

import torch

from benchmarks.common import base_parser, images_per_second, machine_line, print_table
from benchmarks.training_throughput import _autocast, bare_step_seconds
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
) -> list[list[object]]:
    """One row per family and kind, ``none`` first: parameters, train and inference images/s and their ratios."""
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
    rows = []
    for family in families:
        base, batch_size = FAMILIES[family]
        base_params = _parameters(base, NONE)
        base_train, base_infer = best[(family, NONE)]
        for kind in kinds:
            params = _parameters(base, kind)
            train, infer = best[(family, kind)]
            rows.append([family, kind, batch_size, f"{params:,}", f"{100 * (params / base_params - 1):+.2f} %",
                         f"{train:,.0f}", f"{train / base_train:.2f}x", f"{infer:,.0f}", f"{infer / base_infer:.2f}x"])
    return rows


def _parameters(base, kind: str) -> int:
    return sum(p.numel() for p in base(attention=kind).parameters())


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(steps=8, warmup=2)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS, help="none is always measured")
    parser.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32-true"])
    parser.add_argument("--rounds", type=int, default=3, help="each figure is the best of these rounds")
    args = parser.parse_args()
    print(machine_line())
    rows = measure(args.families, args.kinds, args.precision, args.rounds, args.steps, args.warmup)
    print_table(f"attention's cost, {args.precision}, channels_last, {torch.get_num_threads()} threads, "
                f"best of {args.rounds} rounds",
                ["network", "attention", "batch", "parameters", "vs none", "train img/s", "vs none",
                 "inference img/s", "vs none"],
                rows)


if __name__ == "__main__":
    main()
