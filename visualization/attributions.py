"""Attributions on the input pixels, and what every explanation method shares: tensors in, tensors out.

Everything here is safe to call from inside Lightning's validation, test and
predict loops, which run under ``torch.inference_mode()``: the functions switch
autograd back on for their own work, run the model in ``eval()`` and leave the
model exactly as they found it (train flags, ``requires_grad``, ``.grad``, RNG
state). Forward and backward hooks are always removed, also when the forward
pass raises.

The shared part: :func:`attribution_mode`, :func:`prepare_inputs`,
:func:`resolve_layers`, :func:`resolve_targets`, :func:`normalize_per_image`.
The methods on the input pixels (:data:`INPUT_ATTRIBUTIONS`), all Captum's:

* Guided backpropagation (Springenberg et al., https://arxiv.org/abs/1412.6806)
  and deconvolution (Zeiler & Fergus, https://arxiv.org/abs/1311.2901): fine,
  input-resolution detail, but not class-discriminative on their own.
* Guided Grad-CAM: guided backpropagation masked by Grad-CAM.
* Integrated gradients (Sundararajan et al., https://arxiv.org/abs/1703.01365)
  with its completeness check (:func:`completeness_gap`), SmoothGrad (Smilkov
  et al., https://arxiv.org/abs/1706.03825, ``NoiseTunnel`` over ``Saliency``)
  and occlusion (Zeiler & Fergus).

The CAM family (Grad-CAM and its variants) is :mod:`visualization.cams`.

Guided backpropagation and deconvolution override the gradient of
``nn.ReLU`` *modules* only; a model that calls ``F.relu`` in ``forward`` gets
plain gradients through those activations.

No Lightning import: these are plain functions over ``nn.Module``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import Tensor, nn


__all__ = [
    "IG_MAX_STEPS",
    "IG_STEPS",
    "IG_TOLERANCE",
    "INPUT_ATTRIBUTIONS",
    "SMOOTHGRAD_SAMPLES",
    "attribution_mode",
    "completeness_gap",
    "deconvolution",
    "guided_backprop",
    "guided_gradcam",
    "integrated_gradients",
    "normalize_per_image",
    "occlusion",
    "prepare_inputs",
    "resolve_layers",
    "resolve_targets",
    "smoothgrad",
]

# Maps whose (max - min) is below this are treated as constant: dividing by
# such a range would only amplify float noise (or produce NaN for exact zeros).
EPS = 1e-12

# Images per batch of perturbed copies (Score-CAM's masked images, integrated gradients' path, SmoothGrad's copies):
# bounds memory whatever the number of images and channels.
CHUNK = 512

# Integrated gradients' points on the path: start with IG_STEPS, double for an image whose completeness gap is
# above IG_TOLERANCE, up to IG_MAX_STEPS. On a lightly trained CBAM CNN (benchmarks/attribution_budgets.py, 30
# images) the largest gap was 3.7 % at 32 steps, 1.9 % at 64, 1.3 % at 128 and 1.1 % at 256: a fixed count
# high enough for every image would cost every image that much.
IG_STEPS = 64
IG_TOLERANCE = 0.01
IG_MAX_STEPS = 1024
# SmoothGrad's noisy copies per image. Two seeds' maps of the same image (same lightly trained CNN and images)
# correlated at least 0.85 at 16 samples, 0.91 at 32, 0.954 at 64 and 0.979 at 128: 128 keeps its rank clear of
# the noise with a margin (at 16 part of the rank was noise).
SMOOTHGRAD_SAMPLES = 128

# Module types listed as likely layer names in the error of `resolve_layers`.
_CONV_LIKE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Sigmoid)

Targets = Tensor | int | Sequence[int] | None


@contextmanager
def attribution_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run attributions anywhere and leave the model as it was found.

    Lightning runs validation/test/predict under ``torch.inference_mode()``,
    where no autograd graph is recorded, so a backward pass there fails. This
    context re-enables autograd, switches the model to ``eval()`` (BatchNorm
    uses running statistics, dropout is off, so attributions are
    deterministic) and freezes every parameter (the attributions need
    gradients with respect to inputs and activations only, and this keeps the
    caller's ``.grad`` out of reach). On exit, also after an exception, it
    restores each submodule's ``training`` flag, each parameter's
    ``requires_grad`` and ``.grad``, and the CPU (and, if initialised, CUDA)
    RNG state. Autocast is off inside: a map is computed in fp32 whatever
    precision the run trains in, so pictures and scores do not change with it.
    Compiled code is off inside too (``torch.compiler.set_stance("force_eager")``):
    a ``torch.compile``-d network (``--model.compile true``) runs its original
    eager ``forward``, so the forward and backward hooks that Captum and
    :func:`visualization.cams.capture_activations` add after compiling fire; a compiled graph
    would not call them ("Forward hook did not obtain any outputs").

    Tensors created under inference mode cannot enter an autograd graph; pass
    inputs through :func:`prepare_inputs` inside this context.

    Args:
        model: The network to attribute. It is modified in place while the
            context is open.

    Yields:
        The same ``model``, in eval mode with autograd enabled.
    """
    train_flags = [(module, module.training) for module in model.modules()]
    params = list(model.parameters())
    requires_grad = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    device_type = (_model_device(model) or torch.device("cpu")).type
    try:
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            _autocast_off(device_type),
            torch.compiler.set_stance("force_eager"),
        ):
            model.eval()
            for p in params:
                p.grad = None
                p.requires_grad_(False)
            yield model
    finally:
        for module, flag in train_flags:
            module.training = flag
        for p, flag, grad in zip(params, requires_grad, grads):
            p.requires_grad_(flag)
            p.grad = grad
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


