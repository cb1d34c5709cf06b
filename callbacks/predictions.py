"""``predict`` results as one CSV in the run's folder, also under DDP.

Lightning's ``BasePredictionWriter`` calls :meth:`PredictionWriter.write_on_batch_end`
after every predict batch; each rank keeps its rows (a few short strings per
image, not the probabilities). At the end rank zero gathers every rank's rows
through the process group, so ranks on machines without a shared filesystem
work too, sorts them by dataset index, checks that every image is there exactly
once and writes ``predictions.csv``. Its verdict is sent to every rank: a merge
that fails raises the same error on all of them, none is left waiting. Rows
carry the index the datamodule put into the batch (``IndexedImages``), or else
the sampler indices Lightning recorded.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch import distributed

from callbacks.fault_tolerance import replaced_atomically
from typing_extensions import override

__all__ = ["FLIP_PREDICTIONS_FILE", "PREDICTIONS_FILE", "PredictionWriter", "prediction_rows"]

PREDICTIONS_FILE = "predictions.csv"  # in the run's folder; the report reads it back
# With --model.test_time_flip: the averaged predictions, beside the plain ones, never over them.
FLIP_PREDICTIONS_FILE = "predictions_flip.csv"


def prediction_rows(
    probs: torch.Tensor,
    indices: list[int],
    labels: list[int] | None,
    classes: list[str],
    paths: list[str],
    top_k: int = 3,
) -> list[dict[str, Any]]:
    """One CSV row per image: index, file, true class, predicted class and probability, the runners-up.

    Args:
        probs: ``[N, C]`` class probabilities.
        indices: Dataset index of each row.
        labels: True class per row, ``-1`` (or ``None`` for all) when unknown: left empty.
        classes: Class names.
        paths: File of each dataset index (empty when the data have no files, e.g. torchvision's).
        top_k: Classes listed per image, the predicted one first.

    Returns:
        Dicts keyed by :meth:`PredictionWriter.columns`; probabilities with 6 decimals.
    """
    values, ranked = probs.float().cpu().topk(min(top_k, probs.shape[1]), dim=1)
    rows = []
    for i, index in enumerate(indices):
        label = -1 if labels is None else int(labels[i])
        row = {
            "index": index,
            "file": paths[index] if index < len(paths) else "",
            "true": classes[label] if label >= 0 else "",
        }
        for rank, (p, c) in enumerate(zip(values[i].tolist(), ranked[i].tolist()), start=1):
            row[f"top{rank}"] = classes[c]
            row[f"top{rank}_probability"] = f"{p:.6f}"
        rows.append(row)
    return rows


class PredictionWriter(BasePredictionWriter):
    """Write ``<log dir>/predictions.csv``: one row per predicted image, in dataset order.

    Columns: ``index`` (in the predicted set), ``file`` (relative to
    ``--data.predict_dir``, or ``test/<class>/<name>`` for an image-folder test
    split; empty for torchvision data), ``true`` (empty when unknown),
    ``top1`` (the prediction) and ``top1_probability``, then ``top2``,
    ``top3`` with theirs.

    Args:
        filename: Name of the file in the run's log dir (``trainer.log_dir``).
        output_dir: Write there instead of the log dir.
        top_k: Classes listed per image.
    """

    def __init__(self, filename: str = PREDICTIONS_FILE, output_dir: str | None = None, top_k: int = 3) -> None:
        super().__init__(write_interval="batch")
        if top_k < 1:
            raise ValueError(f"top_k={top_k} must be at least 1.\nHINT: e.g. top_k: 3.")
        self.filename = filename
        self.output_dir = output_dir
        self.top_k = top_k
        self.path: Path | None = None
        self._rows: list[dict[str, Any]] = []
        self._columns: list[str] = []
        self._classes: list[str] = []
        self._paths: list[str] = []

    def columns(self, num_classes: int) -> list[str]:
        ranks = range(1, min(self.top_k, num_classes) + 1)
        return ["index", "file", "true", *(f"top{r}{s}" for r in ranks for s in ("", "_probability"))]

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        folder = Path(self.output_dir) if self.output_dir else Path(trainer.log_dir)  # log_dir: every rank calls
        folder.mkdir(parents=True, exist_ok=True)
        flipped = getattr(pl_module, "test_time_flip", False) and self.filename == PREDICTIONS_FILE
        self.path = folder / (FLIP_PREDICTIONS_FILE if flipped else self.filename)
        if flipped:
            rank_zero_info(f"test_time_flip: each image and its mirror, averaged, are written to {self.path}.")
        self._columns = self.columns(pl_module.num_classes)

    @override
    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._classes = pl_module.class_names()
        self._paths = list(getattr(trainer.datamodule, "predict_paths", None) or [])
        self._rows = []

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._rows = []

    @override
    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        index = prediction.get("index")
        indices = index.tolist() if index is not None else list(batch_indices)
        labels = prediction.get("labels")
        rows = prediction_rows(
            prediction["probs"],
            indices,
            labels.tolist() if labels is not None else None,
            self._classes,
            self._paths,
            self.top_k,
        )
        self._rows += rows

    @override
    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gathered = _gather_to_rank_zero(self._rows, trainer.world_size)
        self._rows = []
        failure = None
        if trainer.is_global_zero:
            try:
                self._merge(gathered, trainer.world_size, _dataset_size(trainer))
            except Exception as error:  # told to every rank below, then raised on each
                failure = f"{type(error).__name__}: {error}"
        failure = _from_rank_zero(failure, trainer.world_size)
        if failure is not None:
            raise RuntimeError(f"Writing the predictions failed on rank 0: {failure}")

    def _merge(self, rows: list[dict[str, Any]], world_size: int, expected: int | None) -> None:
        """Every rank's rows, sorted by index and checked, written atomically to ``self.path``."""
        rows = sorted(rows, key=lambda row: int(row["index"]))
        indices = [int(row["index"]) for row in rows]
        wanted = list(range(expected)) if expected is not None else sorted(set(indices))
        if indices != wanted:
            raise RuntimeError(
                f"The predictions of {world_size} process(es) hold {len(indices)} rows for {len(wanted)} images "
                f"(missing: {sorted(set(wanted) - set(indices))[:10]}, repeated: "
                f"{sorted(i for i, n in Counter(indices).items() if n > 1)[:10]}); {self.path} was not written."
            )
        with replaced_atomically(self.path, "w", newline="") as file:
            writer = csv.DictWriter(file, self._columns)
            writer.writeheader()
            writer.writerows(rows)


def _gather_to_rank_zero(rows: list[dict[str, Any]], world_size: int) -> list[dict[str, Any]]:
    """Every rank's rows on rank zero (its own elsewhere), through the process group: no shared filesystem needed."""
    if world_size == 1 or not (distributed.is_available() and distributed.is_initialized()):
        return rows
    parts: list[Any] = [None] * world_size if distributed.get_rank() == 0 else None
    distributed.gather_object(rows, parts, dst=0)
    return [row for part in parts for row in part] if parts is not None else rows


def _from_rank_zero(message: str | None, world_size: int) -> str | None:
    """Rank zero's ``message`` on every rank, so that all raise together or none does."""
    if world_size == 1 or not (distributed.is_available() and distributed.is_initialized()):
        return message
    box = [message]
    distributed.broadcast_object_list(box, src=0)
    return box[0]


def _dataset_size(trainer: L.Trainer) -> int | None:
    """Images in the (single) predict loader's dataset, or None when it has no length."""
    loaders = trainer.predict_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    try:
        return len(loader.dataset)
    except (TypeError, AttributeError):
        return None
