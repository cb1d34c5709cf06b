"""A published run as a small JSON file under ``results/``: the source of the README's tables.

Log folders hold checkpoints and event files (hundreds of MB) on one machine; a record holds
what a reader needs to trust and recompute a published number, in a few KB:

- how to reproduce it: the config file, the overrides against it, the commands, the commit;
- where it ran: seed, precision, threads, machine, library versions;
- per epoch: train and validation loss and accuracy, learning rate, wall seconds;
- the best epoch; test loss, accuracy and per-class accuracy of its best-validation checkpoint;
- each test image's top-1 class (and true class), zlib-compressed, so that every paired
  comparison of the report can be recomputed from the records alone.

    python report.py /path/to/lightning_logs --record-to results   # one record per finished, tested run
    python report.py results --markdown-only                       # the README's block, from the records
"""

from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
import sys
import zlib
from datetime import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from callbacks.predictions import PREDICTIONS_FILE
from callbacks.run_record import RUN_RECORD_FILE
from lightning_modules.attention import NONE
from reporting.runs import DEFAULT_THRESHOLDS, ReportError, Run, TestPredictions, read_run

__all__ = ["RECORD_FORMAT", "find_records", "is_results_dir", "missing_configs", "read_record", "record_of",
           "recipe_of", "write_record"]

RECORD_FORMAT = 1  # bump when a field changes meaning; read_record refuses formats it does not know
NOT_RUN_FILE = "not_run.yaml"  # config: why it has no record yet (and what it needs)
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# Overrides that say where a run's files went on its machine, not how it trained.
MACHINE_KEYS = ("trainer.logger.init_args.save_dir", "trainer.logger.init_args.name",
                "trainer.logger.init_args.version")


def _packed(values: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(values.astype(np.uint8).tobytes(), 9)).decode("ascii")


def _unpacked(text: str, count: int) -> np.ndarray:
    values = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8)
    if len(values) != count:
        raise ReportError(f"a packed prediction list holds {len(values)} values, the record says {count}")
    return values


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"data.init_args.batch_size": 512, ...}``: a nested config as dotted keys."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _cli_key(key: str) -> str:
    """The command-line spelling of a config key: ``data.init_args.batch_size`` -> ``data.batch_size``."""
    return key.replace(".init_args.", ".")


@functools.lru_cache(maxsize=None)
def _shipped_config(config_file: Path) -> dict[str, Any]:
    """The complete config ``cli.py fit --config FILE`` resolves, defaults included (what a run would save).

    Cached: ``--record-to`` records every run of a log folder, many of them of one config, and each
    resolution is a ``cli.py`` process (seconds). Callers only read the result.
    """
    done = subprocess.run(
        [sys.executable, str(CONFIGS.parent / "cli.py"), "fit", "--config", str(config_file), "--print_config"],
        capture_output=True, text=True, check=False, cwd=CONFIGS.parent,
    )
    if done.returncode != 0:
        raise ReportError(f"could not resolve {config_file}: {done.stderr.strip().splitlines()[-1:]}")
    return yaml.safe_load(done.stdout)


# Settings with two spellings of one value: ``--model.attention none`` builds what the default ``null`` builds.
SAME_VALUE = {"model.init_args.attention": lambda value: NONE if value is None else value}


def overrides(run_config: dict[str, Any], shipped: dict[str, Any]) -> dict[str, Any]:
    """The run's settings that differ from the shipped config's, as command-line keys.

    Options the run's config lacks came after it and cannot have been overridden: they are left out.
    A data folder inside the project's parent is written relative to the project (``../shared/...``).
    """
    ran, base = _flat(run_config), _flat(shipped)
    changed = {}
    for key in sorted(ran):
        if key in MACHINE_KEYS or key.startswith("ckpt_path") or key == "config":
            continue
        same = SAME_VALUE.get(key, lambda value: value)
        if same(ran[key]) != same(base.get(key)):
            changed[_cli_key(key)] = ran[key]
    data_dir = changed.get("data.data_dir")
    if isinstance(data_dir, str) and Path(data_dir).is_absolute():
        parent = CONFIGS.parent.parent
        if Path(data_dir).is_relative_to(parent):
            changed["data.data_dir"] = os.path.relpath(data_dir, CONFIGS.parent)
    return changed


