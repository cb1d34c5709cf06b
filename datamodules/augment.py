"""The reference CIFAR-10 training augmentation, applied to a whole batch at once on any device.

The reference recipe (SPEC section 2) runs, per image and in this order: random crop 32 with 4 px
of zero padding, horizontal flip (p = 0.5), colour jitter (brightness, contrast, saturation 0.2,
hue 0.1, with the four adjustments in a random order), random rotation within +-15 degrees (nearest
neighbour, zero fill). Done per image with PIL in a DataLoader it costs more CPU time than a small
CNN's forward pass. :class:`BatchAugment` gives every image its own random parameters, with the same
distributions and semantics as the per-image torchvision transforms
(``benchmarks.common.reference_transform``), but
computes a batch with a few dozen tensor ops and no per-image Python, so it runs on the GPU when
the batch is there and is still several times faster on a CPU.

How the work is fused (each step is exact, not an approximation):

* Crop, flip and rotation only move pixels, and the jitter acts on each pixel on its own except for
  the contrast mean. So the geometry collapses into ONE gather at the end, with an index map
  computed from the per-image offsets, flip bits and angles.
* The crop's zero padding IS jittered by the reference (contrast lifts black toward the mean), but
  the rotation's corners are not (rotation fills after the jitter). All padding pixels of an image
  start black and get the same jitter, so each image carries a single extra "padding pixel" through
  the jitter, and the contrast mean weights it by how many padding pixels the crop window holds.
  The gather then reads image pixels, the padding pixel, or a constant zero for rotation corners.
  The jitter therefore runs on H*W + 1 values per channel, not on the (H+8)*(W+8) padded image.
* The random order of the jitter: brightness, contrast and saturation are one family,
  ``clamp(a*x + b*gray(x) + c*mean_gray(x))`` with per-image (a, b, c), and (a, b, c) = (1, 0, 0)
  is an exact identity. Hue is the expensive one (RGB -> HSV -> RGB), so it runs once for the
  whole batch: three linear slots hold each image's adjustments that come before its hue shift,
  then hue, then three slots for those after (unused slots are identities). No image-dependent
  branching, so nothing synchronises the GPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as F

from common.user_input import UserInputError

__all__ = ["AugmentParams", "BatchAugment", "intra_op_threads"]

#: Images per piece when a CPU batch is processed. The work is a few dozen element-wise passes
#: over [N, 3, 1025] tensors; at 64 images (~0.8 MB each) they stay in cache and reuse freed
#: memory, while whole 256-image batches measured 10-40% slower (page faults on fresh multi-MB
#: allocations). On GPUs the whole batch goes at once.
CPU_CHUNK = 64

# Jitter adjustment ids, numbered like torchvision's ColorJitter ``fn_idx``.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
_IDENTITY = -1


@dataclass(frozen=True)
class AugmentParams:
    """Per-image random parameters of one batch (all tensors have N rows, on the batch's device).

    Attributes:
        top: Crop offset in rows into the zero-padded image, in ``[0, 2 * padding]``.
        left: Crop offset in columns, in ``[0, 2 * padding]``.
        flip: Whether the cropped image is mirrored left-right.
        brightness: Brightness factor (1 = unchanged).
        contrast: Contrast factor (1 = unchanged).
        saturation: Saturation factor (1 = unchanged).
        hue: Hue shift as a fraction of the colour circle (0 = unchanged).
        order: ``[N, 4]`` permutation of the adjustment ids, applied left to right.
        angle: Rotation in degrees, counter-clockwise, about the image centre.
    """

    top: Tensor
    left: Tensor
    flip: Tensor
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    order: Tensor
    angle: Tensor

    def rows(self, start: int, stop: int) -> AugmentParams:
        """The parameters of images ``start:stop``."""
        return AugmentParams(*(getattr(self, f.name)[start:stop] for f in fields(self)))


def _check_range(name: str, value: float, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        legal = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
        raise UserInputError(f"{name} must be a number {legal}, got {value!r}.")
    return float(value)


def _factor_range(spread: float) -> tuple[float, float]:
    # As torchvision's ColorJitter: a spread of 0.2 means factors uniform in [0.8, 1.2], never < 0.
    return max(0.0, 1.0 - spread), 1.0 + spread


def _uniform(n: int, low: float, high: float, like: Tensor, generator: torch.Generator | None) -> Tensor:
    u = torch.rand(n, device=like.device, dtype=like.dtype, generator=generator)
    return u * (high - low) + low


class BatchAugment(nn.Module):
    """Random crop, flip, colour jitter and rotation of a float batch, per-image parameters.

    Matches the per-image reference transforms in distribution: crop offsets uniform over the padded image,
    flips with probability ``flip_p``, jitter factors uniform in ``[1 - v, 1 + v]`` (hue shift in
    ``[-hue, hue]``) applied in a random order, rotation angle uniform in ``[-degrees, degrees]``.
    The crop keeps the input's size (32x32 for CIFAR-10). It has no learnable state; it is an
    ``nn.Module`` so a LightningModule can hold it and it follows ``.to(device)``.

    Threads: by default it runs on whatever torch's intra-op setting is, and
    touches no process-wide state. On a busy machine with few cores, OpenMP
    barriers between threads that the OS has descheduled measured 40-300x
    slower than one thread (a PyTorch-wide effect): set ``OMP_NUM_THREADS=1``
    for the whole run there, or opt in with ``cpu_threads``.

    Args:
        padding: Zero padding in pixels on each side before the random crop.
        flip_p: Probability of a horizontal flip, in [0, 1].
        brightness: Spread of the brightness factor, >= 0 (0 disables it).
        contrast: Spread of the contrast factor, >= 0.
        saturation: Spread of the saturation factor, >= 0.
        hue: Largest hue shift, in [0, 0.5] (0.5 is half the colour circle).
        degrees: Largest rotation in degrees, in [0, 180].
        cpu_threads: If set, run each CPU batch on this many intra-op threads and
            restore the caller's setting after (``torch.set_num_threads`` is
            process-wide, so other threads of the process see the change meanwhile).
            On shared 2-core machines under load, one thread measured 40-300x faster
            than two (``benchmarks/input_pipeline.py --threads 1 2``); left quiet,
            one thread made a CNN ``fit`` 1-15 % slower than two.

    Raises:
        ValueError: If an argument is outside its legal range; the message names it.
    """

    def __init__(
        self,
        padding: int = 4,
        flip_p: float = 0.5,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.1,
        degrees: float = 15.0,
        cpu_threads: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise UserInputError(f"padding must be an integer >= 0 (pixels), got {padding!r}.")
        self.padding = padding
        self.flip_p = _check_range("flip_p", flip_p, 0.0, 1.0)
        self.brightness = _check_range("brightness", brightness, 0.0)
        self.contrast = _check_range("contrast", contrast, 0.0)
        self.saturation = _check_range("saturation", saturation, 0.0)
        self.hue = _check_range("hue", hue, 0.0, 0.5)
        self.degrees = _check_range("degrees", degrees, 0.0, 180.0)
        if cpu_threads is not None and (isinstance(cpu_threads, bool) or not isinstance(cpu_threads, int)
                                        or cpu_threads < 1):
            raise UserInputError(f"cpu_threads must be an integer >= 1 or None, got {cpu_threads!r}.")
        self.cpu_threads = cpu_threads

    def settings(self) -> dict[str, float | int | None]:
        """The constructor's arguments, as plain values (for hyperparameters and checkpoints)."""
        names = ("padding", "flip_p", "brightness", "contrast", "saturation", "hue", "degrees", "cpu_threads")
        return {name: getattr(self, name) for name in names}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in self.settings().items())

    def sample_params(
        self, n: int, like: Tensor, generator: torch.Generator | None = None
    ) -> AugmentParams:
        """Draw independent parameters for ``n`` images.

        Args:
            n: Batch size.
            like: A tensor whose device and float dtype the parameters take.
            generator: Optional generator on that device, for reproducible draws.

        Returns:
            The parameters; :meth:`transform` turns them into images.
        """
        device = like.device
        span = 2 * self.padding + 1
        top = torch.randint(0, span, (n,), device=device, generator=generator)
        left = torch.randint(0, span, (n,), device=device, generator=generator)
        flip = torch.rand(n, device=device, generator=generator) < self.flip_p
        brightness = _uniform(n, *_factor_range(self.brightness), like, generator)
        contrast = _uniform(n, *_factor_range(self.contrast), like, generator)
        saturation = _uniform(n, *_factor_range(self.saturation), like, generator)
        hue = _uniform(n, -self.hue, self.hue, like, generator)
        # argsort of i.i.d. uniforms is a uniformly random permutation per row (like randperm(4)).
        order = torch.rand(n, 4, device=device, generator=generator).argsort(dim=1)
        angle = _uniform(n, -self.degrees, self.degrees, like, generator)
        return AugmentParams(top, left, flip, brightness, contrast, saturation, hue, order, angle)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch, each image with its own random parameters.

        Args:
            x: Float images in [0, 1], ``[N, C, H, W]`` with C = 1 or 3, on any device.
            generator: Optional generator on ``x.device`` for reproducible results.

        Returns:
            The augmented batch: same shape, dtype and device, values in [0, 1].

        Raises:
            ValueError: If ``x`` is not a float ``[N, 1 or 3, H, W]`` batch.
        """
        _check_batch(x)
        return self.transform(x, self.sample_params(x.shape[0], x, generator))

    def transform(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Augment ``x`` with given parameters (deterministic; what ``forward`` calls).

        Not named ``apply``/``_apply``: those are ``nn.Module`` methods (``.to()`` calls ``_apply``).

        Args:
            x: Float images in [0, 1], ``[N, C, H, W]`` with C = 1 or 3.
            params: One row of parameters per image, from :meth:`sample_params`.

        Returns:
            The augmented batch, same shape, dtype and device as ``x``.
        """
        n = x.shape[0]
        if x.device.type != "cpu":
            return self._transform_chunk(x, params)
        with intra_op_threads(self.cpu_threads or torch.get_num_threads()):
            chunks = range(0, n, CPU_CHUNK)
            return torch.cat([self._transform_chunk(x[i : i + CPU_CHUNK], params.rows(i, i + CPU_CHUNK)) for i in chunks])

    def _transform_chunk(self, x: Tensor, params: AugmentParams) -> Tensor:
        n, c, h, w = x.shape
        # Layout [N, C, 1, H*W + 1]: pixels flattened for the final gather, plus the padding pixel
        # (starts black). The singleton dimension lets torchvision's rgb_to_grayscale, which works
        # on [..., C, H, W], run on it as it is.
        flat = torch.cat([x.reshape(n, c, 1, h * w), x.new_zeros(n, c, 1, 1)], dim=3)
        flat = self._jitter(flat, params, self._mean_weights(params, h, w))
        # One more constant-black pixel for the rotation's corners, which are not jittered.
        flat = torch.cat([flat.view(n, c, h * w + 1), flat.new_zeros(n, c, 1)], dim=2)
        index = self._source_index(params, h, w)
        return flat.gather(2, index.unsqueeze(1).expand(n, c, h * w)).view(n, c, h, w)

    def _mean_weights(self, params: AugmentParams, h: int, w: int) -> Tensor:
        """Weights ``[N, 1, 1, H*W + 1]``: ``(gray * weights).sum() / (H*W)`` is the crop's mean.

        The cropped image holds the image pixels inside the crop window once each, and
        ``H*W - inside`` copies of the padding pixel.
        """
        dtype = params.brightness.dtype
        # Image row r lands in the crop iff top - padding <= r < top - padding + h. The masks are
        # [N, H] and [N, W], small; only their float outer product has H*W entries per image.
        rows = torch.arange(h, device=params.top.device)
        cols = torch.arange(w, device=params.top.device)
        row0 = (params.top - self.padding)[:, None]
        col0 = (params.left - self.padding)[:, None]
        row_in = ((rows >= row0) & (rows < row0 + h)).to(dtype)
        col_in = ((cols >= col0) & (cols < col0 + w)).to(dtype)
        inside = (row_in[:, :, None] * col_in[:, None, :]).reshape(-1, h * w)
        pad_count = h * w - row_in.sum(dim=1, keepdim=True) * col_in.sum(dim=1, keepdim=True)
        return torch.cat([inside, pad_count], dim=1)[:, None, None, :]

    def _jitter(self, flat: Tensor, params: AugmentParams, weights: Tensor) -> Tensor:
        """Colour jitter in each image's random order (see the module docstring)."""
        if not (self.brightness or self.contrast or self.saturation or self.hue):
            return flat
        c = flat.shape[1]
        order = params.order
        saturation = params.saturation
        if c == 1:
            # Saturation and hue leave single-channel images unchanged in torchvision (and PIL).
            saturation = torch.ones_like(saturation)
            order = torch.where(order == HUE, _IDENTITY, order)
        if c == 1 or not self.hue:
            # No hue step to split around: four slots in order; a HUE id acts as an identity.
            slots, hue_slot = order, None
        else:
            # Slots 0-2: the adjustments before the image's hue shift; 3: hue; 4-6: those after.
            hue_at = (order == HUE).to(torch.int64).argmax(dim=1, keepdim=True)
            k = torch.arange(3, device=order.device)
            before = torch.where(k < hue_at, order[:, :3], _IDENTITY)
            after_at = hue_at + 1 + k
            after = torch.where(after_at < 4, order.gather(1, after_at.clamp(max=3)), _IDENTITY)
            slots, hue_slot = torch.cat([before, after], dim=1), 3
        # Coefficients of every slot at once ([N, slots] tensors), so the per-slot loop below only
        # touches pixels: (a, b, c) of clamp(a*x + b*gray + c*mean), see _blend_step.
        one = torch.ones_like(saturation)
        a = torch.where(slots == BRIGHTNESS, params.brightness[:, None], one[:, None])
        a = torch.where(slots == CONTRAST, params.contrast[:, None], a)
        a = torch.where(slots == SATURATION, saturation[:, None], a)
        b = torch.where(slots == SATURATION, (1 - saturation)[:, None], 0.0)
        c_ = torch.where(slots == CONTRAST, (1 - params.contrast)[:, None], 0.0)
        coeffs = torch.stack([a, b, c_], dim=0)[..., None, None, None]  # [3, N, slots, 1, 1, 1]
        for k in range(slots.shape[1]):
            if k == hue_slot:
                flat = _shift_hue(flat, params.hue)
            flat = _blend_step(flat, coeffs[:, :, k], weights)
        return flat

    def _source_index(self, params: AugmentParams, h: int, w: int) -> Tensor:
        """For each output pixel, where to read it in the flat layout: ``[N, H*W]`` int64.

        Index ``r * w + c`` is image pixel (r, c), ``H*W`` the padding pixel, ``H*W + 1`` black.
        Computed in float, where every value here is a small integer and therefore exact: on CPU,
        comparisons, bool masks and ``torch.where`` on [N, H, W] tensors measured 5-20x slower
        than float arithmetic, so "is outside" is ``min(1, |v - clamp(v)|)`` rather than a mask.
        """
        # float32 holds integers exactly up to 2**24, far above H*W + 1 for any image we train on.
        dtype = torch.promote_types(params.angle.dtype, torch.float32)
        device = params.angle.device
        # Rotation, inverted: which pixel of the cropped-and-flipped image lands on output (y, x).
        # Same convention as torchvision's rotate (counter-clockwise, about the centre of the
        # pixel grid, nearest neighbour). torch.round rounds halves to even like grid_sample.
        ys = (torch.arange(h, device=device, dtype=dtype) - (h - 1) / 2)[None, :, None]
        xs = (torch.arange(w, device=device, dtype=dtype) - (w - 1) / 2)[None, None, :]
        theta = torch.deg2rad(params.angle.to(dtype))[:, None, None]
        cos, sin = theta.cos(), theta.sin()
        src_x = (cos * xs - sin * ys).add_((w - 1) / 2).round_()
        src_y = (sin * xs + cos * ys).add_((h - 1) / 2).round_()
        corner = _outside(src_x, w).add_(_outside(src_y, h)).clamp_(max=1.0)
        # Flip (x -> w-1-x where flip is set), then undo the crop: original-image coordinates.
        flip = params.flip.to(dtype)[:, None, None]
        src_x = src_x.addcmul_(flip, (w - 1) - 2 * src_x)
        img_x = src_x.add_((params.left - self.padding).to(dtype)[:, None, None])
        img_y = src_y.add_((params.top - self.padding).to(dtype)[:, None, None])
        pad = _outside(img_x, w).add_(_outside(img_y, h)).clamp_(max=1.0)
        index = img_y.mul_(w).add_(img_x)
        index = index.addcmul_(pad, h * w - index)  # padding pixel where the crop left the image
        index = index.addcmul_(corner, h * w + 1 - index)  # black where rotation left the frame
        return index.reshape(-1, h * w).to(torch.int64)


@contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Run the block on ``threads`` intra-op threads, then restore the caller's setting.

    Small tensors gain little from torch's thread pool, and where cores are
    shared its threads wait on each other at every barrier; the picture dumps
    use it too.
    """
    before = torch.get_num_threads()
    if before == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _outside(coord: Tensor, size: int) -> Tensor:
    """1.0 where an integer-valued coordinate is outside ``[0, size - 1]``, else 0.0."""
    return (coord - coord.clamp(0, size - 1)).abs_().clamp_(max=1.0)


def _check_batch(x: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 4 or x.shape[1] not in (1, 3):
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise UserInputError(
            f"BatchAugment expects float images in [0, 1] shaped [N, 1 or 3, H, W], got a {got}.\n"
            "HINT: convert uint8 batches with x.float() / 255 (or v2.functional.to_dtype(x, scale=True))."
        )


def _blend_step(flat: Tensor, coeffs: Tensor, weights: Tensor) -> Tensor:
    """One jitter slot: brightness, contrast, saturation or nothing, chosen per image.

    All three are ``clamp(a*x + b*gray + c*mean, 0, 1)``: brightness (f, 0, 0) blends with black,
    saturation (f, 1-f, 0) with the pixel's gray, contrast (f, 0, 1-f) with the image's mean gray,
    as torchvision's ``_blend`` does; (1, 0, 0) is an exact identity.

    Args:
        flat: ``[N, C, 1, L]`` pixels, updated in place.
        coeffs: ``[3, N, 1, 1, 1]``: a, b, c per image.
        weights: ``[N, 1, 1, L]`` crop-mean weights summing to H*W.

    Returns:
        ``flat``, adjusted.
    """
    a, b, c = coeffs
    # torchvision's luma weights (0.2989, 0.587, 0.114), as its adjust_contrast and
    # adjust_saturation use; it handles batches. One channel is its own gray.
    gray = flat.clone() if flat.shape[1] == 1 else F.rgb_to_grayscale(flat)
    mean = (gray * weights).sum(dim=-1, keepdim=True).div_(weights.shape[-1] - 1)
    # In place from here on: on CPU, first-touching freshly allocated multi-MB temporaries
    # (page faults) measured costlier than the arithmetic. ``flat`` is always this module's own.
    base = gray.mul_(b).add_(mean.mul_(c))
    return flat.mul_(a).add_(base).clamp_(0.0, 1.0)


def _shift_hue(flat: Tensor, shift: Tensor) -> Tensor:
    """Rotate each image's hue by its own ``shift`` (fraction of a turn), as F.adjust_hue does.

    HSV hue rotation keeps each pixel's max (V) and chroma (max - min) and only moves the hue, so
    the new RGB is ``V - chroma * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 * hue) mod 6``
    and n = 5, 3, 1 for R, G, B (the usual HSV -> RGB formula, rewritten below without modulo). Written out here instead of
    calling torchvision's private ``_rgb_to_hsv``/``_hsv_to_rgb``: those took 19 ms for a
    256-image batch on one CPU core (``aminmax`` over the 3-wide channel dim, bool masks and the
    advanced indexing of the sector table are slow CPU paths); this is float arithmetic only.
    tests/test_augment.py checks it against ``F.adjust_hue`` image by image.
    """
    r, g, b = flat.unbind(dim=1)
    v = flat.amax(dim=1)
    chroma = flat.amin(dim=1).neg_().add_(v)
    # 1/chroma, finite for gray pixels too: there g - b = b - r = r - g = 0, so the hue is 0.
    inv = chroma.clamp_min(1e-12).reciprocal_()
    # Which channel holds the max, as exact 0/1 floats: v - r is 0 exactly when r is the max.
    # On ties the sector formulas agree (hue is continuous there), so the tie order is moot.
    r_max = torch.sign(v - r).neg_().add_(1.0)
    g_max = torch.sign(v - g).neg_().add_(1.0).mul_(1.0 - r_max)
    b_max = (1.0 - r_max).sub_(g_max)
    # Hue in sixths of a turn: (g-b)/C, 2 + (b-r)/C or 4 + (r-g)/C by sector; in (-1, 5].
    sixths = ((g - b) * r_max).addcmul_(b - r, g_max).addcmul_(r - g, b_max).mul_(inv)
    sixths = sixths.add_(g_max, alpha=2.0).add_(b_max, alpha=4.0)
    sixths = sixths.add_(shift[:, None, None], alpha=6.0)
    sixths = sixths.sub_(torch.floor(sixths * (1.0 / 6.0)).mul_(6.0))  # wrap to [0, 6)
    # Channel n (5, 3, 1 for R, G, B) is V - C * clamp(2 - d, 0, 1), d being the distance from
    # n + sixths to 2 around the 6-long circle: d = |3 - |y|| with y = sixths + n - 5, exact for
    # y in [-4, 6), which holds here. No modulo and no minimum: both are slow CPU kernels, while
    # this chain runs in place on one [N, 3, 1, L] buffer.
    # (0, -2, -4) made on the device: torch.tensor([...], device=...) would copy from the host,
    # and a copy from pageable host memory waits for the GPU every batch.
    offsets = torch.arange(0, -6, -2, device=flat.device, dtype=flat.dtype)
    y = sixths.unsqueeze(1) + offsets[None, :, None, None]
    minus_ramp = y.abs_().sub_(3.0).abs_().sub_(2.0).clamp_(-1.0, 0.0)  # -clamp(2 - d, 0, 1)
    return minus_ramp.mul_(chroma.unsqueeze(1)).add_(v.unsqueeze(1))
