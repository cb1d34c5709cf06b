"""Explanations with a score: does a saliency map point at what the model really uses?

Three checks, tensors in, numbers out, for every map the pictures can show
(Grad-CAM and its variants per layer, the attributions on the input pixels of
:data:`visualization.methods.INPUT_METHODS`, and CBAM spatial gates where a
model has them) and for two maps that know nothing about the model, a random
map and a centre prior:

* Deletion and insertion (Petsiuk et al., RISE, https://arxiv.org/abs/1806.07421).
  Pixels are removed (replaced by ``fill``, the dataset mean) or revealed (on a
  canvas of ``fill``) from most to least salient, and the probability of the
  class the model predicted on the clean image is recorded. A faithful map
  makes the deletion curve fall fast (low area under it) and the insertion
  curve rise fast (high area).
* ROAD (Rong et al., https://arxiv.org/abs/2202.00449): deletion where a removed
  pixel is not set to a constant but imputed from its neighbours (noisy linear
  imputation), so the removal pattern itself leaks less of where the pixels
  were. Most relevant first (MoRF, lower area is better) and least relevant
  first (LeRF: the map's least salient pixels go first, so a faithful map keeps
  the prediction long; higher is better). As the paper recommends, the two are
  combined into one score, the LeRF area minus the MoRF area (``road_combined``,
  higher is better): a removal pattern that hurts the model whatever was
  removed lowers both areas and cancels out.
* Model randomisation (Adebayo et al., https://arxiv.org/abs/1810.03292): the
  top layers of the network are re-initialised and each map recomputed; its
  Spearman rank correlation with the trained model's map says how much the map
  depends on what the model learned. A high correlation flags a method that
  does not explain the model; a constant map gives no correlation at all (NaN).

:func:`leaderboard_rows` ranks the methods on these scores with their bootstrap
intervals: methods whose intervals overlap share a rank, and a method that fails
the randomisation check is never ranked.

Libraries: Captum's ``captum.metrics`` only has infidelity and sensitivity, and
Quantus (which has all three) would pull in a second deep-learning stack, so
the curves and the imputation are written here; the rank correlation is
torchmetrics' ``spearman_corrcoef``. No Lightning import, no global state
touched: models are run inside ``attribution_mode`` and random numbers come
from explicit generators.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional import spearman_corrcoef
from torchvision.transforms.functional import gaussian_blur

from visualization import tables
from visualization.attributions import attribution_mode, completeness_gap, prepare_inputs, resolve_layers
from visualization.cams import CAMS, capture_activations, gradcam
from visualization.methods import DEFAULT_METHODS, cam_maps, check_methods, input_attributions
from visualization.pictures import attention_gates

__all__ = [
    "BASELINES",
    "CURVES",
    "FaithfulnessResult",
    "CHECKS",
    "METRICS",
    "SANITY_LIMIT",
    "auc",
    "bootstrap_interval",
    "centre_map",
    "deletion_insertion_curve",
    "faithfulness_scores",
    "leaderboard_rows",
    "leaderboard_table",
    "linear_impute",
    "markdown_table",
    "method_and_layer",
    "random_map",
    "randomized_top_layers",
    "rank_correlation",
    "road_curve",
    "saliency_maps",
    "shared_ranks",
    "summary_rows",
]

# The curves and the per-image scores (area under each curve; ROAD's LeRF minus MoRF area; Spearman
# after randomisation). ``road`` is ROAD most relevant first (its tags predate the LeRF order).
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

# ROAD's neighbour weights (its NoisyLinearImputer): 1/6 for the 4 direct, 1/12 for the 4 diagonal neighbours.
_ROAD_KERNEL = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
# Pull of each imputed pixel towards ``fill``: keeps the system solvable when no known pixel
# is left (everything removed) and barely moves a pixel that has known pixels around it.
_ANCHOR = 1e-5
# The "blur" fill: a Gaussian of this many pixels (on 32x32 images it leaves colour
# blobs, no edges or texture), its kernel wide enough to hold +-2.5 sigma.
BLUR_SIGMA = 4.0
_BLUR_KERNEL = 21
# Perturbed images per forward pass: bounds memory at any number of images and steps.
_CHUNK = 512


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


def random_map(count: int, size: tuple[int, int], generator: torch.Generator | None = None) -> Tensor:
    """Uniform noise ``[count, H, W]``: the chance-level ordering of pixels."""
    return torch.rand(count, *size, generator=generator)


def centre_map(count: int, size: tuple[int, int]) -> Tensor:
    """``[count, H, W]``, highest at the centre, falling with the distance from it.

    The prior that objects sit in the middle of a photo: a map must beat it to
    show that it knows more than where photographers aim.
    """
    height, width = size
    rows = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    cols = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    distance = (rows[:, None] ** 2 + cols[None, :] ** 2).sqrt()
    return (1 - distance / distance.max()).expand(count, height, width).clone()


def removal_masks(maps: Tensor, fractions: Tensor, seed: int = 0) -> Tensor:
    """``[N, S, H, W]`` booleans: the top ``fraction`` of each map's pixels, most salient first.

    Equal values are taken in a random (seeded) order: the map says nothing
    about their order, and a fixed one (say, line by line from the top) would
    be a removal pattern of its own. Grad-CAM's ReLU leaves many exact zeros;
    a constant map is removed like the random map.
    """
    n, height, width = maps.shape
    flat = maps.detach().float().flatten(1).cpu()
    shuffle = torch.rand(flat.shape, generator=torch.Generator().manual_seed(seed)).argsort(dim=1)
    order = shuffle.gather(1, flat.gather(1, shuffle).argsort(dim=1, descending=True, stable=True))
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(height * width).expand(n, -1).contiguous())
    counts = (fractions * height * width).round().long()
    return (rank[:, None, :] < counts[None, :, None]).view(n, len(fractions), height, width)


def deletion_insertion_curve(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Tensor | None = None,
    steps: int = 16,
    mode: str = "delete",
    fill: Tensor | float | str | None = "blur",
    seed: int = 0,
) -> Tensor:
    """Probability of the target class as pixels are removed (or revealed), most salient first.

    Args:
        model: Classifier taking ``images`` and returning logits; run in eval
            mode and left as found.
        images: ``[N, C, H, W]`` as the model takes them (``[0, 1]`` for ours).
        maps: ``[N, H, W]`` saliency, higher is more important.
        targets: Class per image; ``None``: the class predicted on the clean image.
        steps: Curve points after the first; point ``k`` has ``k / steps`` of
            the pixels removed (``delete``) or revealed (``insert``).
        mode: ``delete`` (start from the image, replace pixels by ``fill``) or
            ``insert`` (start from a canvas of ``fill``, put pixels back).
        fill: What a removed pixel becomes: ``"blur"`` (default) the same
            pixel of the image blurred with a Gaussian of :data:`BLUR_SIGMA`
            pixels, as RISE's insertion canvas; a value per channel ``[C]``
            or one number (e.g. the dataset mean, 0 after normalisation);
            ``None``: each channel's mean over ``images``. Why blur: pixels
            scattered at a constant colour are a pattern the model never saw
            in training, and on the CIFAR-10 CNN they destroy the prediction
            faster than any real evidence does, so a random map "wins"
            deletion (see docs/pictures.md).
        seed: Seeds the order of equally salient pixels (see :func:`removal_masks`).

    Returns:
        ``[N, steps + 1]`` probabilities on the CPU.
    """
    if mode not in ("delete", "insert"):
        raise ValueError(f"mode={mode!r} must be 'delete' or 'insert'.")
    fractions = torch.linspace(0, 1, steps + 1)
    with attribution_mode(model), torch.no_grad():
        x = prepare_inputs(images, model)
        target = _targets(model, x, targets)
        masks = removal_masks(maps, fractions, seed).to(x.device)[:, :, None]  # [N, S, 1, H, W]
        canvas = _fill_like(x, fill)[:, None]
        clean = x[:, None]
        perturbed = torch.where(masks, canvas, clean) if mode == "delete" else torch.where(masks, clean, canvas)
        return _probabilities(model, perturbed, target)


def linear_impute(
    images: Tensor,
    removed: Tensor,
    fill: Tensor | float | None = None,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    iterations: int = 200,
    tolerance: float = 1e-4,
) -> Tensor:
    """ROAD's noisy linear imputation: each removed pixel becomes the weighted mean of its 8 neighbours.

    The removed pixels of each image and channel solve one sparse linear system
    (a discrete Laplace equation with the kept pixels as boundary values),
    batched conjugate gradients over all images and channels at once: one 3x3
    convolution per iteration instead of a dense 1024 x 1024 solve per image.

    Args:
        images: ``[N, C, H, W]``.
        removed: ``[N, H, W]`` or ``[N, 1, H, W]`` booleans, True where a pixel is removed.
        fill: Where nothing known is reachable (every pixel removed) the values
            tend to this (per channel ``[C]`` or a number; ``None``: channel mean).
        noise: Standard deviation of Gaussian noise added to the imputed pixels
            (ROAD uses 0.01 on normalised images; we work on ``[0, 1]`` images).
        generator: For the noise.
        iterations: Upper bound on conjugate-gradient steps (they stop at ``tolerance``).
        tolerance: Residual norm per image and channel at which to stop.

    Returns:
        ``[N, C, H, W]``: the kept pixels unchanged, the removed ones imputed.
    """
    x = images.detach().float()
    mask = removed.reshape(x.shape[0], 1, *x.shape[-2:]).to(x.device).float()
    kernel = _ROAD_KERNEL.to(x).expand(x.shape[1], 1, 3, 3)

    def neighbours(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, padding=1, groups=x.shape[1])

    degree = neighbours(torch.ones_like(x))  # weights of the in-image neighbours
    anchor = _fill_like(x, fill)

    def system(v: Tensor) -> Tensor:  # A v on the removed pixels: (degree + anchor) v - neighbours(v)
        return ((degree + _ANCHOR) * v - neighbours(v * mask)) * mask

    b = (neighbours(x * (1 - mask)) + _ANCHOR * anchor) * mask
    solution = anchor * mask
    residual = b - system(solution)
    direction = residual.clone()
    energy = residual.square().sum(dim=(2, 3), keepdim=True)
    for _ in range(iterations):
        if energy.max().sqrt() < tolerance:
            break
        pushed = system(direction)
        step = energy / (direction * pushed).sum(dim=(2, 3), keepdim=True).clamp_min(1e-30)
        solution = solution + step * direction
        residual = residual - step * pushed
        new_energy = residual.square().sum(dim=(2, 3), keepdim=True)
        direction = residual + (new_energy / energy.clamp_min(1e-30)) * direction
        energy = new_energy
    if noise > 0:
        solution = solution + noise * torch.randn(x.shape, generator=generator).to(x) * mask
    return torch.where(mask.bool(), solution, x)


def road_curve(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Tensor | None = None,
    steps: int = 8,
    fill: Tensor | float | None = None,
    noise: float = 0.01,
    seed: int = 0,
    order: str = "morf",
) -> Tensor:
    """ROAD: like deletion, but removed pixels are imputed by :func:`linear_impute`.

    Args:
        model, images, maps, targets, fill: As in :func:`deletion_insertion_curve`.
        steps: Curve points after the first; point ``k`` has ``k / steps`` removed.
        noise: Imputation noise (see :func:`linear_impute`).
        seed: Seeds the noise and the order of equal pixels, so a score is the same on every call.
        order: ``"morf"``: most relevant pixels removed first (a faithful map's
            curve falls fast); ``"lerf"``: least relevant first (it stays high).

    Returns:
        ``[N, steps + 1]`` probabilities of the target class, on the CPU.
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order={order!r} must be 'morf' (most relevant first) or 'lerf' (least relevant first).")
    fractions = torch.linspace(0, 1, steps + 1)
    with attribution_mode(model), torch.no_grad():
        x = prepare_inputs(images, model)
        target = _targets(model, x, targets)
        ranked = maps if order == "morf" else -maps.detach().float()
        masks = removal_masks(ranked, fractions, seed).to(x.device)  # [N, S, H, W]
        n, s = masks.shape[:2]
        repeated = x[:, None].expand(-1, s, -1, -1, -1).reshape(n * s, *x.shape[1:])
        generator = torch.Generator().manual_seed(seed)
        anchor = None if isinstance(fill, str) else fill  # imputation needs no blur: only a value where nothing is known
        imputed = linear_impute(repeated, masks.reshape(n * s, *x.shape[-2:]), anchor, noise, generator)
        return _probabilities(model, imputed.to(x.dtype).view(n, s, *x.shape[1:]), target)


