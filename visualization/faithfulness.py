"""Explanations with a score: does a saliency map point at what the model really uses?

:func:`faithfulness_scores` computes every map the pictures can show
(Grad-CAM and the CAMs per layer, the attributions on the input pixels of
:data:`visualization.methods.INPUT_METHODS`, CBAM spatial gates where a model
has them) and two maps that know nothing about the model (a random map and a
centre prior), and scores each with the curves of :mod:`visualization.metrics`:

* deletion and insertion areas (RISE);
* ROAD areas, most and least relevant first, combined as the paper recommends
  into ``road_combined`` = LeRF area - MoRF area (higher is better): a removal
  pattern that hurts the model whatever was removed lowers both and cancels out;
* the model-randomisation check: a map's Spearman correlation with itself after
  the top layers are re-initialised; a high one flags a method that does not
  explain the model, a constant map gives none (NaN);
* integrated gradients' completeness gap, where that method is scored.

:mod:`visualization.ranking` ranks the methods on these scores with bootstrap
intervals, :mod:`visualization.faithfulness_tables` writes the tables. No
Lightning import, no global state touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visualization.attributions import attribution_mode, completeness_gap, prepare_inputs, resolve_layers
from visualization.cams import CAMS, capture_activations, gradcam
from visualization.methods import DEFAULT_METHODS, cam_maps, check_methods, input_attributions
from visualization.metrics import (
    auc,
    centre_map,
    deletion_insertion_curve,
    random_map,
    randomized_top_layers,
    rank_correlation,
    road_curve,
)
from visualization.pictures import attention_gates

__all__ = [
    "BASELINES", "CHECKS", "CURVES", "METRICS", "RANKED", "SANITY_LIMIT", "FaithfulnessResult", "faithfulness_scores",
    "method_and_layer", "saliency_maps",
]

CURVES = ("deletion", "insertion", "road", "road_lerf")
METRICS = ("deletion_auc", "insertion_auc", "road_auc", "road_lerf_auc", "road_combined", "randomization_spearman")
# Checks of one method's own promise, shown beside the scores, never ranked: integrated gradients' completeness gap
# (|sum of attributions - logit change| / |logit change|, per image).
CHECKS = ("completeness_gap",)
# Which way each score is better (+1: higher), for ranking; the leaderboard is sorted by the first.
RANKED = {"road_combined": 1, "road_auc": -1, "road_lerf_auc": 1, "deletion_auc": -1, "insertion_auc": 1}
# Maps that know nothing about the model: a map must beat them to count as an explanation.
BASELINES = ("random", "centre")
# A method whose map keeps a mean rank correlation of at least this with the trained
# model's map after randomisation is flagged: its picture hardly depends on the weights.
SANITY_LIMIT = 0.5


@dataclass
class FaithfulnessResult:
    """Per-image scores and mean curves of :func:`faithfulness_scores`.

    Attributes:
        scores: ``{metric: {method: [N] per-image values}}`` with the metrics of
            :data:`METRICS`; ``randomization_spearman`` has no baselines and is
            NaN for an image whose map is constant before or after.
        curves: ``{curve: {method: [S] mean over images}}`` for ``deletion``,
            ``insertion`` and ``road``; point ``k`` of ``S`` has ``k / (S - 1)``
            of the pixels removed (revealed for insertion).
        randomized: Names of the layers re-initialised for the sanity check.
    """

    scores: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    curves: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    randomized: list[str] = field(default_factory=list)

    def means(self) -> dict[str, float]:
        """``{"faithfulness/<metric>/<method>": mean over images}``; NaN images are left out (all NaN: NaN)."""
        return {
            f"faithfulness/{metric}/{method}": float(values.float().nanmean())
            for metric, by_method in self.scores.items()
            for method, values in by_method.items()
        }

    def flagged(self) -> list[str]:
        """Methods whose map hardly changes when the model is randomised (or is constant): not explanations."""
        spearman = self.scores.get("randomization_spearman", {})
        return [m for m, v in spearman.items() if not float(v.nanmean()) < SANITY_LIMIT]


def saliency_maps(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    layers: Mapping[str, nn.Module],
    methods: Sequence[str],
    gates: Mapping[str, nn.Module] | None = None,
    gaps: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Every map of ``methods``, as ``[N, H, W]`` saliency (higher: more important).

    Args:
        model: Classifier (left as found).
        images: ``[N, C, H, W]`` as it takes them.
        targets: Class per image.
        layers: ``{name: module}`` for Grad-CAM and the CAM variants, low to
            high; the last one also masks guided Grad-CAM.
        methods: Names of :data:`visualization.methods.METHODS`. The signed
            ``[N, C, H, W]`` attributions of the input methods count by
            magnitude summed over channels, but occlusion's by its signed sum:
            it is the logit's drop when the pixels are hidden, and a pixel
            whose hiding *raises* the logit is evidence against the class.
        gates: ``{name: sigmoid gate}`` of CBAM spatial attention; channel
            gates (``[N, C, 1, 1]``) have no spatial map and are skipped.
        gaps: If given, receives ``{"integrated_gradients": [N] completeness gap}``
            (see :func:`visualization.attributions.completeness_gap`) when that method is among ``methods``.

    Returns:
        ``{"gradcam_<layer>": ..., "<cam variant>_<layer>": ..., <input method>: ...,
        "attention_<gate block>": ...}``, on the CPU.

    Raises:
        ValueError: An unknown method, or one that does not apply (see ``check_methods``).
    """
    check_methods(methods, model)
    size = tuple(images.shape[-2:])
    maps = {f"gradcam_{name}": cam for name, cam in gradcam(model, images, targets, layers).items()}
    variants = cam_maps(model, images, targets, layers, methods)
    maps |= {f"{method}_{layer}": cam for (method, layer), cam in variants.items()}
    last = list(layers.values())[-1]
    for method, attribution in input_attributions(model, images, targets, methods, last).items():
        maps[method] = attribution.sum(dim=1) if method == "occlusion" else attribution.abs().sum(dim=1)
        if method == "integrated_gradients" and gaps is not None:  # the one method with a completeness promise
            gaps[method] = completeness_gap(model, images, targets, attribution)
    for name, gate in capture_activations(model, images, gates or {}).items():
        if gate.shape[-2:] != (1, 1):
            maps[f"attention_{name.removesuffix('.gate')}"] = F.interpolate(
                gate.float().mean(1, keepdim=True), size=size, mode="bilinear", align_corners=False
            )[:, 0]  # the channel mean of a gate over channels and positions (GE, coordinate attention)
    return maps


