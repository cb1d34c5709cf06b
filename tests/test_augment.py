"""The batched augmentation against torchvision's per-image reference transforms."""

from __future__ import annotations

import colorsys

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from datamodules import augment
from datamodules.augment import AugmentParams, BatchAugment

N = 2000
OFF = {"padding": 0, "flip_p": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "degrees": 0.0}


def per_image(transform, images: torch.Tensor) -> torch.Tensor:
    return torch.stack([transform(image) for image in images])


def position_coded(n: int) -> torch.Tensor:
    """Images whose first channel encodes each pixel's (row, column), all values > 0."""
    code = (torch.arange(32 * 32, dtype=torch.float32) + 1) / 1024
    images = torch.rand(n, 3, 32, 32)
    images[:, 0] = code.view(32, 32)
    return images


def crop_offsets(out: torch.Tensor) -> torch.Tensor:
    """(row, column) shift of each output's centre pixel relative to the input."""
    index = (out[:, 0, 16, 16] * 1024).round().long() - 1
    return torch.stack((index // 32 - 16, index % 32 - 16), dim=1)


def test_crop_offsets_are_uniform_over_the_padding_like_random_crop():
    torch.manual_seed(0)
    images = position_coded(N)
    ours = crop_offsets(BatchAugment(**{**OFF, "padding": 4})(images))
    reference = crop_offsets(per_image(v2.RandomCrop(32, padding=4), images))
    for offsets in (ours, reference):
        for axis in (0, 1):
            counts = torch.bincount(offsets[:, axis] + 4, minlength=9)
            assert len(counts) == 9 and counts.min() > N / 9 * 0.7 and counts.max() < N / 9 * 1.3
    assert ours.abs().max() == reference.abs().max() == 4


def test_padding_is_zero_before_jitter():
    images = torch.ones(N, 3, 32, 32)
    out = BatchAugment(**{**OFF, "padding": 4})(images)
    zero_rows = (out.sum(dim=(1, 3)) == 0).sum(dim=1).float()
    reference = (per_image(v2.RandomCrop(32, padding=4), images).sum(dim=(1, 3)) == 0).sum(dim=1).float()
    assert abs(zero_rows.mean() - reference.mean()) < 0.3  # both about 20/9 padded rows per image


def test_flip_rate_is_one_half():
    torch.manual_seed(1)
    images = position_coded(N)
    out = BatchAugment(**{**OFF, "flip_p": 0.5})(images)
    flipped = out[:, 0, 0, 0] == images[0, 0, 0, 31]
    assert 0.45 < flipped.float().mean() < 0.55
    assert torch.equal(out[flipped, 0], images[flipped, 0].flip(-1))


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
def test_colour_factors_match_color_jitter(name):
    torch.manual_seed(2)
    # A two-tone coloured image: every adjustment moves it, none clips at 0.2.
    images = torch.zeros(N, 3, 32, 32)
    images[:, :, :16] = torch.tensor([0.6, 0.4, 0.3])[:, None, None]
    images[:, :, 16:] = torch.tensor([0.3, 0.5, 0.4])[:, None, None]
    ours = BatchAugment(**{**OFF, name: 0.2})(images)
    reference = per_image(v2.ColorJitter(**{name: 0.2}), images)
    ours_value, reference_value = ours[:, 0, 0, 0], reference[:, 0, 0, 0]
    assert abs(ours_value.mean() - reference_value.mean()) < 0.01
    assert abs(ours_value.std() - reference_value.std()) < 0.01
    assert ours_value.min() >= reference_value.min() - 0.01 and ours_value.max() <= reference_value.max() + 0.01


def hue_shifts(images: torch.Tensor, start: float) -> torch.Tensor:
    """Hue of each image's first pixel minus ``start``, wrapped to [-0.5, 0.5), by the standard library's colorsys."""
    hues = [colorsys.rgb_to_hsv(*pixel)[0] for pixel in images[:, :, 0, 0].tolist()]
    return (torch.tensor(hues) - start + 0.5) % 1.0 - 0.5


def test_hue_shift_is_uniform_within_its_range():
    torch.manual_seed(3)
    images = torch.zeros(N, 3, 32, 32)
    images[:, 0], images[:, 1], images[:, 2] = 0.8, 0.4, 0.2
    start = colorsys.rgb_to_hsv(0.8, 0.4, 0.2)[0]
    shift = hue_shifts(BatchAugment(**{**OFF, "hue": 0.1})(images), start)
    reference = hue_shifts(per_image(v2.ColorJitter(hue=0.1), images), start)
    for values in (shift, reference):
        assert -0.1 - 1e-4 <= values.min() < -0.09 and 0.09 < values.max() <= 0.1 + 1e-4
        assert abs(values.mean()) < 0.01
    assert abs(shift.std() - reference.std()) < 0.005


def test_rotation_zeroes_as_many_corner_pixels_as_random_rotation():
    torch.manual_seed(4)
    images = torch.ones(N // 2, 3, 32, 32)
    ours = (BatchAugment(**{**OFF, "degrees": 15.0})(images)[:, 0] == 0).float().sum(dim=(1, 2))
    reference = (per_image(v2.RandomRotation(15), images)[:, 0] == 0).float().sum(dim=(1, 2))
    assert abs(ours.mean() - reference.mean()) < 0.1 * reference.mean()
    assert abs(ours.max() - reference.max()) < 0.15 * reference.max()


def test_every_image_draws_its_own_parameters():
    torch.manual_seed(5)
    images = torch.rand(1, 3, 32, 32).expand(64, -1, -1, -1).contiguous()
    out = BatchAugment()(images)
    flat = out.flatten(1)
    distances = torch.cdist(flat, flat) + torch.eye(64) * 1e9
    assert distances.min() > 0


def test_range_shape_and_seeded_determinism():
    images = torch.rand(16, 3, 32, 32)
    augment = BatchAugment()
    first = augment(images, generator=torch.Generator().manual_seed(0))
    again = augment(images, generator=torch.Generator().manual_seed(0))
    other = augment(images, generator=torch.Generator().manual_seed(1))
    assert first.shape == images.shape and first.dtype == images.dtype
    assert 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_grayscale_batches_skip_colour_jitter():
    # Saturation and hue leave a single-channel image as it is (as in torchvision and PIL); the
    # brightness and contrast still apply, and equal torchvision's image by image.
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    assert torch.equal(BatchAugment(**{**OFF, "saturation": 0.4, "hue": 0.5})(x), x)
    aug = BatchAugment(**{**OFF, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.5})
    params = aug.sample_params(4, x, torch.Generator().manual_seed(6))
    expected = torch.stack([
        TF.adjust_contrast(TF.adjust_brightness(x[i], float(params.brightness[i])), float(params.contrast[i]))
        if params.order[i].tolist().index(0) < params.order[i].tolist().index(1) else
        TF.adjust_brightness(TF.adjust_contrast(x[i], float(params.contrast[i])), float(params.brightness[i]))
        for i in range(4)
    ])
    assert torch.allclose(aug.transform(x, params), expected, atol=1e-5)
    assert not torch.allclose(expected, x, atol=1e-2)  # the jitter did something


def test_module_methods_are_not_shadowed():
    # nn.Module.to() runs self._apply(fn) and nn.Module.apply(fn) visits submodules: neither may be ours.
    augment = BatchAugment()
    assert augment.to(torch.float64) is augment
    visited = []
    augment.apply(visited.append)
    assert visited == [augment]


@pytest.mark.parametrize(("kwargs", "named"), [({"flip_p": 1.5}, "flip_p"), ({"hue": 0.7}, "hue"),
                                               ({"padding": -1}, "padding"), ({"degrees": -3}, "degrees"),
                                               ({"cpu_threads": 0}, "cpu_threads")])
def test_bad_arguments_are_named(kwargs, named):
    with pytest.raises(ValueError, match=named):
        BatchAugment(**kwargs)


@pytest.mark.parametrize(("cpu_threads", "inside"), [(None, [2, 2, 2]), (1, [1, 1, 1])])
def test_cpu_threads_apply_only_when_asked_and_the_setting_is_restored(cpu_threads, inside, monkeypatch):
    # By default a library call must not touch the process-wide thread count; asked, it uses and restores it.
    augment = BatchAugment(cpu_threads=cpu_threads)
    seen = []
    real = augment._transform_chunk
    monkeypatch.setattr(augment, "_transform_chunk", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        augment(torch.rand(130, 3, 32, 32))
        assert seen == inside and torch.get_num_threads() == 2  # 3 chunks of at most 64 images
    finally:
        torch.set_num_threads(before)


def torchvision_one(image: torch.Tensor, p: AugmentParams, i: int, padding: int) -> torch.Tensor:
    """Image i through torchvision's functional ops with the same parameters, per image."""
    h, w = image.shape[-2:]
    top, left = int(p.top[i]), int(p.left[i])
    out = TF.pad(image, [padding] * 4, fill=0)[:, top : top + h, left : left + w]
    if p.flip[i]:
        out = TF.horizontal_flip(out)
    adjust = {
        0: lambda x: TF.adjust_brightness(x, float(p.brightness[i])),
        1: lambda x: TF.adjust_contrast(x, float(p.contrast[i])),
        2: lambda x: TF.adjust_saturation(x, float(p.saturation[i])),
        3: lambda x: TF.adjust_hue(x, float(p.hue[i])),
    }
    for op in p.order[i].tolist():
        out = adjust[op](out)
    return TF.rotate(out, float(p.angle[i]), interpolation=v2.InterpolationMode.NEAREST, fill=0)


@pytest.mark.parametrize("channels", [3, 1])
def test_transform_matches_torchvision_image_by_image(channels, monkeypatch):
    # The batched ops fuse crop, flip and rotation into one gather: check them pixel by pixel,
    # in small CPU pieces so the seams between pieces are checked too.
    monkeypatch.setattr(augment, "CPU_CHUNK", 16)
    x = torch.rand(40, channels, 32, 32, generator=torch.Generator().manual_seed(1))
    aug = BatchAugment()
    params = aug.sample_params(40, x, torch.Generator().manual_seed(2))
    out = aug.transform(x, params)
    expected = torch.stack([torchvision_one(x[i], params, i, aug.padding) for i in range(40)])
    differs = (out - expected).abs() > 1e-4
    # Nearest-neighbour rotation may round a coordinate within float error of a pixel boundary
    # the other way; anything beyond such rare pixels is a real mismatch.
    assert differs.float().mean() < 1e-3
    # Each such pixel holds the value of a torchvision pixel one step away (the other side of the
    # rounding), not any other value.
    around = torch.nn.functional.pad(expected, [1] * 4, value=float("nan"))
    for n, c, i, j in differs.nonzero().tolist():
        gap = (around[n, c, i : i + 3, j : j + 3] - out[n, c, i, j]).abs().nan_to_num(1.0)
        assert gap.min() <= 1e-4, (n, c, i, j)


def test_hue_matches_adjust_hue_over_the_whole_circle():
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    x[:, :, 0, 0] = 0.5  # gray pixels have no hue and must stay gray
    aug = BatchAugment(**{**OFF, "hue": 0.5})
    params = aug.sample_params(64, x, torch.Generator().manual_seed(4))
    expected = torch.stack([TF.adjust_hue(x[i], float(params.hue[i])) for i in range(64)])
    assert torch.allclose(aug.transform(x, params), expected, atol=1e-5)
    assert params.hue.min() < -0.45 and params.hue.max() > 0.45
