"""Every explanation method a config can name, in one place, and the checks on a choice of them.

Two families register their own: the attributions on the input pixels
(:data:`visualization.attributions.INPUT_ATTRIBUTIONS`, a column each in the
pictures) and the CAMs (:data:`visualization.cams.CAMS`, a column per layer).
Grad-CAM is always drawn and scored at every layer, so it is not a choice.
The pictures, the faithfulness scores, the callbacks and ``explain.py`` all
read the lists here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from common.user_input import UserInputError
from visualization.attributions import INPUT_ATTRIBUTIONS
from visualization.cams import CAMS

__all__ = [
    "CAM_METHODS", "DEFAULT_METHODS", "INPUT_METHODS", "METHODS", "cam_maps", "check_methods", "input_attributions",
]

INPUT_METHODS = tuple(INPUT_ATTRIBUTIONS)
CAM_METHODS = tuple(name for name in CAMS if name != "gradcam")
# Every method a config can name besides Grad-CAM, in drawing order.
METHODS = (*INPUT_METHODS, *CAM_METHODS)
# What the callbacks draw and score unless told otherwise: three backward passes an image, cheap enough
# for every few epochs. Integrated gradients, SmoothGrad (IG_STEPS and SMOOTHGRAD_SAMPLES passes), occlusion
# (49 forward passes) and Score-CAM (one forward pass per channel) are for the offline leaderboard, or opt-in.
DEFAULT_METHODS = ("guided_backprop", "deconvolution", "guided_gradcam")
# Methods that change the gradient of nn.ReLU modules: on a model without any they would be plain gradients.
_RELU_METHODS = ("guided_backprop", "deconvolution", "guided_gradcam")


def check_methods(methods: Sequence[str], model: nn.Module | None = None) -> None:
    """Refuse a method name outside :data:`METHODS`, or (given ``model``) one that does not apply to it.

    Guided backpropagation, deconvolution and guided Grad-CAM work by changing
    the gradient of ``nn.ReLU`` modules; on a model without one they would
    silently be plain gradients, so they are refused there. (A CAM at a layer
    without a spatial feature map is refused when it runs, by :class:`visualization.cams.CAM`.)

    Raises:
        UserInputError: The message lists the methods that apply.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserInputError(f"Unknown methods {unknown}.\nHINT: choose from {list(METHODS)}.")
    if model is not None and not any(isinstance(m, nn.ReLU) for m in model.modules()):
        refused = [m for m in methods if m in _RELU_METHODS]
        if refused:
            raise UserInputError(
                f"Methods {refused} guide the gradient through nn.ReLU modules, and "
                f"{type(model).__name__} has none.\n"
                f"HINT: choose from those that apply to it: {[m for m in METHODS if m not in _RELU_METHODS]}."
            )


def input_attributions(
    model: nn.Module, x: Tensor, targets: Tensor, methods: Sequence[str], last_layer: nn.Module
) -> dict[str, Tensor]:
    """The ``[N, C, H, W]`` attributions of the input methods among ``methods``, in :data:`INPUT_METHODS` order.

    ``last_layer`` is the layer whose Grad-CAM masks guided Grad-CAM.
    """
    return {name: compute(model, x, targets, last_layer) for name, compute in INPUT_ATTRIBUTIONS.items() if name in methods}


def cam_maps(
    model: nn.Module, x: Tensor, targets: Tensor, layers: Mapping[str, nn.Module], methods: Sequence[str]
) -> dict[tuple[str, str], Tensor]:
    """``{(method, layer): [N, H, W]}``: the CAMs among ``methods`` (:data:`CAM_METHODS` order) at every layer."""
    return {
        (method, name): cam
        for method in CAM_METHODS if method in methods
        for name, cam in CAMS[method](model, x, targets, layers).items()
    }
