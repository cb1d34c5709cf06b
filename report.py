"""Compare finished runs: Markdown tables, paired comparisons and accuracy curves built from a log directory.

    python report.py lightning_logs                      # writes lightning_logs/report/
    python report.py lightning_logs --out reports/today --thresholds 0.5 0.6 0.7
    python report.py lightning_logs --markdown-only      # prints the README's results, writes nothing
    python report.py lightning_logs --details-only       # prints docs/results.md's tables, writes nothing
    python report.py lightning_logs --markdown-only --compare cnn_se_fast cnn_fast

Two views of the same runs. The README's (``results_table``): per config, the test accuracy
with its 95 % interval over seeds, the source's number, seconds per epoch and inference
images per second; then each attention config against its base on the same test images
(``compare_configs``: a paired bootstrap over images and seeds, and McNemar's exact test per
seed, from each run's ``predictions.csv``), with what the attention costs. The statistics are
in ``report_statistics``. The wide one (``markdown_table``), for ``docs/results.md``: beside
the best validation accuracy, what the source stressed (SPEC section 5): parameters, seconds
per epoch, the wall time and epochs each config needed to first reach given validation
accuracies, inference images per second, and the number the source reported for the same
recipe (``SPEC_RESULTS``), which is a test accuracy.

Everything is read back from what runs left on disk, so a report can be rebuilt
at any time: each ``<logdir>/<config>/<run>`` folder's TensorBoard events
(``val/acc``, ``test/acc``, ``time/*``, ``perf/*``, and per-class accuracies
``val/acc_per_class/<class>`` / ``test/acc_per_class/<class>`` where a run
logged them), the ``run.json`` that ``callbacks.RunRecorder`` wrote (parameters, seed,
hardware, versions) and the ``predictions.csv`` that ``predict`` wrote. A run folder is a
``version_N`` or any folder with a ``run.json``. Runs of one config (one ``<config>`` folder,
so moving a run regroups it) are grouped; the newest run of each seed counts once. A run
whose fit did not end is listed as skipped, not averaged in.

Outputs, in ``--out`` (default ``<logdir>/report``): ``report.md`` (both views),
``report.json`` (the numbers behind every cell and comparison), and ``val_acc_vs_epoch.png`` /
``val_acc_vs_time.png``. The wide table and figures are also logged to the
TensorBoard run ``<logdir>/report``, so ``tensorboard --logdir <logdir>`` shows
them next to the runs.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks.predictions import PredictionWriter
from callbacks.run_record import RUN_RECORD_FILE
from report_statistics import RESAMPLES, BootstrapResult, mcnemar_exact, paired_bootstrap, t_interval
from visualization import tables
from visualization.report_figures import Curve, accuracy_curves

__all__ = ["DEFAULT_COMPARISONS", "SPEC_RESULTS", "Comparison", "ReportError", "Run", "compare_configs",
           "comparison_table", "details_markdown", "group_runs", "markdown_table", "read_run", "results_markdown",
           "results_table", "write_report"]

TRAINED_TAG = "train/loss_epoch"  # logged by every training epoch; absent from validate/test events
EVALUATED_TAGS = ("val/acc", "test/acc")  # what a validate/test subcommand logs
REPORT_RUN = "report"  # the TensorBoard run (folder under the log dir) the report logs into
# 50 %: the MLP's level (SPEC 5); 70 %: every CNN passes it in a few epochs; 80 %: the
# source's 20-epoch CNN (80.98 %), the mark the fast recipes race to.
DEFAULT_THRESHOLDS = (0.5, 0.7, 0.8)
PER_CLASS_TAGS = {"val": "val/acc_per_class/", "test": "test/acc_per_class/"}
PREDICTIONS_FILE = inspect.signature(PredictionWriter).parameters["filename"].default  # what `predict` writes
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
    ("resnet_cbam", "resnet18"),
)

# What the source reported for each recipe (SPEC section 5): CIFAR-10 *test* accuracy in
# percent, as text (one was a range), after how many epochs. Keyed by config name; a
# fast recipe carries the number of the model it races. Configs not here show "—":
# the source published no number for them.
SPEC_RESULTS: dict[str, tuple[tuple[str, int], ...]] = {
    "mlp": (("50-55", 20),),
    "cnn": (("80.98", 20), ("84.68", 50)),
    "cnn_fast": (("80.98", 20), ("84.68", 50)),
    "cnn_se": (("85.38", 50),),
    "cnn_se_fast": (("85.38", 50),),
    "resnet_cbam": (("90.63", 50),),
    "vgg16": (("above the CNN", 10),),
}


class ReportError(ValueError):
    """Nothing to report on, with a hint on what to run first."""


@dataclass
class Run:
    """One training run as its logs tell it; the lists hold one entry per validation."""

    config: str
    version: str
    path: str
    seed: int | None
    model: str
    parameters: int
    finished_at: str
    hardware: dict[str, Any]
    versions: dict[str, str]
    val_acc: list[float]
    epochs: list[int]  # 1-based epoch each validation closed
    elapsed_seconds: list[float | None]  # training wall time when that val/acc was known
    epoch_seconds: list[float]
    test_acc: float | None
    inference_images_per_second: float | None
    time_to: dict[str, tuple[float | None, int] | None] = field(default_factory=dict)
    # Per-class accuracy by class name: validation at the best val/acc epoch, test at the last test.
    val_acc_per_class: dict[str, float] = field(default_factory=dict)
    test_acc_per_class: dict[str, float] = field(default_factory=dict)

    @property
    def best_val_acc(self) -> float:
        return max(self.val_acc)

    @property
    def best_epoch(self) -> int:
        """The first epoch that reached the best ``val/acc``."""
        return self.epochs[self.val_acc.index(self.best_val_acc)]

    @property
    def epochs_trained(self) -> int:
        return self.epochs[-1]

    @property
    def seconds_per_epoch(self) -> float | None:
        # The median: one epoch slowed by a neighbour on a shared machine (3,036 s among 100 s ones) moved the mean.
        return statistics.median(self.epoch_seconds) if self.epoch_seconds else None

    def first_reaching(self, threshold: float) -> tuple[float | None, int] | None:
        """(wall seconds, epoch) of the first validation at or above ``threshold``; ``None`` if never."""
        for accuracy, seconds, epoch in zip(self.val_acc, self.elapsed_seconds, self.epochs):
            if accuracy >= threshold:
                return seconds, epoch
        return None


# ---- reading runs back ---------------------------------------------------------------------


def _scalars(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    if tag not in accumulator.Tags()["scalars"]:
        return []
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def _load(path: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every event
    accumulator.Reload()
    return accumulator


def _fit_and_evaluation_events(version_dir: Path) -> tuple[EventAccumulator, list[EventAccumulator]]:
    """The fit's scalars, and those of each ``validate``/``test`` that logged into the same folder.

    Read together, a later ``validate --ckpt_path best`` (which logs at step 0)
    looks to TensorBoard like a restart at step 0, and it purges every fit
    event after it. So a file with evaluation results but no training is read on its own; the
    fit's files (several when it was resumed) are still read together, where that
    purge is right: a resumed fit redoes the steps after its checkpoint.
    """
    files = sorted(version_dir.glob("events.out.tfevents.*"))  # by name: by start time
    loaded = {path: _load(path) for path in files}
    evaluation = [path for path, events in loaded.items()
                  if not _scalars(events, TRAINED_TAG) and any(_scalars(events, tag) for tag in EVALUATED_TAGS)]
    if not evaluation:
        return _load(version_dir), []
    with tempfile.TemporaryDirectory() as fit_only:
        for path in files:
            if path not in evaluation:
                (Path(fit_only) / path.name).symlink_to(path.resolve())
        return _load(Path(fit_only)), [loaded[path] for path in evaluation]


def _per_class(accumulator: EventAccumulator, prefix: str, step: int | None) -> dict[str, float]:
    """``{class: accuracy}`` from the scalars under ``prefix``, at ``step`` (``None``: the last one).

    Classes come out in name order, which is the datasets' label order (torchvision's CIFAR-10
    and image folders both sort them). Empty when the run logged none.
    """
    found = {}
    for tag in sorted(t for t in accumulator.Tags()["scalars"] if t.startswith(prefix)):
        values = dict(_scalars(accumulator, tag))
        if values:
            found[tag.removeprefix(prefix)] = values[step] if step in values else values[max(values)]
    return found


def read_run(version_dir: Path, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Run:
    """Read one ``version_N`` folder.

    Raises:
        ReportError: if the folder lacks ``run.json``, a finished fit, or any ``val/acc``.
    """
    record_path = version_dir / RUN_RECORD_FILE
    if not record_path.is_file():
        raise ReportError(f"no {RUN_RECORD_FILE} (recorded before RunRecorder, or not a fit run)")
    record = json.loads(record_path.read_text())
    if not record.get("finished_at"):
        raise ReportError("fit did not finish (interrupted or still running)")
    accumulator, evaluations = _fit_and_evaluation_events(version_dir)
    val_acc = _scalars(accumulator, "val/acc")
    if not val_acc:
        raise ReportError("no val/acc logged (validation off?)")
    # Epoch-end scalars share their step with Lightning's "epoch" scalar: join on it.
    epoch_at = dict(_scalars(accumulator, "epoch"))
    elapsed_at = dict(_scalars(accumulator, "time/elapsed_seconds"))
    # A ``test`` logging into the run's folder writes its own file; the last one written counts.
    test_acc = next((found for events in reversed(evaluations) if (found := _scalars(events, "test/acc"))), None)
    test_acc = test_acc or _scalars(accumulator, "test/acc")
    test_events = next((events for events in reversed(evaluations) if _scalars(events, "test/acc")), accumulator)
    inference = _scalars(accumulator, "perf/inference_images_per_second")
    run = Run(
        config=version_dir.parent.name,  # the folder, as TensorBoard names it: moving a run regroups it
        version=version_dir.name,
        path=str(version_dir),
        seed=record.get("seed"),
        model=str(record.get("model_class", "?")),
        parameters=int(record.get("parameters", 0)),
        finished_at=str(record["finished_at"]),
        hardware=record.get("hardware") or {},
        versions=record.get("versions") or {},
        val_acc=[value for _, value in val_acc],
        epochs=[int(epoch_at.get(step, index)) + 1 for index, (step, _) in enumerate(val_acc)],
        elapsed_seconds=[elapsed_at.get(step) for step, _ in val_acc],
        epoch_seconds=[value for _, value in _scalars(accumulator, "time/epoch_seconds")],
        test_acc=test_acc[-1][1] if test_acc else None,
        inference_images_per_second=inference[-1][1] if inference else None,
    )
    run.time_to = {f"{threshold:g}": run.first_reaching(threshold) for threshold in thresholds}
    best_step = val_acc[run.val_acc.index(run.best_val_acc)][0]
    run.val_acc_per_class = _per_class(accumulator, PER_CLASS_TAGS["val"], best_step)
    run.test_acc_per_class = _per_class(test_events, PER_CLASS_TAGS["test"], None)
    return run


def find_runs(logdir: Path, thresholds: Sequence[float]) -> tuple[list[Run], list[str]]:
    """Every reportable run under ``logdir/<config>/<run>``, and a line per folder skipped.

    A run folder is a ``version_N`` (Lightning's name) or any folder holding ``run.json``
    (a pinned ``--trainer.logger.init_args.version bf16_seed0``).
    """
    runs, skipped = [], []
    for version_dir in sorted(logdir.glob("*/*")):
        is_run = version_dir.name.startswith("version_") or (version_dir / RUN_RECORD_FILE).is_file()
        if not version_dir.is_dir() or not is_run or version_dir.parent.name == REPORT_RUN:
            continue
        try:
            runs.append(read_run(version_dir, thresholds))
        except ReportError as reason:
            skipped.append(f"{version_dir.relative_to(logdir)}: {reason}")
    return runs, skipped


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs by config, one per seed (the newest: a rerun of a seed replaces it), seeds in order."""
    newest: dict[tuple[str, int | None], Run] = {}
    for run in sorted(runs, key=lambda r: r.finished_at):
        newest[(run.config, run.seed)] = run

    def order(item: tuple[tuple[str, int | None], Run]) -> tuple[str, bool, int]:
        (config, seed), _ = item
        return config, seed is None, seed or 0  # unseeded runs last

    groups: dict[str, list[Run]] = {}
    for (config, _), run in sorted(newest.items(), key=order):
        groups.setdefault(config, []).append(run)
    return groups


# ---- the table -------------------------------------------------------------------------------


def mean_and_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for a single value: no spread to show)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _cell(values: Sequence[float | None], fmt: Callable[[float], str]) -> str:
    """``mean ± std`` over the values present; ``-`` when none is."""
    present = [value for value in values if value is not None]
    if not present:
        return "-"
    mean, std = mean_and_std(present)
    return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _epochs(value: float) -> str:
    """An epoch count or its mean/spread to one decimal, ``.0`` dropped: ``18.5``, ``0.7``, ``20``."""
    return f"{value:.1f}".removesuffix(".0")


