"""What the picture and score callbacks share: which images they probe, where layers resolve, when they run.

``InterpretabilityDumps`` (pictures) and ``FaithfulnessScores`` (numbers) look
at the same fixed validation images on the same schedule; ``MistakeGallery``
resolves its layer the same way. :func:`choose_probes` is the one place that
picks the probes and pairs them with what the model sees of them
(:class:`visualization.model_view.ModelView`). Lightning hooks and image choice
only: the computing is in ``visualization``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from callbacks.every_n import nth_epoch, require_at_least
from common.user_input import UserInputError
from visualization.attributions import resolve_layers
from visualization.model_view import ModelView
from visualization.methods import DEFAULT_METHODS, check_methods

__all__ = [
    "ProbeSchedule", "ProbeSet", "choose_probes", "data_view", "explained_layers", "layer_root", "probe_dataset",
    "select_probes",
]


@dataclass
class ProbeSet:
    """Fixed probe images (uint8, as stored) with their classes and the view that turns them into the model's input."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    view: ModelView

    def model_input(self) -> torch.Tensor:
        """The probes as the model sees a batch of them (see :class:`~visualization.model_view.ModelView`)."""
        return self.view(self.images)

    def state_dict(self) -> dict[str, Any]:
        """The keys ``InterpretabilityDumps`` has always kept, and the view for ``explain.py``."""
        return {
            "probe_images": self.images, "probe_labels": self.labels, "classes": list(self.classes),
            **self.view.state_dict(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], view: ModelView | None = None) -> ProbeSet:
        """Probes kept by :meth:`state_dict`; ``view`` stands in where the state predates its view."""
        kept = ModelView.from_state(state)
        return cls(state["probe_images"], state["probe_labels"], list(state["classes"]), kept or view or ModelView())


def data_view(trainer: L.Trainer, images: torch.Tensor) -> ModelView:
    """What the trainer's datamodule makes of ``images`` for the model: the probes' view during a run."""
    return ModelView.of_datamodule(trainer.datamodule, images.shape[-2] * images.shape[-1])


def choose_probes(trainer: L.Trainer, pl_module: L.LightningModule, per_class: int, who: str) -> ProbeSet | None:
    """The first ``per_class`` images of each class of the current split, with their model view; ``None`` without data.

    Args:
        trainer: Its current loop's dataset (validation during fit) is searched, then the training set.
        pl_module: Gives the number of classes when the datamodule names none.
        per_class: Images per class.
        who: The caller's name for the warning when there is no dataset.
    """
    dataset = probe_dataset(trainer)
    if dataset is None:
        rank_zero_warn(f"{who} found no dataset to take probe images from; nothing drawn or scored.")
        return None
    classes = getattr(trainer.datamodule, "classes", None)
    classes = list(classes) if classes else [str(c) for c in range(pl_module.num_classes)]
    images, labels = select_probes(dataset, len(classes), per_class)
    return ProbeSet(images, labels, classes, data_view(trainer, images))


