"""The classification base every architecture shares: loss, metrics, logging, optimiser.

Subclasses only build ``self.net``, a plain ``nn.Module`` mapping normalised
images to logits. The base normalises [0, 1] images itself, with statistics
linked from the datamodule, so a checkpoint classifies raw images on its own.
Checkpoints also keep the class names of the data they were trained on, so a
checkpoint used on other data is refused by name rather than by a size error.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from datamodules.cifar10 import CIFAR10_MEAN, CIFAR10_STD
from common.lightning_private import epochs_trained, scheduler_parts
from common.user_input import UserInputError

__all__ = ["ImageClassifier", "reference_plateau"]


def reference_plateau(optimizer: torch.optim.Optimizer) -> ReduceLROnPlateau:
    """The source's scheduler: halve the learning rate after 3 epochs without progress."""
    return ReduceLROnPlateau(optimizer, mode="min", patience=3, factor=0.5)


class ImageClassifier(L.LightningModule):
    """Cross-entropy classifier over ``self.net`` with torchmetrics accuracy.

    Logs ``train/loss`` every step, ``train/loss_epoch`` and ``train/acc`` every
    epoch, and ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``. Each
    validation and test epoch also logs the accuracy of every class that has
    images, ``val/acc_per_class/<class>`` and ``test/acc_per_class/<class>``
    (class names from the datamodule), and keeps that epoch's confusion matrix
    (rows: true class, columns: predicted) in ``confusion_matrices[stage]``
    for callbacks to draw. Both are torchmetrics states, summed over DDP ranks.

    Args:
        num_classes: Number of classes (linked from the datamodule).
        input_shape: ``(channels, height, width)`` of one image (linked from the datamodule).
        mean: Per-channel normalisation mean (linked from the datamodule).
        std: Per-channel normalisation std (linked from the datamodule).
        optimizer: Builds the optimiser from parameter groups (Adam, lr 1e-3 by default).
        scheduler: Builds the learning-rate scheduler; ``None`` for a constant
            learning rate. Stepped each epoch (on ``val/loss`` for
            ``ReduceLROnPlateau``), except schedules sized in steps: a
            ``OneCycleLR`` without ``total_steps`` or a ``CosineAnnealingLR``
            without ``T_max`` is sized from ``trainer.estimated_stepping_batches``
            (the whole fit) and stepped after every optimiser step. (From YAML,
            jsonargparse insists on a ``T_max``; leave it out from Python.)
        label_smoothing: Share of the target mass spread over all classes in the
            training loss (0.1 is the usual choice). Validation and test losses
            stay plain cross-entropy, so ``val/loss`` compares across recipes.
        channels_last: Keep the network's weights and activations in NHWC
            layout, which oneDNN and cuDNN convolutions run faster in.
        compile: Run the network through ``torch.compile``. It pays a compile at
            start; on the 2-core development CPU it never paid that back
            (docs/performance.md), and no GPU has measured it yet
            (``benchmarks/gpu_check.py`` does). Kept as ``compile_net``:
            ``compile`` is an ``nn.Module`` method.
        test_time_flip: Also classify each image's mirror and average the two
            predictions. Under ``test`` its accuracy is logged as
            ``test/acc_flip``, beside the plain ``test/acc``, which it never
            replaces; under ``predict`` the averaged probabilities go to
            ``predictions_flip.csv``, beside (never over) the plain
            ``predictions.csv`` that the report reads. Costs a second forward
            pass. Refused on pixel-permuted data, where a mirror of the
            model's input is not a mirror of the image.
            A test-time option: ``cli.py test|predict ... --model.test_time_flip true``.
    """

    # Metric the scheduler watches; validation drives every training decision.
    scheduler_monitor = "val/loss"
    # Whether ``net`` classifies images of any size (a global pooling before the head), which
    # the datamodule's ``progressive_resize`` needs; a fixed ``Flatten -> Linear`` head does not.
    accepts_any_image_size = False

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] = (3, 32, 32),
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = reference_plateau,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
        test_time_flip: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise UserInputError(f"num_classes={num_classes}: a classifier needs at least 2 classes.")
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise UserInputError(f"input_shape={list(input_shape)} must be (channels, height, width).")
        if not 0.0 <= label_smoothing < 1.0:
            raise UserInputError(
                f"label_smoothing={label_smoothing} is not in [0, 1).\n"
                "HINT: use a small share such as --model.label_smoothing 0.1, or 0 for none."
            )
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        _check_optimizer(optimizer)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        # validate_args=False: the checks run torch.unique and read the result on the host, a
        # host-device sync every step; predictions are argmaxes and cross_entropy has already
        # refused labels outside [0, num_classes) in the same step.
        checks = {"validate_args": False}
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", **checks)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", **checks)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", **checks)
        # Per class and confusion: a few bincounts per batch and a C x C all-reduce per epoch.
        self.val_class_acc = MulticlassAccuracy(num_classes, average=None, **checks)
        self.test_class_acc = MulticlassAccuracy(num_classes, average=None, **checks)
        self.val_confusion = MulticlassConfusionMatrix(num_classes, **checks)
        self.test_confusion = MulticlassConfusionMatrix(num_classes, **checks)
        self.test_time_flip = test_time_flip
        self.test_acc_flip = MulticlassAccuracy(num_classes, average="micro", **checks)
        # The latest epoch's matrix per stage ("val", "test"), CPU int64, for ConfusionMatrixPlot.
        self.confusion_matrices: dict[str, torch.Tensor] = {}
        self.train_loss = _WeightedMean()
        self.channels_last = channels_last
        self.compile_net = compile
        self.net: nn.Module
        self._compiled_net: nn.Module | None = None

    @property
    def in_channels(self) -> int:
        return self.input_shape[0]

    @property
    def explainable_layers(self) -> tuple[str, ...]:
        """Layers of ``net`` the picture and score callbacks explain by default, low to high.

        Each architecture names its own (``conv1..conv3``, ``layer1..layer4``); empty for a
        network without spatial feature maps (the MLP), which gets no Grad-CAM callbacks.
        """
        return tuple(getattr(self.net, "explainable_layers", ()))

    def configure_model(self) -> None:
        """Apply the speed options once the network exists and sits on its device."""
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.compile_net and self._compiled_net is None:
            # Kept outside the module tree (no ``_orig_mod.`` prefixes in the state
            # dict), so checkpoints load the same with and without compile.
            object.__setattr__(self, "_compiled_net", torch.compile(self.net))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for images in [0, 1], shape ``[N, C, H, W]``."""
        images = (images - self.mean) / self.std
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        net = self._compiled_net if self._compiled_net is not None else self.net
        return net(images)

    def model_step(
        self, batch: Any, label_smoothing: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, logits, labels = self._logits_step(batch, label_smoothing)
        return loss, logits.argmax(dim=1), labels

    def _logits_step(
        self, batch: Any, label_smoothing: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels = batch[0], batch[1]
        logits = self(images)
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing), logits, labels

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, preds, labels = self.model_step(batch, self.label_smoothing)
        self.train_acc(preds, labels)
        self.train_loss(loss.detach(), len(labels))
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluation_step("val", batch)

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluation_step("test", batch)

    def _evaluation_step(self, stage: str, batch: Any) -> dict[str, torch.Tensor]:
        """Loss, accuracy and the per-class states; returns the probabilities for callbacks (mistake gallery)."""
        loss, logits, labels = self._logits_step(batch)
        preds = logits.argmax(dim=1)
        accuracy = getattr(self, f"{stage}_acc")
        accuracy(preds, labels)
        getattr(self, f"{stage}_class_acc").update(preds, labels)
        getattr(self, f"{stage}_confusion").update(preds, labels)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage == "val", sync_dist=True, batch_size=len(labels))
        self.log(f"{stage}/acc", accuracy, on_epoch=True, prog_bar=stage == "val")
        if stage == "test" and self.test_time_flip:
            # Mirror along the width; the averaged probabilities are a second number, not the test number.
            self.test_acc_flip(self._with_mirror(batch[0], logits.softmax(dim=1)).argmax(dim=1), labels)
            self.log("test/acc_flip", self.test_acc_flip, on_epoch=True)
        return {"probs": logits.detach().softmax(dim=1), "labels": labels}

    def _with_mirror(self, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Flip TTA, one definition for test and predict: the mean of the image's and its mirror's probabilities."""
        return (probs + self(images.flip(-1)).softmax(dim=1)) / 2

    def setup(self, stage: str) -> None:
        # At setup: before the model summary, a checkpoint or a batch.
        if stage == "fit":
            self._refuse_resizing_into_a_fixed_head()

    def _refuse_resizing_into_a_fixed_head(self) -> None:
        if getattr(self.trainer.datamodule, "progressive_resize", None) is not None and not self.accepts_any_image_size:
            raise UserInputError(
                f"{type(self).__name__} has a head sized for {self.input_shape[1]}x{self.input_shape[2]} images, "
                "so it cannot train on the smaller ones of data.progressive_resize.\n"
                "HINT: leave --data.progressive_resize out, or use a network with a global pooling "
                "(configs/resnet18_fast.yaml, configs/resnet_cbam_fast.yaml)."
            )

    def on_train_epoch_start(self) -> None:
        datamodule = self.trainer.datamodule
        if getattr(datamodule, "progressive_resize", None) is not None:
            height, _ = datamodule.train_image_size(self.current_epoch)
            self.log("train/image_size", float(height), on_step=False, on_epoch=True)

    def on_test_start(self) -> None:
        self._refuse_flip_on_permuted_pixels()

    def on_predict_start(self) -> None:
        self._refuse_flip_on_permuted_pixels()

    def _refuse_flip_on_permuted_pixels(self) -> None:
        if self.test_time_flip and getattr(self.trainer.datamodule, "permute_pixels", False):
            raise UserInputError(
                "test_time_flip mirrors the model's input, which on pixel-permuted data is not the image's mirror.\n"
                "HINT: leave --model.test_time_flip out for permuted configs."
            )

    def on_validation_epoch_end(self) -> None:
        self._per_class_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._per_class_epoch_end("test")

    def _per_class_epoch_end(self, stage: str) -> None:
        """Log ``<stage>/acc_per_class/<class>`` for classes with images, keep the confusion matrix, reset."""
        class_acc, confusion = getattr(self, f"{stage}_class_acc"), getattr(self, f"{stage}_confusion")
        matrix = confusion.compute()  # collective under DDP: every rank gets here
        accuracies = class_acc.compute()
        names = self.class_names()
        counts = matrix.sum(dim=1)
        # Classes without images have no accuracy to log (torchmetrics would report 0).
        self.log_dict(
            {f"{stage}/acc_per_class/{names[c]}": accuracies[c] for c in range(len(names)) if counts[c] > 0},
            on_epoch=True,
            sync_dist=True,  # identical on every rank; said so Lightning does not warn under DDP
        )
        self.confusion_matrices[stage] = matrix.detach().cpu()
        class_acc.reset()
        confusion.reset()

    def class_names(self) -> list[str]:
        """Class names from the datamodule, else the class indices as text."""
        datamodule = getattr(self._attached_trainer(), "datamodule", None)
        classes = getattr(datamodule, "classes", None)
        return list(classes) if classes else [str(c) for c in range(self.num_classes)]

    def _attached_trainer(self) -> L.Trainer | None:
        """The trainer, or None outside one (``load_from_checkpoint``, plain inference), where ``trainer`` raises."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Class probabilities, with the true labels (-1: unknown) and dataset indices when the batch has them."""
        images, *rest = batch if isinstance(batch, (tuple, list)) else (batch,)
        probs = self(images).softmax(dim=1)
        output = {"probs": self._with_mirror(images, probs) if self.test_time_flip else probs}
        output.update(zip(("labels", "index"), rest))
        return output

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["classes"] = self.class_names()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_classes(checkpoint)
        self._check_resumed_epochs(checkpoint)
        self._note_schedule_length(checkpoint)

    def _check_resumed_epochs(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a resume whose ``max_epochs`` lies below the epochs the checkpoint already trained.

        Lightning would train nothing and exit 0 (one epoch below), or stop with a traceback after
        restoring the loops (more); this is the user's choice of flag, so it gets the exit status and
        the HINT of the other user errors.
        """
        trainer = self._attached_trainer()
        if trainer is None or trainer.state.fn != "fit" or trainer.max_epochs in (None, -1):
            return
        done = epochs_trained(checkpoint)
        if done is not None and done > trainer.max_epochs:
            raise UserInputError(
                f"The checkpoint has trained {done} epochs, more than --trainer.max_epochs {trainer.max_epochs}.\n"
                f"HINT: resume with --trainer.max_epochs {done} or more (the run's own length), or start a new "
                "run from its weights without --ckpt_path."
            )

    def _check_classes(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint trained on other classes before its weights fail to fit (or silently fit)."""
        if self._attached_trainer() is None:
            return  # load_from_checkpoint: no data to compare with
        ours = self.class_names()
        saved = checkpoint.get("classes")
        if saved is None:  # written before class names were kept: compare the counts
            count = checkpoint.get("hyper_parameters", {}).get("num_classes", len(ours))
            saved = ours if count == len(ours) else [f"{count} classes"]
        if list(saved) != ours:
            raise UserInputError(
                f"The checkpoint was trained on {list(saved)}, the data have the classes {ours}.\n"
                "HINT: use a checkpoint of a run on this data (same class folders), or point --data.data_dir "
                "at the data it was trained on."
            )

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups; subclasses split them for discriminative learning rates."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        if self.scheduler_factory is None:
            return optimizer
        parts = scheduler_parts(self.scheduler_factory)
        lengths = _step_count_arguments(*parts) if parts else []
        sizes = dict.fromkeys(lengths, self._total_steps()) if lengths else {}
        self._check_resumed_length(sizes)
        try:
            if sizes:  # built here: the factory's call signature takes the optimiser alone
                cls, given = parts
                scheduler = cls(optimizer, **{**given, **sizes})
            else:
                scheduler = self.scheduler_factory(optimizer)
        except ZeroDivisionError as error:  # OneCycleLR when pct_start * total_steps is exactly 1: an empty phase
            raise UserInputError(
                f"The learning-rate schedule cannot be built for this fit ({sizes or 'its own length'}): {error}.\n"
                "HINT: a one-cycle warm-up needs more than one step; train longer or change pct_start."
            ) from error
        # A schedule counted in optimiser steps must be stepped at each of them.
        interval = "step" if sizes or isinstance(scheduler, OneCycleLR) else "epoch"
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.scheduler_monitor, "interval": interval},
        }

    def _note_schedule_length(self, checkpoint: dict[str, Any]) -> None:
        """Note the length a resumed schedule was sized for; Lightning restores it after configure_optimizers."""
        states = checkpoint.get("lr_schedulers") or [{}]
        self._resumed_schedule_length = {key: states[0][key] for key in ("total_steps", "T_max") if key in states[0]}

    def _check_resumed_length(self, sizes: dict[str, int]) -> None:
        """Refuse a resume whose fit is longer or shorter than the one its schedule was sized for.

        The restored scheduler keeps its old length: a longer fit would step a one-cycle past its end
        (torch raises mid-run), a shorter one would stop before the rate has annealed.
        """
        resumed = getattr(self, "_resumed_schedule_length", None) or {}
        changed = {key: (resumed[key], steps) for key, steps in sizes.items()
                   if key in resumed and resumed[key] != steps}
        if changed:
            (key, (before, now)), *_ = changed.items()
            raise UserInputError(
                f"The checkpoint's learning-rate schedule was sized for {before} steps ({key}), "
                f"but this fit now runs {now}: resuming would not follow one schedule.\n"
                "HINT: resume with the run's own --trainer.max_epochs (and limits), or start a new run "
                "from the weights without --ckpt_path."
            )

    def _total_steps(self) -> int:
        """Optimiser steps of the whole fit, as Lightning counts them (epochs, limits, accumulation)."""
        steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise UserInputError(
                "The learning-rate schedule is sized from the length of the fit, which is unbounded here "
                "(max_epochs -1 and no max_steps).\n"
                "HINT: set --trainer.max_epochs or --trainer.max_steps, or give the schedule's length "
                "(total_steps for OneCycleLR, T_max for CosineAnnealingLR)."
            )
        return int(steps)


