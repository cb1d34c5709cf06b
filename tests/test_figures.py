"""Charts render to what they should show; grids place and colour their cells; blank inputs stay finite."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from tests.pictures_helpers import grid_cells as cells
from visualization.figures import channel_gates_figure, epoch_curves_figure, figure_to_image, loss_curve_figure
from visualization.grids import (
    GRID_PAD,
    feature_maps_grid,
    gradcam_grid,
    heatmap_overlay,
    image_grid,
    layer_gradcam_grid,
    spatial_gates_grid,
    top_channels_grid,
)

CLASSES = ["cat", "dog", "ship"]


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def pixels_of(image: np.ndarray, colour: str, tolerance: int = 12) -> int:
    """How many pixels of ``image`` are within ``tolerance`` (per channel) of a matplotlib colour."""
    rgb = np.round(np.array(matplotlib.colors.to_rgb(colour)) * 255)
    return int((np.abs(image.astype(int) - rgb) <= tolerance).all(axis=-1).sum())


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
    # A white figure with the drawn line (the first colour of the cycle) in it.
    assert pixels_of(image, "white") > image.shape[0] * image.shape[1] // 2
    assert pixels_of(image, "tab:blue") > 100
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


def test_loss_curve_with_boundaries():
    steps = list(range(300))
    losses = [2.3 * np.exp(-s / 100) + 0.1 * np.sin(s) for s in steps]
    fig = loss_curve_figure(
        steps, losses, boundaries=[100, 200], boundary_labels=["stage 2", "stage 3"]
    )
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # raw, smoothed, two boundaries
    assert [t.get_text() for t in ax.texts] == ["stage 2", "stage 3"]
    image = render(fig)
    assert pixels_of(image, "tab:blue") > 200  # the curves
    assert pixels_of(image, "tab:red", tolerance=30) > 50  # the dashed stage lines and their labels


def test_loss_curve_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="3 steps but 2 losses"):
        loss_curve_figure([0, 1, 2], [1.0, 2.0])
    with pytest.raises(ValueError, match="labels"):
        loss_curve_figure([0], [1.0], boundaries=[0, 1], boundary_labels=["a"])


def test_loss_curve_without_data_is_finite():
    # No loss to draw: finite axes that say so, and the NaN losses left as gaps rather than drawn as numbers.
    for steps, losses in (([], []), ([0, 1], [float("nan"), float("nan")])):
        fig = loss_curve_figure(steps, losses)
        ax = fig.axes[0]
        assert np.isfinite(ax.get_xlim()).all() and np.isfinite(ax.get_ylim()).all()
        assert [t.get_text() for t in ax.texts] == ["no data"]
        assert np.isnan(ax.lines[0].get_ydata()).all()
        render(fig)


def test_epoch_curves_tolerate_missing_keys_and_lengths():
    history = {"train/acc": [0.3, 0.5, 0.6], "val/acc": [0.35, 0.5], "train/loss": [2.0, 1.5, 1.2]}
    fig = epoch_curves_figure(history)
    acc, loss = fig.axes
    assert [len(line.get_xdata()) for line in acc.lines] == [3, 2]
    assert len(loss.lines) == 1
    render(fig)
    render(epoch_curves_figure({}))


def test_image_grid_places_enlarged_cells_under_their_captions():
    red, blue = np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.float32)
    red[..., 0], blue[..., 2] = 1, 1
    picture = image_grid([[red, None], [blue]], [["one\ntwo", None], ["three"]])
    # 8 px cells enlarged 16x to 128; 2 caption lines; the short row is padded with a blank cell
    assert picture.dtype == np.uint8 and picture.shape[1] == 2 * (128 + GRID_PAD) + GRID_PAD
    (a, blank), (b, c) = cells(picture, 2, 2, 128)
    assert (a == [255, 0, 0]).all() and (b == [0, 0, 255]).all()
    assert (blank == 255).all() and (c == 255).all()
    band = picture[GRID_PAD : picture.shape[0] // 2 - 128, GRID_PAD : GRID_PAD + 128]
    assert (band < 128).any(), "caption text is drawn in the band above the cell"
    assert (picture[GRID_PAD : picture.shape[0] // 2 - 128, 2 * GRID_PAD + 128 :] == 255).all(), "no caption, no text"


def test_image_grid_keeps_coarse_maps_blocky_and_refuses_all_blanks():
    coarse = np.zeros((2, 2, 3), np.float32)
    coarse[0, 0] = 1  # one of four blocks white
    picture = image_grid([[np.zeros((32, 32, 3), np.float32), coarse]])
    _, block = cells(picture, 1, 2, 128)[0]
    assert (block[:64, :64] == 255).all() and (block[64:, :] == 0).all()
    with pytest.raises(ValueError, match="no cells"):
        image_grid([[None]])


def test_image_grid_clips_long_captions_to_the_cell():
    image = np.full((32, 32, 3), 0.5, np.float32)
    picture = image_grid([[image, image]], [["a" * 80, None]])
    band = picture[: picture.shape[0] - 128 - GRID_PAD]
    assert (band[:, 128 + GRID_PAD :] == 255).all()  # nothing spilled into the next cell


def test_gradcam_grid_layout(images):
    cams = {"conv1": torch.rand(2, 16, 16), "conv3": torch.zeros(2, 16, 16)}
    extra = {"guided backprop": torch.randn(2, 3, 16, 16), "zero": torch.zeros(2, 3, 16, 16)}
    picture = gradcam_grid(images, cams, [0, 1], torch.tensor([0, 2]), CLASSES, extra)
    grid = cells(picture, 2, 5, 128)
    for r in range(2):
        plain = (images[r].permute(1, 2, 0).numpy() * 255).round()
        assert np.abs(grid[r][0][::8, ::8] - plain).max() <= 1  # the image, enlarged 8x
        assert grid[r][1].std() > 1  # a real CAM colours the image
        assert np.array_equal(grid[r][2], grid[r][0])  # an all-zero CAM leaves it plain
        assert grid[r][3].std() > 1 and (grid[r][4] == 128).all()  # zero attribution: mid-grey


def test_layer_gradcam_grid_wraps_ten_to_a_row():
    many = torch.rand(12, 3, 32, 32)
    picture = layer_gradcam_grid(many, torch.rand(12, 32, 32), list(range(12)), [0] * 12, CLASSES)
    grid = cells(picture, 2, 10, 128)
    assert all(cell.std() > 1 for cell in grid[0] + grid[1][:2])
    assert all((cell == 255).all() for cell in grid[1][2:])


def test_an_unknown_true_class_reads_as_a_question_mark():
    cam = torch.rand(1, 16, 16)
    image = torch.rand(1, 3, 16, 16)
    unknown = layer_gradcam_grid(image, cam, [-1], [1], CLASSES)
    # The same picture drawn with a class actually named "?": captions "true: ?" / "pred: dog".
    assert np.array_equal(unknown, layer_gradcam_grid(image, cam, [0], [1], ["?", "dog", "ship"]))


def test_feature_maps_grid_ranks_channels_and_keeps_blank_channels_finite(images):
    act = torch.zeros(2, 5, 8, 8)
    act[:, 3] = torch.rand(8, 8) + 2  # the strongest channel comes first
    act[:, 1] = 1.5  # second strongest, constant: the colour of 0
    picture = feature_maps_grid(images, act, [0, 1], [1, 1], CLASSES, top_k=3)
    row = cells(picture, 2, 4, 128)[0]
    assert row[1].std() > 1  # channel 3, min-max scaled
    viridis_zero = (np.array(matplotlib.colormaps["viridis"](0.0)[:3]) * 255).round()
    assert (np.abs(row[2] - viridis_zero) <= 1).all()
    with pytest.raises(ValueError, match="HINT"):
        feature_maps_grid(images, torch.rand(2, 16), [0, 1], [1, 1], CLASSES)


def enlarged(cell: np.ndarray, factor: int = 8) -> np.ndarray:
    """A float [h, w, 3] cell as an image grid shows it: uint8, each pixel a factor x factor block."""
    pixels = (cell.astype(np.float32) * 255).round().astype(np.uint8)
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1)


def test_top_channels_grid_overlays_the_strongest_channels_strongest_first(images):
    act = torch.rand(2, 6, 4, 4, generator=torch.Generator().manual_seed(1))
    act[:, 5] += 10
    picture = top_channels_grid(images, act, [0, 1], [1, 1], CLASSES, k=3)
    for i, (image, *overlays) in enumerate(cells(picture, 2, 4, 128)):
        means = act[i].mean(dim=(1, 2)).tolist()
        strongest = sorted(range(6), key=lambda c: -means[c])[:3]
        assert strongest[0] == 5
        assert np.array_equal(image, enlarged(images[i].permute(1, 2, 0).numpy()))
        for overlay, channel in zip(overlays, strongest):
            assert np.array_equal(overlay, enlarged(heatmap_overlay(images[i], act[i, channel]))), channel


def test_channel_gates_figure_draws_a_strip_per_block():
    fig = channel_gates_figure({"se1": torch.rand(2, 8, 1, 1), "se2": torch.full((2, 16), 0.9)})
    strips = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split("\n")[0] for ax in strips] == ["se1", "se2"]
    assert strips[1].get_title().endswith("mean 0.90, std 0.000")
    # se2's gates are all 0.9: its strip is viridis' colour of 0.9 on the fixed 0..1 scale (a scale
    # fitted to the strip would put a constant in the middle of the colour map).
    assert pixels_of(render(fig), matplotlib.colors.to_hex(matplotlib.colormaps["viridis"](0.9)), tolerance=3) > 500


def test_spatial_gates_grid_colours_gates_on_a_fixed_scale(images):
    passing = torch.full((2, 4, 4), 0.99)
    passing[:, 0, 0] = 0.98
    spatial = {"cbam1": torch.rand(2, 1, 8, 8), "cbam2": passing}
    image, some, everything = cells(spatial_gates_grid(images, spatial, [0, 1], [0, 0], CLASSES), 2, 3, 128)[0]
    assert some.std() > 1

    def redness(cell: np.ndarray) -> float:
        return float(cell[..., 0].mean() - cell[..., 2].mean())

    # gates near 1 everywhere: "passes everything" turns the whole image red, not blue..red contrast
    assert redness(everything) - redness(image) > 40


def test_all_zero_inputs_give_blank_finite_grids():
    zeros = torch.zeros(1, 3, 16, 16)
    picture = gradcam_grid(zeros, {"l": torch.zeros(1, 16, 16)}, [0], [0], CLASSES, {"g": torch.zeros(1, 3, 16, 16)})
    image, cam, attribution = cells(picture, 1, 3, 128)[0]
    assert (image == 0).all() and (cam == 0).all() and (attribution == 128).all()
    # Four constant channels: the image, then each channel in the colour map's colour of 0.
    zero_colour = np.round(np.array(matplotlib.colormaps["viridis"](0.0)[:3]) * 255)
    image, *channels = cells(feature_maps_grid(zeros, torch.zeros(1, 4, 8, 8), [0], [0], CLASSES), 1, 5, 128)[0]
    assert (image == 0).all() and all((channel == zero_colour).all() for channel in channels)
    # No location to overlay: every cell is the plain (black) image.
    picture = top_channels_grid(zeros, torch.zeros(1, 4, 4, 4), [0], [0], CLASSES)
    assert all((cell == 0).all() for cell in cells(picture, 1, 4, 128)[0])