def select_probes(dataset: Any, num_classes: int, per_class: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` images of each class, in index order: the same set on every run.

    Args:
        dataset: Items ``(image, label)`` (or bare images, then labels are ``-1``
            and the first ``num_classes * per_class`` images are taken); images
            ``[C, H, W]`` uint8, or floats in ``[0, 1]``.
        num_classes: Number of classes to look for.
        per_class: Images per class.

    Returns:
        ``(images uint8 [N, C, H, W], labels int64 [N])``, sorted by class then
        index; fewer images if some class has too few.
    """
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor):  # our in-memory sets: no need to read every item
        picked = [i for c in range(num_classes) for i in (labels == c).nonzero()[:per_class, 0].tolist()]
        picked = picked or (labels < 0).nonzero()[: num_classes * per_class, 0].tolist()  # unlabelled images
    else:
        by_class: dict[int, list[int]] = {c: [] for c in range(num_classes)}
        unlabeled: list[int] = []
        for index in range(len(dataset)):
            label = _label(dataset[index])
            if label in by_class and len(by_class[label]) < per_class:
                by_class[label].append(index)
            elif label < 0:
                unlabeled.append(index)
            if all(len(found) == per_class for found in by_class.values()) or len(unlabeled) == num_classes * per_class:
                break
        picked = [i for found in by_class.values() for i in found] or unlabeled
    items = [dataset[i] for i in picked]
    images = torch.stack([_as_uint8(item[0] if isinstance(item, (tuple, list)) else item) for item in items])
    return images, torch.tensor([_label(item) for item in items], dtype=torch.long)


def _label(item: Any) -> int:
    """The class of a dataset item, -1 for a bare image."""
    return int(item[1]) if isinstance(item, (tuple, list)) else -1


def _as_uint8(image: torch.Tensor) -> torch.Tensor:
    """Store probes as uint8: a quarter of float32's bytes in every checkpoint."""
    image = torch.as_tensor(image).detach().cpu()
    if image.dtype == torch.uint8:
        return image.clone()
    return (image.float().clamp(0, 1) * 255).round().to(torch.uint8)


class ProbeSchedule(L.Callback):
    """When the probe callbacks run, and the layer check they share; subclasses implement ``_probe``.

    During ``fit``: at the end of every ``every_n_epochs``-th training epoch
    (after its validation) and at the end of fit unless that step was just
    done; never in the sanity check (``_probe`` checks). Under ``validate``,
    ``test`` and ``predict``: once at the end of the loop. ``setup`` resolves
    ``layers`` in the model's ``net``, so a misspelt name fails before training.

    Args:
        layers: Dotted layer names in the model's ``net``, low to high; ``None``:
            the ones the network names (its ``explainable_layers``), set at ``setup``.
        every_n_epochs: Run every this many training epochs.
        methods: Methods beside Grad-CAM, names of :data:`visualization.methods.METHODS`.
    """

    def __init__(
        self, layers: Sequence[str] | None = None, every_n_epochs: int = 1, methods: Sequence[str] = DEFAULT_METHODS
    ) -> None:
        if layers is not None and (isinstance(layers, str) or not layers):
            raise UserInputError(
                f"layers={layers!r} must be a non-empty list of layer names.\nHINT: e.g. layers: [conv1, conv2, conv3]."
            )
        self.require_at_least(1, every_n_epochs=every_n_epochs)
        check_methods(methods)
        self.given_layers = None if layers is None else list(layers)
        self.layers: list[str] = list(self.given_layers or [])
        self.every_n_epochs = every_n_epochs
        self.methods = list(methods)
        self.last_step: int | None = None

    require_at_least = staticmethod(require_at_least)  # the subclasses' checks of their own counts

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.layers = explained_layers(pl_module, self.given_layers, type(self).__name__)
        resolve_layers(layer_root(pl_module), self.layers)  # a misspelt layer fails now, not after an epoch

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if nth_epoch(trainer, self.every_n_epochs):
            self._probe(trainer, pl_module)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.last_step != trainer.global_step:
            self._probe(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:  # during fit, on_train_epoch_end draws
            self._probe(trainer, pl_module)

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._probe(trainer, pl_module)

    @override
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._probe(trainer, pl_module)

    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Run the callback on its probe images now: draw the pictures, or compute the scores."""
        raise NotImplementedError


def explained_layers(pl_module: nn.Module, given: Sequence[str] | None, who: str) -> list[str]:
    """``given`` if set, else the layers the model's network names (``explainable_layers``), low to high.

    Raises:
        ValueError: Neither names a layer (e.g. an MLP, whose network has no spatial feature maps).
    """
    layers = list(given) if given is not None else list(getattr(layer_root(pl_module), "explainable_layers", ()))
    if not layers:
        raise ValueError(
            f"{who}: {type(pl_module).__name__} names no layers to explain, and none were given.\n"
            "HINT: give the callback layers (dotted names in the model's net), or leave it out for a model "
            "without conv layers (cli.py does so for the MLPs)."
        )
    return layers


def layer_root(pl_module: nn.Module) -> nn.Module:
    """Where layer names are resolved: the classifier's ``net`` (names as in the configs)."""
    return getattr(pl_module, "net", pl_module)


def probe_dataset(trainer: L.Trainer) -> Any:
    """The dataset of the current loop's split (validation during fit), else the training set."""
    loaders = {
        TrainerFn.FITTING: trainer.val_dataloaders,
        TrainerFn.VALIDATING: trainer.val_dataloaders,
        TrainerFn.TESTING: trainer.test_dataloaders,
        TrainerFn.PREDICTING: trainer.predict_dataloaders,
    }.get(trainer.state.fn)
    for loader in (loaders, trainer.train_dataloader):
        if isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and _has_items(dataset):
            return dataset
    return None


def _has_items(dataset: Any) -> bool:
    """False for an empty map-style dataset (``val_size: 0``) and for iterable ones, which cannot be indexed."""
    try:
        return len(dataset) > 0 and hasattr(dataset, "__getitem__")
    except TypeError:
        return False
