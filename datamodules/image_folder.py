"""Read an image-folder split (``<split>/<class>/*.jpg``) into one uint8 tensor, with a disk cache.

Why not ``torchvision.datasets.ImageFolder``: it opens and decodes every image with PIL on every
epoch. CIFAR-sized images are tiny, so that per-image Python work, not the model, is what limits a
small GPU run. Here the whole split is decoded once into a ``uint8 [N, C, H, W]`` tensor (150 MB for
the 50,000 CIFAR-10 training images), saved to a cache file, and later runs load that file in about a
second. Augmentation then runs batched on the device (see ``datamodules/augment.py``).

Layout read by :func:`load_image_folder`::

    split_dir/
        airplane/0000.jpg
        airplane/0001.png
        automobile/...

Class names are the sorted sub-folder names, so they come from the data, never from code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import to_dtype

log = logging.getLogger(__name__)

#: File suffixes read as images, compared case-insensitively.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: Bump when the cache payload changes shape, so old files are rebuilt instead of misread.
CACHE_VERSION = 1

#: Files per thread-pool task. Big enough that task overhead is negligible next to ~60 us of
#: decoding per CIFAR JPEG, small enough that the pool stays balanced on a few cores.
_DECODE_CHUNK = 512

_READ_MODES = {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB}


@dataclass(frozen=True)
class ImageSet:
    """A decoded image-folder split.

    Attributes:
        images: ``uint8 [N, C, H, W]``; kept as uint8 because it is 4x smaller than float32 and
            converting a batch on the device is cheaper than moving floats.
        labels: ``int64 [N]``, indices into ``classes``.
        classes: Sorted class-folder names.
        paths: Image paths relative to the split directory (``"cat/0001.jpg"``), in row order, so
            a row can always be traced back to its file.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)


class DataError(ValueError):
    """A problem with the user's data; the message names the path or value and ends with a HINT."""


def _data_error(problem: str, hint: str) -> DataError:
    return DataError(f"{problem}\nHINT: {hint}")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _image_entries(class_dir: Path) -> list[os.DirEntry]:
    # os.scandir reuses the directory read for is_file() and stat(); that matters for 50,000 files.
    with os.scandir(class_dir) as it:
        return sorted(
            (e for e in it if _is_image_name(e.name) and e.is_file()), key=lambda e: e.name
        )


def find_classes(split_dir: Path) -> list[str]:
    """List the class folders of a split.

    Hidden folders (``.ipynb_checkpoints``, ``.cache``) are ignored; every other sub-folder must
    hold images, because a class without examples is almost always a copy that went wrong.

    Args:
        split_dir: Directory with one sub-folder per class.

    Returns:
        The sorted class-folder names.

    Raises:
        DataError: If ``split_dir`` is missing, has no class folders, or a class folder has no
            ``.png``/``.jpg``/``.jpeg`` files.
    """
    split_dir = Path(split_dir)
    layout = f"{split_dir}/<class>/*.jpg (or .png, .jpeg)"
    if not split_dir.is_dir():
        raise _data_error(
            f"Image folder {split_dir} does not exist or is not a directory.",
            f"point the data directory at a folder laid out as {layout}.",
        )
    class_dirs = sorted(
        d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
    )
    if not class_dirs:
        raise _data_error(
            f"Image folder {split_dir} has no class sub-folders.",
            f"put each class's images in its own sub-folder: {layout}.",
        )
    empty = [d for d in class_dirs if not _image_entries(d)]
    if empty:
        names = ", ".join(str(d) for d in empty)
        raise _data_error(
            f"Class folder(s) without any .png/.jpg/.jpeg image: {names}.",
            "add images to them or remove them; every sub-folder of the split is a class.",
        )
    return [d.name for d in class_dirs]


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifar-attention"


def _cache_file_name(split_dir: Path, channels: int) -> str:
    # One file per (split, channels). The resolved path is hashed into the name so that splits
    # sharing the fallback ~/.cache directory do not overwrite each other.
    where = hashlib.sha256(str(split_dir.resolve()).encode()).hexdigest()[:12]
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", split_dir.name)
    return f"{safe_name}-{where}-c{channels}.pt"


