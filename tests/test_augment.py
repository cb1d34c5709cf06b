"""Tests for datamodules.augment: BatchAugment against torchvision's per-image reference."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from datamodules import augment
from datamodules.augment import AugmentParams, BatchAugment, reference_transform

ONLY_CROP = dict(flip_p=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, degrees=0.0)
NO_GEOMETRY = dict(padding=0, flip_p=0.0, degrees=0.0)


@pytest.fixture(autouse=True)
def one_thread():
    """Run single-threaded: the batches here are small, and on a shared or oversubscribed CPU
    (CI runners, this project's 2-core boxes) OpenMP's barriers between two threads measured up
    to 200x slower than one thread for these element-wise ops."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def torchvision_one(image: torch.Tensor, p: AugmentParams, i: int, padding: int) -> torch.Tensor:
    """Image i through torchvision's functional ops with the same parameters, per image."""
    h, w = image.shape[-2:]
    top, left = int(p.top[i]), int(p.left[i])
    out = F.pad(image, [padding] * 4, fill=0)[:, top : top + h, left : left + w]
    if p.flip[i]:
        out = F.horizontal_flip(out)
    adjust = {
        0: lambda x: F.adjust_brightness(x, float(p.brightness[i])),
        1: lambda x: F.adjust_contrast(x, float(p.contrast[i])),
        2: lambda x: F.adjust_saturation(x, float(p.saturation[i])),
        3: lambda x: F.adjust_hue(x, float(p.hue[i])),
    }
    for op in p.order[i].tolist():
        out = adjust[op](out)
    return F.rotate(out, float(p.angle[i]), interpolation=v2.InterpolationMode.NEAREST, fill=0)


@pytest.mark.parametrize("channels", [3, 1])
def test_apply_matches_torchvision_image_by_image(channels: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small CPU pieces, so that the seams between pieces are checked too.
    monkeypatch.setattr(augment, "CPU_CHUNK", 16)
    x = torch.rand(40, channels, 32, 32, generator=seeded(1))
    aug = BatchAugment()
    params = aug.sample_params(40, x, seeded(2))
    out = aug.apply(x, params)
    expected = torch.stack([torchvision_one(x[i], params, i, aug.padding) for i in range(40)])
    differs = (out - expected).abs() > 1e-4
    # Nearest-neighbour rotation may round a coordinate that lies within float error of a pixel
    # boundary the other way; anything beyond such rare pixels is a real mismatch.
    assert differs.float().mean() < 1e-3
    assert torch.allclose(out[~differs], expected[~differs], atol=1e-4)


def test_hue_matches_adjust_hue_over_the_whole_circle() -> None:
    x = torch.rand(64, 3, 8, 8, generator=seeded(3))
    x[:, :, 0, 0] = 0.5  # gray pixels have no hue and must stay gray
    aug = BatchAugment(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.5, **NO_GEOMETRY)
    params = aug.sample_params(64, x, seeded(4))
    out = aug.apply(x, params)
    expected = torch.stack([F.adjust_hue(x[i], float(params.hue[i])) for i in range(64)])
    assert torch.allclose(out, expected, atol=1e-5)
    assert params.hue.min() < -0.45 and params.hue.max() > 0.45


def marker_positions(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = images[:, 0].flatten(1).argmax(dim=1)
    return flat // images.shape[-1], flat % images.shape[-1]


def test_crop_offsets_cover_the_padding_uniformly_like_the_reference() -> None:
    x = torch.zeros(1, 3, 32, 32)
    x[:, :, 16, 16] = 1.0
    out = BatchAugment(**ONLY_CROP)(x.expand(4000, -1, -1, -1), seeded(5))
    rows, cols = marker_positions(out)

    ref = v2.RandomCrop(32, padding=4)
    torch.manual_seed(6)
    ref_rows, ref_cols = marker_positions(torch.stack([ref(x[0, :1]) for _ in range(600)]))

    for ours, theirs in ((rows, ref_rows), (cols, ref_cols)):
        assert set(ours.tolist()) == set(theirs.tolist()) == set(range(12, 21))
        freq = torch.bincount(ours - 12, minlength=9).float() / len(ours)
        assert (freq - 1 / 9).abs().max() < 0.03  # sd of one bin ~0.005
    # Independent offsets: both axes vary together over the full 9 x 9 grid.
    assert len(set(zip(rows.tolist(), cols.tolist()))) == 81


def test_flip_rate_and_marker_mirroring() -> None:
    x = torch.zeros(1, 3, 32, 32)
    x[:, :, 10, 3] = 1.0
    out = BatchAugment(**{**ONLY_CROP, "padding": 0, "flip_p": 0.5})(x.expand(4000, -1, -1, -1), seeded(7))
    rows, cols = marker_positions(out)
    assert set(cols.tolist()) == {3, 28} and set(rows.tolist()) == {10}
    assert abs((cols == 28).float().mean().item() - 0.5) < 0.04  # sd ~0.008


def test_brightness_factors_uniform_in_range() -> None:
    x = torch.full((4000, 3, 4, 4), 0.5)
    aug = BatchAugment(brightness=0.2, contrast=0.0, saturation=0.0, hue=0.0, **NO_GEOMETRY)
    factors = aug(x, seeded(8))[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.8 - 1e-6 and factors.max() <= 1.2 + 1e-6
    assert factors.min() < 0.81 and factors.max() > 1.19
    quarters = torch.histc(factors, bins=4, min=0.8, max=1.2) / len(factors)
    assert (quarters - 0.25).abs().max() < 0.04
    # Every image's brightness is scaled evenly, as the reference does for a uniform image.
    ref = v2.ColorJitter(brightness=0.2)
    torch.manual_seed(9)
    ref_factors = torch.stack([ref(x[0])[0, 0, 0] / 0.5 for _ in range(300)])
    assert ref_factors.min() >= 0.8 - 1e-6 and ref_factors.max() <= 1.2 + 1e-6
    assert abs(ref_factors.mean() - factors.mean()) < 0.03


def test_rotation_angles_stay_within_degrees_and_reach_both_ends() -> None:
    x = torch.zeros(1, 3, 33, 33)
    x[:, :, 15:18, 28:31] = 1.0  # 3x3 marker 13 px right of the centre pixel (16, 16)
    out = BatchAugment(**{**ONLY_CROP, "padding": 0, "degrees": 15.0})(x.expand(2000, -1, -1, -1), seeded(10))
    mass = out[:, 0]
    total = mass.sum(dim=(1, 2))
    grid = torch.arange(33.0)
    row = (mass.sum(dim=2) * grid).sum(dim=1) / total
    col = (mass.sum(dim=1) * grid).sum(dim=1) / total
    # Counter-clockwise for positive angles, as torchvision: the marker moves up (smaller row).
    angles = torch.rad2deg(torch.atan2(16.0 - row, col - 16.0))
    assert angles.abs().max() <= 15.0 + 3.0  # nearest-neighbour jitter of the centroid
    assert angles.min() < -12 and angles.max() > 12
    assert abs(angles.mean().item()) < 1.0
    assert (angles.abs() < 5).float().mean() > 0.2  # uniform: about a third within +-5 degrees


def test_full_pipeline_statistics_match_the_pil_reference() -> None:
    g = seeded(11)
    image = (torch.rand(3, 32, 32, generator=g) * 0.6 + 0.2)
    pil = F.to_pil_image(image)
    image = F.pil_to_tensor(pil).float() / 255  # same quantised pixels for both sides
    ref = reference_transform(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    torch.manual_seed(12)
    theirs = torch.stack([ref(pil) for _ in range(300)])
    ours = BatchAugment()(image.expand(2000, -1, -1, -1), g)

    assert abs(ours.mean() - theirs.mean()) < 0.01
    assert abs(ours.std() - theirs.std()) < 0.01
    # Black pixels: rotation corners, plus crop padding that the jitter left black (contrast > 1
    # and brightness keep it at 0; contrast < 1 lifts it). PIL rounds to 1/255 steps, so "black"
    # is "below 1.5/255" on both sides.
    black_ours = (ours.amax(dim=1) < 1.5 / 255).float().mean()
    black_theirs = (theirs.amax(dim=1) < 1.5 / 255).float().mean()
    assert abs(black_ours - black_theirs) < 0.01
    assert 0.02 < black_ours < 0.2


def test_identical_images_get_their_own_parameters() -> None:
    x = torch.rand(1, 3, 32, 32, generator=seeded(13)).expand(64, -1, -1, -1)
    out = BatchAugment()(x, seeded(14)).flatten(1)
    distinct = torch.cdist(out, out) + torch.eye(64) > 1e-3
    assert distinct.all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_keeps_shape_dtype_and_range(dtype: torch.dtype) -> None:
    x = torch.rand(20, 3, 32, 32, generator=seeded(15), dtype=dtype)
    x[:, :, :4] = 1.0  # saturated pixels: brightness and contrast must clamp, not overflow
    out = BatchAugment(brightness=0.9, contrast=0.9)(x, seeded(16))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_seeded_generator_is_deterministic() -> None:
    x = torch.rand(16, 3, 32, 32, generator=seeded(17))
    aug = BatchAugment()
    assert torch.equal(aug(x, seeded(3)), aug(x, seeded(3)))
    assert not torch.equal(aug(x, seeded(3)), aug(x, seeded(4)))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"padding": -1}, "padding"),
        ({"padding": 1.5}, "padding"),
        ({"flip_p": 1.5}, "flip_p"),
        ({"brightness": -0.1}, "brightness"),
        ({"contrast": "high"}, "contrast"),
        ({"saturation": float("nan")}, "saturation"),
        ({"hue": 0.6}, "hue"),
        ({"degrees": -1.0}, "degrees"),
        ({"degrees": 181.0}, "degrees"),
    ],
)
def test_bad_arguments_are_rejected_by_name(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        BatchAugment(**kwargs)


def test_uint8_batch_is_rejected_with_a_hint() -> None:
    with pytest.raises(ValueError, match="HINT"):
        BatchAugment()(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_reference_transform_is_the_reference_recipe() -> None:
    names = [type(t).__name__ for t in reference_transform((0.5,) * 3, (0.5,) * 3).transforms]
    assert names == [
        "RandomCrop", "RandomHorizontalFlip", "ColorJitter", "RandomRotation",
        "ToImage", "ToDtype", "Normalize",
    ]
    out = reference_transform((0.5,) * 3, (0.5,) * 3)(Image.new("RGB", (32, 32), (255, 255, 255)))
    assert out.shape == (3, 32, 32) and out.max() <= 1.0 + 1e-6 and not math.isnan(out.sum())
