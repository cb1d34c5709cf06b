"""The project's charts as pure functions: tensors and lists in, matplotlib figures out.

Loss curves, the confusion matrix, gate strips with a colour bar and the
faithfulness curves are ``matplotlib.figure.Figure`` objects with an Agg canvas,
never through ``pyplot``: nothing global changes, no window opens, nothing is
written to disk, and it is safe in training processes and DataLoader workers.
:func:`figure_to_image` turns a figure into an ``[H, W, 3]`` uint8 array for
``SummaryWriter.add_image(..., dataformats="HWC")`` or a PNG writer. Pictures
made of images (Grad-CAM overlays, feature maps) are pixel grids, in
:mod:`visualization.grids`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from visualization.grids import gate_title

__all__ = [
    "channel_gates_figure",
    "confusion_matrix_figure",
    "epoch_curves_figure",
    "faithfulness_curves_figure",
    "figure_to_image",
    "loss_curve_figure",
]

# Unit, in inches, of the channel-gate figure's size: at 100 dpi each block's
# strip is about 115 px high.
_CELL = 1.6
_DPI = 100


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
        boundary_labels: One label per boundary, e.g. what the stage trains
            (``LossPlots`` passes ``stage 1: +layer3, +layer4 @ 1e-4``); default ``"step N"``.
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
        # Label at the top, in axes coordinates so it stays put when y changes; on a
        # white box, so it stays readable where it crosses the curve.
        ax.annotate(label, xy=(step, 1), xycoords=("data", "axes fraction"),
                    xytext=(2, -4), textcoords="offset points", rotation=90,
                    va="top", ha="left", fontsize=8, color="tab:red",
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
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


def channel_gates_figure(channel_weights: Mapping[str, Tensor]) -> Figure:
    """What SE/CBAM channel attention does: one heat strip of gates per block.

    Rows are images, columns channels, colours the gate from 0 to 1. Gates
    stuck near 0.5 with a tiny spread mean the attention has not learned
    anything yet.

    Args:
        channel_weights: ``{layer: [N, C]}`` sigmoid gates (``[N, C, 1, 1]``
            is accepted).

    Returns:
        The figure.
    """
    fig = _new_figure(_CELL * 1.2 * 3, _CELL * 1.2 * 0.6 * max(len(channel_weights), 1) + 0.3)
    for r, (name, gates) in enumerate(channel_weights.items(), start=1):
        weights = gates.detach().float().reshape(gates.shape[0], -1)
        ax = fig.add_subplot(len(channel_weights), 1, r)
        strip = ax.imshow(weights.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(gate_title(name, weights), fontsize=8)
        ax.set_ylabel("image", fontsize=7)
        ax.set_xlabel("channel", fontsize=7)
        ax.tick_params(labelsize=6)
        fig.colorbar(strip, ax=ax, fraction=0.02, pad=0.01)
    fig.tight_layout()
    return fig


def faithfulness_curves_figure(curves: Mapping[str, Mapping[str, Tensor]]) -> Figure:
    """Deletion, insertion and ROAD (both orders) curves of every map side by side, one panel per curve.

    The model's maps are solid lines; the baselines ``random`` and ``centre``
    dashed grey and dotted black, so a map that does no better than them is
    seen at a glance. The legend gives each curve's area.

    Args:
        curves: ``{curve: {method: [S] mean probability}}`` (``FaithfulnessResult.curves``);
            point ``k`` of ``S`` has ``k / (S - 1)`` of the pixels removed or revealed.

    Returns:
        The figure.
    """
    baseline_style = {"random": {"color": "grey", "ls": "--"}, "centre": {"color": "black", "ls": ":"}}
    fig = _new_figure(4.2 * max(len(curves), 1), 3.6)
    for i, (curve, by_method) in enumerate(curves.items(), start=1):
        ax = fig.add_subplot(1, len(curves), i)
        for method, values in by_method.items():
            y = values.detach().float().cpu().numpy()
            x = np.linspace(0, 1, len(y))
            area = float((y[:-1] + y[1:]).sum() / 2 / (len(y) - 1))  # trapezoid rule on equal steps
            style = baseline_style.get(method, {"lw": 1.4})
            ax.plot(x, y, label=f"{method} ({area:.2f})", **style)
        removed = "revealed" if curve == "insertion" else "removed"
        first = "least" if curve == "road_lerf" else "most"
        ax.set_xlabel(f"share of pixels {removed}, {first} salient first")
        ax.set_ylabel("probability of the predicted class")
        ax.set_ylim(0, 1)
        better = "higher" if curve in ("insertion", "road_lerf") else "lower"
        ax.set_title(f"{curve} (area: {better} is better)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig


# --- helpers -----------------------------------------------------------------


def confusion_matrix_figure(matrix: Tensor, classes: Sequence[str], title: str = "") -> Figure:
    """Counts of (true, predicted) class pairs, drawn by torchmetrics, with each class's accuracy.

    Args:
        matrix: ``[C, C]`` counts, rows the true class, columns the predicted
            one (``MulticlassConfusionMatrix``'s layout).
        classes: Class names, indexed by class.
        title: Figure title, e.g. the stage and epoch.

    Returns:
        A figure (outside pyplot): the matrix with a count in every cell, the
        true-class labels carrying that class's accuracy (``cat 83%``; ``-``
        for a class without images).
    """
    matrix = matrix.detach().cpu().long()
    side = 2.5 + 0.55 * len(classes)  # inches: about 55 px per cell at 100 dpi, room for the labels
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    # The metric's public plot (torchmetrics' own drawing) of a matrix it did not have to compute.
    MulticlassConfusionMatrix(num_classes=len(classes)).plot(val=matrix, ax=ax, add_text=True, labels=list(classes))
    totals = matrix.sum(dim=1)
    ax.set_yticklabels(
        [f"{name} {100 * matrix[c, c].item() / totals[c].item():.0f}%" if totals[c] else f"{name} -"
         for c, name in enumerate(classes)],
        fontsize=10,
    )
    accuracy = matrix.diagonal().sum().item() / max(matrix.sum().item(), 1)
    summary = f"accuracy {100 * accuracy:.1f}% of {matrix.sum().item()} images"
    ax.set_title(f"{title}: {summary}" if title else summary, fontsize=11)
    fig.tight_layout()
    return fig


def _new_figure(width: float, height: float) -> Figure:
    """A figure with its own Agg canvas, outside pyplot's registry."""
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _no_data(ax: Axes) -> None:
    """Say 'no data' in an empty panel instead of leaving it ambiguous."""
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
