"""The project's pictures as pure functions: tensors and lists in, Figures out.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never
through ``pyplot``: nothing global changes, no window opens, nothing is
written to disk, and it is safe in training processes and DataLoader workers.
:func:`figure_to_image` turns a figure into an ``[H, W, 3]`` uint8 array for
``SummaryWriter.add_image(..., dataformats="HWC")`` or a PNG writer.

Input conventions:

* Images are ``[3, H, W]`` (or ``[N, 3, H, W]``) float tensors in ``[0, 1]``,
  i.e. already de-normalised; :func:`denormalize` undoes the dataset
  normalisation. An image outside ``[0, 1]`` is min-max scaled for display
  rather than clipped to a blank.
* Maps (CAMs, activations, gates) are plain tensors; any scaling needed for
  display happens here. Constant or all-zero maps render blank but finite.
* Labels and predictions are class indices; ``classes`` maps them to names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

__all__ = [
    "attention_figure",
    "denormalize",
    "epoch_curves_figure",
    "feature_maps_figure",
    "figure_to_image",
    "gradcam_figure",
    "heatmap_overlay",
    "loss_curve_figure",
    "top_channel_overlay_figure",
]

# Size of one image cell in inches; at 100 dpi a 32x32 image gets ~160 px,
# enough to see Grad-CAM blobs without a huge TensorBoard payload.
_CELL = 1.6
_DPI = 100
# Ranges below this count as constant (blank rendering, no division by ~0).
_EPS = 1e-12


def figure_to_image(fig: Figure) -> np.ndarray:
    """Render a figure to RGB pixels and release it.

    Args:
        fig: A figure from this module (or any matplotlib figure).

    Returns:
        ``uint8`` array ``[H, W, 3]``.
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    if fig.canvas.manager is not None:
        # Only pyplot-managed figures are registered anywhere; close those
        # so a long run does not leak them.
        import matplotlib.pyplot as plt

        plt.close(fig)
    else:
        # Release the axes and what they draw. Not fig.clear(): it resets
        # every Axes first, rebuilding their ticks (a third of a picture's cost).
        for ax in list(fig.axes):
            fig.delaxes(ax)
    return image


