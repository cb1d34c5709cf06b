"""The numbers behind IG_STEPS and SMOOTHGRAD_SAMPLES, and Score-CAM's empty maps, on a trained checkpoint.

    OMP_NUM_THREADS=1 python -m benchmarks.attribution_budgets \\
        --ckpt lightning_logs/cnn_cbam_fast/version_0/checkpoints/last.ckpt --data-dir data [--images 30]

Takes ``--images`` validation images (as many of each class) of the run's data,
as the model sees them, and prints per setting:

* integrated gradients: the completeness gap (``completeness_gap``: the sum of
  the attributions against the logit's change from the black image), median
  and maximum over the images, for several fixed step counts and for the
  default (steps doubled per image until the gap is under 1 %);
* SmoothGrad: the Pearson correlation of two seeds' maps of the same image
  (magnitude summed over channels, as the faithfulness scores use them),
  minimum and median, for several sample counts;
* Score-CAM: how many maps of each explained layer are all zero.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import explain
from benchmarks.faithfulness_goals import balanced_images
from datamodules import CIFAR10DataModule
from visualization.attributions import (
    IG_STEPS,
    IG_TOLERANCE,
    completeness_gap,
    integrated_gradients,
    resolve_layers,
    smoothgrad,
)
from visualization.cams import layer_cams
from visualization.model_view import ModelView


def seed_correlation(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, samples: int) -> torch.Tensor:
    """Per image, the Pearson correlation of SmoothGrad maps drawn with seeds 0 and 1."""
    maps = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        maps.append(smoothgrad(model, x, targets, samples=samples).abs().sum(dim=1).flatten(1))
    a, b = (m - m.mean(dim=1, keepdim=True) for m in maps)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--steps", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--samples", type=int, nargs="+", default=[16, 32, 64, 128])
    args = parser.parse_args()

    model, checkpoint = explain.load_model(args.ckpt, None, "cpu")
    data = dict((explain.run_config(args.ckpt).get("data") or {}).get("init_args") or {})
    datamodule = CIFAR10DataModule(data_dir=args.data_dir, val_size=data.get("val_size", 5000),
                                   split_seed=data.get("split_seed", 0))
    datamodule.setup("fit")
    pixels, labels = balanced_images(datamodule.val_set, len(datamodule.classes), args.images)
    x = ModelView.of_checkpoint(checkpoint, pixels.shape[-2] * pixels.shape[-1])(pixels)
    model.eval()
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    print(f"{len(x)} images, accuracy {100 * (targets == labels).float().mean():.1f} %")
    for steps in args.steps:
        gap = completeness_gap(model, x, targets, integrated_gradients(model, x, targets, steps=steps, tolerance=0))
        print(f"integrated gradients, {steps:4d} steps: gap median {100 * gap.median():.2f} %, "
              f"max {100 * gap.max():.2f} %")
    gap = completeness_gap(model, x, targets, integrated_gradients(model, x, targets))
    print(f"integrated gradients, the default ({IG_STEPS} steps, doubled where the gap is over "
          f"{100 * IG_TOLERANCE:.0f} %): gap median {100 * gap.median():.2f} %, max {100 * gap.max():.2f} %")
    for samples in args.samples:
        rho = seed_correlation(model, x, targets, samples)
        print(f"smoothgrad, {samples:4d} samples: seed-to-seed correlation min {rho.min():.3f}, "
              f"median {rho.median():.3f}")
    layers = resolve_layers(model.net, list(model.explainable_layers))
    for name, cam in layer_cams(model, x, targets, layers, "scorecam").items():
        print(f"scorecam {name}: {int((cam.flatten(1).amax(dim=1) == 0).sum())} of {len(cam)} maps empty")


if __name__ == "__main__":
    main()
