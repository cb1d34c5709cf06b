"""The faithfulness scores of a trained checkpoint on real validation images, with bootstrap intervals.

    OMP_NUM_THREADS=1 python -m benchmarks.faithfulness_goals \\
        --ckpt lightning_logs/cnn/version_0/checkpoints/best-epoch017-acc0.7682.ckpt [--images 300]

Rebuilds the run's validation split from its ``config.yaml`` (data folder,
``val_size``, ``split_seed``), takes ``--images`` of them, the same number from
every class, and prints
the table ``explain.py --faithfulness`` writes: deletion, insertion and ROAD
areas per map and for the random and centre baselines, the paired difference
to the random map with a 95 % bootstrap interval over images, and the rank
correlation of each map after the top layer is re-initialised.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import explain
from callbacks.probes import select_probes
from datamodules import CIFAR10DataModule
from common.user_input import UserInputError
from visualization.faithfulness import faithfulness_scores
from visualization.faithfulness_tables import summary_table
from visualization.model_view import ModelView
from visualization.ranking import summary_rows


def balanced_images(dataset, num_classes: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count // num_classes`` images of each class, the first ones in index order: uint8 images and labels.

    Not simply the first ``count`` images: the split keeps the folders' order,
    which is by class, so those would be one or two classes only (the first 300
    of CIFAR-10's validation split are all airplanes), and the scores would
    describe those classes, not the model.
    """
    if count < num_classes:
        raise UserInputError(f"--images {count} is fewer than the {num_classes} classes; give at least {num_classes}.")
    return select_probes(dataset, num_classes, count // num_classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--images", type=int, default=300, help="validation images, as many of each class (rounded down)")
    parser.add_argument("--steps", type=int, default=16, help="deletion/insertion curve steps")
    parser.add_argument("--road-steps", type=int, default=8)
    parser.add_argument("--fill", choices=["blur", "mean"], default="blur", help="what a removed pixel becomes")
    parser.add_argument("--data-dir", help="override the run's data folder")
    args = parser.parse_args()

    model, checkpoint = explain.load_model(args.ckpt, None, "cpu")
    config = explain.run_config(args.ckpt)
    data_args = dict((config.get("data") or {}).get("init_args") or {})
    layers = explain.configured_layers(config) or ["conv1", "conv2", "conv3"]
    datamodule = CIFAR10DataModule(
        data_dir=args.data_dir or data_args["data_dir"], download=False,
        val_size=data_args.get("val_size", 5000), split_seed=data_args.get("split_seed", 0),
    )
    start = time.perf_counter()
    datamodule.setup("fit")
    pixels, labels = balanced_images(datamodule.val_set, len(datamodule.classes), args.images)
    images = ModelView.of_checkpoint(checkpoint, pixels.shape[-2] * pixels.shape[-1])(pixels)  # permuted if the run's were
    print(f"decoded the data in {time.perf_counter() - start:.0f} s; {len(images)} validation images, "
          f"layers {layers}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    start = time.perf_counter()
    result = faithfulness_scores(
        model, images, layers, layer_root=model.net, steps=args.steps, road_steps=args.road_steps, fill=model.mean if args.fill == "mean" else "blur",
    )
    seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = (model.eval()(images).argmax(1) == labels).float().mean()
    print(f"scored in {seconds:.0f} s; accuracy on these images {100 * accuracy:.1f} %; "
          f"randomised: {result.randomized}\n")
    print(summary_table(summary_rows(result)))


if __name__ == "__main__":
    main()
