"""What SE and CBAM cost: parameters, training step and inference images/s, each against its base network.

    python -m benchmarks.attention_cost                       # the CNN trio and the ResNet18 pair, bf16
    python -m benchmarks.attention_cost --precision 32-true --rounds 5

The accuracy side of the question is `report.py`'s (test accuracy and paired
comparisons over published runs); this is the price side, measured side by
side in one process so that the ratios hold on a shared, noisy machine: the
models take turns within each round, and each figure is its best round.
Training steps are the bare forward+backward+Adam on random tensors, channels_last,
as in `benchmarks.training_throughput`; inference is eval mode under
`torch.inference_mode`, as in `benchmarks.inference_throughput`.
"""

from __future__ import annotations

import torch

from benchmarks.common import base_parser, images_per_second, machine_line, print_table
from benchmarks.training_throughput import _autocast, bare_step_seconds
from lightning_modules import (
    CNNCBAMClassifier,
    CNNClassifier,
    CNNSEClassifier,
    ResNet18CBAMClassifier,
    ResNet18Classifier,
)

# (base, its attention variants), with the batch each trains at in its fast recipe (ResNet: 128, the
# precision table's, as 512 does not fit one CPU step in reasonable time).
FAMILIES = {
    "cnn": ((CNNClassifier, CNNSEClassifier, CNNCBAMClassifier), 256),
    "resnet18": ((ResNet18Classifier, ResNet18CBAMClassifier), 128),
}


def inference_images_per_second(cls, precision: str, batch_size: int, steps: int, warmup: int) -> float:
    model = cls(channels_last=True).eval()
    model.configure_model()
    images = torch.rand(batch_size, 3, 32, 32)
    @torch.inference_mode()
    def step(batch) -> None:
        with _autocast(precision):  # the training step's autocast, as Lightning's bf16-mixed plugin
            model(batch[0])

    return images_per_second(iter(lambda: (images,), None), steps, warmup, step)


def measure(families: list[str], precision: str, rounds: int, steps: int, warmup: int) -> list[list[object]]:
    best: dict[type, list[float]] = {}
    for _ in range(rounds):
        for name in families:
            classes, batch_size = FAMILIES[name]
            for cls in classes:
                train = bare_step_seconds(cls, precision, False, batch_size, steps, warmup)[0]
                infer = inference_images_per_second(cls, precision, batch_size, steps, warmup)
                previous = best.get(cls, [0.0, 0.0])
                best[cls] = [max(previous[0], train), max(previous[1], infer)]
    rows = []
    for name in families:
        classes, batch_size = FAMILIES[name]
        base_params = _parameters(classes[0])
        base_train, base_infer = best[classes[0]]
        for cls in classes:
            params = _parameters(cls)
            train, infer = best[cls]
            rows.append([cls.__name__, batch_size, f"{params:,}", f"{100 * (params / base_params - 1):+.2f} %",
                         f"{train:,.0f}", f"{train / base_train:.2f}x", f"{infer:,.0f}", f"{infer / base_infer:.2f}x"])
    return rows


def _parameters(cls) -> int:
    return sum(p.numel() for p in cls().parameters())


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(steps=8, warmup=2)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32-true"])
    parser.add_argument("--rounds", type=int, default=3, help="each figure is the best of these rounds")
    args = parser.parse_args()
    print(machine_line())
    rows = measure(args.families, args.precision, args.rounds, args.steps, args.warmup)
    print_table(f"attention's cost, {args.precision}, channels_last, {torch.get_num_threads()} threads, "
                f"best of {args.rounds} rounds",
                ["model", "batch", "parameters", "vs base", "train img/s", "vs base", "inference img/s", "vs base"],
                rows)


if __name__ == "__main__":
    main()