def auc(curve: Tensor) -> Tensor:
    """Area under curves sampled at equal steps over ``[0, 1]`` (trapezoid rule).

    Args:
        curve: ``[..., S]`` with ``S >= 2`` points.

    Returns:
        ``[...]``; a flat curve at height ``p`` has area ``p``.
    """
    return torch.trapezoid(curve.float(), dx=1.0 / (curve.shape[-1] - 1), dim=-1)


def rank_correlation(maps_a: Tensor, maps_b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps (torchmetrics' ``spearman_corrcoef``).

    Args:
        maps_a: ``[N, ...]``.
        maps_b: Same shape.

    Returns:
        ``[N]`` in ``[-1, 1]``; NaN where either map is constant (no ranking
        to compare: the check cannot tell anything about such a map).
    """
    a = maps_a.detach().float().flatten(1).cpu()
    b = maps_b.detach().float().flatten(1).cpu()
    if a.shape != b.shape:
        raise ValueError(f"maps_a {tuple(maps_a.shape)} and maps_b {tuple(maps_b.shape)} must have the same shape.")
    constant = (a.amax(1) - a.amin(1) <= 1e-12) | (b.amax(1) - b.amin(1) <= 1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchmetrics warns about the constant maps handled here
        rho = spearman_corrcoef(a.T.contiguous(), b.T.contiguous()) if a.shape[0] > 1 else spearman_corrcoef(a[0], b[0])[None]
    return torch.where(constant, torch.full_like(rho, math.nan), rho)


def bootstrap_interval(
    values: Tensor, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over images.

    Args:
        values: ``[N]`` per-image values (e.g. Grad-CAM's deletion AUC minus
            the random map's on the same image: a paired difference). NaNs are dropped.
        confidence: Coverage of the interval.
        resamples: Bootstrap resamples.
        seed: Seeds the resampling.

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: Fewer than 2 values: there is no spread to resample.
    """
    values = values.detach().double().flatten().cpu()
    values = values[~values.isnan()]
    if values.numel() < 2:
        raise ValueError(f"A bootstrap interval needs at least 2 values, got {values.numel()}.")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(values.numel(), (resamples, values.numel()), generator=generator)
    means = values[picks].mean(dim=1)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=means.dtype))
    return float(low), float(high)


