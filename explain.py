"""The training-time pictures for a saved checkpoint and your own images, as PNG files.

    python explain.py --ckpt lightning_logs/cnn/version_0/checkpoints/last.ckpt \\
        [--images my_images/ [--per-class 10]] [--out pictures/] [--layers conv1 conv2 conv3] [--mistakes 8]
        [--faithfulness] [--methods integrated_gradients layercam ...] [--no-pictures]

Checkpoints are read with ``torch.load(..., weights_only=True)``: tensors and
plain values only, so a file someone sent you cannot run code when explained.
The checkpoints ``cli.py`` writes need nothing more. A file that pickles other
objects is refused, naming the first one; ``--trust-checkpoint`` loads it
anyway, for files whose origin you trust.

Without ``--images`` the probe set stored in the checkpoint by
``InterpretabilityDumps`` is explained, i.e. the images TensorBoard showed.
Every image is given to the model as it saw its data (pixel-permuted for
``cnn_permuted.yaml``): the view kept with the probes, or for older
checkpoints the data settings Lightning stored in them.
``--images`` takes a folder of PNG/JPEG files; files inside a sub-folder named
after a class get that class as their true label, loose files none. Images of
another size are resized to the model's input size. ``--mistakes N`` adds
``mistakes.png``: the N labelled images the model got wrong most confidently,
each with Grad-CAM of the last layer for the predicted and for the true class.
``--faithfulness`` ranks the explanation methods for the checkpoint: it prints
the leaderboard (one row per method and layer, each score with its 95 %
bootstrap interval over the images and its rank; overlapping intervals share a
rank; a method that fails the model-randomisation check is flagged and not
ranked) and writes it with the full scores to ``faithfulness.md``,
``faithfulness.csv`` and ``leaderboard.csv``, the curves to
``faithfulness_curves.png``, and the leaderboard with a fingerprint of its
images to ``faithfulness.json`` (what a published run keeps). It scores every method of
``visualization.methods.METHODS`` unless ``--methods`` names some; that flag
also adds methods to the pictures (which otherwise show the training-time
defaults). ``--per-class N`` takes the first N images of each class folder
of ``--images``: the same sample for every checkpoint, so leaderboards
compare. ``--no-pictures`` skips the pictures when only the scores are wanted.

The model class, the layers and the class names come from the run itself: the
``config.yaml`` that ``cli.py`` saves next to ``checkpoints/`` and the class
names and probes stored in the checkpoint. ``--model-class`` and ``--layers`` override
them for checkpoints from elsewhere. The pictures are those of
``visualization.pictures.render_pictures``, the function the callback calls.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import json
import math
import pickle
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image

from callbacks.interpretability import InterpretabilityDumps
from datamodules.image_folder import read_loose_images
from lightning_modules import ImageClassifier
from common.user_input import UserInputError
from visualization.attributions import attribution_mode, prepare_inputs
from visualization.faithfulness import SANITY_LIMIT, faithfulness_scores
from visualization.faithfulness_tables import leaderboard_table, summary_table
from visualization.figures import faithfulness_curves_figure, figure_to_image
from visualization.model_view import ModelView
from visualization.methods import DEFAULT_METHODS, METHODS, check_methods
from visualization.pictures import most_confident_mistakes, render_mistakes, render_pictures
from visualization.ranking import leaderboard_rows, summary_rows

# Images per picture: a Grad-CAM grid of more rows gets too tall to read.
PAGE_SIZE = 10
CALLBACK_NAME = InterpretabilityDumps.__name__  # the class_path a run's config names it by
PROBE_KEY = "probe_images"  # what marks its state among a checkpoint's callbacks (ProbeSet.state_dict)


class ExplainError(UserInputError):
    """Bad input to explain.py; the message says how to fix it."""


def run_config(ckpt: Path) -> dict[str, Any]:
    """The ``config.yaml`` cli.py saved for the run of this checkpoint, or ``{}``."""
    path = ckpt.resolve().parent.parent / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def configured_layers(config: dict[str, Any]) -> list[str] | None:
    """The layers the run's InterpretabilityDumps callback was given, if any (else the model's own are used).

    cli.py keeps it under ``pictures``; runs from before that listed it in ``trainer.callbacks``.
    """
    listed = (config.get("trainer") or {}).get("callbacks") or []
    for callback in [config.get("pictures"), *listed]:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith(CALLBACK_NAME):
            return list((callback.get("init_args") or {}).get("layers") or []) or None
    return None


def model_class(name: str) -> type[ImageClassifier]:
    """``lightning_modules.CNNClassifier`` (or just ``CNNClassifier``) to the class."""
    module_name, _, class_name = name.rpartition(".")
    module = importlib.import_module(module_name or "lightning_modules")
    found = getattr(module, class_name, None)
    if not (isinstance(found, type) and issubclass(found, ImageClassifier)):
        raise ExplainError(
            f"--model-class {name!r} is not an ImageClassifier.\n"
            "HINT: e.g. --model-class lightning_modules.CNNClassifier (see lightning_modules/__init__.py)."
        )
    return found


def read_checkpoint(ckpt: Path, trust: bool = False) -> dict[str, Any]:
    """``torch.load`` of ``ckpt``, refusing pickled objects beyond tensors and plain values unless ``trust``.

    Raises:
        ExplainError: The file needs full unpickling and ``trust`` is off. Nothing
            in it has run: the restricted unpickler stops at the first object it
            does not know, before calling anything.
    """
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
            what = f"a pickled `{found.group(1)}`" if found else "pickled objects"
            raise ExplainError(
                f"{ckpt} holds {what}, not only tensors and plain values. Loading it would run code chosen by "
                "whoever wrote the file, so it was not loaded (checkpoints written by cli.py never need this).\n"
                "HINT: only if you trust where the file came from, add --trust-checkpoint."
            ) from None
    return torch.load(ckpt, map_location="cpu", weights_only=False)


def load_model(
    ckpt: Path, class_name: str | None, device: str, trust: bool = False
) -> tuple[ImageClassifier, dict[str, Any]]:
    """The classifier with the checkpoint's weights, and the raw checkpoint (see ``read_checkpoint``)."""
    checkpoint = read_checkpoint(ckpt, trust)
    class_name = class_name or (run_config(ckpt).get("model") or {}).get("class_path")
    if not class_name:
        raise ExplainError(
            f"Cannot tell the model class of {ckpt}: no config.yaml beside its checkpoints/ folder.\n"
            "HINT: pass --model-class, e.g. lightning_modules.CNNClassifier."
        )
    overrides = {}
    if checkpoint.get("hyper_parameters", {}).get("pretrained"):
        overrides["pretrained"] = False  # the weights come from the checkpoint, not from ImageNet
    model = model_class(class_name).load_from_checkpoint(
        ckpt, map_location=device, weights_only=not trust, **overrides
    )
    return model, checkpoint


