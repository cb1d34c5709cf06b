"""The project's pictures made of images, as pure functions: tensors in, ``[H, W, 3]`` uint8 pixels out.

Grad-CAM overlays, feature maps, gate maps and the mistakes gallery are image
grids (:func:`image_grid`): cells enlarged and pasted into one numpy array and
captioned with PIL. Building one matplotlib axes costs about 15 ms, so a grid of
70 images took over a second as a figure and takes a few tens of milliseconds
this way. Charts are matplotlib figures, in :mod:`visualization.figures`.

Input conventions:

* Images are ``[3, H, W]`` (or ``[N, 3, H, W]``) float tensors in ``[0, 1]``,
  as the models take them (they normalise internally). An image outside
  ``[0, 1]`` is min-max scaled for display rather than clipped to a blank.
* Maps (CAMs, activations, gates) are plain tensors; any scaling needed for
  display happens here. Constant or all-zero maps render blank but finite.
* Labels and predictions are class indices; ``classes`` maps them to names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = [
    "GRID_PAD",
    "feature_maps_grid",
    "gate_title",
    "gradcam_grid",
    "heatmap_overlay",
    "image_grid",
    "layer_gradcam_grid",
    "mistakes_grid",
    "spatial_gates_grid",
    "top_channels_grid",
]

# Ranges below this count as constant (blank rendering, no division by ~0).
_EPS = 1e-12

# Image grids: cells are enlarged (nearest neighbour, whole multiples) to about
# this many pixels a side, so a 32x32 image becomes 128 px: Grad-CAM blobs are
# visible and the PNG that TensorBoard stores stays small.
_GRID_CELL = 128
GRID_PAD = 2  # white pixels between cells and around the grid
_LINE = 12  # caption line height in pixels at _FONT_SIZE
_FONT_SIZE = 11
# Grad-CAM overlays of one layer per grid row; more probes wrap onto new rows.
_PER_ROW = 10


def heatmap_overlay(
    image: Tensor,
    heat: Tensor,
    alpha: float = 0.5,
    cmap: str = "jet",
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Blend a colour-mapped heat map over an image.

    Args:
        image: ``[3, H, W]`` in ``[0, 1]``.
        heat: ``[H, W]`` (or ``[h, w]``, upsampled bilinearly to ``H x W``).
        alpha: Weight of the heat map colours.
        cmap: Matplotlib colour map name.
        value_range: Fixed ``(low, high)`` mapped to the ends of the colour
            map, for maps whose absolute value means something (sigmoid
            gates: ``(0, 1)``); default: min-max per map, for relative maps
            such as CAMs.

    Returns:
        Float array ``[H, W, 3]`` in ``[0, 1]``. A constant or all-zero heat
        map carries no location, so the plain image is returned.
    """
    rgb = _image_hwc(image)
    heat = _resize(heat, rgb.shape[:2])
    scaled = _minmax(heat)
    if scaled is None:
        return rgb
    if value_range is not None:
        low, high = value_range
        scaled = ((torch.nan_to_num(heat).numpy() - low) / max(high - low, _EPS)).clip(0, 1)
    colours = matplotlib.colormaps[cmap](scaled)[..., :3]
    return ((1 - alpha) * rgb + alpha * colours).clip(0, 1).astype(np.float32)



# --- image grids ---------------------------------------------------------------