@contextmanager
def randomized_top_layers(model: nn.Module, count: int = 1, seed: int = 0) -> Iterator[list[str]]:
    """Re-initialise the top ``count`` learnable layers of ``model`` for the duration of the block.

    Layers are the modules with their own ``weight`` (convolutions, linear
    layers, attention convs), in ``named_modules`` order, normalisation
    layers left out; the top is the last (the logits layer first). Each is
    reset with its own ``reset_parameters`` (PyTorch's default init), run on a
    CPU copy of the layer under a forked and seeded CPU generator, and the new
    values are copied in: no generator of any device is left changed (a
    ``torch.manual_seed`` would reseed every CUDA generator too, resetting the
    training stream after each scoring), and a seed gives the same weights on
    every device. On exit, also after an exception, the trained
    values are copied back into the same parameter objects, so an optimiser
    holding them notices nothing. (In place rather than on a deep copy: a
    LightningModule's copy would copy its trainer.)

    Args:
        model: The network (e.g. the classifier's ``net``).
        count: How many layers, from the top.
        seed: Seeds the new weights.

    Yields:
        The dotted names of the re-initialised layers, top first.
    """
    # Normalisation layers keep their weights: public classes, not torch's private _NormBase.
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
             nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "weight", None), nn.Parameter) and hasattr(module, "reset_parameters")
        and not isinstance(module, norms)
    ][::-1][:count]
    saved = [[p.detach().clone() for p in module.parameters(recurse=False)] for _, module in layers]
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.default_generator.manual_seed(seed)  # the CPU's only; fork_rng restores it
            for _, module in layers:
                fresh = copy.deepcopy(module).cpu()
                fresh.reset_parameters()
                for p, value in zip(module.parameters(recurse=False), fresh.parameters(recurse=False)):
                    p.copy_(value)
        yield [name for name, _ in layers]
    finally:
        with torch.no_grad():
            for (_, module), values in zip(layers, saved):
                for p, value in zip(module.parameters(recurse=False), values):
                    p.copy_(value)


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
                gate.float(), size=size, mode="bilinear", align_corners=False
            )[:, 0]
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