def _fingerprint(entries: list[tuple[str, os.stat_result]], channels: int) -> str:
    # Size and mtime_ns change on any ordinary edit, copy or re-download, and reading them costs a
    # stat() per file instead of reading 50,000 files' contents.
    digest = hashlib.sha256(f"v{CACHE_VERSION} channels={channels}\n".encode())
    for rel, st in entries:
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read_cache(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """Return the cached payload, or None when absent, stale or unreadable (never raises)."""
    if not path.is_file():
        return None
    try:
        # weights_only: the payload is tensors, strings and lists, so nothing needs arbitrary
        # unpickling, and a planted cache file cannot run code.
        payload = torch.load(path, map_location="cpu", weights_only=True)
        fresh = payload["version"] == CACHE_VERSION and payload["fingerprint"] == fingerprint
        if fresh:
            n = len(payload["paths"])
            images, labels = payload["images"], payload["labels"]
            ok = (
                images.dtype == torch.uint8
                and images.ndim == 4
                and images.shape[0] == n
                and labels.shape == (n,)
                and isinstance(payload["classes"], list)
                and isinstance(payload["skipped"], list)
            )
            if not ok:
                raise ValueError("payload has inconsistent shapes or types")
    # A cache is only an optimisation: a truncated zip, a foreign pickle, a missing key or an I/O
    # error all mean "decode again", so every failure is caught here, reported and rebuilt.
    except Exception as err:  # noqa: BLE001
        warnings.warn(
            f"Image cache {path} is unreadable ({type(err).__name__}: {err}); rebuilding it.",
            stacklevel=3,
        )
        return None
    return payload if fresh else None


def _write_cache(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a temp file in the same directory, then os.replace.

    Readers therefore see either the old file or the complete new one; a run killed mid-write
    leaves at most a stray ``*.tmp`` file, never a truncated cache.

    Raises:
        OSError: If the directory cannot be created or written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates the file private (0600); a cache of public data may be shared.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _clean_reason(err: Exception) -> str:
    # torchvision prefixes C++ errors with "function, /path/file.cpp:NN, "; users need the rest.
    text = re.sub(r"^[\w()]+, \S+:\d+, ", "", str(err).strip())
    return text.split(". ")[0].rstrip(".")


def _decode_chunk(
    split_dir: Path, rel_paths: list[str], mode: ImageReadMode
) -> list[torch.Tensor | str]:
    """Decode files; each result is a uint8 tensor, or a string saying why the file is broken."""
    out: list[torch.Tensor | str] = []
    for rel in rel_paths:
        try:
            data = (split_dir / rel).read_bytes()
            if not data:
                out.append("empty file")
                continue
            # decode_image on the raw bytes is ~2.5x faster than PIL open+convert for CIFAR JPEGs
            # (measured: ~17k vs ~7k images/s on one core); bytearray makes the buffer writable.
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
        except (RuntimeError, ValueError, OSError) as err:
            out.append(_clean_reason(err) or type(err).__name__)
            continue
        if image.dtype != torch.uint8:  # 16-bit PNGs decode to uint16
            image = to_dtype(image, torch.uint8, scale=True)
        out.append(image)
    return out


def _decode_all(
    split_dir: Path, rel_paths: list[str], channels: int
) -> list[torch.Tensor | str]:
    chunks = [rel_paths[i : i + _DECODE_CHUNK] for i in range(0, len(rel_paths), _DECODE_CHUNK)]
    # Threads, not processes: file reads release the GIL, so threads overlap I/O on a cold disk
    # or network file system, and results need no pickling back. On a warm page cache and 2 busy
    # cores the gain over one thread is small (measured within noise); it grows with cores.
    workers = max(1, min(8, os.cpu_count() or 1, len(chunks)))
    mode = _READ_MODES[channels]
    if workers == 1:
        return [r for c in chunks for r in _decode_chunk(split_dir, c, mode)]
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        results = pool.map(lambda c: _decode_chunk(split_dir, c, mode), chunks)
        return [r for chunk_result in results for r in chunk_result]


def _format_broken(broken: list[tuple[str, str]]) -> str:
    return "\n".join(f"  {rel}: {reason}" for rel, reason in broken)


def _report_skipped(split_dir: Path, skipped: list[tuple[str, str]], skip_broken: bool) -> None:
    if not skipped:
        return
    listing = _format_broken(skipped)
    if not skip_broken:
        raise _data_error(
            f"{len(skipped)} broken image file(s) in {split_dir}:\n{listing}",
            "delete or replace these files, or pass skip_broken=True to leave them out.",
        )
    warnings.warn(
        f"Skipped {len(skipped)} broken image file(s) in {split_dir}:\n{listing}", stacklevel=3
    )


def _build(
    split_dir: Path, classes: list[str], rel_paths: list[str], labels: list[int], channels: int
) -> dict[str, Any]:
    start = time.perf_counter()
    decoded = _decode_all(split_dir, rel_paths, channels)
    good = [(rel, lab, img) for rel, lab, img in zip(rel_paths, labels, decoded) if not isinstance(img, str)]
    broken = [(rel, img) for rel, img in zip(rel_paths, decoded) if isinstance(img, str)]
    if not good:
        raise _data_error(
            f"None of the {len(rel_paths)} image files in {split_dir} could be decoded:\n"
            f"{_format_broken(broken[:20])}",
            "check that the files are PNG or JPEG images (not, e.g., HTML error pages).",
        )
    first_rel, _, first_img = good[0]
    odd = [(rel, img) for rel, _, img in good if img.shape != first_img.shape]
    if odd:
        rel, img = odd[0]
        size = "x".join(map(str, img.shape))
        ref = "x".join(map(str, first_img.shape))
        raise _data_error(
            f"Images in {split_dir} must all have one size, but {rel} is {size} (CxHxW) while "
            f"{first_rel} is {ref}; {len(odd)} of {len(good)} images differ from {ref}.",
            "resize the images to one size before training (CIFAR-10 images are 32x32).",
        )
    payload = {
        "version": CACHE_VERSION,
        "images": torch.stack([img for _, _, img in good]),
        "labels": torch.tensor([lab for _, lab, _ in good], dtype=torch.int64),
        "classes": classes,
        "paths": [rel for rel, _, _ in good],
        "skipped": [list(b) for b in broken],
    }
    log.info(
        "Decoded %d images from %s in %.1f s", len(good), split_dir, time.perf_counter() - start
    )
    return payload


def load_image_folder(
    split_dir: Path,
    *,
    channels: int = 3,
    cache_dir: Path | None = None,
    skip_broken: bool = False,
) -> ImageSet:
    """Decode ``split_dir/<class>/*.{png,jpg,jpeg}`` into one uint8 tensor, cached on disk.

    The first call decodes every image (a few seconds for 50,000 CIFAR JPEGs) and saves the result;
    later calls check a fingerprint of the file list (relative paths, sizes, mtime_ns) and the
    channel count, and load the cache instead when nothing changed. Any change (edited, added or
    removed file) rebuilds it. A corrupt or unreadable cache is rebuilt with a warning.

    Args:
        split_dir: Directory with one sub-folder of images per class.
        channels: 3 reads RGB (grayscale images are expanded), 1 reads grayscale (e.g. MNIST).
        cache_dir: Where to keep the cache file. By default ``split_dir.parent / ".cache"`` when
            it can be written, else ``$XDG_CACHE_HOME/cifar-attention`` (``~/.cache/...``), which
            is what read-only shared data needs.
        skip_broken: Leave out files that cannot be decoded (with a warning listing them)
            instead of raising.

    Returns:
        The decoded split; rows are ordered by class, then file name.

    Raises:
        DataError: If the folder layout is wrong (see :func:`find_classes`), images differ in
            size, or any file is broken and ``skip_broken`` is False (all are listed at once, so
            one pass fixes them).
        ValueError: If ``channels`` is not 1 or 3.
    """
    if channels not in _READ_MODES:
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    split_dir = Path(split_dir)
    classes = find_classes(split_dir)

    rel_paths: list[str] = []
    labels: list[int] = []
    stats: list[tuple[str, os.stat_result]] = []
    for label, name in enumerate(classes):
        for entry in _image_entries(split_dir / name):
            rel = f"{name}/{entry.name}"
            rel_paths.append(rel)
            labels.append(label)
            stats.append((rel, entry.stat()))
    fingerprint = _fingerprint(stats, channels)

    file_name = _cache_file_name(split_dir, channels)
    if cache_dir is not None:
        candidates = [Path(cache_dir)]
    else:
        candidates = [split_dir.parent / ".cache", _user_cache_dir()]

    payload = None
    for directory in candidates:
        payload = _read_cache(directory / file_name, fingerprint)
        if payload is not None:
            log.info("Loaded %d images from cache %s", len(payload["paths"]), directory / file_name)
            break
    else:
        payload = _build(split_dir, classes, rel_paths, labels, channels)
        payload["fingerprint"] = fingerprint
        # Cache before reporting broken files: the decode is the slow part, and the skipped list
        # is cached too, so a later run raises (or warns) about them without decoding again.
        errors = []
        for directory in candidates:
            try:
                _write_cache(directory / file_name, payload)
                break
            except OSError as err:
                errors.append(f"{directory}: {err}")
        else:
            warnings.warn(
                "Could not write the image cache, so the next run will decode again. Tried:\n  "
                + "\n  ".join(errors),
                stacklevel=2,
            )

    _report_skipped(split_dir, [tuple(s) for s in payload["skipped"]], skip_broken)
    return ImageSet(
        images=payload["images"],
        labels=payload["labels"],
        classes=list(payload["classes"]),
        paths=list(payload["paths"]),
    )
