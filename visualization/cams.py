"""The CAM family, in pytorch-grad-cam's shape: one recorder, a base, one small piece per method.

* :func:`record_layers` is the one recorder of what layers output in a forward
  pass (kept in the autograd graph when gradients are wanted); its hooks are
  always removed, also when the forward pass raises. The CAMs and
  :func:`capture_activations` (feature maps and attention gates for the
  pictures) both use it.
* :class:`CAM` is the base: it runs the model in :func:`attribution_mode`,
  records every layer's activations in one forward pass and, where the method
  uses them, their gradients in one backward pass, and turns each layer's
  weighted activations into a map: ReLU, upsampled to the input, scaled to
  ``[0, 1]`` per image.
* One piece per method says how the activations are weighted:
  :class:`WeightedCAM` with a line of :data:`CAM_WEIGHTS` for Grad-CAM
  (Selvaraju et al., https://arxiv.org/abs/1610.02391), Grad-CAM++
  (Chattopadhyay et al., https://arxiv.org/abs/1710.11063), XGrad-CAM (Fu et
  al., https://arxiv.org/abs/2008.02312), HiResCAM (Draelos & Carin,
  https://arxiv.org/abs/2011.08891) and LayerCAM (Jiang et al., 2021,
  https://doi.org/10.1109/TIP.2021.3089943); :class:`ScoreCAM` (Wang et al.,
  https://arxiv.org/abs/1910.01279) is the base without gradients.

:data:`CAMS` lists them by the names configs use. Grad-CAM is written once,
here; the tests hold it equal to Captum's ``LayerGradCam`` and the others to
hand counts and their papers' formulas.

Why not pytorch-grad-cam itself: each method is a line of weights, the whole
family about 100 lines; pytorch-grad-cam (MIT) pulls in ``opencv-python``,
``scikit-learn``, ``matplotlib``, ``tqdm`` and ``ttach``, switches the caller's
model to ``eval()`` and leaves it there, and knows nothing of
:func:`attribution_mode` (``inference_mode``, autocast, compiled networks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from captum.attr import LayerAttribution
from torch import Tensor, nn

from common.user_input import UserInputError
from visualization.attributions import (
    CHUNK,
    EPS,
    INPUT_ATTRIBUTIONS,
    Targets,
    attribution_mode,
    normalize_per_image,
    prepare_inputs,
    resolve_targets,
)

__all__ = [
    "CAMS", "CAM_WEIGHTS", "CAM", "ScoreCAM", "WeightedCAM", "capture_activations", "gradcam", "layer_cams",
    "record_layers",
]

# Score-CAM: a logit that moves less than this under every mask is taken as not responding to the image.
_RESPONDS = 1e-6

OutputCheck = Callable[[str, nn.Module, object], None]


def record_layers(
    model: nn.Module, x: Tensor, layers: Mapping[str, nn.Module], check: OutputCheck | None = None,
    with_graph: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward pass of ``x``: the model's output and what each layer output (its last call), hooks removed.

    Args:
        model: The network (the caller puts it in :func:`attribution_mode`).
        x: Its input.
        layers: ``{name: module}``.
        check: Called with ``(name, module, output)`` at each layer; raises to refuse an output.
        with_graph: Keep the outputs in an autograd graph (from the input: the
            parameters are frozen), for gradients with respect to them.

    Returns:
        ``(output, {name: layer output})``, the outputs in the order of ``layers``.

    Raises:
        RuntimeError: A layer did not run in the forward pass.
    """
    captured: dict[str, Tensor] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            if check is not None:
                check(name, module, output)
            captured[name] = output

        return hook

    handles = [layer.register_forward_hook(make_hook(name)) for name, layer in layers.items()]
    try:
        with torch.set_grad_enabled(with_graph):
            output = model(x.detach().requires_grad_(with_graph))
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in layers if name not in captured]
    if missing:
        raise RuntimeError(
            f"Layers {missing} did not run in the forward pass.\nHINT: choose modules that forward() actually calls."
        )
    return output, {name: captured[name] for name in layers}


