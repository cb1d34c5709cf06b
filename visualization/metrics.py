"""Scores of saliency maps: does the model use what a map shows, and does a map point at the object?

Tensors in, numbers out, for any ``[N, H, W]`` map:

* Deletion and insertion (Petsiuk et al., RISE, https://arxiv.org/abs/1806.07421).
  Pixels are removed (replaced by ``fill``, the blurred image by default) or
  revealed (on a canvas of ``fill``) from most to least salient, and the
  probability of the class the model predicted on the clean image is
  recorded. A faithful map makes the deletion curve fall fast (low area under
  it) and the insertion curve rise fast (high area).
* ROAD (Rong et al., https://arxiv.org/abs/2202.00449): deletion where a removed
  pixel is not set to a constant but imputed from its neighbours (noisy linear
  imputation, :func:`linear_impute`), so the removal pattern itself leaks less
  of where the pixels were; most relevant first (MoRF) or least relevant first (LeRF).
* Model randomisation (Adebayo et al., https://arxiv.org/abs/1810.03292):
  :func:`randomized_top_layers` re-initialises the top layers for a block, and
  :func:`rank_correlation` compares a map before and after.
* The pointing game (:func:`pointing_game`): does the map peak on the object?

Captum's ``captum.metrics`` only has infidelity and sensitivity, and Quantus
(which has these) would pull in a second deep-learning stack, so the curves and
the imputation are written here; the rank correlation is torchmetrics'
``spearman_corrcoef``. No Lightning import, no global state touched: models
run inside ``attribution_mode`` and random numbers come from explicit generators.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional import spearman_corrcoef
from torchvision.transforms.functional import gaussian_blur

from visualization.attributions import CHUNK, EPS, attribution_mode, prepare_inputs

__all__ = [
    "BLUR_SIGMA", "auc", "centre_map", "deletion_insertion_curve", "linear_impute", "pointing_game", "random_map",
    "randomized_top_layers", "rank_correlation", "removal_masks", "road_curve",
]

# ROAD's neighbour weights (its NoisyLinearImputer): 1/6 for the 4 direct, 1/12 for the 4 diagonal neighbours.
_ROAD_KERNEL = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
# Pull of each imputed pixel towards ``fill``: keeps the system solvable when no known pixel
# is left (everything removed) and barely moves a pixel that has known pixels around it.
_ANCHOR = 1e-5
# The "blur" fill: a Gaussian of this many pixels (on 32x32 images it leaves colour
# blobs, no edges or texture), its kernel wide enough to hold +-2.5 sigma.
BLUR_SIGMA = 4.0
_BLUR_KERNEL = 21


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
        for chunk, labels in zip(flat.split(CHUNK), wanted.split(CHUNK))
    ]
    return torch.cat(probs).view(n, s).cpu()


def pointing_game(cams: Tensor, masks: Tensor) -> float:
    """Share of images whose CAM maximum falls inside the object mask.

    The pointing game (Zhang et al., https://arxiv.org/abs/1608.00507) is a
    cheap faithfulness check: a map that peaks on the background hints at a
    shortcut. A constant map (e.g. all zeros) does not point anywhere and
    counts as a miss; ties between maxima go to the first in row-major order.

    Args:
        cams: ``[N, H, W]`` saliency maps.
        masks: ``[N, H, W]`` boolean object masks of the same size.

    Returns:
        Hits divided by ``N``, in ``[0, 1]``.

    Raises:
        ValueError: The shapes differ, are not ``[N, H, W]``, or ``N`` is 0.
    """
    if cams.dim() != 3 or cams.shape != masks.shape:
        raise ValueError(
            f"cams {tuple(cams.shape)} and masks {tuple(masks.shape)} must both "
            "be [N, H, W] with the same shape.\n"
            "HINT: upsample the CAMs to the mask size (gradcam() returns input size)."
        )
    if cams.shape[0] == 0:
        raise ValueError("pointing_game needs at least one image, got 0.")
    flat = cams.detach().float().flatten(1)
    peak = flat.argmax(dim=1)
    hit = masks.flatten(1).bool().gather(1, peak[:, None])[:, 0]
    pointing = (flat.max(dim=1).values - flat.min(dim=1).values) > EPS
    return (hit & pointing).float().mean().item()
