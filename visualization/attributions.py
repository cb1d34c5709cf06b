"""Attribution and activation capture for CNN classifiers: tensors in, tensors out.

Everything here is safe to call from inside Lightning's validation, test and
predict loops, which run under ``torch.inference_mode()``: the functions switch
autograd back on for their own work, run the model in ``eval()`` and leave the
model exactly as they found it (train flags, ``requires_grad``, ``.grad``, RNG
state). Forward and backward hooks are always removed, also when the forward
pass raises.

Methods:

* Grad-CAM (Selvaraju et al., https://arxiv.org/abs/1610.02391): coarse class
  localisation at a conv layer's resolution (Captum's ``LayerGradCam``).
* Guided backpropagation (Springenberg et al., https://arxiv.org/abs/1412.6806)
  and deconvolution (Zeiler & Fergus, https://arxiv.org/abs/1311.2901): fine,
  input-resolution detail, but not class-discriminative on their own (Captum).
* Guided Grad-CAM: guided backpropagation masked by Grad-CAM (Captum).
* Integrated gradients (Sundararajan et al., https://arxiv.org/abs/1703.01365),
  SmoothGrad (Smilkov et al., https://arxiv.org/abs/1706.03825, Captum's
  ``NoiseTunnel`` over ``Saliency``) and occlusion (Zeiler & Fergus): Captum.
* The CAM variants of :data:`CAM_WEIGHTS`, Grad-CAM++ (Chattopadhyay et al.,
  https://arxiv.org/abs/1710.11063), XGrad-CAM (Fu et al.,
  https://arxiv.org/abs/2008.02312), HiResCAM (Draelos & Carin,
  https://arxiv.org/abs/2011.08891), LayerCAM (Jiang et al., 2021,
  https://doi.org/10.1109/TIP.2021.3089943), and Score-CAM (Wang et al.,
  https://arxiv.org/abs/1910.01279): :func:`layer_cams`, written here.

Why the CAM variants are written here and not taken from pytorch-grad-cam: each
is one line of weights over the activations and gradients of one forward and
one backward pass, which :func:`layer_cams` records with two hooks it always
removes (about 60 lines for all five). pytorch-grad-cam (MIT) would save those
lines but pulls in ``opencv-python``, ``scikit-learn``, ``matplotlib``, ``tqdm``
and ``ttach``, switches the caller's model to ``eval()`` and leaves it there,
and runs under its own hook manager that knows nothing of
:func:`attribution_mode` (``inference_mode``, autocast, compiled networks).

Guided backpropagation and deconvolution override the gradient of
``nn.ReLU`` *modules* only; a model that calls ``F.relu`` in ``forward`` gets
plain gradients through those activations.

No Lightning import: these are plain functions over ``nn.Module``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import Tensor, nn

from user_input import UserInputError

__all__ = [
    "CAM_WEIGHTS",
    "attribution_mode",
    "capture_activations",
    "deconvolution",
    "gradcam",
    "guided_backprop",
    "guided_gradcam",
    "integrated_gradients",
    "layer_cams",
    "normalize_per_image",
    "occlusion",
    "pointing_game",
    "prepare_inputs",
    "resolve_layers",
    "smoothgrad",
]

# Maps whose (max - min) is below this are treated as constant: dividing by
# such a range would only amplify float noise (or produce NaN for exact zeros).
_EPS = 1e-12

# Images per batch of perturbed copies (Score-CAM's masked images, integrated gradients' path):
# bounds memory whatever the number of images and channels.
_CHUNK = 512

# The attributions on the input pixels, by the name configs use; CAM variants are per layer.
INPUT_ATTRIBUTIONS = (
    "guided_backprop", "deconvolution", "guided_gradcam", "integrated_gradients", "smoothgrad", "occlusion",
)

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


def integrated_gradients(model: nn.Module, inputs: Tensor, targets: Targets, steps: int = 32) -> Tensor:
    """Integrated gradients from a black image (Captum), ``steps`` points on the path.

    Args:
        model: Classifier returning logits.
        inputs: Batch ``[N, C, H, W]`` (inference tensors are fine).
        targets: As in :func:`gradcam`.
        steps: Points of the Gauss-Legendre rule along the path (one forward
            and backward pass each, batched per image).

    Returns:
        Raw, signed attributions ``[N, C, H, W]`` on the CPU; per image they
        add up to the logit's change from the black image (up to the rule's error).
    """
    return _input_attribution(
        IntegratedGradients, model, inputs, targets, n_steps=steps, internal_batch_size=_CHUNK
    )


def smoothgrad(
    model: nn.Module, inputs: Tensor, targets: Targets, samples: int = 16, noise: float = 0.15
) -> Tensor:
    """SmoothGrad: the gradient's magnitude averaged over noisy copies of each image (Captum's ``NoiseTunnel``).

    Args:
        model: Classifier returning logits.
        inputs: Batch ``[N, C, H, W]`` in ``[0, 1]`` (inference tensors are fine).
        targets: As in :func:`gradcam`.
        samples: Noisy copies per image.
        noise: Standard deviation of the Gaussian noise, in the images' units:
            0.15 of the ``[0, 1]`` range, within the 10-20 % the paper recommends.

    Returns:
        Non-negative attributions ``[N, C, H, W]`` on the CPU.
    """
    return _input_attribution(
        lambda m: NoiseTunnel(Saliency(m)), model, inputs, targets,
        nt_type="smoothgrad", nt_samples=samples, stdevs=noise, nt_samples_batch_size=samples,
    )


def occlusion(model: nn.Module, inputs: Tensor, targets: Targets, window: int = 8, stride: int = 4) -> Tensor:
    """Occlusion: how much the class logit drops when a square is blacked out (Captum).

    The default 8-pixel window moved by 4 tiles a 32x32 image exactly (7x7 = 49
    positions, one forward pass each); every pixel is covered by 1 to 4 of them
    and gets the mean drop of those.

    Args:
        model: Classifier returning logits.
        inputs: Batch ``[N, C, H, W]`` (inference tensors are fine).
        targets: As in :func:`gradcam`.
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
        baselines=0.0, perturbations_per_eval=_CHUNK // max(1, inputs.shape[0]) or 1,
    )