# Overrides that do not change what a run learns (where the data sit, logging, drawing), or that the
# table shows in a column of their own (device, precision): the table's command leaves them out; the
# record's own ``reproduce`` keeps every one.
NOT_RECIPE = ("data.data_dir", "data.download", "seed_everything", "trainer.accelerator", "trainer.devices",
              "trainer.precision", "trainer.enable_progress_bar",
              "trainer.enable_model_summary", "lr_monitor", "predictions", "confusion_matrix", "loss_plots",
              "mistakes", "pictures", "faithfulness", "nan_stop")


def recipe_of(record: dict[str, Any]) -> str:
    """The table's name of a run: its config file and the overrides that change what it learns."""
    name = Path(record["config_file"]).name
    kept = {key: value for key, value in record["overrides"].items()
            if not any(key == prefix or key.startswith(prefix + ".") for prefix in NOT_RECIPE)}
    return " ".join([name, *(f"--{key} {value}" for key, value in kept.items())])


def _reproduce(config_file: str, changed: dict[str, Any]) -> list[str]:
    flags = " ".join(f"--{key} {json.dumps(value) if not isinstance(value, str) else value}"
                     for key, value in changed.items())
    fit = f"python cli.py fit --config {config_file} {flags}".rstrip()
    return [fit, *(f"python cli.py {step} --config {config_file} {flags} --ckpt_path best".replace("  ", " ")
                   for step in ("test", "predict"))]


def record_of(run_dir: Path, commit: str | None = None) -> dict[str, Any]:
    """The record of a finished, tested and predicted run folder.

    Raises:
        ReportError: if the fit did not finish, it was not tested, or it has no predictions of the test split.
    """
    run = read_run(run_dir, DEFAULT_THRESHOLDS)
    if run.test_acc is None:
        raise ReportError("not tested (run `python cli.py test --ckpt_path best` with its config)")
    predictions_csv = run_dir / PREDICTIONS_FILE
    if not predictions_csv.is_file():
        raise ReportError(f"no {PREDICTIONS_FILE} (run `python cli.py predict --ckpt_path best` with its config)")
    predictions = TestPredictions.from_csv(predictions_csv)
    started = json.loads((run_dir / RUN_RECORD_FILE).read_text())
    finished = datetime.fromisoformat(run.finished_at).timestamp()
    # A fit resumed after its test or predict has other weights than they saw: publish only a matching set.
    if run.tested_at is not None and run.tested_at < finished:
        raise ReportError("tested before its fit last finished (resumed since?): test it again")
    if predictions_csv.stat().st_mtime < finished:
        raise ReportError(f"{PREDICTIONS_FILE} predates its fit's last finish (resumed since?): predict it again")
    # The recipe: the shipped config the run was given (--config), else the one named like the run. A run
    # trained in another checkout (a clone on a GPU machine, a worktree) names that checkout's configs/.
    shipped = [CONFIGS / Path(path).name for path in started.get("config_files") or []
               if Path(path).parent.name == CONFIGS.name and (CONFIGS / Path(path).name).is_file()]
    config_file = shipped[0] if shipped else CONFIGS / f"{started.get('config_name') or run.config}.yaml"
    run_config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    if config_file.is_file() and run_config:
        changed = overrides(run_config, _shipped_config(config_file))
        config_path = f"configs/{config_file.name}"
    else:  # a renamed run: its own saved config is the recipe
        changed, config_path = {}, f"{run_dir.name}/config.yaml"
    hardware = run.hardware
    return {
        "format": RECORD_FORMAT,
        "config": run.config,
        "run": run.version,
        "config_file": config_path,
        "overrides": changed,
        "reproduce": _reproduce(config_path, changed),
        "commit": started.get("commit") or commit,
        "seed": run.seed,
        "precision": started.get("precision"),
        "threads": hardware.get("torch_threads"),
        "machine": hardware,
        "versions": run.versions,
        "model": run.model,
        "parameters": run.parameters,
        "started_at": started.get("started_at"),
        "segments": run.segments,  # a fit cut and resumed: each part's commit, threads and start
        "finished_at": run.finished_at,
        "training_seconds": started.get("elapsed_seconds"),
        "load_average": run.load_average,
        "inference_images_per_second": run.inference_images_per_second,
        "epochs": [
            {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
             "val_acc": val_acc, "learning_rate": lr, "elapsed_seconds": elapsed}
            for epoch, train_loss, train_acc, val_loss, val_acc, lr, elapsed in zip(
                run.epochs, run.train_loss, run.train_acc, run.val_loss, run.val_acc, run.learning_rate,
                run.elapsed_seconds)
        ],
        "epoch_seconds": run.epoch_seconds,
        "best_epoch": run.best_epoch,
        "best_val_acc": run.best_val_acc,
        "val_acc_per_class_at_best": run.val_acc_per_class,
        "test": {"loss": run.test_loss, "acc": run.test_acc, "acc_per_class": run.test_acc_per_class,
                 "acc_flip": run.test_acc_flip},
        "test_predictions": {
            "count": len(predictions.top1),
            "images_sha256": predictions.images,
            "encoding": "base64 of zlib of one uint8 class index per image, in predictions.csv's order",
            "top1": _packed(predictions.top1),
            "labels": _packed(predictions.labels),
        },
    }