def method_and_layer(name: str) -> tuple[str, str]:
    """Split a map name of :func:`saliency_maps` into the method and its layer (``""`` for input methods).

    ``gradcam_pp_conv3`` -> ``("gradcam_pp", "conv3")``; ``attention_cbam.layer4.spatial`` ->
    ``("attention", "cbam.layer4.spatial")``; ``occlusion`` -> ``("occlusion", "")``.
    """
    for method in sorted(("attention", *CAMS), key=len, reverse=True):
        if name.startswith(f"{method}_"):
            return method, name.removeprefix(f"{method}_")
    return name, ""


def faithfulness_scores(
    model: nn.Module,
    images: Tensor,
    layers: Sequence[str],
    layer_root: nn.Module | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    attention: bool = True,
    steps: int = 16,
    road_steps: int = 8,
    fill: Tensor | float | str | None = "blur",
    randomize_layers: int = 1,
    seed: int = 0,
) -> FaithfulnessResult:
    """Deletion, insertion and ROAD (both orders) areas and the randomisation check for every map of ``images``.

    Each image is explained, and scored, for the class the model predicts on it.

    Args:
        model: Classifier taking ``images``; left exactly as found (weights,
            flags, ``requires_grad``, RNG state).
        images: ``[N, C, H, W]`` as the model takes them.
        layers: Grad-CAM (and CAM variant) layers, low to high, as names in ``layer_root``.
        layer_root: Where names resolve (``model.net`` for ours); default ``model``.
        methods: Methods beside Grad-CAM (see :func:`saliency_maps`).
        attention: Score CBAM spatial gates where the model has them.
        steps: Points of the deletion and insertion curves after the first.
        road_steps: Points of each ROAD curve after the first (0: no ROAD).
        fill: What a removed pixel becomes (see :func:`deletion_insertion_curve`):
            the blurred image by default, or a value per channel.
        randomize_layers: Top layers re-initialised for the sanity check (0: no check).
        seed: Seeds the random map, the order of equal pixels, ROAD's noise and the re-initialised weights.

    Returns:
        A :class:`FaithfulnessResult`; methods are the map names of
        :func:`saliency_maps` plus ``random`` and ``centre``.
    """
    root = model if layer_root is None else layer_root
    named = resolve_layers(root, layers)
    gates = attention_gates(root) if attention else {}
    with attribution_mode(model), torch.no_grad():
        x = prepare_inputs(images, model)
        targets = model(x).argmax(dim=1)
    gaps: dict[str, Tensor] = {}
    maps = saliency_maps(model, x, targets, named, methods, gates, gaps)
    count, size = x.shape[0], tuple(x.shape[-2:])
    baselines = {"random": random_map(count, size, torch.Generator().manual_seed(seed)), "centre": centre_map(count, size)}
    result = FaithfulnessResult()
    runs = {
        "deletion": lambda m: deletion_insertion_curve(model, x, m, targets, steps, "delete", fill, seed),
        "insertion": lambda m: deletion_insertion_curve(model, x, m, targets, steps, "insert", fill, seed),
    }
    if road_steps > 0:
        runs["road"] = lambda m: road_curve(model, x, m, targets, road_steps, fill, seed=seed)
        runs["road_lerf"] = lambda m: road_curve(model, x, m, targets, road_steps, fill, seed=seed, order="lerf")
    for curve, run in runs.items():
        per_method = {method: run(m) for method, m in {**maps, **baselines}.items()}
        result.curves[curve] = {method: c.mean(dim=0) for method, c in per_method.items()}
        result.scores[f"{curve}_auc"] = {method: auc(c) for method, c in per_method.items()}
    if road_steps > 0:
        morf, lerf = result.scores["road_auc"], result.scores["road_lerf_auc"]
        result.scores["road_combined"] = {method: lerf[method] - morf[method] for method in morf}
    if randomize_layers > 0:
        with randomized_top_layers(root, randomize_layers, seed) as names:
            randomized = saliency_maps(model, x, targets, named, methods, gates)
        result.randomized = names
        result.scores["randomization_spearman"] = {m: rank_correlation(maps[m], randomized[m]) for m in maps}
    if gaps:
        result.scores["completeness_gap"] = gaps
    return result
