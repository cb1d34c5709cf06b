"""Inference images/s of every architecture, eval mode under ``torch.inference_mode``.

    python -m benchmarks.inference_throughput --batch-size 256
"""

from __future__ import annotations

import torch

from benchmarks.common import base_parser, images_per_second, machine_line, print_table
from lightning_modules import (
    CNNClassifier,
    CNNSEClassifier,
    LeNetClassifier,
    MLPClassifier,
    ResNet18CBAMClassifier,
    ResNet18Classifier,
    VGGClassifier,
)

MODELS = [MLPClassifier, LeNetClassifier, CNNClassifier, CNNSEClassifier, ResNet18Classifier,
          ResNet18CBAMClassifier, VGGClassifier]


def measure(cls, channels_last: bool, batch_size: int, steps: int, warmup: int) -> float:
    model = cls(channels_last=channels_last).eval()
    model.configure_model()
    images = torch.rand(batch_size, 3, 32, 32)

    @torch.inference_mode()
    def step(batch) -> None:
        model(batch[0])

    return images_per_second(iter(lambda: (images,), None), steps, warmup, step)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(batch_size=256, steps=10, warmup=2)
    args = parser.parse_args()
    print(machine_line())
    rows = []
    for cls in MODELS:
        params = sum(p.numel() for p in cls().parameters())
        nchw = measure(cls, False, args.batch_size, args.steps, args.warmup)
        nhwc = measure(cls, True, args.batch_size, args.steps, args.warmup)
        rows.append((cls.__name__, f"{params / 1e6:.2f} M", nchw, nhwc, nhwc / nchw))
    print_table(f"inference images/s, batch {args.batch_size}", ["model", "params", "NCHW", "channels_last", "ratio"], rows)


if __name__ == "__main__":
    main()