def capture_activations(model: nn.Module, inputs: Tensor, layers: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """Record what chosen layers output in one forward pass.

    Works for feature maps (a conv or a block, ``[N, C, h, w]``) and for
    attention gates: the ``Sigmoid`` gate of an SE/CBAM channel attention
    outputs the channel weights ``[N, C, 1, 1]``, the gate of a CBAM spatial
    attention the map ``[N, 1, h, w]``. If a module runs more than once in a
    forward pass, the last output is kept.

    Args:
        model: The network, run in ``eval()`` without gradients.
        inputs: Batch ``[N, C, H, W]`` (inference tensors are fine).
        layers: ``{name: module}``, e.g. from :func:`~visualization.attributions.resolve_layers`.

    Returns:
        ``{name: output}`` in the order of ``layers``, detached, on the CPU.

    Raises:
        TypeError: A layer returned something other than a tensor.
        RuntimeError: A layer did not run during the forward pass.
    """
    with attribution_mode(model):
        _, outputs = record_layers(model, prepare_inputs(inputs, model), layers, _a_tensor)
    return {name: output.detach().cpu() for name, output in outputs.items()}


def _a_tensor(name: str, module: nn.Module, output: object) -> None:
    if not isinstance(output, Tensor):
        raise TypeError(
            f"Layer {name!r} ({type(module).__name__}) returned {type(output).__name__}, not a tensor.\n"
            "HINT: pick a submodule that returns a single tensor."
        )


class CAM:
    """A class activation map of several layers: the common work; subclasses weight the activations.

    Args:
        name: The method's name in configs (and in its error messages).
    """

    uses_gradients: ClassVar[bool] = True

    def __init__(self, name: str) -> None:
        self.name = name

    def weighted(self, activations: Tensor, gradients: Tensor | None, model: nn.Module, x: Tensor,
                 target: Tensor | int) -> Tensor:
        """The layer's map before the ReLU ``[N, 1, h, w]``, from its activations (and their gradients)."""
        raise NotImplementedError

    def __call__(
        self, model: nn.Module, inputs: Tensor, targets: Targets, layers: Mapping[str, nn.Module],
        interpolate_mode: str = "bilinear",
    ) -> dict[str, Tensor]:
        """The map of each layer, upsampled to the input and scaled per image.

        Args:
            model: Classifier returning logits ``[N, num_classes]``.
            inputs: Batch ``[N, C, H, W]`` as the model takes it (inference tensors are fine).
            targets: Class to explain per image: a tensor or sequence of ``N`` class indices,
                one int for all images, or ``None`` for the model's own prediction.
            layers: ``{name: module}``; each must output a feature map ``[N, C', h, w]``.
            interpolate_mode: Upsampling mode of ``LayerAttribution.interpolate``.

        Returns:
            ``{name: cam}`` in the order of ``layers``, each ``[N, H, W]`` on the CPU, float32,
            in ``[0, 1]`` per image (1 at the most important location); a constant map,
            e.g. because the class score does not depend on the layer, is zeros, never NaN.

        Raises:
            UserInputError: A layer without a spatial feature map (a linear layer, a channel
                gate); the message lists the methods that apply.
        """
        cams: dict[str, Tensor] = {}
        with attribution_mode(model):
            x = prepare_inputs(inputs, model)
            target = resolve_targets(model, x, targets)
            logits, activations = record_layers(model, x, layers, self._feature_map, self.uses_gradients)
            gradients: list[Tensor | None] = [None] * len(activations)
            if self.uses_gradients:
                picked = logits.gather(1, torch.as_tensor(target, device=x.device).expand(len(x))[:, None])
                gradients = list(torch.autograd.grad(picked.sum(), list(activations.values())))
            for (name, a), g in zip(activations.items(), gradients):
                raw = self.weighted(a.detach(), g, model, x, target).clamp_min(0)
                up = LayerAttribution.interpolate(raw, tuple(x.shape[-2:]), interpolate_mode)
                # Bilinear upsampling of a non-negative map stays non-negative; clamp float noise anyway.
                cams[name] = normalize_per_image(up[:, 0].clamp_min(0)).detach().cpu()
        return cams

    def _feature_map(self, name: str, module: nn.Module, output: object) -> None:
        # A [N, C, 1, 1] map (an SE gate) is allowed: a constant map, drawn blank, as Captum's Grad-CAM gives it.
        if not (isinstance(output, Tensor) and output.dim() == 4):
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise UserInputError(
                f"{self.name} needs a layer whose output is a feature map [N, C, h, w]; {name!r} "
                f"({type(module).__name__}) gives {shape}.\n"
                f"HINT: for this layer use a method on the input instead, one of {list(INPUT_ATTRIBUTIONS)}; "
                "or give a conv layer or block (conv3, layer4)."
            )


# Each weighting of a layer's activations ``a`` ``[N, C, h, w]`` by the gradient ``g`` of the class logit with
# respect to them (channel weights, or a weight per location); the map is the ReLU of the sum over channels.
CAM_WEIGHTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    # Grad-CAM: each channel weighted by its mean gradient.
    "gradcam": lambda a, g: g.mean(dim=(2, 3), keepdim=True) * a,
    # Grad-CAM++: the mean gradient replaced by a weighted sum of the positive gradients.
    "gradcam_pp": lambda a, g: _gradcam_pp_alpha(a, g).mul(g.clamp_min(0)).sum(dim=(2, 3), keepdim=True) * a,
    # XGrad-CAM: the gradient weighted by the activation, per unit of activation.
    "xgradcam": lambda a, g: (g * a).sum(dim=(2, 3), keepdim=True) / (a.sum(dim=(2, 3), keepdim=True) + EPS) * a,
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


class WeightedCAM(CAM):
    """A CAM whose map is a line of :data:`CAM_WEIGHTS` summed over channels.

    Args:
        name: A key of :data:`CAM_WEIGHTS`.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.weigh = CAM_WEIGHTS[name]

    def weighted(self, activations: Tensor, gradients: Tensor | None, model: nn.Module, x: Tensor,
                 target: Tensor | int) -> Tensor:
        return self.weigh(activations, gradients).sum(dim=1, keepdim=True)


class ScoreCAM(CAM):
    """Score-CAM: channels weighted by what each, as a mask on the image, keeps of the class score; no gradients.

    Each channel, upsampled and scaled to ``[0, 1]``, masks the image; its
    gain is the target logit of the masked image less that of a black image
    (the paper's "increase of confidence"), and the weights are a softmax of
    the gains over the channels (pytorch-grad-cam's weighting, which the shift
    by the black image's score does not change). The raw gains could be
    negative for every channel, and the ReLU then emptied the map (half of a
    trained CBAM CNN's conv1 maps); softmax weights are positive, so a layer
    with non-negative activations (after a ReLU) gets an empty map only where
    it is silent. An image for which no mask moves the logit at all (the
    output ignores the input) gets zero weights: an empty map.
    """

    uses_gradients = False

    def weighted(self, activations: Tensor, gradients: Tensor | None, model: nn.Module, x: Tensor,
                 target: Tensor | int) -> Tensor:
        n, channels = activations.shape[:2]
        masks = normalize_per_image(
            LayerAttribution.interpolate(activations.flatten(0, 1)[:, None], tuple(x.shape[-2:]), "bilinear")
        ).view(n, channels, 1, *x.shape[-2:])
        wanted = torch.as_tensor(target, device=x.device).expand(n)
        with torch.no_grad():
            black = model(torch.zeros_like(x)).float().gather(1, wanted[:, None])
            masked = (x[:, None] * masks).flatten(0, 1)
            labels = wanted.repeat_interleave(channels)
            gains = torch.cat([
                model(chunk).float().gather(1, lab[:, None])[:, 0]
                for chunk, lab in zip(masked.split(CHUNK), labels.split(CHUNK))
            ]).view(n, channels) - black
        responds = gains.abs().amax(dim=1, keepdim=True) > _RESPONDS
        weights = torch.where(responds, gains.softmax(dim=1), 0.0).to(activations.dtype)
        return (weights[:, :, None, None] * activations).sum(dim=1, keepdim=True)


# Every CAM by the name configs use, in drawing order.
CAMS: dict[str, CAM] = {**{name: WeightedCAM(name) for name in CAM_WEIGHTS}, "scorecam": ScoreCAM("scorecam")}


def gradcam(
    model: nn.Module, inputs: Tensor, targets: Targets, layers: Mapping[str, nn.Module],
    interpolate_mode: str = "bilinear",
) -> dict[str, Tensor]:
    """Grad-CAM of several layers, upsampled to the input and scaled per image (see :meth:`CAM.__call__`).

    All layers cost one forward and one backward pass together.
    """
    return CAMS["gradcam"](model, inputs, targets, layers, interpolate_mode)


def layer_cams(
    model: nn.Module, inputs: Tensor, targets: Targets, layers: Mapping[str, nn.Module], method: str,
    interpolate_mode: str = "bilinear",
) -> dict[str, Tensor]:
    """The CAM ``method`` (a name of :data:`CAMS`) of several layers, as :meth:`CAM.__call__` gives it.

    Raises:
        UserInputError: An unknown method, or a layer without a spatial feature map.
    """
    if method not in CAMS:
        raise UserInputError(f"Unknown CAM method {method!r}.\nHINT: choose from {list(CAMS)}.")
    return CAMS[method](model, inputs, targets, layers, interpolate_mode)
