"""Grad-CAM, guided backpropagation, feature maps and attention of fixed probe images, in TensorBoard.

The pictures of SPEC section 6, redrawn every few epochs during ``fit`` and
once under ``validate``/``test``/``predict`` (for a saved checkpoint), so users
watch localisation and attention develop and compare checkpoints on the same
images. The callback only gathers the probe images and publishes the pictures;
:func:`visualization.pictures.render_pictures` computes and draws them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from callbacks.picture_log import image_writers, log_picture, picture_dir
from callbacks.probes import ProbeSchedule, ProbeSet, choose_probes, data_view, layer_root
from visualization.methods import DEFAULT_METHODS
from visualization.pictures import render_pictures

__all__ = ["InterpretabilityDumps"]


class InterpretabilityDumps(ProbeSchedule):
    """Draw Grad-CAM, input-gradient methods, feature maps and attention for fixed probe images.

    When: during ``fit``, at the end of every ``every_n_epochs``-th training
    epoch (after its validation) and at the end of fit (unless that step was
    just drawn); never during the sanity check. Under ``validate``, ``test``
    and ``predict``, once at the end of the loop: their ``inference_mode`` is
    lifted for the attributions only. Only rank zero draws and writes.

    Probes: the first ``probes_per_class`` images of each class of the
    validation set, in index order (under ``test``/``predict``: of that split),
    chosen at the first dump and kept in ``state_dict`` as uint8, with the
    class names and the pixel permutation of the data (if any), so a resumed
    run and ``explain.py`` use the same images and show them as the model saw them.

    TensorBoard tags (``global_step`` = the trainer's):

    * ``gradcam/all_layers``: per probe, the image (true and predicted class),
      Grad-CAM of each of ``layers`` (low to high) overlaid, then guided
      backpropagation, deconvolution and guided Grad-CAM (last layer).
    * ``gradcam/<layer>`` (``gradcam/conv3``, ``gradcam/layer4``): that
      layer's Grad-CAM on every probe, titled with true and predicted class.
    * ``features/<layer>``: the first ``feature_images`` probes, each followed
      by the layer's top ``feature_top_k`` channels by mean activation.
    * ``features/top_channels``: the last layer's 3 strongest channels
      overlaid on each probe (the source's "attention" maps).
    * ``attention/channel``: SE/CBAM channel gates (models with them).
    * ``attention/spatial``: CBAM spatial gates overlaid on each probe (CBAM models).

    PNG files named after the tags go to ``<log dir>/pictures/<stage>/`` under
    ``validate``/``test``/``predict``, and under ``fit`` when ``save_png``.
    Nothing is drawn when there is neither an image logger nor a log dir
    (e.g. ``fast_dev_run``).

    The dumps leave training untouched: weights, BatchNorm statistics,
    ``requires_grad``, train/eval flags and RNG state are restored.

    Args:
        layers: Layers to explain, low to high, as dotted names in the model's
            ``net`` (``conv1``, ``layer4``, ``features.40``); ``None``: the network's
            ``explainable_layers``.
        every_n_epochs: Draw every this many training epochs.
        probes_per_class: Probe images per class.
        methods: Methods drawn beside Grad-CAM (``visualization.methods.METHODS``): by default
            ``guided_backprop``, ``deconvolution``, ``guided_gradcam``; also ``integrated_gradients``,
            ``smoothgrad``, ``occlusion`` (a column each) and the CAM variants ``gradcam_pp``,
            ``xgradcam``, ``hirescam``, ``layercam``, ``scorecam`` (a column per layer). The
            added ones cost 49 to over 128 passes an image where the defaults cost one each: opt in.
        feature_top_k: Channels per layer in the feature-map pictures.
        feature_images: Probes shown in each layer's feature-map picture (a row each).
        attention: Draw SE/CBAM gates when the model has them.
        save_png: Also write PNG files during ``fit``.
    """

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        every_n_epochs: int = 1,
        probes_per_class: int = 1,
        methods: Sequence[str] = DEFAULT_METHODS,
        feature_top_k: int = 8,
        feature_images: int = 1,
        attention: bool = True,
        save_png: bool = False,
    ) -> None:
        super().__init__(layers, every_n_epochs, methods)
        self.require_at_least(
            1, probes_per_class=probes_per_class, feature_top_k=feature_top_k, feature_images=feature_images
        )
        self.probes_per_class = probes_per_class
        self.feature_top_k = feature_top_k
        self.feature_images = feature_images
        self.attention = attention
        self.save_png = save_png
        self.probes: ProbeSet | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {} if self.probes is None else self.probes.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self.probes = ProbeSet.from_state(state_dict)

    @override
    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        stage = trainer.state.fn
        wants_png = self.save_png or stage != TrainerFn.FITTING
        folder = picture_dir(trainer, f"pictures/{stage.value}") if wants_png else None
        if folder is None and not image_writers(trainer):
            return
        if self.probes is None:
            self.probes = choose_probes(trainer, pl_module, self.probes_per_class, type(self).__name__)
            if self.probes is None:
                return
        self.probes.view = data_view(trainer, self.probes.images)  # the run's data decide, also for older state
        # Drawn on the process's own thread count: a callback does not change process-wide settings
        # (on a busy machine with few cores, run with OMP_NUM_THREADS=1).
        pictures = render_pictures(
            pl_module,
            self.probes.model_input(),
            self.probes.labels,
            self.probes.classes,
            self.layers,
            layer_root=layer_root(pl_module),
            methods=self.methods,
            feature_top_k=self.feature_top_k,
            feature_images=self.feature_images,
            attention=self.attention,
        )
        for tag, image in pictures.items():
            log_picture(trainer, tag, image, trainer.global_step, folder)
        self.last_step = trainer.global_step