def write_record(run_dir: Path, results_dir: Path, commit: str | None = None) -> Path:
    """Write ``results_dir/<config>/<run>.json``, replacing an older record of the same run."""
    record = record_of(run_dir, commit)
    path = results_dir / record["config"] / f"{record['run']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def read_record(path: Path, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Run:
    """A record as the report's ``Run``, predictions included.

    Raises:
        ReportError: if the file is not a record of a format this code reads.
    """
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ReportError(f"unreadable ({error})") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ReportError(f"not a run record of format {RECORD_FORMAT} (format {record.get('format')!r})"
                          if isinstance(record, dict) else "not a run record")
    epochs = record["epochs"]
    packed = record["test_predictions"]
    run = Run(
        config=record["config"],
        version=record["run"],
        path=str(path),
        seed=record["seed"],
        model=record["model"],
        parameters=record["parameters"],
        finished_at=record["finished_at"],
        hardware=record["machine"],
        versions=record["versions"],
        val_acc=[epoch["val_acc"] for epoch in epochs],
        epochs=[epoch["epoch"] for epoch in epochs],
        elapsed_seconds=[epoch["elapsed_seconds"] for epoch in epochs],
        epoch_seconds=record["epoch_seconds"],
        test_acc=record["test"]["acc"],
        inference_images_per_second=record["inference_images_per_second"],
        val_acc_per_class=record["val_acc_per_class_at_best"],
        test_acc_per_class=record["test"]["acc_per_class"],
        val_loss=[epoch["val_loss"] for epoch in epochs],
        train_loss=[epoch["train_loss"] for epoch in epochs],
        train_acc=[epoch["train_acc"] for epoch in epochs],
        learning_rate=[epoch["learning_rate"] for epoch in epochs],
        test_loss=record["test"]["loss"],
        test_acc_flip=record["test"].get("acc_flip"),
        precision=record["precision"],
        load_average=record.get("load_average"),
        segments=record.get("segments") or [],
        predictions=TestPredictions(packed["images_sha256"], _unpacked(packed["top1"], packed["count"]),
                                    _unpacked(packed["labels"], packed["count"])),
    )
    run.recipe = recipe_of(record)
    run.time_to = {f"{threshold:g}": run.first_reaching(threshold) for threshold in thresholds}
    return run


def is_results_dir(folder: Path) -> bool:
    """Whether ``folder`` holds records (``<config>/<run>.json``) rather than log folders."""
    if any(folder.glob(f"*/*/{RUN_RECORD_FILE}")):
        return False
    return any(path.name not in (RUN_RECORD_FILE, "report.json") for path in folder.glob("*/*.json"))


def missing_configs(results_dir: Path, recorded: Sequence[str]) -> dict[str, str]:
    """Each shipped config without a record, and why: ``results/not_run.yaml`` says, else "not run yet".

    Raises:
        ReportError: if not_run.yaml names a config that is not shipped (a typo would hide a row).
    """
    notes_file = results_dir / NOT_RUN_FILE
    notes = yaml.safe_load(notes_file.read_text()) or {} if notes_file.is_file() else {}
    shipped = sorted(path.stem for path in CONFIGS.glob("*.yaml"))
    unknown = sorted(set(notes) - set(shipped))
    if unknown:
        raise ReportError(f"{notes_file} names configs that are not in configs/: {', '.join(unknown)}.\n"
                          "HINT: use the name of a configs/*.yaml file.")
    return {config: str(notes.get(config, "not run yet")) for config in shipped if config not in recorded}


def find_records(results_dir: Path, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> tuple[list[Run], list[str]]:
    """Every record under ``results_dir/<config>/``, and a line per file that is not one."""
    runs, skipped = [], []
    for path in sorted(results_dir.glob("*/*.json")):
        try:
            runs.append(read_record(path, thresholds))
        except ReportError as reason:
            skipped.append(f"{path.relative_to(results_dir)}: {reason}")
    return runs, skipped