def stored_probes(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The probe state InterpretabilityDumps kept in the checkpoint (the one holding ``probe_images``), or ``{}``."""
    for state in checkpoint.get("callbacks", {}).values():
        if isinstance(state, dict) and PROBE_KEY in state:
            return state
    return {}


def checkpoint_view(checkpoint: dict[str, Any], probes: dict[str, Any], pixels: torch.Tensor) -> ModelView:
    """What the checkpoint's model saw of images like ``pixels``: the probes' kept view, else the run's data settings."""
    kept = ModelView.from_state(probes)
    return kept if kept is not None else ModelView.of_checkpoint(checkpoint, pixels.shape[-2] * pixels.shape[-1])


def explain(
    ckpt: Path,
    out: Path,
    images: Path | None = None,
    layers: Sequence[str] | None = None,
    class_name: str | None = None,
    device: str = "cpu",
    trust: bool = False,
    mistakes: int = 0,
    faithfulness: bool = False,
    methods: Sequence[str] | None = None,
    per_class: int | None = None,
    pictures: bool = True,
) -> list[Path]:
    """Write the pictures of ``ckpt`` for ``images`` (or its probe set) into ``out``; returns the files.

    ``trust`` allows a checkpoint that pickles arbitrary objects (see ``read_checkpoint``).
    ``mistakes`` > 0 also writes ``mistakes.png``: that many of the labelled
    images the model got wrong most confidently, with Grad-CAM of the last
    layer for the predicted and the true class (the ``mistakes/*`` picture of training).
    ``faithfulness`` also writes ``faithfulness.md``, ``faithfulness.csv``, ``leaderboard.csv``,
    ``faithfulness.json`` and ``faithfulness_curves.png`` (see ``write_faithfulness``). ``methods`` (names of
    ``visualization.methods.METHODS``) are drawn and scored; ``None``: the pictures show
    the training-time defaults and every method is scored. ``per_class`` keeps the first that many
    images (by name) of each sub-folder of ``images``: a fixed sample of a labelled split, the same for
    every checkpoint. ``pictures=False`` writes no pictures (for ``faithfulness`` or ``mistakes`` alone).
    """
    model, checkpoint = load_model(ckpt, class_name, device, trust)
    check_methods(methods or METHODS, model)  # an unknown or inapplicable method fails before anything is written
    layers = list(layers or configured_layers(run_config(ckpt)) or model.explainable_layers)
    if not layers:
        raise ExplainError(
            f"No layers to explain: neither the run's config nor {type(model).__name__} names any.\n"
            "HINT: pass --layers, e.g. --layers conv1 conv2 conv3 (CNN) or layer1 layer2 layer3 layer4 (ResNet)."
        )
    probes = stored_probes(checkpoint)
    classes = list(checkpoint.get("classes") or probes.get("classes") or [str(c) for c in range(model.num_classes)])
    image_names = None
    if images is not None:
        found = read_loose_images(images, model.input_shape, classes, per_folder=per_class)
        pixels, labels, image_names = found.images, found.labels, found.paths
    elif per_class is not None:
        raise ExplainError("--per-class picks images from the folder --images names; none was given.\n"
                           "HINT: pass --images, e.g. --images ../shared/cifar10-jpg/test --per-class 10.")
    elif probes:
        pixels, labels = probes["probe_images"], probes["probe_labels"]
    else:
        raise ExplainError(
            f"{ckpt} holds no probe images (its run had no InterpretabilityDumps callback).\n"
            "HINT: pass --images a folder of PNG/JPEG files."
        )
    if faithfulness and len(pixels) < 2:
        raise ExplainError(
            f"--faithfulness needs at least 2 images for its bootstrap intervals, got {len(pixels)}.\n"
            "HINT: pass --images a folder with more images (a few hundred give intervals worth reading)."
        )
    x_all = checkpoint_view(checkpoint, probes, pixels)(pixels)  # what the model saw: permuted if its data were
    out.mkdir(parents=True, exist_ok=True)
    pages = range(0, len(pixels), PAGE_SIZE) if pictures else range(0)
    written = []
    for page, start in enumerate(pages):
        chunk = slice(start, start + PAGE_SIZE)
        x = x_all[chunk]
        pictures = render_pictures(
            model, x, labels[chunk], classes, layers, layer_root=model.net, methods=methods or DEFAULT_METHODS,
            feature_images=len(x),
        )
        suffix = f"_{page}" if len(pages) > 1 else ""
        for tag, picture in pictures.items():
            path = out / f"{tag.replace('/', '_')}{suffix}.png"
            Image.fromarray(picture).save(path)
            written.append(path)
    if mistakes > 0:
        written += write_mistakes(model, x_all, labels, classes, layers[-1], mistakes, out)
    if faithfulness:
        written += write_faithfulness(model, x_all, layers, out, methods or METHODS, image_names)
    return written


def write_faithfulness(
    model: ImageClassifier, x: torch.Tensor, layers: list[str], out: Path, methods: Sequence[str] = METHODS,
    image_names: Sequence[str] | None = None,
) -> list[Path]:
    """Print the leaderboard; write it and every score to ``faithfulness.md``, ``faithfulness.csv``,
    ``leaderboard.csv``, the curves to ``faithfulness_curves.png``, and ``faithfulness.json``: the
    leaderboard with which images it scored, small enough to publish beside a run's record.

    ``x``: the images as the model sees them (see ``checkpoint_view``); ``image_names``: their files,
    fingerprinted in the JSON so that two leaderboards can be checked to score the same images.

    The scores are those the ``FaithfulnessScores`` callback logs, over all the
    images at once and with finer curves (16 deletion/insertion steps, 8 ROAD steps).
    """
    start = time.perf_counter()
    result = faithfulness_scores(model, x, layers, layer_root=model.net, methods=methods)
    seconds = time.perf_counter() - start
    maps = len(result.scores["deletion_auc"]) - 2  # less the random and centre baselines
    print(f"Scored {maps} maps on {len(x)} images in {seconds:.0f} s "
          f"({torch.get_num_threads()} threads).", file=sys.stderr)
    rows, ranked = summary_rows(result), leaderboard_rows(result)
    leaderboard = leaderboard_table(ranked)
    print(leaderboard)
    table = out / "faithfulness.md"
    table.write_text(
        f"Leaderboard of the explanation methods over {len(x)} images, 95 % bootstrap intervals over "
        "images, rank in brackets (overlapping intervals share a rank). `road_combined` (ROAD least relevant "
        "first minus most relevant first): higher is better; `road_auc` (most relevant first) and deletion: "
        "lower; `road_lerf_auc` and insertion: higher. `randomization_spearman`: rank correlation with the "
        f"map after re-initialising {', '.join(result.randomized)}; `flagged`: at least {SANITY_LIMIT} (or "
        "constant), the map hardly depends on the weights, and it is not ranked.\n\n" + leaderboard
        + "\nAll scores; `*_vs_random`: the paired difference to the random map.\n\n" + summary_table(rows)
    )
    written = [table]
    for name, csv_rows in {"faithfulness.csv": rows, "leaderboard.csv": ranked}.items():
        written.append(out / name)
        with written[-1].open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(csv_rows[0]))
            writer.writeheader()
            writer.writerows(csv_rows)
    summary = {
        "images": len(x),
        "images_sha256": (hashlib.sha256("\n".join(image_names).encode()).hexdigest()
                          if image_names is not None else None),
        "layers": list(layers),
        "methods": list(methods),
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        # JSON has no NaN: a score a method could not get is null. Four digits outlast any interval here.
        "leaderboard": [{key: _json_number(value) for key, value in row.items()} for row in ranked],
    }
    written.append(out / "faithfulness.json")
    written[-1].write_text(json.dumps(summary, separators=(",", ":")) + "\n")
    figure = out / "faithfulness_curves.png"
    Image.fromarray(figure_to_image(faithfulness_curves_figure(result.curves))).save(figure)
    return [*written, figure]


