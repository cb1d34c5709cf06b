"""Callbacks that inject faults into real training runs (used by tests through ``--trainer.callbacks+=``)."""

from __future__ import annotations

import os
import signal
import warnings

import lightning as L
import torch

from callbacks import PredictionWriter
from lightning_modules import CNNClassifier
from common.lightning_private import batches_trained_this_epoch


class SigtermAtStep(L.Callback):
    """Send SIGTERM to this process once the given global step has finished, as a cluster preempting a job."""

    def __init__(self, step: int = 6) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class CrashAtStep(L.Callback):
    """Raise ``KeyboardInterrupt`` (Ctrl-C) or ``RuntimeError`` after the given global step."""

    def __init__(self, step: int = 6, ctrl_c: bool = True) -> None:
        self.step, self.ctrl_c = step, ctrl_c

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt if self.ctrl_c else RuntimeError("injected crash")


class NaNInputAtStep(L.Callback):
    """Poison one training batch with NaN, as corrupt data or an overflow upstream would; on one rank if given."""

    def __init__(self, step: int = 6, rank: int | None = None) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            batch[0].fill_(float("nan"))


class BuggyCNNClassifier(CNNClassifier):
    """A model whose constructor has a programming error, as a typo in a user's subclass would."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.widths = len(kwargs["num_classes"])  # len() of an int: TypeError


class BatchesTrainedRecorder(L.Callback):
    """Record, after each training batch, what the adapter says the epoch has trained."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append((trainer.current_epoch, batch_idx, batches_trained_this_epoch(trainer)))


class PredictionWriterLosingARank(PredictionWriter):
    """A ``PredictionWriter`` that drops the rows of one rank, as a lost shard would: rank zero's merge must fail."""

    def __init__(self, rank: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rank = rank

    def write_on_batch_end(self, trainer, *args, **kwargs) -> None:
        if trainer.global_rank != self.rank:
            super().write_on_batch_end(trainer, *args, **kwargs)


class NaNWeightsAtValidation(L.Callback):
    """Put NaN into a BatchNorm running variance as validation of ``epoch`` starts, as a diverged step would."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            next(m for m in pl_module.modules() if hasattr(m, "running_var")).running_var.fill_(float("nan"))


class WarningFiltersRecorder(L.Callback):
    """Keep ``warnings.filters`` as a run's first hook (``setup``) saw them and as its last one saw them.

    Compared inside the run: ``cli.main`` puts the caller's filters back when it returns, which would hide a
    filter a callback or a loader installs for programs that use those classes without it.
    """

    def __init__(self) -> None:
        self.at_setup: list | None = None
        self.at_end: list | None = None

    def setup(self, trainer, pl_module, stage) -> None:
        self.at_setup = list(warnings.filters)

    def teardown(self, trainer, pl_module, stage) -> None:
        self.at_end = list(warnings.filters)


class ConfusionMatrixSaver(L.Callback):
    """Save each rank's validation confusion matrix, as the module kept it, to ``confusion_rank<r>.pt`` (cwd)."""

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            torch.save(pl_module.confusion_matrices["val"], f"confusion_rank{trainer.global_rank}.pt")