class _WeightedMean(Metric):
    """Mean of per-batch values weighted by batch size, summed over DDP ranks; checks nothing.

    torchmetrics' ``MeanMetric`` looks for NaN with a host-side ``any()`` on every update (a
    host-device sync each step; its ``nan_strategy="disable"`` only exists in recent releases)
    and turns an ``int`` weight into a tensor copied from the host. A non-finite loss is the
    fault-tolerance callback's to catch, before the backward pass.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: int) -> None:
        self.total += value.detach() * weight
        self.weight += weight

    def compute(self) -> torch.Tensor:
        return self.total / self.weight


def _step_count_arguments(cls: type, given: dict[str, Any]) -> list[str]:
    """The length arguments a schedule class lacks in ``given`` that the fit's step count should fill.

    ``OneCycleLR`` takes ``total_steps`` (unless given ``epochs`` and
    ``steps_per_epoch``); ``CosineAnnealingLR`` takes ``T_max``. Set by the user,
    they are left alone.
    """
    parameters = inspect.signature(cls).parameters
    if "total_steps" in parameters:
        own_length = given.get("epochs") is not None and given.get("steps_per_epoch") is not None
        return [] if own_length or given.get("total_steps") is not None else ["total_steps"]
    if "T_max" in parameters and given.get("T_max") is None:
        return ["T_max"]
    return []


def _check_optimizer(optimizer: OptimizerCallable) -> None:
    """Build the optimiser once on a dummy parameter so bad settings fail at start, not after data loading."""
    try:
        optimizer([nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as error:
        raise UserInputError(
            f"model.optimizer is invalid: {error}.\n"
            "HINT: learning rates and weight decay must be non-negative numbers, "
            "e.g. --model.optimizer.lr 1e-3."
        ) from error