def denormalize(
    images: Tensor, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """Undo ``Normalize(mean, std)`` so images can be shown, clipped to ``[0, 1]``.

    Args:
        images: ``[3, H, W]`` or ``[N, 3, H, W]`` normalised images.
        mean: Per-channel mean used for normalisation (from the data module).
        std: Per-channel standard deviation used for normalisation.

    Returns:
        Images in ``[0, 1]``, same shape, float, on the CPU.
    """
    images = images.detach().float().cpu()
    shape = (-1, 1, 1)
    m = torch.as_tensor(mean, dtype=torch.float32).view(shape)
    s = torch.as_tensor(std, dtype=torch.float32).view(shape)
    return (images * s + m).clamp(0, 1)


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


def loss_curve_figure(
    steps: Sequence[int],
    losses: Sequence[float],
    boundaries: Sequence[int] = (),
    boundary_labels: Sequence[str] | None = None,
    smooth_window: int | None = None,
) -> Figure:
    """Per-iteration training loss over the whole run, with stage boundaries.

    Args:
        steps: Global step of each loss.
        losses: Batch loss at each step (non-finite values leave gaps).
        boundaries: Global steps where a new stage begins (e.g. unfreezing).
        boundary_labels: One label per boundary; default ``"step N"``.
        smooth_window: Moving-average window in steps; default about 2% of
            the run, so the trend is visible through batch noise.

    Returns:
        The figure.

    Raises:
        ValueError: ``steps`` and ``losses`` (or ``boundaries`` and
            ``boundary_labels``) differ in length.
    """
    if len(steps) != len(losses):
        raise ValueError(f"Got {len(steps)} steps but {len(losses)} losses; they pair up.")
    if boundary_labels is not None and len(boundary_labels) != len(boundaries):
        raise ValueError(
            f"Got {len(boundaries)} boundaries but {len(boundary_labels)} labels."
        )
    x = np.asarray(steps, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    fig = _new_figure(8.0, 4.0)
    ax = fig.add_subplot()
    ax.plot(x, y, lw=0.6, alpha=0.4, color="tab:blue", label="batch loss")
    finite = np.isfinite(y)
    window = smooth_window or max(1, len(y) // 50)
    if finite.sum() >= window > 1:
        kernel = np.ones(window) / window
        ax.plot(
            x[finite][window - 1 :],
            np.convolve(y[finite], kernel, mode="valid"),
            lw=1.8,
            color="tab:blue",
            label=f"moving average ({window} steps)",
        )
    labels = boundary_labels or [f"step {b}" for b in boundaries]
    for step, label in zip(boundaries, labels):
        ax.axvline(step, color="tab:red", ls="--", lw=1.0)
        # Label at the top, in axes coordinates so it stays put when y changes.
        ax.annotate(label, xy=(step, 1), xycoords=("data", "axes fraction"),
                    xytext=(2, -4), textcoords="offset points", rotation=90,
                    va="top", ha="left", fontsize=8, color="tab:red")
    if not finite.any():
        _no_data(ax)
    ax.set_xlabel("global step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss per iteration")
    ax.grid(alpha=0.3)
    if finite.any():
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def epoch_curves_figure(history: Mapping[str, Sequence[float]]) -> Figure:
    """Accuracy and loss per epoch, train against validation.

    Keys whose last part contains ``acc`` go to the left panel, those with
    ``loss`` to the right (``train/acc``, ``val/acc``, ``train/loss``,
    ``val/loss``; also e.g. ``test/acc``). Missing keys are skipped and each
    series may have its own length; epochs are numbered from 1.

    Args:
        history: ``{metric key: values per epoch}``.

    Returns:
        The figure (a panel without data says so).
    """
    fig = _new_figure(10.0, 4.0)
    panels = {"acc": fig.add_subplot(1, 2, 1), "loss": fig.add_subplot(1, 2, 2)}
    for kind, ax in panels.items():
        plotted = False
        for key, values in history.items():
            if kind not in key.rsplit("/", 1)[-1] or len(values) == 0:
                continue
            y = np.asarray(values, dtype=np.float64)
            ax.plot(np.arange(1, len(y) + 1), y, marker="o", ms=3, label=key)
            plotted = True
        ax.set_xlabel("epoch")
        ax.set_title("Accuracy" if kind == "acc" else "Loss")
        ax.grid(alpha=0.3)
        if plotted:
            ax.legend(fontsize=8)
        else:
            _no_data(ax)
    fig.tight_layout()
    return fig


def gradcam_figure(
    images: Tensor,
    cams: Mapping[str, Tensor],
    labels: Sequence[int] | Tensor,
    preds: Sequence[int] | Tensor,
    classes: Sequence[str],
    extra: Mapping[str, Tensor] | None = None,
) -> Figure:
    """Grad-CAM of several layers side by side, plus fine-grained methods.

    One row per image: the image titled ``true: X`` / ``pred: Y``, one overlay
    per layer in the order of ``cams`` (pass them low to high so localisation
    can be compared with depth), then one column per ``extra`` attribution.

    Args:
        images: ``[N, 3, H, W]`` in ``[0, 1]``.
        cams: ``{layer name: [N, H, W]}`` e.g. from ``attributions.gradcam``.
        labels: True class index per image.
        preds: Predicted class index per image.
        classes: Class names, indexed by class.
        extra: ``{method name: [N, C, H, W]}`` raw signed attributions (guided
            backprop, deconvolution, guided Grad-CAM); each image is scaled
            symmetrically so 0 is mid-grey and the largest magnitude reaches
            0 or 1.

    Returns:
        The figure.
    """
    extra = extra or {}
    n = images.shape[0]
    titles = ["image", *cams, *extra]
    fig, axes = _grid(n, len(titles))
    for i in range(n):
        row = axes[i]
        _show(row[0], _image_hwc(images[i]), _true_pred(labels[i], preds[i], classes))
        for ax, (name, cam) in zip(row[1:], cams.items()):
            _show(ax, heatmap_overlay(images[i], cam[i]), name if i == 0 else None)
        for ax, (name, attr) in zip(row[1 + len(cams) :], extra.items()):
            _show(ax, _signed_to_unit(attr[i]), name if i == 0 else None)
    fig.tight_layout()
    return fig


def feature_maps_figure(
    image: Tensor,
    activations: Mapping[str, Tensor],
    title: str,
    top_k: int = 8,
    cmap: str = "viridis",
) -> Figure:
    """The image, then per layer its ``top_k`` channels by mean activation.

    Each channel is min-max scaled on its own, so weak but structured
    channels stay visible; the title of each cell gives its index and mean.

    Args:
        image: ``[3, H, W]`` in ``[0, 1]``.
        activations: ``{layer name: [C, h, w]}`` (a leading batch dim of 1 is
            dropped), in the order the rows should appear (low to high).
        title: Title over the image, e.g. its class.
        top_k: Channels shown per layer (fewer if the layer has fewer).
        cmap: Colour map of the channels.

    Returns:
        The figure: row 0 is the image, then one row per layer.

    Raises:
        ValueError: An activation is not a ``[C, h, w]`` map.
    """
    maps = {name: _as_chw(name, act) for name, act in activations.items()}
    ncols = max(top_k, 1)
    fig, axes = _grid(1 + len(maps), ncols)
    _show(axes[0][0], _image_hwc(image), title)
    for ax in axes[0][1:]:
        ax.set_visible(False)
    for row, (name, act) in zip(axes[1:], maps.items()):
        means = act.flatten(1).mean(dim=1)
        top = means.argsort(descending=True)[:top_k].tolist()
        for ax, channel in zip(row, top):
            _show_map(ax, act[channel], cmap, f"ch {channel} ({means[channel]:.2f})")
        for ax in row[len(top) :]:
            ax.set_visible(False)
        row[0].set_ylabel(f"{name}\n{tuple(act.shape)}", fontsize=8)
    fig.tight_layout()
    return fig


def top_channel_overlay_figure(
    images: Tensor,
    activations: Tensor,
    labels: Sequence[int] | Tensor,
    preds: Sequence[int] | Tensor,
    classes: Sequence[str],
    k: int = 3,
    alpha: float = 0.5,
) -> Figure:
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
        The figure: one row per image, the image then ``k`` overlays.
    """
    n = images.shape[0]
    k = min(k, activations.shape[1])
    fig, axes = _grid(n, 1 + k)
    for i in range(n):
        row = axes[i]
        _show(row[0], _image_hwc(images[i]), _true_pred(labels[i], preds[i], classes))
        means = activations[i].flatten(1).mean(dim=1)
        for ax, channel in zip(row[1:], means.argsort(descending=True)[:k].tolist()):
            overlay = heatmap_overlay(images[i], activations[i, channel], alpha=alpha)
            _show(ax, overlay, f"ch {channel} ({means[channel]:.2f})")
    fig.tight_layout()
    return fig


def attention_figure(
    images: Tensor,
    channel_weights: Mapping[str, Tensor],
    spatial_maps: Mapping[str, Tensor],
    labels: Sequence[int] | Tensor | None = None,
    preds: Sequence[int] | Tensor | None = None,
    classes: Sequence[str] | None = None,
) -> Figure:
    """What SE/CBAM attention does: channel gates and spatial gates.

    Top: one row per image, the image then each CBAM spatial map overlaid
    (only when there are spatial maps: channel strips alone need no images).
    Below: one panel per channel-attention layer, a heat strip of its gates
    (rows: images, columns: channels, 0 to 1). Gates stuck near 0.5 with a
    tiny spread mean the attention has not learned anything yet.

    Args:
        images: ``[N, 3, H, W]`` in ``[0, 1]``.
        channel_weights: ``{layer: [N, C]}`` sigmoid gates (``[N, C, 1, 1]``
            is accepted).
        spatial_maps: ``{layer: [N, h, w]}`` sigmoid gates (``[N, 1, h, w]``
            is accepted), upsampled to the image and coloured on a fixed
            0..1 scale (jet: blue blocked, red passed), so a map near 1
            everywhere reads as "passes everything", not as contrast.
        labels: True class per image, for titles (optional).
        preds: Predicted class per image, for titles (optional).
        classes: Class names; indices are shown without them.

    Returns:
        The figure.
    """
    n = images.shape[0]
    spatial = {k: v.detach().float().reshape(n, *v.shape[-2:]) for k, v in spatial_maps.items()}
    channel = {k: v.detach().float().reshape(n, -1) for k, v in channel_weights.items()}
    ncols = 1 + len(spatial)
    # Channel strips get a short row each; image rows are square cells.
    image_rows = n if spatial or not channel else 0
    heights = [1.0] * image_rows + [0.6] * len(channel)
    fig = _new_figure(_CELL * 1.2 * max(ncols, 3), _CELL * 1.2 * sum(heights) + 0.3)
    grid = fig.add_gridspec(len(heights), ncols, height_ratios=heights)
    for i in range(image_rows):
        title = "image"
        if labels is not None and preds is not None:
            title = _true_pred(labels[i], preds[i], classes)
        _show(fig.add_subplot(grid[i, 0]), _image_hwc(images[i]), title)
        for j, (name, maps) in enumerate(spatial.items(), start=1):
            ax = fig.add_subplot(grid[i, j])
            # Gates are absolute (0: blocked, 1: passed), so a fixed range.
            overlay = heatmap_overlay(images[i], maps[i], value_range=(0.0, 1.0))
            _show(ax, overlay, _gate_title(name, maps[i]))
    for r, (name, weights) in enumerate(channel.items(), start=image_rows):
        ax = fig.add_subplot(grid[r, :])
        strip = ax.imshow(weights.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1,
                          interpolation="nearest")
        ax.set_title(_gate_title(name, weights), fontsize=8)
        ax.set_ylabel("image", fontsize=7)
        ax.set_xlabel("channel", fontsize=7)
        ax.tick_params(labelsize=6)
        fig.colorbar(strip, ax=ax, fraction=0.02, pad=0.01)
    fig.tight_layout()
    return fig


# --- helpers -----------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    """A figure with its own Agg canvas, outside pyplot's registry."""
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _grid(nrows: int, ncols: int) -> tuple[Figure, list[list[Axes]]]:
    """A figure of square image cells as a 2-D list of axes."""
    fig = _new_figure(_CELL * ncols, _CELL * nrows + 0.2)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [list(row) for row in axes]


def _show(ax: Axes, rgb: np.ndarray, title: str | None) -> None:
    """Draw an RGB image with no ticks."""
    ax.imshow(rgb, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _show_map(ax: Axes, heat: Tensor, cmap: str, title: str) -> None:
    """Draw one map scaled to [0, 1]; a constant map shows as the colour of 0."""
    scaled = _minmax(heat)
    if scaled is None:
        scaled = np.zeros(tuple(heat.shape), dtype=np.float32)
    ax.imshow(scaled, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7)


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


def _as_chw(name: str, act: Tensor) -> Tensor:
    """Accept [C, h, w] or [1, C, h, w]; refuse vectors such as channel gates."""
    act = act.detach().float().cpu()
    if act.dim() == 4 and act.shape[0] == 1:
        act = act[0]
    if act.dim() != 3:
        raise ValueError(
            f"Activation {name!r} has shape {tuple(act.shape)}; feature maps are "
            "[C, h, w].\nHINT: pass one image's activations (act[i]); show channel "
            "gates with attention_figure."
        )
    return act


def _true_pred(label: int | Tensor, pred: int | Tensor, classes: Sequence[str] | None) -> str:
    """'true: X / pred: Y' (on two lines) with class names when known."""
    def name(index: int | Tensor) -> str:
        i = int(index)
        return classes[i] if classes is not None and 0 <= i < len(classes) else str(i)

    # Two lines: long class names must fit a 32x32 image cell.
    return f"true: {name(label)}\npred: {name(pred)}"


def _gate_title(name: str, gates: Tensor) -> str:
    """Layer name with the gates' mean and spread."""
    return f"{name}\nmean {gates.mean().item():.2f}, std {gates.std(correction=0).item():.3f}"


def _no_data(ax: Axes) -> None:
    """Say 'no data' in an empty panel instead of leaving it ambiguous."""
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
