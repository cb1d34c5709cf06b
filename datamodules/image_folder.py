"""Read an image-folder split (``<split>/<class>/*.png|jpg``) once, into one uint8 tensor, cached on disk.

Decoding 50,000 small JPEGs with PIL costs tens of seconds every run; the
decoded split is 150 MB of uint8. So the first run decodes (torchvision's
native decoders, in a thread pool: they release the GIL) and saves the tensor;
later runs load it in well under a second. The cache is keyed by a fingerprint
of every file's relative path, size and modification time, so adding, removing
or editing an image rebuilds it. It lives beside the data (``<root>/.cache``)
when that folder is writable and under ``~/.cache/cifar-attention`` otherwise
(the shared dataset is read-only), and is written atomically, so an interrupted
run never leaves a half-written cache behind.

Broken files (empty, truncated, not an image) are all found in one pass and
named together, rather than one crash per run.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from torchvision.io import ImageReadMode, decode_image

from callbacks.fault_tolerance import replaced_atomically
from common.user_input import UserInputError

__all__ = ["DataError", "ImageSet", "IMAGE_SUFFIXES", "find_classes", "load_image_folder", "read_loose_images"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
CACHE_FORMAT = 1  # bump when the cached layout changes
USER_CACHE = Path.home() / ".cache" / "cifar-attention"
# How many broken files an error lists before it summarises the rest.
MAX_LISTED = 20


class DataError(UserInputError):
    """A problem with the user's data; the message ends with a ``HINT:`` line."""


@dataclass(frozen=True)
class ImageSet:
    """One split in memory.

    Attributes:
        images: uint8 ``[N, C, H, W]``.
        labels: int64 ``[N]``, indices into ``classes``.
        classes: Sorted class-folder names.
        paths: File paths relative to the split folder, in ``images`` order.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    paths: list[str]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def find_classes(split_dir: Path) -> list[str]:
    """Sorted names of the class folders under ``split_dir``.

    Raises:
        DataError: ``split_dir`` is missing or has no class folders, or a class folder holds no images.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"Image folder '{split_dir}' does not exist.\nHINT: create {split_dir}/<class>/*.png.")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"Image folder '{split_dir}' has no class folders.\n"
            f"HINT: put each class's images in its own folder, {split_dir}/<class>/*.png."
        )
    empty = [name for name in classes if not _image_files(split_dir / name)]
    if empty:
        raise DataError(
            f"Class folder(s) {[str(split_dir / name) for name in empty]} hold no .png/.jpg images.\n"
            "HINT: add images there or remove the empty folders."
        )
    return classes


