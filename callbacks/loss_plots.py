"""Loss and accuracy pictures of a whole run, kept across resumes.

TensorBoard's scalar charts restart their smoothing at a resume and cannot mark
where an unfreeze stage began; these figures show the batch loss of every
iteration of the run with each stage's start, labelled with what it trains
(``stage 1: +layer3, +layer4 @ 1e-4``), and the per-epoch curves, as
images (``loss/iterations``, ``loss/epochs``) and PNG files
(``<log dir>/plots/loss_iterations.png``, ``loss_epochs.png``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from typing_extensions import override

from callbacks.every_n import nth_epoch, require_at_least
from callbacks.picture_log import image_writers, log_picture, picture_dir
from callbacks.unfreeze import ProgressiveUnfreeze
from visualization.figures import epoch_curves_figure, figure_to_image, loss_curve_figure

__all__ = ["LossPlots"]

# History key -> the metric ImageClassifier logs for it at epoch end. The train
# loss is logged per step under "train/loss" and its epoch mean under "train/loss_epoch".
TRAIN_METRICS = {"train/acc": "train/acc", "train/loss": "train/loss_epoch"}
VAL_METRICS = {"val/acc": "val/acc", "val/loss": "val/loss"}


class LossPlots(L.Callback):
    """Plot the training loss of every iteration and the per-epoch curves, every ``every_n_epochs`` epochs.

    Tags: ``loss/iterations`` (batch loss against global step, with a dashed
    line where each unfreeze stage starts) and ``loss/epochs`` (train/val
    accuracy and loss per epoch), logged at the epoch's global step.

    Stage marks come from the trainer's ``ProgressiveUnfreeze`` callback: the
    step each stage began at and what the stage trains (see :meth:`stage_marks`);
    without one none are drawn. The history lives in this callback's
    ``state_dict``, so a resumed run plots all of its iterations.

    Args:
        every_n_epochs: Redraw every this many epochs (the last epoch is always drawn).
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        require_at_least(1, every_n_epochs=every_n_epochs)
        self.every_n_epochs = every_n_epochs
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.epochs: dict[str, list[float]] = {key: [] for key in (*TRAIN_METRICS, *VAL_METRICS)}
        # Losses stay tensors on the device until the epoch ends: one host sync
        # per epoch instead of one per step.
        self._pending_steps: list[int] = []
        self._pending_losses: list[torch.Tensor] = []

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            self._pending_steps.append(trainer.global_step)
            self._pending_losses.append(loss.detach().float())

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._record(trainer, VAL_METRICS)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush()
        self._record(trainer, TRAIN_METRICS)
        last_epoch = trainer.current_epoch + 1 >= (trainer.max_epochs or 0) or trainer.should_stop
        if trainer.is_global_zero and (nth_epoch(trainer, self.every_n_epochs) or last_epoch):
            self._draw(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        self._flush()  # a checkpoint saved mid-epoch keeps the steps seen so far
        epochs = {key: list(values) for key, values in self.epochs.items()}
        return {"steps": list(self.steps), "losses": list(self.losses), "epochs": epochs}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = list(state_dict["steps"])
        self.losses = list(state_dict["losses"])
        self.epochs = {key: list(state_dict["epochs"].get(key, [])) for key in self.epochs}

    def stage_marks(self, trainer: L.Trainer) -> list[tuple[int, str]]:
        """``(global step, label)`` for each unfreeze stage begun so far, in step order.

        Labels number the stage as the logged ``unfreeze/stage`` and the
        optimiser's ``stage<i>`` parameter groups do (from 0), then say what it
        trains (``+name`` adds to the previous stage) and its learning rate:
        ``stage 1: +layer3, +layer4 @ 1e-4``.
        """
        marks = []
        for callback in trainer.callbacks:
            if isinstance(callback, ProgressiveUnfreeze):
                started = enumerate(callback.stage_start_steps)  # one step per stage begun, in stage order
                marks += [(int(step), callback.stage_label(index)) for index, step in started]
        return sorted(marks)

    def _flush(self) -> None:
        if self._pending_losses:
            self.losses += torch.stack(self._pending_losses).cpu().tolist()
            self.steps += self._pending_steps
        self._pending_steps, self._pending_losses = [], []

    def _record(self, trainer: L.Trainer, metrics: Mapping[str, str]) -> None:
        logged = trainer.callback_metrics
        for key, name in metrics.items():
            if name in logged:
                self.epochs[key].append(float(logged[name]))

    def _draw(self, trainer: L.Trainer) -> None:
        folder = picture_dir(trainer, "plots")
        if folder is None and not image_writers(trainer):
            return  # nowhere to show them: skip the drawing too
        marks = self.stage_marks(trainer)
        # Stages a resume skipped over begin at the same step: one line, their labels stacked.
        starts = sorted({step for step, _ in marks})
        labels = ["\n".join(label for step, label in marks if step == start) for start in starts]
        figures = {
            "loss/iterations": loss_curve_figure(self.steps, self.losses, starts, labels),
            "loss/epochs": epoch_curves_figure(self.epochs),
        }
        for tag, figure in figures.items():
            log_picture(trainer, tag, figure_to_image(figure), trainer.global_step, folder)