def image_grid(cells: Sequence[Sequence[np.ndarray | None]], captions: Sequence[Sequence[str | None]] | None = None) -> np.ndarray:
    """Rows of RGB cells as one picture, each cell with its caption above it.

    Every cell is enlarged by the same whole factor (nearest neighbour, so a
    4x4 feature map stays 16 honest blocks) to the size of the first cell,
    about 128 px a side. Captions are clipped to their cell's width.

    Args:
        cells: Rows of float ``[h, w, 3]`` arrays in ``[0, 1]``; ``None`` or a
            short row leaves blank (white) cells.
        captions: Text per cell, same layout as ``cells``, lines split by
            ``\\n``; ``None`` for none.

    Returns:
        ``uint8 [H, W, 3]``: ``len(cells)`` rows and the longest row's count of
        columns, each cell ``caption band + image`` with ``GRID_PAD`` pixels
        between and around cells.

    Raises:
        ValueError: All cells are blank.
    """
    filled = [cell for row in cells for cell in row if cell is not None]
    if not filled:
        raise ValueError("image_grid got no cells to draw, only blanks.")
    ncols = max(len(row) for row in cells)
    height, width = filled[0].shape[:2]
    scale = max(1, _GRID_CELL // max(height, width))
    size = (height * scale, width * scale)
    captions = captions or []
    lines = max((text.count("\n") + 1 for row in captions for text in row if text), default=0)
    band = lines * _LINE + 4 if lines else 0
    step_y, step_x = band + size[0] + GRID_PAD, size[1] + GRID_PAD
    canvas = np.full((len(cells) * step_y + GRID_PAD, ncols * step_x + GRID_PAD, 3), 255, np.uint8)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            if cell is not None:
                top, left = GRID_PAD + r * step_y + band, GRID_PAD + c * step_x
                canvas[top : top + size[0], left : left + size[1]] = _enlarge(cell, size)
    picture = Image.fromarray(canvas)
    if band:
        draw, font = ImageDraw.Draw(picture), ImageFont.load_default(size=_FONT_SIZE)
        for r, row in enumerate(captions):
            for c, text in enumerate(row):
                if text:
                    x, y = GRID_PAD + c * step_x, GRID_PAD + r * step_y
                    fitted = "\n".join(_fit(draw, line, font, size[1] - 4) for line in text.split("\n"))
                    draw.multiline_text((x + 2, y + 1), fitted, fill=(0, 0, 0), font=font, spacing=1)
    return np.asarray(picture)


def gradcam_grid(
    images: Tensor,
    cams: Mapping[str, Tensor],
    labels: Sequence[int] | Tensor,
    preds: Sequence[int] | Tensor,
    classes: Sequence[str],
    extra: Mapping[str, Tensor] | None = None,
) -> np.ndarray:
    """Grad-CAM of several layers side by side, plus fine-grained methods.

    One row per image: the image captioned ``true: X`` / ``pred: Y``, one
    overlay per layer in the order of ``cams`` (pass them low to high so
    localisation can be compared with depth), then one column per ``extra``
    attribution.

    Args:
        images: ``[N, 3, H, W]`` in ``[0, 1]``.
        cams: ``{layer name: [N, H, W]}`` e.g. from ``cams.gradcam``.
        labels: True class index per image.
        preds: Predicted class index per image.
        classes: Class names, indexed by class.
        extra: ``{method name: [N, C, H, W]}`` raw signed attributions (guided
            backprop, deconvolution, guided Grad-CAM); each image is scaled
            symmetrically so 0 is mid-grey and the largest magnitude reaches
            0 or 1.

    Returns:
        ``uint8 [H, W, 3]``, ``N`` rows of ``1 + len(cams) + len(extra)`` cells.
    """
    extra = extra or {}
    cells, captions = [], []
    for i in range(images.shape[0]):
        cells.append([
            _image_hwc(images[i]),
            *(heatmap_overlay(images[i], cam[i]) for cam in cams.values()),
            *(_signed_to_unit(attr[i]) for attr in extra.values()),
        ])
        captions.append([_true_pred(labels[i], preds[i], classes), *cams, *extra])
    return image_grid(cells, captions)


def layer_gradcam_grid(
    images: Tensor,
    cam: Tensor,
    labels: Sequence[int] | Tensor,
    preds: Sequence[int] | Tensor,
    classes: Sequence[str],
) -> np.ndarray:
    """One layer's Grad-CAM overlaid on every image, captioned with true and predicted class.

    The picture of a per-layer tag (``gradcam/conv3``): TensorBoard's step
    slider then shows how that layer's localisation develops over training.

    Args:
        images: ``[N, 3, H, W]`` in ``[0, 1]``.
        cam: ``[N, H, W]``, one layer's maps.
        labels: True class index per image, -1 when unknown (captioned ``true: ?``).
        preds: Predicted class index per image.
        classes: Class names, indexed by class.

    Returns:
        ``uint8 [H, W, 3]``: the overlays, 10 to a row.
    """
    overlays = [heatmap_overlay(images[i], cam[i]) for i in range(images.shape[0])]
    titles = [_true_pred(labels[i], preds[i], classes) for i in range(images.shape[0])]
    rows = range(0, len(overlays), _PER_ROW)
    return image_grid([overlays[r : r + _PER_ROW] for r in rows], [titles[r : r + _PER_ROW] for r in rows])


def feature_maps_grid(
    images: Tensor,
    activations: Tensor,
    labels: Sequence[int] | Tensor,
    preds: Sequence[int] | Tensor,
    classes: Sequence[str],
    top_k: int = 8,
    cmap: str = "viridis",
) -> np.ndarray:
    """Per image, the image then one layer's ``top_k`` channels by mean activation.

    Each channel is min-max scaled on its own, so weak but structured
    channels stay visible; its caption gives its index and mean. A constant
    channel shows as the colour of 0.

    Args:
        images: ``[N, 3, H, W]`` in ``[0, 1]``.
        activations: ``[N, C, h, w]``, the layer's output for these images.
        labels: True class index per image.
        preds: Predicted class index per image.
        classes: Class names, indexed by class.
        top_k: Channels shown per image (fewer if the layer has fewer).
        cmap: Colour map of the channels.

    Returns:
        ``uint8 [H, W, 3]``, one row per image.

    Raises:
        ValueError: ``activations`` is not ``[N, C, h, w]``.
    """
    colours = matplotlib.colormaps[cmap]

    def colour(image: Tensor, heat: Tensor) -> np.ndarray:
        scaled = _minmax(heat)
        return colours(scaled if scaled is not None else np.zeros(tuple(heat.shape)))[..., :3]

    return _strongest_channels(images, activations, labels, preds, classes, top_k, colour)


def top_channels_grid(
    images: Tensor,
    activations: Tensor,
    labels: Sequence[int] | Tensor,
    preds: Sequence[int] | Tensor,
    classes: Sequence[str],
    k: int = 3,
    alpha: float = 0.5,
) -> np.ndarray:
    """The source's "attention" maps: strongest channels of a layer, overlaid.

    Per image, the ``k`` channels of ``activations`` with the highest mean
    activation are upsampled to the image size and overlaid (jet). This
    shows where the layer responds, not why the class was chosen: compare
    with Grad-CAM.

    Args:
        images: ``[N, 3, H, W]`` in ``[0, 1]``.
        activations: ``[N, C, h, w]``, usually the last conv layer's output.
        labels: True class index per image.
        preds: Predicted class index per image.
        classes: Class names, indexed by class.
        k: Channels per image.
        alpha: Weight of the heat map colours.

    Returns:
        ``uint8 [H, W, 3]``: one row per image, the image then ``k`` overlays.
    """
    return _strongest_channels(
        images, activations, labels, preds, classes, k, lambda image, heat: heatmap_overlay(image, heat, alpha=alpha)
    )


def _strongest_channels(
    images: Tensor,
    activations: Tensor,
    labels: Sequence[int] | Tensor,
    preds: Sequence[int] | Tensor,
    classes: Sequence[str],
    k: int,
    draw: Callable[[Tensor, Tensor], np.ndarray],
) -> np.ndarray:
    """Rows of the image, then ``draw(image, channel)`` for its ``k`` channels of highest mean activation."""
    if activations.dim() != 4:
        raise ValueError(
            f"Activations of shape {tuple(activations.shape)} are not feature maps [N, C, h, w].\n"
            "HINT: pick a conv layer or block; show channel gates with channel_gates_figure."
        )
    cells, captions = [], []
    for i in range(images.shape[0]):
        act = activations[i].detach().float().cpu()
        means = act.flatten(1).mean(dim=1)
        top = means.argsort(descending=True)[:k].tolist()
        cells.append([_image_hwc(images[i]), *(draw(images[i], act[c]) for c in top)])
        captions.append([_true_pred(labels[i], preds[i], classes), *(f"ch {c}\nmean {means[c]:.2f}" for c in top)])
    return image_grid(cells, captions)


def spatial_gates_grid(
    images: Tensor,
    spatial_maps: Mapping[str, Tensor],
    labels: Sequence[int] | Tensor,
    preds: Sequence[int] | Tensor,
    classes: Sequence[str],
) -> np.ndarray:
    """What CBAM's spatial attention passes: per image, the image then each block's gate overlaid.

    Gates are absolute (0: blocked, 1: passed), so they are coloured on a
    fixed 0..1 scale (jet: blue blocked, red passed): a map near 1 everywhere
    reads as "passes everything", not as contrast. Captions give each map's
    mean and spread.

    Args:
        images: ``[N, 3, H, W]`` in ``[0, 1]``.
        spatial_maps: ``{layer: [N, h, w]}`` sigmoid gates (``[N, 1, h, w]``
            is accepted), upsampled to the image.
        labels: True class per image.
        preds: Predicted class per image.
        classes: Class names, indexed by class.

    Returns:
        ``uint8 [H, W, 3]``, one row per image.
    """
    n = images.shape[0]
    maps = {name: gates.detach().float().reshape(n, *gates.shape[-2:]) for name, gates in spatial_maps.items()}
    cells, captions = [], []
    for i in range(n):
        overlays = [heatmap_overlay(images[i], gates[i], value_range=(0.0, 1.0)) for gates in maps.values()]
        cells.append([_image_hwc(images[i]), *overlays])
        captions.append([_true_pred(labels[i], preds[i], classes), *(gate_title(k, g[i]) for k, g in maps.items())])
    return image_grid(cells, captions)


def mistakes_grid(
    images: Tensor,
    cams_pred: Tensor,
    cams_true: Tensor,
    labels: Sequence[int] | Tensor,
    preds: Sequence[int] | Tensor,
    confidences: Sequence[float] | Tensor,
    classes: Sequence[str],
) -> np.ndarray:
    """Wrong predictions, one a row: the image, Grad-CAM for the predicted class, Grad-CAM for the true one.

    Args:
        images: ``[N, 3, H, W]`` in ``[0, 1]``.
        cams_pred: ``[N, H, W]`` Grad-CAM for each predicted class.
        cams_true: ``[N, H, W]`` Grad-CAM for each true class.
        labels: True class per image.
        preds: Predicted class per image.
        confidences: Probability the model gave its prediction.
        classes: Class names, indexed by class.

    Returns:
        ``uint8 [H, W, 3]``, ``N`` rows of 3 cells.
    """
    cells, captions = [], []
    for i in range(images.shape[0]):
        true, pred = classes[int(labels[i])], classes[int(preds[i])]
        cells.append([_image_hwc(images[i]), heatmap_overlay(images[i], cams_pred[i]), heatmap_overlay(images[i], cams_true[i])])
        captions.append([
            f"true: {true}\npred: {pred} {100 * float(confidences[i]):.0f}%",
            f"Grad-CAM for\npredicted {pred}", f"Grad-CAM for\ntrue {true}",
        ])
    return image_grid(cells, captions)


def _image_hwc(image: Tensor) -> np.ndarray:
    """[3, H, W] tensor to float [H, W, 3] in [0, 1] for imshow."""
    img = image.detach().float().cpu()
    if img.dim() != 3:
        raise ValueError(f"Expected an image [3, H, W], got shape {tuple(img.shape)}.")
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    img = torch.nan_to_num(img)
    low, high = img.min().item(), img.max().item()
    if low < -1e-3 or high > 1 + 1e-3:
        # Probably still normalised: stretch for display rather than clip.
        img = (img - low) / max(high - low, _EPS)
    return img.clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32)