# The CAM variants: channel weights (or a per-pixel weighting) of a layer's activations ``a``
# ``[N, C, h, w]`` from the gradient ``g`` of the class logit with respect to them; the map is
# the ReLU of the weighted sum over channels. "gradcam" is there to check the skeleton
# against Captum's LayerGradCam (tests/test_attributions.py); gradcam() is the one to use.
CAM_WEIGHTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    # Grad-CAM: each channel weighted by its mean gradient.
    "gradcam": lambda a, g: g.mean(dim=(2, 3), keepdim=True) * a,
    # Grad-CAM++: the mean gradient replaced by a weighted sum of the positive gradients.
    "gradcam_pp": lambda a, g: _gradcam_pp_alpha(a, g).mul(g.clamp_min(0)).sum(dim=(2, 3), keepdim=True) * a,
    # XGrad-CAM: the gradient weighted by the activation, per unit of activation.
    "xgradcam": lambda a, g: (g * a).sum(dim=(2, 3), keepdim=True) / (a.sum(dim=(2, 3), keepdim=True) + _EPS) * a,
    # HiResCAM: gradient times activation at each location (no averaging): for a network that ends in
    # global pooling and a linear layer, the map's sum is the logit's dependence on the layer.
    "hirescam": lambda a, g: g * a,
    # LayerCAM: the positive gradient times the activation at each location.
    "layercam": lambda a, g: g.clamp_min(0) * a,
}
def _gradcam_pp_alpha(a: Tensor, g: Tensor) -> Tensor:
    """Grad-CAM++'s alpha per location in closed form (class score taken as exp(logit)); 0 where undefined."""
    denominator = 2 * g.square() + a.sum(dim=(2, 3), keepdim=True) * g.pow(3)
    defined = denominator != 0
    return torch.where(defined, g.square() / denominator.where(defined, 1.0), 0.0)


# Score-CAM needs no gradient: a class-probability experiment per channel (see layer_cams).
CAM_METHODS = (*(m for m in CAM_WEIGHTS if m != "gradcam"), "scorecam")


def layer_cams(
    model: nn.Module,
    inputs: Tensor,
    targets: Targets,
    layers: Mapping[str, nn.Module],
    method: str,
    interpolate_mode: str = "bilinear",
) -> dict[str, Tensor]:
    """A CAM variant of several layers, upsampled to the input and scaled per image, as :func:`gradcam`.

    The gradient methods (:data:`CAM_WEIGHTS`) record every layer's activations
    and their gradients in one forward and one backward pass. Score-CAM
    (``"scorecam"``) runs one forward pass per channel instead: each channel,
    upsampled and scaled to ``[0, 1]``, masks the image, and its weight is the
    class probability of the masked image less that of a black image (the
    paper's "increase of confidence"; a model that ignores its input gets a
    zero map).

    Args:
        model: Classifier returning logits ``[N, num_classes]``.
        inputs: Batch ``[N, C, H, W]`` as the model takes it (inference tensors are fine).
        targets: As in :func:`gradcam`.
        layers: ``{name: module}``; each must output a feature map ``[N, C', h, w]``.
        method: A name of :data:`CAM_WEIGHTS` or ``"scorecam"``.
        interpolate_mode: Upsampling mode of ``LayerAttribution.interpolate``.

    Returns:
        ``{name: cam}`` in the order of ``layers``, each ``[N, H, W]`` on the CPU
        in ``[0, 1]`` per image; constant maps are zeros.

    Raises:
        UserInputError: An unknown method, or a layer without a spatial feature
            map (e.g. a linear layer or a channel gate); the message lists the
            methods that apply.
    """
    if method not in (*CAM_WEIGHTS, "scorecam"):
        raise UserInputError(f"Unknown CAM method {method!r}.\nHINT: choose from {[*CAM_WEIGHTS, 'scorecam']}.")
    cams: dict[str, Tensor] = {}
    with attribution_mode(model):
        x = prepare_inputs(inputs, model)
        target = _resolve_targets(model, x, targets)
        activations = _record_outputs(model, x, layers, method)
        logits = activations.pop("")
        if method == "scorecam":
            raw = {name: _score_cam(model, x, target, a) for name, a in activations.items()}
        else:
            picked = logits.gather(1, torch.as_tensor(target, device=x.device).expand(len(x))[:, None])
            grads = torch.autograd.grad(picked.sum(), list(activations.values()))
            raw = {name: CAM_WEIGHTS[method](a.detach(), g).sum(dim=1, keepdim=True)
                   for (name, a), g in zip(activations.items(), grads)}
        for name, cam in raw.items():
            up = LayerAttribution.interpolate(cam.clamp_min(0), tuple(x.shape[-2:]), interpolate_mode)
            cams[name] = normalize_per_image(up[:, 0].clamp_min(0)).detach().cpu()
    return cams


