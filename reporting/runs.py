"""A finished run as its log folder tells it: TensorBoard events, ``run.json`` and ``predictions.csv``.

Runs of one config (one ``<logdir>/<config>`` folder, so moving a run regroups it) are grouped;
the newest run of each seed counts once. A run whose fit did not end is skipped, not averaged in.
"""

from __future__ import annotations

import csv
import hashlib
import json
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks.run_record import RUN_RECORD_FILE

__all__ = ["DEFAULT_THRESHOLDS", "REPORT_RUN", "ReportError", "Run", "find_runs", "group_runs", "read_run"]

TRAINED_TAG = "train/loss_epoch"  # logged by every training epoch; absent from validate/test events
EVALUATED_TAGS = ("val/acc", "test/acc")  # what a validate/test subcommand logs
REPORT_RUN = "report"  # the TensorBoard run (folder under the log dir) the report logs into
# 50 %: the MLP's level (SPEC 5); 70 %: every CNN passes it in a few epochs; 80 %: the
# source's 20-epoch CNN (80.98 %), the mark the fast recipes race to.
DEFAULT_THRESHOLDS = (0.5, 0.7, 0.8)
PER_CLASS_TAGS = {"val": "val/acc_per_class/", "test": "test/acc_per_class/"}


class ReportError(ValueError):
    """Nothing to report on, with a hint on what to run first."""


@dataclass
class TestPredictions:
    """Each test image's top-1 class and true class, in the order ``predict`` wrote them.

    ``images`` fingerprints which images those were (their files, else their dataset indices, in
    order): two runs are compared image by image only when their fingerprints match.
    """

    images: str
    top1: np.ndarray  # uint8 class indices
    labels: np.ndarray

    @classmethod
    def from_csv(cls, path: Path) -> TestPredictions:
        """Read ``predictions.csv``; class names become indices in sorted order (the datasets' label order).

        Raises:
            ReportError: if it is empty or some rows lack a true class (a folder of unlabelled images).
        """
        with path.open(newline="") as file:
            rows = list(csv.DictReader(file))
        unlabelled = sum(not row["true"] for row in rows)
        if not rows or unlabelled:
            raise ReportError(f"{path.name} holds {len(rows)} rows, {unlabelled} without a true class "
                              "(predicted a folder of unlabelled images, not the test split)")
        classes = sorted({row["true"] for row in rows} | {row["top1"] for row in rows})
        index = {name: position for position, name in enumerate(classes)}
        images = hashlib.sha256("\n".join(row["file"] or row["index"] for row in rows).encode()).hexdigest()
        return cls(images, np.array([index[row["top1"]] for row in rows], dtype=np.uint8),
                   np.array([index[row["true"]] for row in rows], dtype=np.uint8))


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
    # Per validation, as val_acc: what the record keeps of each epoch (None where not logged).
    val_loss: list[float | None] = field(default_factory=list)
    train_loss: list[float | None] = field(default_factory=list)
    train_acc: list[float | None] = field(default_factory=list)
    learning_rate: list[float | None] = field(default_factory=list)
    test_loss: float | None = None
    test_acc_flip: float | None = None  # `test --model.test_time_flip true`: never in test_acc's place
    tested_at: float | None = None  # wall time (Unix seconds) of the test_acc read: a record needs it after the fit
    predictions: TestPredictions | None = None  # from a record; a log folder keeps them in predictions.csv
    precision: str | None = None
    load_average: float | None = None  # the machine's mean 1-minute load over the epochs; None: not recorded
    recipe: str = ""  # the config file and the overrides that matter, from a record; "" for a log folder
    # The fit's uninterrupted parts, from run.json (callbacks.run_record): each one's commit, threads, start.
    segments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def threads(self) -> list[int | None]:
        """torch's thread counts over the fit's segments, in order of first use (one where it ran at once)."""
        used = [segment.get("torch_threads") for segment in self.segments] or [self.hardware.get("torch_threads")]
        return list(dict.fromkeys(used))

    @property
    def training_seconds(self) -> float | None:
        return sum(self.epoch_seconds) if self.epoch_seconds else None

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


def _at_steps(accumulator: EventAccumulator, tag: str, steps: Sequence[int]) -> list[float | None]:
    """The tag's value at each step (epoch-end scalars share the step of that epoch's val/acc)."""
    values = dict(_scalars(accumulator, tag))
    return [values.get(step) for step in steps]


def _learning_rate_at(accumulator: EventAccumulator, steps: Sequence[int]) -> list[float | None]:
    """The first parameter group's learning rate in force at each step (LearningRateMonitor's ``lr-*``)."""
    tags = sorted(tag for tag in accumulator.Tags()["scalars"] if tag.startswith("lr-"))
    if not tags:
        return [None] * len(steps)
    logged = _scalars(accumulator, tags[0])
    return [next((value for at, value in reversed(logged) if at <= step), None) for step in steps]


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
    tested_at = test_events.Scalars("test/acc")[-1].wall_time if test_acc else None
    inference = _scalars(accumulator, "perf/inference_images_per_second")
    test_loss = _scalars(test_events, "test/loss")
    test_acc_flip = _scalars(test_events, "test/acc_flip")
    steps = [step for step, _ in val_acc]
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
        val_loss=_at_steps(accumulator, "val/loss", steps),
        train_loss=_at_steps(accumulator, TRAINED_TAG, steps),
        train_acc=_at_steps(accumulator, "train/acc", steps),
        learning_rate=_learning_rate_at(accumulator, steps),
        test_loss=test_loss[-1][1] if test_loss else None,
        test_acc_flip=test_acc_flip[-1][1] if test_acc_flip else None,
        tested_at=tested_at,
        precision=record.get("precision"),
        segments=list(record.get("segments") or []),
        load_average=statistics.fmean(loads) if (loads := [v for _, v in _scalars(accumulator, "time/load_average")])
        else None,
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