def _targets(model: nn.Module, x: Tensor, targets: Tensor | None) -> Tensor:
    """The given classes on x's device, or the model's prediction on the clean images."""
    if targets is None:
        return model(x).argmax(dim=1)
    return torch.as_tensor(targets, device=x.device).long().flatten().clone()


def _fill_like(x: Tensor, fill: Tensor | float | str | None) -> Tensor:
    """The removed-pixel values: ``x`` blurred, or a value per channel broadcast to ``x``'s shape and dtype."""
    if isinstance(fill, str):
        if fill != "blur":
            raise ValueError(f"fill={fill!r}: the only named fill is 'blur'.")
        return gaussian_blur(x, kernel_size=_BLUR_KERNEL, sigma=BLUR_SIGMA)
    if fill is None:
        value = x.detach().float().mean(dim=(0, 2, 3))
    else:
        value = torch.as_tensor(fill, dtype=torch.float32).flatten()
    return value.to(device=x.device, dtype=x.dtype).view(1, -1, 1, 1).expand_as(x)


def _probabilities(model: nn.Module, perturbed: Tensor, targets: Tensor) -> Tensor:
    """Softmax probability of ``targets[i]`` for every ``perturbed[i, s]``, in chunks; ``[N, S]`` on the CPU."""
    n, s = perturbed.shape[:2]
    flat = perturbed.reshape(n * s, *perturbed.shape[2:])
    wanted = targets.repeat_interleave(s)
    probs = [
        model(chunk).float().softmax(dim=1).gather(1, labels[:, None])[:, 0]
        for chunk, labels in zip(flat.split(_CHUNK), wanted.split(_CHUNK))
    ]
    return torch.cat(probs).view(n, s).cpu()


