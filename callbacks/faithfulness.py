"""Faithfulness scores of the pictures' saliency maps on fixed validation images, as TensorBoard scalars.

The pictures of ``InterpretabilityDumps`` show where each method looks; this
callback scores whether the model really uses what they show (deletion,
insertion and ROAD areas, and the model-randomisation check; see
:mod:`visualization.faithfulness`), so users can follow the scores over the
epochs beside the pictures. At the end of fit the last scores also go to
TensorBoard's text tab as the ranked table ``explain.py --faithfulness`` writes.
It only picks the images and publishes the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from callbacks.probes import ProbeSchedule, choose_probes, data_view, layer_root
from callbacks.picture_log import image_writers, log_picture, scalar_loggers
from visualization.faithfulness import FaithfulnessResult, faithfulness_scores
from visualization.faithfulness_tables import leaderboard_table
from visualization.figures import faithfulness_curves_figure, figure_to_image
from visualization.methods import DEFAULT_METHODS
from visualization.ranking import leaderboard_rows

__all__ = ["FaithfulnessScores"]


class FaithfulnessScores(ProbeSchedule):
    """Log ``faithfulness/<metric>/<method>`` for fixed validation images every few epochs.

    When: as ``InterpretabilityDumps`` (end of every ``every_n_epochs``-th
    training epoch, end of fit unless just scored, once under
    ``validate``/``test``/``predict``; never in the sanity check); rank zero only.

    Images: the first ``images_per_class`` validation images of each class,
    chosen at the first scoring and kept in ``state_dict`` (uint8), so a
    resumed run scores the same images; scored as the model sees them
    (pixel-permuted where the data are, see :func:`callbacks.probes.data_view`).

    Scalars (step = the trainer's ``global_step``), each the mean over the images:

    * ``faithfulness/deletion_auc/<method>``: lower is better;
    * ``faithfulness/insertion_auc/<method>``: higher is better;
    * ``faithfulness/road_auc/<method>``: lower is better (removal with imputation,
      most relevant first);
    * ``faithfulness/road_lerf_auc/<method>``: the same, least relevant first: higher is better;
    * ``faithfulness/road_combined/<method>``: LeRF minus MoRF area, higher is better;
    * ``faithfulness/randomization_spearman/<method>``: the map's rank correlation
      with itself after the top ``randomize_layers`` layers are re-initialised;
      high means the map hardly depends on the weights (NaN: the maps are constant).

    Methods: ``gradcam_<layer>`` per layer, the ``methods`` (CAM variants as
    ``<method>_<layer>`` per layer), ``attention_<block>`` for CBAM spatial
    gates, and the baselines ``random`` and ``centre`` (no randomisation
    score). Image tag ``faithfulness/curves``: the mean curves side by side.
    Text tag ``faithfulness/leaderboard`` (end of fit, TensorBoard only): the
    methods ranked on the last scores (see
    :func:`visualization.ranking.leaderboard_rows`).

    Args:
        layers: Grad-CAM layers, low to high, as names in the model's ``net``; ``None``: the
            network's ``explainable_layers``.
        every_n_epochs: Score every this many training epochs.
        images_per_class: Validation images per class.
        methods: Methods to score beside Grad-CAM (``visualization.methods.METHODS``); the
            default three are cheap. The others multiply the scoring's cost (Score-CAM,
            integrated gradients, occlusion: dozens of passes per image): opt in, or use
            ``explain.py --faithfulness`` offline.
        attention: Score CBAM spatial gates when the model has them.
        steps: Deletion/insertion curve points after the first.
        road_steps: ROAD curve points after the first (0: no ROAD).
        randomize_layers: Top layers re-initialised for the sanity check (0: none).
        seed: Seeds the random map, the order of equal pixels, ROAD's noise and the re-initialised weights.
    """

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        every_n_epochs: int = 5,
        images_per_class: int = 1,
        methods: Sequence[str] = DEFAULT_METHODS,
        attention: bool = True,
        steps: int = 8,
        road_steps: int = 4,
        randomize_layers: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(layers, every_n_epochs, methods)
        self.require_at_least(1, images_per_class=images_per_class, steps=steps)
        self.require_at_least(0, road_steps=road_steps, randomize_layers=randomize_layers)  # 0: off
        self.images_per_class = images_per_class
        self.attention = attention
        self.steps = steps
        self.road_steps = road_steps
        self.randomize_layers = randomize_layers
        self.seed = seed
        self.images: torch.Tensor | None = None
        self.result: FaithfulnessResult | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {} if self.images is None else {"images": self.images}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self.images = state_dict["images"]

    @override
    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not scalar_loggers(trainer):
            return
        if self.images is None:
            probes = choose_probes(trainer, pl_module, self.images_per_class, type(self).__name__)
            if probes is None:
                return
            self.images = probes.images
        result = faithfulness_scores(
            pl_module,
            data_view(trainer, self.images)(self.images),  # what the model sees: permuted if the data are
            self.layers,
            layer_root=layer_root(pl_module),
            methods=self.methods,
            attention=self.attention,
            steps=self.steps,
            road_steps=self.road_steps,
            randomize_layers=self.randomize_layers,
            seed=self.seed,
        )
        self.result = result
        for logger in scalar_loggers(trainer):
            logger.log_metrics(result.means(), step=trainer.global_step)
        if image_writers(trainer):
            figure = faithfulness_curves_figure(result.curves)
            log_picture(trainer, "faithfulness/curves", figure_to_image(figure), trainer.global_step, None)
        self.last_step = trainer.global_step

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)  # scores the final model unless just scored
        if self.result is None or len(self.images) < 2:  # not rank zero, no logger, or no interval to give
            return
        table = leaderboard_table(leaderboard_rows(self.result, seed=self.seed))
        for writer in image_writers(trainer):
            writer.add_text("faithfulness/leaderboard", table, global_step=trainer.global_step)