@contextmanager
def _autocast_off(device_type: str) -> Iterator[None]:
    """No autocast on the CPU nor on the model's device (a CPU model under a CUDA autocast is unaffected)."""
    with torch.autocast("cpu", enabled=False):
        if device_type in ("cpu", "meta"):
            yield
            return
        with torch.autocast(device_type, enabled=False):
            yield


def prepare_inputs(inputs: Tensor, model: nn.Module | None = None) -> Tensor:
    """Make a batch usable by autograd, on the model's device.

    A tensor created under ``torch.inference_mode()`` (every batch inside
    Lightning's evaluation loops) raises when autograd tries to save it for
    backward; a clone made with inference mode off is an ordinary tensor.
    Call this inside :func:`attribution_mode`.

    Args:
        inputs: Batch ``[N, C, H, W]``, possibly an inference tensor.
        model: If given, the batch moves to the device of its first parameter
            or buffer.

    Returns:
        A detached, ordinary copy of ``inputs``.
    """
    with torch.inference_mode(False):
        device = _model_device(model) if model is not None else None
        out = inputs.detach().clone()
        return out.to(device) if device is not None else out


def resolve_layers(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Look up layers by dotted name (``"layer4.1.conv2"``, ``"cbam1.spatial.gate"``).

    Args:
        model: The network that holds the layers.
        names: Dotted submodule names, in the order the caller wants them
            (figures keep this order, e.g. low to high layers).

    Returns:
        ``{name: module}`` in the order of ``names``.

    Raises:
        ValueError: A name is not a submodule of ``model``; the message lists
            the valid top-level and conv/gate names so a config can be fixed.
    """
    if isinstance(names, str):
        # A bare string would otherwise be read as a list of one-letter names.
        names = [names]
    layers: dict[str, nn.Module] = {}
    for name in names:
        try:
            layers[name] = model.get_submodule(name)
        except AttributeError:
            raise ValueError(_unknown_layer_message(model, name)) from None
    return layers


def guided_backprop(model: nn.Module, inputs: Tensor, targets: Targets) -> Tensor:
    """Guided backpropagation: input gradients with negative ReLU gradients cut.

    Args:
        model: Classifier returning logits; its ReLUs must be ``nn.ReLU``
            modules for the guidance to apply.
        inputs: Batch ``[N, C, H, W]`` (inference tensors are fine).
        targets: As in :func:`resolve_targets`.

    Returns:
        Raw, signed attributions ``[N, C, H, W]`` on the CPU.
    """
    return _input_attribution(GuidedBackprop, model, inputs, targets)


def deconvolution(model: nn.Module, inputs: Tensor, targets: Targets) -> Tensor:
    """Deconvolution (Zeiler & Fergus): ReLU gradients follow the output gradient.

    Args:
        model: Classifier returning logits; its ReLUs must be ``nn.ReLU``
            modules.
        inputs: Batch ``[N, C, H, W]`` (inference tensors are fine).
        targets: As in :func:`resolve_targets`.

    Returns:
        Raw, signed attributions ``[N, C, H, W]`` on the CPU.
    """
    return _input_attribution(Deconvolution, model, inputs, targets)


def guided_gradcam(
    model: nn.Module,
    inputs: Tensor,
    targets: Targets,
    layer: nn.Module,
    interpolate_mode: str = "bilinear",
) -> Tensor:
    """Guided Grad-CAM: guided backpropagation weighted by the layer's Grad-CAM.

    Args:
        model: Classifier returning logits.
        inputs: Batch ``[N, C, H, W]`` (inference tensors are fine).
        targets: As in :func:`resolve_targets`.
        layer: The conv layer whose Grad-CAM masks the guided gradients
            (usually the last one).
        interpolate_mode: How the CAM is upsampled to the input size.

    Returns:
        Raw, signed attributions ``[N, C, H, W]`` on the CPU.
    """
    with attribution_mode(model):
        x = prepare_inputs(inputs, model)
        target = resolve_targets(model, x, targets)
        with warnings.catch_warnings():
            # Captum announces its temporary ReLU hooks on every call.
            warnings.simplefilter("ignore", UserWarning)
            attr = GuidedGradCam(model, layer).attribute(
                x, target=target, interpolate_mode=interpolate_mode
            )
        return attr.detach().cpu()


def integrated_gradients(
    model: nn.Module, inputs: Tensor, targets: Targets, steps: int = IG_STEPS, tolerance: float = IG_TOLERANCE,
    max_steps: int = IG_MAX_STEPS,
) -> Tensor:
    """Integrated gradients from a black image (Captum), with enough points on the path for completeness.

    Every image starts with ``steps`` points; an image whose
    :func:`completeness_gap` is above ``tolerance`` is redone with twice as
    many, until it is under or ``max_steps`` is reached (the leaderboard
    reports the gap that remains). On a lightly trained CNN the median gap at
    64 points was 0.26 %, but a few images with a small logit change needed 512.

    Args:
        model: Classifier returning logits.
        inputs: Batch ``[N, C, H, W]`` (inference tensors are fine).
        targets: As in :func:`resolve_targets`.
        steps: Points of the Gauss-Legendre rule along the path to start with (one forward
            and backward pass each, batched per image).
        tolerance: Completeness gap below which an image is done (0: ``steps`` for every image).
        max_steps: Most points tried for any image.

    Returns:
        Raw, signed attributions ``[N, C, H, W]`` on the CPU; per image they
        add up to the logit's change from the black image up to the rule's
        error, which :func:`completeness_gap` measures.
    """
    with attribution_mode(model):
        x = prepare_inputs(inputs, model)
        target = resolve_targets(model, x, targets)
        per_image = torch.as_tensor(target, device=x.device).expand(len(x))
    attributions = _input_attribution(
        IntegratedGradients, model, x, per_image, n_steps=steps, internal_batch_size=CHUNK
    )
    todo = torch.arange(len(x))
    while tolerance > 0 and steps < max_steps:
        gap = completeness_gap(model, x[todo], per_image[todo], attributions[todo])
        todo = todo[~(gap <= tolerance)]  # NaN and inf (a logit that does not move) count as not done
        if not len(todo):
            break
        steps *= 2
        attributions[todo] = _input_attribution(
            IntegratedGradients, model, x[todo], per_image[todo], n_steps=steps, internal_batch_size=CHUNK
        )
    return attributions


def completeness_gap(model: nn.Module, inputs: Tensor, targets: Targets, attributions: Tensor) -> Tensor:
    """How far integrated gradients miss completeness, per image: ``|sum - change| / |change|``.

    ``change`` is the target logit's change from the black image to the image;
    ``sum - change`` is Captum's convergence delta. A gap of 0.05 means the
    attributions account for the logit change only to within 5 %: the path
    integral was sampled too coarsely.

    Args:
        model: Classifier returning logits.
        inputs: The images ``attributions`` explain ``[N, C, H, W]``.
        targets: As in :func:`resolve_targets` (those the attributions were computed for).
        attributions: :func:`integrated_gradients` of ``inputs`` ``[N, C, H, W]``.

    Returns:
        ``[N]`` on the CPU, float32 (``inf`` where the logit does not change at all and the sum does).
    """
    with attribution_mode(model), torch.no_grad():
        x = prepare_inputs(inputs, model)
        wanted = torch.as_tensor(resolve_targets(model, x, targets), device=x.device).expand(len(x))[:, None]
        change = (model(x).float().gather(1, wanted) - model(torch.zeros_like(x)).float().gather(1, wanted))[:, 0]
    delta = attributions.detach().float().flatten(1).sum(dim=1) - change.cpu()
    return delta.abs() / change.abs().cpu()


def smoothgrad(
    model: nn.Module, inputs: Tensor, targets: Targets, samples: int = SMOOTHGRAD_SAMPLES, noise: float = 0.15
) -> Tensor:
    """SmoothGrad: the gradient's magnitude averaged over noisy copies of each image (Captum's ``NoiseTunnel``).

    Args:
        model: Classifier returning logits.
        inputs: Batch ``[N, C, H, W]`` in ``[0, 1]`` (inference tensors are fine).
        targets: As in :func:`resolve_targets`.
        samples: Noisy copies per image; see :data:`SMOOTHGRAD_SAMPLES`.
        noise: Standard deviation of the Gaussian noise, in the images' units:
            0.15 of the ``[0, 1]`` range, within the 10-20 % the paper recommends.

    Returns:
        Non-negative attributions ``[N, C, H, W]`` on the CPU.
    """
    return _input_attribution(
        lambda m: NoiseTunnel(Saliency(m)), model, inputs, targets,
        nt_type="smoothgrad", nt_samples=samples, stdevs=noise,
        nt_samples_batch_size=min(samples, max(1, CHUNK // max(1, len(inputs)))),  # at most CHUNK copies a pass
    )


def occlusion(model: nn.Module, inputs: Tensor, targets: Targets, window: int = 8, stride: int = 4) -> Tensor:
    """Occlusion: how much the class logit drops when a square is blacked out (Captum).

    The default 8-pixel window moved by 4 tiles a 32x32 image exactly (7x7 = 49
    positions, one forward pass each); every pixel is covered by 1 to 4 of them
    and gets the mean drop of those.

    Args:
        model: Classifier returning logits.
        inputs: Batch ``[N, C, H, W]`` (inference tensors are fine).
        targets: As in :func:`resolve_targets`.
        window: Side of the square, in pixels.
        stride: Step between squares.

    Returns:
        Signed attributions ``[N, C, H, W]`` on the CPU, equal over the
        channels: positive where hiding the pixels lowers the logit.
    """
    channels = inputs.shape[1]
    return _input_attribution(
        Occlusion, model, inputs, targets,
        sliding_window_shapes=(channels, window, window), strides=(channels, stride, stride),
        baselines=0.0, perturbations_per_eval=CHUNK // max(1, inputs.shape[0]) or 1,
    )


# The attributions on the input pixels by the names configs use, in drawing order: each takes
# (model, images, targets, last explained layer) and returns [N, C, H, W] on the CPU (the layer masks guided Grad-CAM).
INPUT_ATTRIBUTIONS: dict[str, Callable[[nn.Module, Tensor, Targets, nn.Module], Tensor]] = {
    "guided_backprop": lambda model, x, targets, layer: guided_backprop(model, x, targets),
    "deconvolution": lambda model, x, targets, layer: deconvolution(model, x, targets),
    "guided_gradcam": guided_gradcam,
    "integrated_gradients": lambda model, x, targets, layer: integrated_gradients(model, x, targets),
    "smoothgrad": lambda model, x, targets, layer: smoothgrad(model, x, targets),
    "occlusion": lambda model, x, targets, layer: occlusion(model, x, targets),
}


def normalize_per_image(maps: Tensor) -> Tensor:
    """Min-max scale each map of a batch to ``[0, 1]``; constant maps become 0.

    Args:
        maps: ``[N, ...]``; each ``maps[i]`` is scaled on its own.

    Returns:
        Float tensor of the same shape, finite wherever ``maps`` is.
    """
    flat = maps.detach().float().flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    flat_constant = span <= EPS
    scaled = torch.where(
        flat_constant, torch.zeros_like(flat), (flat - low) / span.clamp_min(EPS)
    )
    return scaled.view_as(maps)


def _input_attribution(
    method: Callable[[nn.Module], object], model: nn.Module, inputs: Tensor, targets: Targets, **options: object
) -> Tensor:
    """Run a Captum attribution on the input inside attribution_mode; ``options`` go to its ``attribute``."""
    with attribution_mode(model):
        x = prepare_inputs(inputs, model)
        target = resolve_targets(model, x, targets)
        with warnings.catch_warnings():
            # Captum announces its temporary ReLU hooks on every call.
            warnings.simplefilter("ignore", UserWarning)
            attr = method(model).attribute(x, target=target, **options)
        return attr.detach().cpu()


def resolve_targets(model: nn.Module, x: Tensor, targets: Targets) -> Tensor | int:
    """The class to explain per image, as Captum takes it, on x's device.

    Args:
        model: Classifier returning logits (for ``targets=None``).
        x: The batch.
        targets: A tensor or sequence of ``N`` class indices, one int for all
            images, or ``None`` for the model's own prediction.

    Raises:
        ValueError: Another number of targets than images.
    """
    if targets is None:
        with torch.no_grad():
            return model(x).argmax(dim=1)
    if isinstance(targets, int):
        return targets
    # clone(): targets from an inference-mode loop are inference tensors,
    # and autograd saves the index for backward.
    target = torch.as_tensor(targets, device=x.device).long().flatten().clone()
    if target.numel() != x.shape[0]:
        raise ValueError(
            f"Got {target.numel()} targets for a batch of {x.shape[0]} images.\n"
            "HINT: pass one class index per image, one int, or None for the "
            "predicted class."
        )
    return target


def _model_device(model: nn.Module) -> torch.device | None:
    """Device of the first parameter or buffer; None for a stateless model."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return None


def _unknown_layer_message(model: nn.Module, name: str) -> str:
    """Error text for resolve_layers: what was asked, what exists, how to fix."""
    top = [n for n, _ in model.named_children()]
    convs = [n for n, m in model.named_modules() if n and isinstance(m, _CONV_LIKE)]
    return (
        f"Unknown layer {name!r} in {type(model).__name__}.\n"
        f"Top-level modules: {', '.join(top) or '(none)'}\n"
        f"Conv and gate modules: {', '.join(convs) or '(none)'}\n"
        "HINT: use a dotted name from these lists, e.g. 'layer4' or "
        "'layer4.1.conv2'; print(model) shows the full tree."
    )