def summary_rows(result: FaithfulnessResult, confidence: float = 0.95, seed: int = 0) -> list[dict[str, object]]:
    """One row per method: each metric's mean over images and its bootstrap interval, for a table.

    Besides the metrics, ``deletion_vs_random``, ``insertion_vs_random`` and
    ``road_vs_random`` are the mean paired difference to the random map on the
    same images, with its interval: an interval that excludes 0 says the map beats chance on these
    images. ``flagged`` marks a map that survives randomisation (see
    :data:`SANITY_LIMIT`) or is constant.

    Returns:
        ``[{"method": ..., "<metric>": mean, "<metric>_low": ..., "<metric>_high": ..., ...}]``
        with the model's maps first, then the baselines; NaN where a value does not apply.
    """
    methods = list(next(iter(result.scores.values())))
    flagged = set(result.flagged())
    rows = []
    for method in methods:
        row: dict[str, object] = {"method": method}
        for metric, by_method in result.scores.items():
            row.update(_mean_and_interval(metric, by_method.get(method), confidence, seed))
        for curve in (c for c in CURVES if f"{c}_auc" in result.scores):
            values = result.scores[f"{curve}_auc"]
            difference = values[method] - values["random"] if method != "random" else None
            row.update(_mean_and_interval(f"{curve}_vs_random", difference, confidence, seed))
        row["flagged"] = method in flagged if method not in BASELINES else ""
        rows.append(row)
    return rows


def _mean_and_interval(name: str, values: Tensor | None, confidence: float, seed: int) -> dict[str, float]:
    """``{name, name_low, name_high}``: the mean and its bootstrap interval (NaN where not computable)."""
    if values is None or int((~values.isnan()).sum()) < 2:
        mean = math.nan if values is None else float(values.nanmean())
        return {name: mean, f"{name}_low": math.nan, f"{name}_high": math.nan}
    low, high = bootstrap_interval(values, confidence, seed=seed)
    return {name: float(values.nanmean()), f"{name}_low": low, f"{name}_high": high}


def markdown_table(rows: Sequence[Mapping[str, object]]) -> str:
    """The rows of :func:`summary_rows` as a Markdown table, ``mean [low, high]`` per cell."""
    columns = [*(m for m in (*METRICS, *CHECKS) if m in rows[0]),
               *(f"{c}_vs_random" for c in CURVES if f"{c}_vs_random" in rows[0])]
    cells = [
        [row["method"], *(_cell(row, column) for column in columns), {True: "yes", False: "no"}.get(row["flagged"], "")]
        for row in rows
    ]
    return tables.markdown_table(["method", *columns, "flagged"], cells) + "\n"


