"""Attribution and activation capture for CNN classifiers: tensors in, tensors out.

Everything here is safe to call from inside Lightning's validation, test and
predict loops, which run under ``torch.inference_mode()``: the functions switch
autograd back on for their own work, run the model in ``eval()`` and leave the
model exactly as they found it (train flags, ``requires_grad``, ``.grad``, RNG
state). Forward and backward hooks are always removed, also when the forward
pass raises.

Methods (all via Captum):

* Grad-CAM (Selvaraju et al., https://arxiv.org/abs/1610.02391): coarse class
  localisation at a conv layer's resolution.
* Guided backpropagation (Springenberg et al., https://arxiv.org/abs/1412.6806)
  and deconvolution (Zeiler & Fergus, https://arxiv.org/abs/1311.2901): fine,
  input-resolution detail, but not class-discriminative on their own.
* Guided Grad-CAM: guided backpropagation masked by Grad-CAM.

Guided backpropagation and deconvolution override the gradient of
``nn.ReLU`` *modules* only; a model that calls ``F.relu`` in ``forward`` gets
plain gradients through those activations.

No Lightning import: these are plain functions over ``nn.Module``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    LayerAttribution,
    LayerGradCam,
)
from torch import Tensor, nn

__all__ = [
    "attribution_mode",
    "capture_activations",
    "deconvolution",
    "gradcam",
    "guided_backprop",
    "guided_gradcam",
    "normalize_per_image",
    "pointing_game",
    "prepare_inputs",
    "resolve_layers",
]

# Maps whose (max - min) is below this are treated as constant: dividing by
# such a range would only amplify float noise (or produce NaN for exact zeros).
_EPS = 1e-12

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
    :func:`capture_activations` add after compiling fire; a compiled graph
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


def gradcam(
    model: nn.Module,
    inputs: Tensor,
    targets: Targets,
    layers: Mapping[str, nn.Module],
    interpolate_mode: str = "bilinear",
) -> dict[str, Tensor]:
    """Grad-CAM of several layers, upsampled to the input and scaled per image.

    Each layer costs one forward and one backward pass.

    Args:
        model: Classifier returning logits ``[N, num_classes]``.
        inputs: Batch ``[N, C, H, W]`` as the model expects it (normalised).
            Inference tensors are fine.
        targets: Class to explain per image: a tensor or sequence of ``N``
            class indices, one int for all images, or ``None`` for the model's
            own prediction.
        layers: ``{name: module}``, e.g. from :func:`resolve_layers`. Each
            layer must return one tensor ``[N, C', h, w]``.
        interpolate_mode: Upsampling mode of
            ``LayerAttribution.interpolate``.

    Returns:
        ``{name: cam}`` in the order of ``layers``, each ``[N, H, W]`` on the
        CPU, float32, in ``[0, 1]`` per image (1 at the most important
        location). A constant map, e.g. all zeros because the class score
        does not depend on the layer, is returned as zeros, never NaN.
    """
    cams: dict[str, Tensor] = {}
    with attribution_mode(model):
        x = prepare_inputs(inputs, model)
        target = _resolve_targets(model, x, targets)
        for name, layer in layers.items():
            raw = LayerGradCam(model, layer).attribute(
                x, target=target, relu_attributions=True
            )
            up = LayerAttribution.interpolate(raw, tuple(x.shape[-2:]), interpolate_mode)
            # Bilinear upsampling of a non-negative map stays non-negative,
            # but clamp anyway so float noise cannot leave [0, 1].
            cams[name] = normalize_per_image(up[:, 0].clamp_min(0)).detach().cpu()
    return cams


def guided_backprop(model: nn.Module, inputs: Tensor, targets: Targets) -> Tensor:
    """Guided backpropagation: input gradients with negative ReLU gradients cut.

    Args:
        model: Classifier returning logits; its ReLUs must be ``nn.ReLU``
            modules for the guidance to apply.
        inputs: Batch ``[N, C, H, W]`` (inference tensors are fine).
        targets: As in :func:`gradcam`.

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
        targets: As in :func:`gradcam`.

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
        targets: As in :func:`gradcam`.
        layer: The conv layer whose Grad-CAM masks the guided gradients
            (usually the last one).
        interpolate_mode: How the CAM is upsampled to the input size.

    Returns:
        Raw, signed attributions ``[N, C, H, W]`` on the CPU.
    """
    with attribution_mode(model):
        x = prepare_inputs(inputs, model)
        target = _resolve_targets(model, x, targets)
        with warnings.catch_warnings():
            # Captum announces its temporary ReLU hooks on every call.
            warnings.simplefilter("ignore", UserWarning)
            attr = GuidedGradCam(model, layer).attribute(
                x, target=target, interpolate_mode=interpolate_mode
            )
        return attr.detach().cpu()


def capture_activations(
    model: nn.Module, inputs: Tensor, layers: Mapping[str, nn.Module]
) -> dict[str, Tensor]:
    """Record what chosen layers output in one forward pass.

    Works for feature maps (a conv or a block, ``[N, C, h, w]``) and for
    attention gates: the ``Sigmoid`` gate of an SE/CBAM channel attention
    outputs the channel weights ``[N, C, 1, 1]``, the gate of a CBAM spatial
    attention the map ``[N, 1, h, w]``. If a module runs more than once in a
    forward pass, the last output is kept.

    Args:
        model: The network, run in ``eval()`` without gradients.
        inputs: Batch ``[N, C, H, W]`` (inference tensors are fine).
        layers: ``{name: module}``, e.g. from :func:`resolve_layers`.

    Returns:
        ``{name: output}`` in the order of ``layers``, detached, on the CPU.

    Raises:
        TypeError: A layer returned something other than a tensor.
        RuntimeError: A layer did not run during the forward pass.
    """
    captured: dict[str, Tensor] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"Layer {name!r} ({type(module).__name__}) returned "
                    f"{type(output).__name__}, not a tensor.\n"
                    "HINT: pick a submodule that returns a single tensor."
                )
            captured[name] = output.detach().cpu()

        return hook

    handles = []
    with attribution_mode(model):
        try:
            for name, layer in layers.items():
                handles.append(layer.register_forward_hook(make_hook(name)))
            with torch.no_grad():
                model(prepare_inputs(inputs, model))
        finally:
            for handle in handles:
                handle.remove()
    missing = [name for name in layers if name not in captured]
    if missing:
        raise RuntimeError(
            f"Layers {missing} did not run in the forward pass.\n"
            "HINT: choose modules that forward() actually calls."
        )
    return {name: captured[name] for name in layers}


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
    flat_constant = span <= _EPS
    scaled = torch.where(
        flat_constant, torch.zeros_like(flat), (flat - low) / span.clamp_min(_EPS)
    )
    return scaled.view_as(maps)


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
    pointing = (flat.max(dim=1).values - flat.min(dim=1).values) > _EPS
    return (hit & pointing).float().mean().item()


def _input_attribution(
    method: type[GuidedBackprop] | type[Deconvolution],
    model: nn.Module,
    inputs: Tensor,
    targets: Targets,
) -> Tensor:
    """Run a Captum input-gradient method inside attribution_mode."""
    with attribution_mode(model):
        x = prepare_inputs(inputs, model)
        target = _resolve_targets(model, x, targets)
        with warnings.catch_warnings():
            # Captum announces its temporary ReLU hooks on every call.
            warnings.simplefilter("ignore", UserWarning)
            attr = method(model).attribute(x, target=target)
        return attr.detach().cpu()


def _resolve_targets(model: nn.Module, x: Tensor, targets: Targets) -> Tensor | int:
    """Turn the accepted target forms into what Captum takes, on x's device."""
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
