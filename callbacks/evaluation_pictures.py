"""Where the model goes wrong, in TensorBoard: the confusion matrix and a gallery of its surest mistakes.

Both are drawn after a validation epoch (every ``every_n_epochs``-th one during
``fit``) and once under ``validate`` and ``test``; never in the sanity check.
The module computes the numbers (its torchmetrics states, summed over DDP
ranks); these callbacks choose images and publish pictures. Only rank zero
draws. Under ``validate``/``test`` the pictures are also PNG files in
``<log dir>/pictures/<stage>/``, named after the tags.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from callbacks.every_n import nth_epoch, require_at_least
from callbacks.probes import explained_layers, layer_root
from callbacks.picture_log import image_writers, log_picture, picture_dir
from visualization.attributions import resolve_layers
from visualization.figures import confusion_matrix_figure, figure_to_image
from visualization.pictures import most_confident_mistakes, render_mistakes

__all__ = ["ConfusionMatrixPlot", "MistakeGallery"]


class _EvaluationPicture(L.Callback):
    """When to draw (every n-th validation during fit, always under validate/test) and where to publish."""

    def __init__(self, every_n_epochs: int = 1) -> None:
        require_at_least(1, every_n_epochs=every_n_epochs)
        self.every_n_epochs = every_n_epochs

    def due(self, trainer: L.Trainer) -> bool:
        """Whether this epoch's evaluation gets a picture; the same answer on every rank."""
        if trainer.sanity_checking:
            return False
        if trainer.state.fn == TrainerFn.FITTING:
            return nth_epoch(trainer, self.every_n_epochs)
        return True

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "val")

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "test")

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        raise NotImplementedError

    def publish(self, trainer: L.Trainer, tag: str, picture: Any) -> None:
        log_picture(trainer, tag, picture, trainer.global_step, self._folder(trainer))

    def can_publish(self, trainer: L.Trainer) -> bool:
        """Whether a picture would land anywhere (not under ``fast_dev_run``, which turns loggers off)."""
        return bool(image_writers(trainer)) or self._folder(trainer) is not None

    @staticmethod
    def _folder(trainer: L.Trainer) -> Any:
        """PNG files under validate/test only: during fit TensorBoard keeps every epoch's picture."""
        if trainer.state.fn == TrainerFn.FITTING:
            return None
        return picture_dir(trainer, f"pictures/{trainer.state.fn.value}")


class ConfusionMatrixPlot(_EvaluationPicture):
    """``confusion_matrix/val`` and ``confusion_matrix/test``: counts of true against predicted class.

    Drawn with torchmetrics' own ``MulticlassConfusionMatrix.plot`` from the matrix the
    module computed for the epoch; the class labels carry each class's
    accuracy. The per-class accuracies are also scalars, logged by the module
    (``val/acc_per_class/<class>``). Costs one small figure per drawing.

    Args:
        every_n_epochs: During fit, draw after every this many epochs' validation.
    """

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        matrix = getattr(pl_module, "confusion_matrices", {}).get(stage)
        if matrix is None or not self.due(trainer) or not trainer.is_global_zero or not self.can_publish(trainer):
            return
        title = f"{stage}, epoch {trainer.current_epoch}" if trainer.state.fn == TrainerFn.FITTING else stage
        picture = figure_to_image(confusion_matrix_figure(matrix, pl_module.class_names(), title))
        self.publish(trainer, f"confusion_matrix/{stage}", picture)


class MistakeGallery(_EvaluationPicture):
    """``mistakes/val`` and ``mistakes/test``: the wrong predictions the model was surest of, with Grad-CAM.

    Each row: the image (true class, predicted class and its probability),
    Grad-CAM of ``layer`` for the predicted class, and for the true class: what
    the model looked at when it failed, and what it found of the right answer.
    The candidates are kept while the epoch runs (the ``count`` surest so far
    per rank, from the probabilities ``validation_step`` returns), then
    gathered over DDP ranks; no extra pass over the data.

    Args:
        layer: Layer of the model's ``net`` explained, e.g. ``conv3`` or ``layer4``; ``None``: the
            last of the network's ``explainable_layers``, set at ``setup``.
        count: Mistakes shown.
        every_n_epochs: During fit, draw after every this many epochs' validation.
    """

    def __init__(self, layer: str | None = None, count: int = 8, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        require_at_least(1, count=count)
        self.given_layer = layer
        self.layer = layer
        self.count = count
        self.chosen: dict[str, torch.Tensor] = {}  # the latest gallery's images, labels, preds, confidences
        self._candidates: dict[str, torch.Tensor] | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        given = None if self.given_layer is None else [self.given_layer]
        self.layer = explained_layers(pl_module, given, type(self).__name__)[-1]
        resolve_layers(layer_root(pl_module), [self.layer])  # a misspelt layer fails now, with the valid names

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._candidates = self._no_candidates(pl_module) if self.due(trainer) else None

    @override
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._candidates = self._no_candidates(pl_module)

    @override
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(outputs, batch)

    @override
    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(outputs, batch)

    @staticmethod
    def _no_candidates(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        shape = tuple(getattr(pl_module, "input_shape", (3, 32, 32)))
        return {
            "images": torch.zeros(0, *shape),
            "labels": torch.zeros(0, dtype=torch.long),
            "preds": torch.zeros(0, dtype=torch.long),
            "confidences": torch.zeros(0),
        }

    def _collect(self, outputs: Any, batch: Any) -> None:
        """Keep the ``count`` surest mistakes seen so far: this batch's merged with the earlier ones."""
        if self._candidates is None or not isinstance(outputs, dict) or "probs" not in outputs:
            return
        confidence, preds = outputs["probs"].detach().float().max(dim=1)
        batch_part = {
            "images": batch[0].detach().float().cpu(),
            "labels": outputs["labels"].detach().cpu(),
            "preds": preds.cpu(),
            "confidences": confidence.cpu(),
        }
        merged = {key: torch.cat([self._candidates[key], value]) for key, value in batch_part.items()}
        keep = most_confident_mistakes(merged["confidences"], merged["preds"], merged["labels"], self.count)
        self._candidates = {key: value[keep] for key, value in merged.items()}

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._candidates is None:
            return
        candidates = self._gather(trainer, self._candidates)
        self._candidates = None
        if not trainer.is_global_zero or not self.can_publish(trainer):
            return
        order = candidates["confidences"].argsort(descending=True, stable=True)[: self.count]
        self.chosen = {key: value[order] for key, value in candidates.items()}
        if not len(order):
            return  # no mistakes: nothing to show
        picture = render_mistakes(pl_module, self.chosen["images"], self.chosen["labels"], pl_module.class_names(),
                                  self.layer, layer_root=layer_root(pl_module))
        self.publish(trainer, f"mistakes/{stage}", picture)

    def _gather(self, trainer: L.Trainer, found: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every rank's candidates (padded to ``count`` with confidence -1 for ``all_gather``), real ones only."""
        if trainer.world_size == 1:
            return found
        padded = {key: torch.cat([value, value.new_zeros(self.count - len(value), *value.shape[1:])])
                  for key, value in found.items()}
        padded["confidences"][len(found["confidences"]):] = -1.0
        gathered = {key: trainer.strategy.all_gather(value.to(trainer.strategy.root_device)).cpu().flatten(0, 1)
                    for key, value in padded.items()}
        real = gathered["confidences"] >= 0
        return {key: value[real] for key, value in gathered.items()}
