"""Configs compared on the same test images: a paired bootstrap over images and seeds, McNemar per seed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from callbacks.predictions import PREDICTIONS_FILE
from reporting.runs import ReportError, Run, TestPredictions
from reporting.statistics import RESAMPLES, BootstrapResult, mcnemar_exact, paired_bootstrap

# How far a run's predictions.csv may score from its test/acc before the report says so: another
# precision moves a handful of the 10,000 test images (bf16 against fp32: 5), another checkpoint
# dozens. 0.1 points is 10 images.
PREDICTIONS_TOLERANCE = 0.001

# Attention against its base, on the same network and recipe: the pairs the README compares
# unless ``--compare`` names others. A pair is left out while either config has no runs.
DEFAULT_COMPARISONS = (
    ("cnn_se_fast", "cnn_fast"),
    ("cnn_cbam_fast", "cnn_fast"),
    ("cnn_cbam_fast", "cnn_se_fast"),
    ("resnet_cbam_fast", "resnet18_fast"),
    ("cnn_se", "cnn"),
    ("cnn_cbam", "cnn"),
    ("cnn_cbam", "cnn_se"),  # the source's two attention recipes: same network, recipe and 50 epochs
    ("resnet_cbam", "resnet18"),
)  # every kind on cnn_fast's recipe against none has its own table: reporting.attention


def _scored_images(run: Run) -> tuple[str, np.ndarray]:
    """Which test images the run predicted (a fingerprint of their files, else indices, in order) and
    whether its top-1 was right on each: from its record, else from its ``predictions.csv``.

    Raises:
        ReportError: if the run has no predictions, or some lack a true class.
    """
    if run.predictions is not None:
        return run.predictions.images, run.predictions.top1 == run.predictions.labels
    path = Path(run.path) / PREDICTIONS_FILE
    if not path.is_file():
        raise ReportError(f"no {PREDICTIONS_FILE} (run `python cli.py predict --ckpt_path best` with its config)")
    predictions = TestPredictions.from_csv(path)
    return predictions.images, predictions.top1 == predictions.labels


@dataclass
class Comparison:
    """``first - second`` on the same test images: the bootstrap over images and seeds, McNemar per seed."""

    first: str
    second: str
    seeds: tuple[list[int | None], list[int | None]]  # the runs that took part, by seed
    bootstrap: BootstrapResult
    mcnemar: list[tuple[int, int, int, float]]  # (seed, only first right, only second right, p) per shared seed


def default_pairs(groups: dict[str, list[Run]]) -> list[tuple[str, str]]:
    """``DEFAULT_COMPARISONS`` whose two configs both have runs."""
    return [(first, second) for first, second in DEFAULT_COMPARISONS if first in groups and second in groups]


def compare_configs(
    groups: dict[str, list[Run]],
    pairs: Sequence[tuple[str, str]],
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[list[Comparison], list[str]]:
    """Each pair compared on the test images its runs predicted, and a line per run or pair left out.

    Raises:
        ReportError: if a pair names a config without runs.
    """
    unknown = sorted({config for pair in pairs for config in pair} - set(groups))
    if unknown:
        raise ReportError(f"No runs of {', '.join(unknown)} to compare.\nHINT: configs with runs: {', '.join(groups)}.")
    scored: dict[str, dict[int | None, tuple[str, np.ndarray]]] = {}
    notes: dict[str, None] = {}  # ordered and without repeats: a run can sit in several pairs
    for config in dict.fromkeys(config for pair in pairs for config in pair):
        scored[config] = {}
        for run in groups[config]:
            try:
                scored[config][run.seed] = _scored_images(run)
            except ReportError as reason:
                notes[f"{config}/{run.version}: {reason}"] = None
                continue
            predicted = float(scored[config][run.seed][1].mean())
            if run.test_acc is not None and abs(predicted - run.test_acc) > PREDICTIONS_TOLERANCE:
                notes[f"{config}/{run.version}: its {PREDICTIONS_FILE} scores {100 * predicted:.2f} %, its test/acc "
                      f"{100 * run.test_acc:.2f} % (another checkpoint or precision?); compared on the former"] = None
    comparisons = []
    for first, second in pairs:
        both = [*scored[first].values(), *scored[second].values()]
        if not scored[first] or not scored[second]:
            notes[f"{first} - {second}: not compared, one side has no predictions"] = None
            continue
        if any(images != both[0][0] for images, _ in both):
            notes[f"{first} - {second}: not compared, their runs predicted different images"] = None
            continue
        bootstrap = paired_bootstrap(np.stack([right for _, right in scored[first].values()]),
                                     np.stack([right for _, right in scored[second].values()]), resamples, seed)
        mcnemar = []
        for shared in (s for s in scored[first] if s is not None and s in scored[second]):
            a, b = scored[first][shared][1], scored[second][shared][1]
            only_first, only_second = int(np.sum(a & ~b)), int(np.sum(b & ~a))
            mcnemar.append((shared, only_first, only_second, mcnemar_exact(only_first, only_second)))
        comparisons.append(Comparison(first, second, (list(scored[first]), list(scored[second])), bootstrap, mcnemar))
    return comparisons, list(notes)