def _fingerprint(files: list[tuple[Path, str]], channels: int) -> str:
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{channels}".encode())
    for path, relative in files:
        stat = path.stat()
        digest.update(f"\n{relative}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _writable(folder: Path) -> bool:
    """Writable for us and meant to be: root passes ``os.access`` even on read-only (mode 555) folders."""
    return folder.is_dir() and os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _cache_path(split_dir: Path, cache_dir: Path | None, fingerprint: str) -> Path:
    if cache_dir is None:
        beside = split_dir.parent / ".cache"
        cache_dir = beside if _writable(beside) or (not beside.exists() and _writable(split_dir.parent)) else USER_CACHE
    where = hashlib.sha256(str(split_dir.resolve()).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{split_dir.name}-{where}-{fingerprint[:24]}.pt"


def _decode(path: Path, mode: ImageReadMode) -> torch.Tensor | str:
    """The decoded image, or why it could not be decoded."""
    data = path.read_bytes()
    if not data:
        return "empty file"
    if path.suffix.lower() in (".jpg", ".jpeg") and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return "truncated JPEG (no end-of-image marker)"  # libjpeg would fill the rest with grey silently
    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
    except RuntimeError as error:
        return f"cannot decode: {str(error).splitlines()[0]}"


def _decode_all(files: list[tuple[Path, str]], channels: int, skip_broken: bool) -> tuple[list[torch.Tensor], list[int]]:
    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(lambda item: _decode(item[0], mode), files, chunksize=256))
    broken = [(files[i][0], result) for i, result in enumerate(decoded) if isinstance(result, str)]
    if broken:
        listed = "\n".join(f"  {path}: {why}" for path, why in broken[:MAX_LISTED])
        more = f"\n  ... and {len(broken) - MAX_LISTED} more" if len(broken) > MAX_LISTED else ""
        if not skip_broken:
            raise DataError(
                f"{len(broken)} image file(s) cannot be read:\n{listed}{more}\n"
                "HINT: delete or replace them, or set --data.skip_broken true to train without them."
            )
        warnings.warn(f"Skipping {len(broken)} unreadable image file(s):\n{listed}{more}", stacklevel=3)
    kept = [i for i, result in enumerate(decoded) if not isinstance(result, str)]
    return [decoded[i] for i in kept], kept


def load_image_folder(
    split_dir: Path, *, channels: int = 3, cache_dir: Path | None = None, skip_broken: bool = False
) -> ImageSet:
    """Decode ``split_dir/<class>/*`` into memory, or load the cached decode.

    Args:
        split_dir: The split folder, e.g. ``data/train``.
        channels: 3 reads RGB (grey images are converted), 1 reads greyscale.
        cache_dir: Where to keep the decoded cache; default beside the data or in ``~/.cache``.
        skip_broken: Leave unreadable files out with a warning instead of failing.

    Raises:
        DataError: No classes, an empty class, unreadable files, or images of different sizes.
    """
    if channels not in (1, 3):
        raise DataError(f"channels={channels} must be 1 (greyscale) or 3 (RGB).\nHINT: use 1 or 3.")
    split_dir = Path(split_dir)
    classes = find_classes(split_dir)
    files = [(path, f"{name}/{path.name}") for name in classes for path in _image_files(split_dir / name)]
    label_of = {name: index for index, name in enumerate(classes)}
    cache = _cache_path(split_dir, cache_dir, _fingerprint(files, channels) + str(skip_broken))

    if cache.exists():
        try:
            stored = torch.load(cache, weights_only=True)
            return ImageSet(stored["images"], stored["labels"], list(stored["classes"]), list(stored["paths"]))
        except Exception as error:  # any unreadable cache is only a lost shortcut
            warnings.warn(f"Rebuilding the unreadable image cache {cache}: {error}", stacklevel=2)

    images, kept = _decode_all(files, channels, skip_broken)
    if not images:
        raise DataError(f"No readable images under '{split_dir}'.\nHINT: check the files there.")
    sizes = {tuple(image.shape[-2:]) for image in images}
    if len(sizes) > 1:
        first = tuple(images[0].shape[-2:])
        odd = next(files[kept[i]][0] for i, image in enumerate(images) if tuple(image.shape[-2:]) != first)
        raise DataError(
            f"Images under '{split_dir}' differ in size ({sorted(sizes)}), e.g. '{odd}' is not {first[0]}x{first[1]}.\n"
            "HINT: resize them all to one size first."
        )
    result = ImageSet(
        images=torch.stack(images),
        labels=torch.tensor([label_of[files[i][1].split("/")[0]] for i in kept], dtype=torch.int64),
        classes=classes,
        paths=[files[i][1] for i in kept],
    )
    _write_cache(cache, result)
    return result


def _write_cache(cache: Path, images: ImageSet) -> None:
    """Save atomically and drop stale caches of the same split; a failure only costs speed."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with replaced_atomically(cache) as file:  # honours the umask, as every file the run writes
            torch.save(
                {"images": images.images, "labels": images.labels, "classes": images.classes, "paths": images.paths},
                file,
            )
        prefix = cache.name.rsplit("-", 1)[0] + "-"
        for stale in cache.parent.glob(f"{prefix}*.pt"):
            if stale != cache:
                stale.unlink(missing_ok=True)
    except OSError as error:
        warnings.warn(f"Could not write the image cache {cache} ({error}); the next run decodes again.", stacklevel=3)


def read_loose_images(
    folder: Path, shape: tuple[int, int, int], classes: list[str] | None = None, per_folder: int | None = None
) -> ImageSet:
    """Every PNG/JPEG under ``folder`` (any depth, any size), resized to ``shape``, for a trained model.

    For images a user brings (``predict --data.predict_dir``, ``explain.py
    --images``): sizes differ, so each image is resized on its own
    (bilinear with antialiasing, what ``interpolate`` offers for shrinking),
    and nothing is cached. A file in a sub-folder named after one of
    ``classes`` gets that class as its label, any other file ``-1`` (unknown).
    Unreadable files are left out with one warning naming them all, so one bad
    file does not cost the rest.

    Args:
        folder: The folder to read.
        shape: ``(channels, height, width)`` the model takes; 1 channel reads greyscale.
        classes: Class names, to label files in class-named sub-folders.
        per_folder: Keep only the first this many files (by name) of each folder: a fixed, balanced
            sample of a large labelled split, e.g. 10 a class of the test split.

    Returns:
        An ``ImageSet``; ``paths`` are relative to ``folder``, in sorted order.

    Raises:
        DataError: ``folder`` is missing, holds no PNG/JPEG file, or none of them can be read.
    """
    folder = Path(folder)
    channels, height, width = shape
    if not folder.is_dir():
        raise DataError(f"'{folder}' is not a folder.\nHINT: give a folder of .png/.jpg images.")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if per_folder is not None:
        if per_folder < 1:
            raise DataError(f"per_folder must be at least 1, got {per_folder}.")
        by_folder: dict[Path, list[Path]] = {}
        for path in files:
            by_folder.setdefault(path.parent, []).append(path)
        files = sorted(path for paths in by_folder.values() for path in paths[:per_folder])
    if not files:
        raise DataError(f"No .png or .jpg images under '{folder}'.\nHINT: give a folder of .png/.jpg images.")
    relative = [(path, path.relative_to(folder).as_posix()) for path in files]
    decoded, kept = _decode_all(relative, channels, skip_broken=True)
    if not decoded:
        raise DataError(f"None of the {len(files)} images under '{folder}' can be read.\nHINT: check the files there.")
    images = [_resize(image, (height, width)) for image in decoded]
    label_of = {name: index for index, name in enumerate(classes or [])}
    labels = [label_of.get(files[i].parent.name, -1) if files[i].parent != folder else -1 for i in kept]
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.int64), list(classes or []),
                    [relative[i][1] for i in kept])


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A uint8 ``[C, H, W]`` image at ``size``, bilinear with antialiasing (no-op at that size already)."""
    if tuple(image.shape[-2:]) == size:
        return image
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)
    return resized[0].round().clamp(0, 255).to(torch.uint8)