def _json_number(value: object) -> object:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def write_mistakes(
    model: ImageClassifier, x: torch.Tensor, labels: torch.Tensor, classes: list[str], layer: str, count: int,
    out: Path,
) -> list[Path]:
    """``out/mistakes.png`` for the ``count`` surest wrong predictions among labelled images ``x`` (as the model
    sees them); [] if none is wrong."""
    if not (labels >= 0).any():
        raise ExplainError(
            "--mistakes needs images with known classes, and none of these has one.\n"
            "HINT: put the images in sub-folders named after their classes, e.g. my_images/cat/1.png."
        )
    with attribution_mode(model), torch.no_grad():  # eval mode, and the model left as it was
        confidences, preds = torch.cat([model(prepare_inputs(chunk, model)).softmax(dim=1).cpu()
                                        for chunk in x.split(PAGE_SIZE * 10)]).max(dim=1)
    chosen = most_confident_mistakes(confidences, preds, labels, count)
    if not len(chosen):
        print("No mistakes among the labelled images: no mistakes.png.", file=sys.stderr)
        return []
    path = out / "mistakes.png"
    Image.fromarray(render_mistakes(model, x[chosen], labels[chosen], classes, layer, layer_root=model.net)).save(path)
    return [path]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by cli.py fit")
    parser.add_argument("--images", type=Path, help="folder of images (default: the checkpoint's probe set)")
    parser.add_argument("--out", type=Path, default=Path("pictures"), help="folder for the PNG files")
    parser.add_argument("--layers", nargs="+", help="layers of model.net, low to high (default: the run's config)")
    parser.add_argument("--model-class", help="e.g. lightning_modules.CNNClassifier (default: the run's config)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load a checkpoint that pickles more than tensors and plain values (this runs code from the file)",
    )
    parser.add_argument(
        "--mistakes", type=int, default=0, metavar="N",
        help="also write mistakes.png: the N labelled images the model got wrong most confidently, with Grad-CAM",
    )
    parser.add_argument(
        "--faithfulness", action="store_true",
        help="also rank the methods on their scores (deletion, insertion, ROAD both orders, randomisation check): "
        "prints the leaderboard, writes faithfulness.md/.csv, leaderboard.csv, faithfulness_curves.png",
    )
    parser.add_argument(
        "--methods", nargs="+", metavar="METHOD",
        help=f"methods to draw and score beside Grad-CAM (default: all for --faithfulness; of {', '.join(METHODS)})",
    )
    parser.add_argument(
        "--per-class", type=int, metavar="N",
        help="only the first N images (by name) of each class folder of --images: a fixed, balanced sample, "
        "e.g. --images ../shared/cifar10-jpg/test --per-class 10 for the same 100 test images every time",
    )
    parser.add_argument(
        "--pictures", action=argparse.BooleanOptionalAction, default=True,
        help="write the Grad-CAM and feature-map pictures (--no-pictures: only --faithfulness / --mistakes)",
    )
    args = parser.parse_args(argv)
    if args.per_class is not None and args.per_class < 1:
        parser.error(f"--per-class must be at least 1, got {args.per_class}.")
    if not args.ckpt.is_file():
        parser.error(
            f"--ckpt {args.ckpt} is not a file.\nHINT: checkpoints are in lightning_logs/<config>/version_N/checkpoints/."
        )
    if args.images is not None and not args.images.is_dir():
        parser.error(f"--images {args.images} is not a folder.")
    try:
        written = explain(
            args.ckpt, args.out, args.images, args.layers, args.model_class, args.device, args.trust_checkpoint,
            args.mistakes, args.faithfulness, args.methods, args.per_class, args.pictures,
        )
    except ValueError as error:  # ExplainError, or an unknown layer (resolve_layers lists the valid ones)
        parser.error(str(error))
    print(f"Wrote {len(written)} files to {args.out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
