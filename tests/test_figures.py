"""Figures render to finite, non-blank pixels; blank inputs stay finite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from visualization.figures import (
    attention_figure,
    denormalize,
    epoch_curves_figure,
    feature_maps_figure,
    figure_to_image,
    gradcam_figure,
    heatmap_overlay,
    loss_curve_figure,
    top_channel_overlay_figure,
)

CLASSES = ["cat", "dog", "ship"]


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def render(fig: Figure) -> np.ndarray:
    assert isinstance(fig, Figure)
    image = figure_to_image(fig)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 100 and image.shape[1] > 100
    return image


def test_figure_to_image_size_and_closing():
    fig = Figure(figsize=(3, 2), dpi=100)
    fig.add_subplot().plot([0, 1], [1, 0])
    image = figure_to_image(fig)
    assert image.shape == (200, 300, 3)
    assert image.std() > 0
    assert not fig.axes  # released after rendering


def test_heatmap_overlay_blank_heat_returns_image(images):
    for heat in (torch.zeros(16, 16), torch.full((16, 16), 3.0)):
        out = heatmap_overlay(images[0], heat)
        assert np.allclose(out, images[0].permute(1, 2, 0).numpy(), atol=1e-6)


def test_heatmap_overlay_colours_the_peak(images):
    heat = torch.zeros(4, 4)
    heat[0, 0] = 1.0  # coarse map, upsampled to the image
    out = heatmap_overlay(images[0], heat, alpha=1.0)
    assert out.shape == (16, 16, 3) and np.isfinite(out).all()
    # jet: hot (red) at the peak corner, cold (blue) far from it.
    assert out[0, 0, 0] > out[0, 0, 2] and out[-1, -1, 2] > out[-1, -1, 0]


def test_heatmap_overlay_fixed_range_keeps_absolute_values(images):
    # A gate map near 1 everywhere must look "hot", not be stretched to blue..red.
    heat = torch.full((16, 16), 0.99)
    heat[0, 0] = 0.98
    out = heatmap_overlay(images[0], heat, alpha=1.0, value_range=(0.0, 1.0))
    assert (out[..., 2] < 0.3).all()


def test_denormalize_inverts_normalize(images):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    assert torch.allclose(denormalize((images - m) / s, mean, std), images, atol=1e-6)


def test_loss_curve_with_boundaries():
    steps = list(range(300))
    losses = [2.3 * np.exp(-s / 100) + 0.1 * np.sin(s) for s in steps]
    fig = loss_curve_figure(
        steps, losses, boundaries=[100, 200], boundary_labels=["stage 2", "stage 3"]
    )
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # raw, smoothed, two boundaries
    assert [t.get_text() for t in ax.texts] == ["stage 2", "stage 3"]
    assert render(fig).std() > 0


def test_loss_curve_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="3 steps but 2 losses"):
        loss_curve_figure([0, 1, 2], [1.0, 2.0])
    with pytest.raises(ValueError, match="labels"):
        loss_curve_figure([0], [1.0], boundaries=[0, 1], boundary_labels=["a"])


def test_loss_curve_without_data_is_finite():
    render(loss_curve_figure([], []))
    render(loss_curve_figure([0, 1], [float("nan"), float("nan")]))


def test_epoch_curves_tolerate_missing_keys_and_lengths():
    history = {"train/acc": [0.3, 0.5, 0.6], "val/acc": [0.35, 0.5], "train/loss": [2.0, 1.5, 1.2]}
    fig = epoch_curves_figure(history)
    acc, loss = fig.axes
    assert [len(line.get_xdata()) for line in acc.lines] == [3, 2]
    assert len(loss.lines) == 1
    render(fig)
    render(epoch_curves_figure({}))


def test_gradcam_figure_layout(images):
    cams = {"conv1": torch.rand(2, 16, 16), "conv3": torch.zeros(2, 16, 16)}
    extra = {"guided backprop": torch.randn(2, 3, 16, 16), "zero": torch.zeros(2, 3, 16, 16)}
    fig = gradcam_figure(images, cams, [0, 1], torch.tensor([0, 2]), CLASSES, extra)
    assert len(fig.axes) == 2 * 5
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:5] == ["true: cat\npred: cat", "conv1", "conv3", "guided backprop", "zero"]
    assert titles[5] == "true: dog\npred: ship"
    assert render(fig).std() > 0


def test_feature_maps_figure_ranks_channels(images):
    act = torch.zeros(5, 8, 8)
    act[3] = torch.rand(8, 8) + 2  # the strongest channel comes first
    act[1] = torch.rand(8, 8) + 1
    activations = {"conv1": act, "conv2": torch.rand(1, 2, 4, 4)}
    fig = feature_maps_figure(images[0], activations, "cat", top_k=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0] == "cat"
    assert titles[1].startswith("ch 3") and titles[2].startswith("ch 1")
    assert len(titles) == 1 + 3 + 2  # conv2 has only two channels
    assert render(fig).std() > 0


def test_feature_maps_figure_rejects_vectors(images):
    with pytest.raises(ValueError, match="HINT"):
        feature_maps_figure(images[0], {"gate": torch.rand(16)}, "x")


def test_top_channel_overlay_figure(images):
    act = torch.rand(2, 6, 4, 4)
    act[:, 5] += 10
    fig = top_channel_overlay_figure(images, act, [0, 1], [1, 1], CLASSES, k=3)
    assert len(fig.axes) == 2 * 4
    assert fig.axes[1].get_title().startswith("ch 5")
    assert render(fig).std() > 0


def test_attention_figure_with_and_without_maps(images):
    channel = {"se1": torch.rand(2, 8, 1, 1), "se2": torch.full((2, 16), 0.5)}
    spatial = {"cbam1": torch.rand(2, 1, 8, 8), "cbam2": torch.zeros(2, 4, 4)}
    image = render(attention_figure(images, channel, spatial, [0, 1], [0, 0], CLASSES))
    assert image.std() > 0
    render(attention_figure(images, channel, {}))
    render(attention_figure(images, {}, spatial))


def test_all_zero_inputs_render_finite():
    zeros = torch.zeros(1, 3, 16, 16)
    extra = {"g": torch.zeros(1, 3, 16, 16)}
    render(gradcam_figure(zeros, {"l": torch.zeros(1, 16, 16)}, [0], [0], CLASSES, extra))
    render(feature_maps_figure(zeros[0], {"l": torch.zeros(4, 8, 8)}, "blank"))
    render(top_channel_overlay_figure(zeros, torch.zeros(1, 4, 4, 4), [0], [0], CLASSES))
