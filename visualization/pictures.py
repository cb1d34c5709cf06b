"""Every picture of SPEC section 6 for a batch of images, as RGB arrays keyed by tag.

One function, :func:`render_pictures`, gathers the tensors (predictions,
Grad-CAM, input-gradient methods, activations, attention gates) with the
methods of :mod:`visualization.methods` and draws them with those of
:mod:`visualization.grids` (pictures made of images) and :mod:`visualization.figures`
(charts). The training callback and ``explain.py`` both
call it, so a picture of a checkpoint is the picture TensorBoard showed during
training. No Lightning import: a model is any ``nn.Module`` taking images in
``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from visualization.attributions import attribution_mode, prepare_inputs, resolve_layers
from visualization.cams import capture_activations, gradcam
from visualization.methods import DEFAULT_METHODS, cam_maps, check_methods, input_attributions
from visualization.figures import channel_gates_figure, figure_to_image
from visualization.grids import (
    feature_maps_grid,
    gradcam_grid,
    layer_gradcam_grid,
    mistakes_grid,
    spatial_gates_grid,
    top_channels_grid,
)

__all__ = ["attention_gates", "most_confident_mistakes", "picture_tags", "render_mistakes", "render_pictures"]

# Channels of the last layer overlaid in the source's "attention" picture (SPEC 6).
TOP_CHANNELS = 3


def attention_gates(net: nn.Module) -> dict[str, nn.Module]:
    """The gates of the attention blocks, found by their names.

    The attention modules name the submodule that outputs their gate ``gate``
    (``conv1.se.gate``, ``cbam.layer1.channel.gate``, ``cbam.layer1.spatial.gate``,
    ``conv2.coord.gate``: ``lightning_modules.attention``); a forward hook there
    reads the attention weights themselves.

    Args:
        net: The network to search.

    Returns:
        ``{dotted name: gate module}`` in module order; empty for a model
        without attention.
    """
    return {
        name: module
        for name, module in net.named_modules()
        if name.rsplit(".", 1)[-1] == "gate"
    }


def picture_tags(layers: Sequence[str], channel_attention: bool = False, spatial_attention: bool = False) -> list[str]:
    """The tags :func:`render_pictures` returns for these settings, in its order.

    Args:
        layers: The explained layers, low to high.
        channel_attention: Whether the model has SE/CBAM channel gates.
        spatial_attention: Whether it has CBAM spatial gates.

    Returns:
        ``gradcam/all_layers``, ``gradcam/<layer>`` and ``features/<layer>``
        per layer, ``features/top_channels``, then ``attention/channel`` and
        ``attention/spatial`` where the model has them.
    """
    tags = [
        "gradcam/all_layers",
        *(f"gradcam/{name}" for name in layers),
        *(f"features/{name}" for name in layers),
        "features/top_channels",
    ]
    if channel_attention:
        tags.append("attention/channel")
    if spatial_attention:
        tags.append("attention/spatial")
    return tags


def render_pictures(
    model: nn.Module,
    images: Tensor,
    labels: Sequence[int] | Tensor,
    classes: Sequence[str],
    layers: Sequence[str],
    layer_root: nn.Module | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    feature_top_k: int = 8,
    feature_images: int = 1,
    attention: bool = True,
) -> dict[str, np.ndarray]:
    """Grad-CAM, input-gradient methods, feature maps and attention for some images.

    Each image is explained for the class the model predicts (the decision a
    user wants to understand); titles carry the true and the predicted class.
    The model is left exactly as it was found (see ``attribution_mode``), so
    this is safe between training steps and inside ``inference_mode`` loops.

    Args:
        model: Classifier taking images in ``[0, 1]`` and returning logits
            (our LightningModules normalise internally).
        images: ``[N, C, H, W]`` floats in ``[0, 1]``; moved to the model's
            device and floating dtype.
        labels: True class per image (``-1`` when unknown: captioned ``true: ?``).
        classes: Class names indexed by class.
        layers: Layer names relative to ``layer_root``, low to high.
        layer_root: Module the names are resolved in (``model.net`` for our
            classifiers); default ``model``.
        methods: Which of :data:`visualization.methods.METHODS` to draw beside Grad-CAM: a CAM variant
            as one column per layer (after Grad-CAM's), an input method as one column.
        feature_top_k: Channels per layer in the feature-map pictures.
        feature_images: How many of the images (the first ones) get a row in
            each layer's feature-map picture.
        attention: Draw SE/CBAM gates when the model has them.

    Returns:
        ``{tag: uint8 [H, W, 3]}`` with the tags of :func:`picture_tags`.

    Raises:
        ValueError: An unknown layer or method name, or a method that does not
            apply to the model or a layer (a ``UserInputError`` listing those that do).
    """
    check_methods(methods, model)
    root = model if layer_root is None else layer_root
    named = resolve_layers(root, layers)
    gates = attention_gates(root) if attention else {}
    x = _model_input(model, images)
    labels = torch.as_tensor(labels).long().cpu()
    with attribution_mode(model), torch.no_grad():
        preds = model(prepare_inputs(x, model)).argmax(dim=1).cpu()

    cams = gradcam(model, x, preds, named)
    variants = {
        f"{method.replace('_', ' ')} {layer}": cam for (method, layer), cam in cam_maps(model, x, preds, named, methods).items()
    }
    drawn = input_attributions(model, x, preds, methods, named[layers[-1]])
    extra = {name.replace("_", " "): attribution for name, attribution in drawn.items()}  # display names
    shown = x.detach().float().cpu()
    # Side by side for comparing layers, and one stable tag per layer for
    # following a layer over the epochs. Image grids pasted in numpy, not
    # matplotlib figures: all of them cost less than one figure did.
    pictures = {"gradcam/all_layers": gradcam_grid(shown, {**cams, **variants}, labels, preds, classes, extra)}
    for name, cam in cams.items():
        pictures[f"gradcam/{name}"] = layer_gradcam_grid(shown, cam, labels, preds, classes)

    captured = capture_activations(model, x, {**named, **gates})
    few = slice(0, feature_images)
    for name in layers:
        pictures[f"features/{name}"] = feature_maps_grid(
            shown[few], captured[name][few], labels[few], preds[few], classes, feature_top_k
        )
    pictures["features/top_channels"] = top_channels_grid(
        shown, captured[layers[-1]], labels, preds, classes, k=TOP_CHANNELS
    )

    channel = {_gate_label(n): captured[n] for n in gates if captured[n].shape[-2:] == (1, 1)}
    # A gate over channels and positions ([N, C, h, w]: GE, coordinate attention) is drawn by its channel mean.
    spatial = {_gate_label(n): captured[n].mean(1, keepdim=True) for n in gates if captured[n].shape[-2:] != (1, 1)}
    if channel:
        pictures["attention/channel"] = figure_to_image(channel_gates_figure(channel))
    if spatial:
        pictures["attention/spatial"] = spatial_gates_grid(shown, spatial, labels, preds, classes)
    return pictures


def most_confident_mistakes(confidences: Tensor, preds: Tensor, labels: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` wrong predictions the model was surest of, surest first.

    Images without a label (``-1``) are never mistakes. Ties keep index order.

    Args:
        confidences: ``[N]`` probability of each prediction (``probs.max(dim=1)``).
        preds: ``[N]`` predicted classes.
        labels: ``[N]`` true classes.
        count: How many to return at most.

    Returns:
        int64 ``[min(count, number of mistakes)]``.
    """
    wrong = ((preds != labels) & (labels >= 0)).nonzero()[:, 0]
    order = confidences[wrong].argsort(descending=True, stable=True)
    return wrong[order[:count]]


def render_mistakes(
    model: nn.Module,
    images: Tensor,
    labels: Sequence[int] | Tensor,
    classes: Sequence[str],
    layer: str,
    layer_root: nn.Module | None = None,
) -> np.ndarray:
    """The mistake gallery: each image with Grad-CAM of ``layer`` for its predicted and its true class.

    Args:
        model: Classifier taking images in ``[0, 1]`` (left as found).
        images: ``[N, C, H, W]`` in ``[0, 1]``, e.g. those :func:`most_confident_mistakes` chose.
        labels: True class per image.
        classes: Class names.
        layer: Layer name in ``layer_root``, e.g. ``conv3``.
        layer_root: Where ``layer`` is resolved (``model.net`` for our classifiers); default ``model``.

    Returns:
        ``uint8 [H, W, 3]``, a row per image (see ``figures.mistakes_grid``).
    """
    named = resolve_layers(model if layer_root is None else layer_root, [layer])
    x = _model_input(model, images)
    labels = torch.as_tensor(labels).long().cpu()
    with attribution_mode(model), torch.no_grad():
        confidences, preds = model(prepare_inputs(x, model)).softmax(dim=1).max(dim=1)
    for_pred = gradcam(model, x, preds, named)[layer]
    for_true = gradcam(model, x, labels, named)[layer]
    shown = x.detach().float().cpu()
    return mistakes_grid(shown, for_pred, for_true, labels, preds.cpu(), confidences.cpu(), classes)


def _model_input(model: nn.Module, images: Tensor) -> Tensor:
    """Images on the model's device, in its floating dtype (bf16 models get bf16)."""
    param = next(model.parameters(), None)
    if param is None:
        return images.float()
    dtype = param.dtype if param.dtype.is_floating_point else torch.float32
    return images.to(device=param.device, dtype=dtype)


def _gate_label(name: str) -> str:
    """``conv1.se.gate`` -> ``conv1.se``: the block, not its sigmoid."""
    return name.removesuffix(".gate")