def _resize(heat: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize a [h, w] map to size (no-op if it already fits)."""
    heat = heat.detach().float().cpu()
    heat = heat.reshape(heat.shape[-2:])
    if tuple(heat.shape) == tuple(size):
        return heat
    return F.interpolate(heat[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def _minmax(heat: Tensor) -> np.ndarray | None:
    """Scale to [0, 1]; None for a constant (or non-finite) map."""
    h = torch.nan_to_num(heat.detach().float().cpu(), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = h.min().item(), h.max().item()
    if high - low <= _EPS:
        return None
    return ((h - low) / (high - low)).numpy()


def _signed_to_unit(attr: Tensor) -> np.ndarray:
    """Signed attribution [C, H, W] to an [H, W, 3] image: 0 -> 0.5 grey."""
    a = torch.nan_to_num(attr.detach().float().cpu())
    peak = a.abs().max().item()
    a = a / (2 * peak) + 0.5 if peak > _EPS else torch.full_like(a, 0.5)
    if a.shape[0] != 3:
        a = a.mean(dim=0, keepdim=True).expand(3, -1, -1)
    return a.clamp(0, 1).permute(1, 2, 0).numpy()


def _true_pred(label: int | Tensor, pred: int | Tensor, classes: Sequence[str] | None) -> str:
    """'true: X / pred: Y' (on two lines) with class names when known; 'true: ?' for a label of -1 (unknown)."""
    def name(index: int | Tensor) -> str:
        i = int(index)
        if i < 0:
            return "?"  # e.g. an image explain.py read from outside any class folder
        return classes[i] if classes is not None and i < len(classes) else str(i)

    # Two lines: long class names must fit a 32x32 image cell.
    return f"true: {name(label)}\npred: {name(pred)}"


def _enlarge(cell: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float ``[h, w, 3]`` in [0, 1] to uint8 at ``size`` by nearest neighbour (pixel ``i`` takes ``i * h // H``).

    In numpy on purpose: the same in torch runs its thread pool on every
    enlarged cell, which on a busy two-core machine made a grid 20x slower.
    """
    pixels = (np.asarray(cell, dtype=np.float32) * 255).round().astype(np.uint8)
    rows = np.arange(size[0]) * pixels.shape[0] // size[0]
    cols = np.arange(size[1]) * pixels.shape[1] // size[1]
    return pixels[rows[:, None], cols]


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels, so a caption never runs into the next cell."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def gate_title(name: str, gates: Tensor) -> str:
    """Layer name with the gates' mean and spread."""
    return f"{name}\nmean {gates.mean().item():.2f}, std {gates.std(correction=0).item():.3f}"