def _record_outputs(model: nn.Module, x: Tensor, layers: Mapping[str, nn.Module], method: str) -> dict[str, Tensor]:
    """One forward pass: every layer's output (feature maps only), and the logits under ``""``; hooks removed."""
    captured: dict[str, Tensor] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            if not (isinstance(output, Tensor) and output.dim() == 4 and output.shape[-2:] != (1, 1)):
                shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise UserInputError(
                    f"{method} needs a layer whose output is a feature map [N, C, h, w]; {name!r} "
                    f"({type(module).__name__}) gives {shape}.\n"
                    f"HINT: for this layer use a method on the input instead, one of {list(INPUT_ATTRIBUTIONS)}; "
                    "or give a conv layer or block (conv3, layer4)."
                )
            captured[name] = output

        return hook

    handles = [layer.register_forward_hook(make_hook(name)) for name, layer in layers.items()]
    try:
        with torch.set_grad_enabled(method != "scorecam"):
            # The parameters are frozen (attribution_mode): the input carries the graph to the activations.
            logits = model(x.detach().requires_grad_(method != "scorecam"))
    finally:
        for handle in handles:
            handle.remove()
    _check_ran(layers, captured)
    return {"": logits, **{name: captured[name] for name in layers}}


def _score_cam(model: nn.Module, x: Tensor, target: Tensor | int, activations: Tensor) -> Tensor:
    """Score-CAM's map ``[N, 1, h, w]`` of one layer: channels weighted by the confidence they keep."""
    n, channels = activations.shape[:2]
    masks = normalize_per_image(
        LayerAttribution.interpolate(activations.flatten(0, 1)[:, None], tuple(x.shape[-2:]), "bilinear")
    ).view(n, channels, 1, *x.shape[-2:])
    wanted = torch.as_tensor(target, device=x.device).expand(n)
    with torch.no_grad():
        black = model(torch.zeros_like(x)).softmax(dim=1).gather(1, wanted[:, None])
        masked = (x[:, None] * masks).flatten(0, 1)
        labels = wanted.repeat_interleave(channels)
        probs = torch.cat([
            model(chunk).float().softmax(dim=1).gather(1, lab[:, None])[:, 0]
            for chunk, lab in zip(masked.split(_CHUNK), labels.split(_CHUNK))
        ]).view(n, channels)
    weights = (probs - black).to(activations.dtype)
    return (weights[:, :, None, None] * activations).sum(dim=1, keepdim=True)


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
    _check_ran(layers, captured)
    return {name: captured[name] for name in layers}


def _check_ran(layers: Mapping[str, nn.Module], captured: Mapping[str, Tensor]) -> None:
    """Raise ``RuntimeError`` naming the layers a forward pass did not reach."""
    missing = [name for name in layers if name not in captured]
    if missing:
        raise RuntimeError(
            f"Layers {missing} did not run in the forward pass.\n"
            "HINT: choose modules that forward() actually calls."
        )


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
    method: Callable[[nn.Module], object], model: nn.Module, inputs: Tensor, targets: Targets, **options: object
) -> Tensor:
    """Run a Captum attribution on the input inside attribution_mode; ``options`` go to its ``attribute``."""
    with attribution_mode(model):
        x = prepare_inputs(inputs, model)
        target = _resolve_targets(model, x, targets)
        with warnings.catch_warnings():
            # Captum announces its temporary ReLU hooks on every call.
            warnings.simplefilter("ignore", UserWarning)
            attr = method(model).attribute(x, target=target, **options)
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