def _time_to_cell(runs: Sequence[Run], key: str) -> str:
    """Seconds and epochs to first reach an accuracy; ``(k/n)`` when only k of n seeds got there."""
    reached = [run.time_to[key] for run in runs if run.time_to.get(key) is not None]
    if not reached:
        return "-"
    seconds = _cell([s for s, _ in reached], lambda v: f"{v:.1f}")
    epochs = _cell([float(e) for _, e in reached], _epochs)
    cell = f"{seconds} s, ep {epochs}" if seconds != "-" else f"ep {epochs}"
    return cell if len(reached) == len(runs) else f"{cell} ({len(reached)}/{len(runs)})"


def summarize(groups: dict[str, list[Run]], thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """The numbers behind each table row (means, spreads, per-seed values), for report.json and tests."""
    rows = []
    for config, runs in groups.items():
        rows.append(
            {
                "config": config,
                "model": runs[0].model,
                "parameters": runs[0].parameters,
                "seeds": [run.seed for run in runs],
                "best_val_acc": [run.best_val_acc for run in runs],
                "best_epoch": [run.best_epoch for run in runs],
                "spec": [{"test_acc_percent": acc, "epochs": ep} for acc, ep in SPEC_RESULTS.get(config, ())],
                "test_acc": [run.test_acc for run in runs],
                "epochs": [run.epochs_trained for run in runs],
                "seconds_per_epoch": [run.seconds_per_epoch for run in runs],
                "time_to": {f"{t:g}": [run.time_to[f"{t:g}"] for run in runs] for t in thresholds},
                "inference_images_per_second": [run.inference_images_per_second for run in runs],
                "versions": [run.version for run in runs],
                "val_acc_per_class": [run.val_acc_per_class for run in runs],
                "test_acc_per_class": [run.test_acc_per_class for run in runs],
            }
        )
    return rows


def spec_cell(config: str) -> str:
    """The source's number(s) for this config, ``80.98 @ 20 ep``; ``—`` where it published none."""
    return "; ".join(f"{accuracy} @ {epochs} ep" for accuracy, epochs in SPEC_RESULTS.get(config, ())) or "—"


def _config_cells(config: str, runs: Sequence[Run]) -> list[str]:
    """The cells that name a row: config, model, parameters."""
    return [config, runs[0].model, f"{runs[0].parameters:,}"]


def _seeds_cell(runs: Sequence[Run]) -> str:
    return ", ".join("?" if run.seed is None else str(run.seed) for run in runs)


def markdown_table(groups: dict[str, list[Run]], thresholds: Sequence[float]) -> str:
    """One row per config: mean ± std over its seeds."""
    header = ["config", "model", "parameters", "seeds", "best val/acc (%)", "best at epoch",
              "SPEC: source's test acc (%)", "test/acc (%)", "epochs", "s/epoch"]
    header += [f"to {100 * t:g} % val/acc" for t in thresholds]
    header += ["inference img/s"]
    rows = []
    for config, runs in groups.items():
        rows.append([
            *_config_cells(config, runs),
            _seeds_cell(runs),
            _cell([run.best_val_acc for run in runs], _percent),
            _cell([float(run.best_epoch) for run in runs], _epochs),
            spec_cell(config),
            _cell([run.test_acc for run in runs], _percent),
            _cell([float(run.epochs_trained) for run in runs], _epochs),
            _cell([run.seconds_per_epoch for run in runs], lambda v: f"{v:.1f}"),
            *(_time_to_cell(runs, f"{t:g}") for t in thresholds),
            _cell([run.inference_images_per_second for run in runs], lambda v: f"{v:,.0f}"),
        ])
    return tables.markdown_table(header, rows)


def per_class_table(groups: dict[str, list[Run]], stage: str) -> str | None:
    """Per-class accuracy (%) per config, mean ± std over seeds; ``None`` when no run logged it.

    ``stage`` is ``val`` (at each run's best val/acc epoch) or ``test``.
    """
    by_config = {config: [getattr(run, f"{stage}_acc_per_class") for run in runs] for config, runs in groups.items()}
    classes = sorted({name for seeds in by_config.values() for per_class in seeds for name in per_class})
    if not classes:
        return None
    rows = [
        [config, *(_cell([per_class.get(name) for per_class in seeds], _percent) for name in classes)]
        for config, seeds in by_config.items()
        if any(seeds)
    ]
    return tables.markdown_table(["config", *classes], rows)


def _environment_lines(runs: Sequence[Run]) -> list[str]:
    """Where the runs ran: speed columns compare only between runs on the same hardware."""
    seen: dict[str, list[str]] = {}
    for run in runs:
        hw, ver = run.hardware, run.versions
        chip = hw.get("gpu") or hw.get("cpu", "?")
        where = f"{chip} ({hw.get('device', '?')}, {hw.get('cpu_cores', '?')} CPU cores)"
        libs = ", ".join(f"{name} {ver[name]}" for name in ("python", "torch", "lightning", "torchvision") if name in ver)
        seen.setdefault(f"{where}; {libs}", []).append(f"{run.config}/{run.version}")
    lines = [f"- {key}: {', '.join(names)}" for key, names in seen.items()]
    if len(seen) > 1:
        lines.append("- Runs differ in hardware or versions: compare their speed columns with care.")
    return lines


# ---- the README's table: test accuracy, intervals, paired comparisons -----------------------


def _test_accuracy_cell(runs: Sequence[Run]) -> str:
    """Mean test accuracy ± the half-width of its 95 % t-interval over seeds; one seed: no interval."""
    tested = [run.test_acc for run in runs if run.test_acc is not None]
    if not tested:
        return "-"
    mean, half = t_interval(tested)
    cell = _percent(mean) if half is None else f"{_percent(mean)} ± {_percent(half)}"
    return cell if len(tested) == len(runs) else f"{cell} ({len(tested)}/{len(runs)} tested)"


def _mean_present(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not ``None``; ``None`` when none is."""
    present = [value for value in values if value is not None]
    return statistics.fmean(present) if present else None


def _mean_or_dash(values: Sequence[float | None], fmt: Callable[[float], str]) -> str:
    mean = _mean_present(values)
    return "-" if mean is None else fmt(mean)


def results_table(groups: dict[str, list[Run]]) -> str:
    """The README's table: one row per config, test accuracy with its interval, and what the config costs."""
    header = ["config", "model", "parameters", "epochs", "seeds", "test acc (%), mean ± 95 % interval",
              "source's test acc (%)", "s/epoch", "inference img/s"]
    rows = []
    for config, runs in groups.items():
        rows.append([
            *_config_cells(config, runs),
            ", ".join(str(epochs) for epochs in sorted({run.epochs_trained for run in runs})),
            _seeds_cell(runs),
            _test_accuracy_cell(runs),
            spec_cell(config),
            _mean_or_dash([run.seconds_per_epoch for run in runs], lambda v: f"{v:.1f}"),
            _mean_or_dash([run.inference_images_per_second for run in runs], lambda v: f"{v:,.0f}"),
        ])
    return tables.markdown_table(header, rows)


def _scored_images(run: Run) -> tuple[list[str], np.ndarray]:
    """The images in the run's ``predictions.csv`` (file, else index) and whether its top-1 was right.

    Raises:
        ReportError: if the run has no predictions, or some lack a true class.
    """
    path = Path(run.path) / PREDICTIONS_FILE
    if not path.is_file():
        raise ReportError(f"no {PREDICTIONS_FILE} (run `python cli.py predict --ckpt_path best` with its config)")
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    unlabelled = sum(not row["true"] for row in rows)
    if not rows or unlabelled:
        raise ReportError(f"{PREDICTIONS_FILE} holds {len(rows)} rows, {unlabelled} without a true class "
                          "(predicted a folder of unlabelled images, not the test split)")
    return [row["file"] or row["index"] for row in rows], np.array([row["top1"] == row["true"] for row in rows])


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
    scored: dict[str, dict[int | None, tuple[list[str], np.ndarray]]] = {}
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
                notes[f"{config}/{run.version}: its {PREDICTIONS_FILE} scores {_percent(predicted)} %, its test/acc "
                      f"{_percent(run.test_acc)} % (another checkpoint or precision?); compared on the former"] = None
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


def _p_value(p: float, resamples: int) -> str:
    return f"< {1 / resamples:g}" if p == 0 else f"{p:.2g}"


def _ratio_cell(first: float | None, second: float | None, fmt: Callable[[float], str]) -> str:
    """``first vs second (×ratio)``; ``-`` when either is unknown."""
    if first is None or second is None or not second:
        return "-"
    return f"{fmt(first)} vs {fmt(second)} (×{first / second:.3f})"


def comparison_table(groups: dict[str, list[Run]], comparisons: Sequence[Comparison]) -> str:
    """One row per pair: the accuracy difference with its interval and p-values, then both configs' costs."""
    header = ["comparison", "test acc difference (points) [95 % interval]", "p", "runs", "McNemar per seed",
              "parameters", "s/epoch", "inference img/s"]
    rows = []
    for c in comparisons:
        boot = c.bootstrap
        first, second = groups[c.first], groups[c.second]
        speeds = {attribute: [_mean_present([getattr(run, attribute) for run in runs]) for runs in (first, second)]
                  for attribute in ("parameters", "seconds_per_epoch", "inference_images_per_second")}
        rows.append([
            f"{c.first} − {c.second}",
            f"{100 * boot.difference:+.2f} [{100 * boot.low:+.2f}, {100 * boot.high:+.2f}]",
            _p_value(boot.p_value, boot.resamples),
            f"{len(c.seeds[0])} vs {len(c.seeds[1])} on {boot.images:,} images",
            "; ".join(f"seed {s}: {a} vs {b}, p = {p:.2g}" for s, a, b, p in c.mcnemar) or "no seed in common",
            _ratio_cell(*speeds["parameters"], lambda v: f"{v:,.0f}"),
            _ratio_cell(*speeds["seconds_per_epoch"], lambda v: f"{v:.1f}"),
            _ratio_cell(*speeds["inference_images_per_second"], lambda v: f"{v:,.0f}"),
        ])
    return tables.markdown_table(header, rows)


# ---- writing it ------------------------------------------------------------------------------


def _curves(groups: dict[str, list[Run]], by_time: bool) -> list[Curve]:
    curves = []
    for config, runs in groups.items():
        for run in runs:
            points = zip(run.elapsed_seconds if by_time else run.epochs, run.val_acc)
            points = [(x, y) for x, y in points if x is not None]
            curves.append(Curve(f"{config} (seed {run.seed})", config, [x for x, _ in points], [y for _, y in points]))
    return curves


def _reportable_runs(logdir: Path, thresholds: Sequence[float]) -> tuple[list[Run], list[str]]:
    """The finished runs under ``logdir`` and a line per folder skipped; refuses bad input.

    Raises:
        ReportError: if ``logdir`` holds no finished run, or a threshold is not a fraction.
    """
    if not logdir.is_dir():
        raise ReportError(
            f"Log directory '{logdir}' does not exist.\nHINT: pass the save_dir of your runs, e.g. lightning_logs."
        )
    bad = [t for t in thresholds if not 0 < t <= 1]
    if bad:
        raise ReportError(
            f"thresholds {bad} are not accuracies in (0, 1].\nHINT: give fractions, e.g. --thresholds 0.5 0.6 0.7."
        )
    runs, skipped = find_runs(logdir, thresholds)
    if not runs:
        detail = "".join(f"\n  {line}" for line in skipped)
        raise ReportError(
            f"No finished run under '{logdir}/<config>/<run>'.{detail}\n"
            "HINT: train first (python cli.py fit --config configs/cnn.yaml) and point the report at its save_dir."
        )
    return runs, skipped


TEST_ACCURACY_NOTE = (
    "Test accuracy: each run's last `test/acc` (`cli.py test --ckpt_path best`: its best-validation "
    "checkpoint on the official test split), mean over seeds "
    "± the half-width of its 95 % Student-t interval (n - 1 degrees of freedom: with 2 seeds the t factor "
    "is 12.7, with 3 it is 4.3); one seed shows no interval. s/epoch: each run's median epoch; it and inference img/s are means over seeds, "
    "comparable only between runs on the same machine (below). The source's number is a test accuracy too."
)
COMPARISON_NOTE = (
    "Paired comparisons on the same test images, from each run's `predictions.csv`. Difference: the first "
    "config's mean test accuracy minus the second's, in points, with a 95 % percentile interval from "
    "{resamples:,} bootstrap replicates (seed {seed}) that draw the test images with replacement, the same "
    "draw for both configs, and each config's seeds with replacement, so the interval holds both the test "
    "set's and the seeds' variation. p: twice the smaller share of replicates on either side of zero. "
    "McNemar per seed both configs ran: images only the first got right vs only the second, and the exact "
    "two-sided p-value. The costs: the first config's against the second's."
)


def _readme_lines(groups: dict[str, list[Run]], comparisons: Sequence[Comparison], notes: Sequence[str],
                  resamples: int, seed: int) -> list[str]:
    """The README's results: the compact table, the paired comparisons, and what was not compared."""
    lines = [results_table(groups), "", TEST_ACCURACY_NOTE]
    if comparisons:
        lines += ["", comparison_table(groups, comparisons), "", COMPARISON_NOTE.format(resamples=resamples, seed=seed)]
    if notes:
        lines += ["", "Notes on the comparisons:", "", *(f"- {note}" for note in notes)]
    return lines


def _details_lines(groups: dict[str, list[Run]], runs: Sequence[Run], skipped: Sequence[str],
                   thresholds: Sequence[float]) -> list[str]:
    """Every column, per-class accuracy, where the runs ran and what was not counted (``docs/results.md``)."""
    lines = [
        "Mean ± sample std over seeds where a config has several. "
        "`to X % val/acc`: training wall seconds and epochs until validation accuracy first reached X "
        "(`-`: never; `(k/n)`: only k of n seeds). Wall time counts training and validation epochs, "
        "not data loading. Inference: forward passes on validation batches in eval mode. "
        "`SPEC`: what the source reported for the same model and recipe (SPEC section 5) after that many "
        "epochs, a *test* accuracy on CIFAR-10's test split: compare it with `test/acc`, not with the "
        "validation columns, which are measured on images held out of the training set (`—`: the source "
        "reported none).",
        "",
        markdown_table(groups, thresholds),
        "",
    ]
    for stage, title in (("val", "validation, at the best val/acc epoch"), ("test", "test")):
        per_class = per_class_table(groups, stage)
        if per_class is not None:
            lines += [f"## Per-class accuracy (%), {title}", "", per_class, ""]
    lines += ["## Where they ran", *_environment_lines([run for group in groups.values() for run in group])]
    counted = {id(run) for group in groups.values() for run in group}
    superseded = [f"{run.config}/{run.version}: seed {run.seed} rerun later" for run in runs if id(run) not in counted]
    if skipped or superseded:
        lines += ["", "## Not counted", *(f"- {line}" for line in [*skipped, *superseded])]
    return lines


def results_markdown(
    logdir: Path | str,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    pairs: Sequence[tuple[str, str]] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> str:
    """The README's results as Markdown, read from the logs; writes nothing (``--markdown-only``).

    Args:
        logdir: The runs' save_dir.
        thresholds: As ``write_report``; they only decide which runs are readable here.
        pairs: ``(first, second)`` configs to compare; ``None``: ``DEFAULT_COMPARISONS`` that have runs.
        resamples: Bootstrap replicates per comparison.
        seed: Seed of the bootstrap: the same logs give the same intervals.

    Raises:
        ReportError: as ``write_report``, and if a pair names a config without runs.
    """
    runs, _ = _reportable_runs(Path(logdir), thresholds)
    groups = group_runs(runs)
    comparisons, notes = compare_configs(groups, default_pairs(groups) if pairs is None else pairs, resamples, seed)
    environment = _environment_lines([run for group in groups.values() for run in group])
    lines = [*_readme_lines(groups, comparisons, notes, resamples, seed), "", "Where they ran:", "", *environment]
    return "\n".join(lines) + "\n"


def details_markdown(logdir: Path | str, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> str:
    """Every column, per-class accuracy and where the runs ran, for ``docs/results.md``; writes nothing.

    Raises:
        ReportError: as ``write_report``.
    """
    runs, skipped = _reportable_runs(Path(logdir), thresholds)
    return "\n".join(_details_lines(group_runs(runs), runs, skipped, thresholds)) + "\n"


def write_report(
    logdir: Path | str,
    out: Path | str | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    pairs: Sequence[tuple[str, str]] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Path:
    """Build the report of every finished run under ``logdir``; returns the path of ``report.md``.

    ``pairs``, ``resamples`` and ``seed`` are ``results_markdown``'s.

    Raises:
        ReportError: if ``logdir`` holds no finished run, a threshold is not a fraction, or a pair
            names a config without runs.
    """
    logdir = Path(logdir)
    runs, skipped = _reportable_runs(logdir, thresholds)
    groups = group_runs(runs)
    comparisons, notes = compare_configs(groups, default_pairs(groups) if pairs is None else pairs, resamples, seed)
    out = Path(out) if out is not None else logdir / REPORT_RUN
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "val_acc_vs_epoch": accuracy_curves(
            _curves(groups, by_time=False), xlabel="epoch", title="Validation accuracy by epoch", thresholds=thresholds
        ),
        "val_acc_vs_time": accuracy_curves(
            _curves(groups, by_time=True), xlabel="training wall time (s)",
            title="Validation accuracy by wall time", thresholds=thresholds,
        ),
    }
    for name, figure in figures.items():
        figure.savefig(out / f"{name}.png", dpi=120)
    lines = [
        "# Run comparison",
        "",
        f"Runs under `{logdir}`.",
        "",
        *_readme_lines(groups, comparisons, notes, resamples, seed),
        "",
        "## Every column",
        "",
        *_details_lines(groups, runs, skipped, thresholds),
        "",
        "![validation accuracy by epoch](val_acc_vs_epoch.png)",
        "![validation accuracy by wall time](val_acc_vs_time.png)",
    ]
    report_md = out / "report.md"
    report_md.write_text("\n".join(lines) + "\n")
    summary = {"logdir": str(logdir), "thresholds": list(thresholds), "rows": summarize(groups, thresholds),
               "comparisons": [asdict(comparison) for comparison in comparisons], "not_compared": notes,
               "runs": [asdict(run) for run in runs], "skipped": skipped}
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    _log_to_tensorboard(logdir / REPORT_RUN, markdown_table(groups, thresholds), figures)
    return report_md


def _log_to_tensorboard(run_dir: Path, table: str, figures: dict[str, Any]) -> None:
    """Replace the report's TensorBoard run, so it always shows the latest report only."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    for old in run_dir.glob("events.out.tfevents.*"):
        old.unlink()
    writer = SummaryWriter(str(run_dir))
    try:
        writer.add_text("report/table", table, global_step=0)
        for name, figure in figures.items():
            writer.add_figure(f"report/{name}", figure, global_step=0, close=False)
    finally:
        writer.close()


def main(argv: Sequence[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", type=Path, help="the runs' save_dir, e.g. lightning_logs")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <logdir>/report)")
    parser.add_argument(
        "--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS),
        help="validation accuracies (fractions) for the time-to-accuracy columns",
    )
    printed = parser.add_mutually_exclusive_group()
    printed.add_argument(
        "--markdown-only", action="store_true",
        help="print only the README's results (test accuracy with intervals, paired comparisons, costs) "
             "and where the runs ran; write no files",
    )
    printed.add_argument(
        "--details-only", action="store_true",
        help="print only docs/results.md's tables (every column, per-class accuracy, where the runs ran); "
             "write no files",
    )
    parser.add_argument(
        "--compare", nargs=2, action="append", metavar=("FIRST", "SECOND"),
        help="compare FIRST - SECOND on the same test images (repeatable); default: each attention config "
             "against its base, where both have runs",
    )
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap replicates per comparison")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap")
    args = parser.parse_args(argv)
    if args.resamples < 1:
        parser.error(f"--resamples {args.resamples} must be at least 1 (e.g. 10000).")
    pairs = [tuple(pair) for pair in args.compare] if args.compare else None
    try:
        if args.details_only:
            print(details_markdown(args.logdir, args.thresholds), end="")
            return None
        if args.markdown_only:
            print(results_markdown(args.logdir, args.thresholds, pairs, args.resamples, args.bootstrap_seed), end="")
            return None
        path = write_report(args.logdir, args.out, args.thresholds, pairs, args.resamples, args.bootstrap_seed)
    except ReportError as error:
        parser.exit(2, f"error: {error}\n")
    print(path.read_text())
    print(f"Written to {path.parent}", file=sys.stderr)
    return path


if __name__ == "__main__":
    main()