def _cell(row: Mapping[str, object], column: str) -> str:
    mean, low, high = (float(row[k]) for k in (column, f"{column}_low", f"{column}_high"))
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if math.isnan(low) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def shared_ranks(intervals: Sequence[tuple[float, float, float]], higher_is_better: bool) -> list[int]:
    """Ranks ``1, 1, 3, ...`` of ``(mean, low, high)`` scores where overlapping intervals share a rank.

    The scores are taken best mean first; one whose interval overlaps those of
    the group before it (directly, or through a chain of overlaps) joins that
    group and its rank; one that does not starts a new group, ranked by how many
    scores come before it. So every method of rank ``r`` is separated from every
    method of a later rank by its interval, and no two methods whose intervals
    overlap get different ranks. A missing interval (NaN) counts as the mean alone.

    Args:
        intervals: ``(mean, low, high)`` per method; means must not be NaN.
        higher_is_better: Direction of the score.

    Returns:
        The rank of each method, in the order given.
    """
    sign = 1 if higher_is_better else -1
    order = sorted(range(len(intervals)), key=lambda i: -sign * intervals[i][0])
    ranks = [0] * len(intervals)
    group_low = group_high = math.nan
    group_rank = 0
    for position, i in enumerate(order, start=1):
        mean, low, high = intervals[i]
        low, high = (mean, mean) if math.isnan(low) else (low, high)
        if high < group_low or low > group_high or math.isnan(group_low):  # apart from the group so far
            group_rank, group_low, group_high = position, low, high
        else:
            group_low, group_high = min(group_low, low), max(group_high, high)
        ranks[i] = group_rank
    return ranks


def leaderboard_rows(result: FaithfulnessResult, confidence: float = 0.95, seed: int = 0) -> list[dict[str, object]]:
    """The methods ranked on each score of :data:`RANKED`, one row per method and layer, best first.

    Each score gets its mean over images, its bootstrap interval and a rank from
    :func:`shared_ranks` among the methods that pass the randomisation check.
    A method that fails it (see :meth:`FaithfulnessResult.flagged`) keeps its
    scores but gets no rank, so it is never ranked first; nor do the baselines,
    which know nothing of the model. Rows: the ranked methods by their rank on
    the first score present (``road_combined``), then the flagged ones, then
    the baselines.

    Returns:
        ``[{"method", "layer", "flagged", "rank", "<score>", "<score>_low",
        "<score>_high", "<score>_rank", ...}]``; ranks are ``None`` where not ranked.
    """
    scores = [metric for metric in RANKED if metric in result.scores]
    names = list(next(iter(result.scores.values())))
    flagged = set(result.flagged())
    rows = []
    for name in names:
        method, layer = method_and_layer(name)
        row: dict[str, object] = {"method": method, "layer": layer, "flagged": name in flagged}
        for metric in [*scores, "randomization_spearman", *(c for c in CHECKS if c in result.scores)]:
            row.update(_mean_and_interval(metric, result.scores.get(metric, {}).get(name), confidence, seed))
        rows.append(row)
    ranked = [row for row, name in zip(rows, names) if name not in BASELINES and not row["flagged"]]
    for metric in scores:
        usable = [row for row in ranked if not math.isnan(row[metric])]
        intervals = [(row[metric], row[f"{metric}_low"], row[f"{metric}_high"]) for row in usable]
        for row in rows:
            row[f"{metric}_rank"] = None
        for row, rank in zip(usable, shared_ranks(intervals, RANKED[metric] > 0)):
            row[f"{metric}_rank"] = rank
    first = scores[0] if scores else None
    for row in rows:
        row["rank"] = row.get(f"{first}_rank")

    def position(row: dict[str, object]) -> tuple:
        unranked = row["rank"] is None
        group = 2 if row["method"] in BASELINES else int(unranked)
        mean = row.get(first, math.nan) if first else math.nan
        return group, row["rank"] or 0, -RANKED.get(first, 1) * (mean if not math.isnan(mean) else -math.inf)

    return sorted(rows, key=position)


def leaderboard_table(rows: Sequence[Mapping[str, object]]) -> str:
    """The rows of :func:`leaderboard_rows` as Markdown: ``mean [low, high] (rank)`` per score."""
    scores = [metric for metric in RANKED if metric in rows[0]]
    checks = [check for check in CHECKS if check in rows[0]]
    columns = ["rank", "method", "layer", *scores, "randomization_spearman", *checks, "flagged"]
    cells = []
    for row in rows:
        baseline = row["method"] in BASELINES
        rank = "baseline" if baseline else "-" if row["rank"] is None else str(row["rank"])
        ranked = [_cell(row, m) + ("" if row[f"{m}_rank"] is None else f" ({row[f'{m}_rank']})") for m in scores]
        flag = "" if baseline else {True: "yes", False: "no"}[bool(row["flagged"])]
        shown = [_cell(row, m) for m in ("randomization_spearman", *checks)]
        cells.append([rank, row["method"], row["layer"] or "-", *ranked, *shown, flag])
    return tables.markdown_table(columns, cells) + "\n"
