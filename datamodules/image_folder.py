"""Placeholder loader; replaced by the cached, threaded one on the fast-data branch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


class DataError(ValueError):
    """A problem with the user's data, with a hint on how to fix it."""


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    paths: list[str]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def find_classes(split_dir: Path) -> list[str]:
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"Image folder '{split_dir}' does not exist.\nHINT: create {split_dir}/<class>/*.png")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"Image folder '{split_dir}' has no class folders.\nHINT: create {split_dir}/<class>/*.png")
    for name in classes:
        if not _images_in(split_dir / name):
            raise DataError(f"Class folder '{split_dir / name}' holds no images.\nHINT: add images or remove it.")
    return classes


def load_image_folder(split_dir: Path, *, channels: int = 3, cache_dir=None, skip_broken: bool = False) -> ImageSet:
    split_dir = Path(split_dir)
    classes = find_classes(split_dir)
    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    images, labels, paths = [], [], []
    for label, name in enumerate(classes):
        for path in _images_in(split_dir / name):
            data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
            images.append(decode_image(data, mode=mode))
            labels.append(label)
            paths.append(str(path.relative_to(split_dir)))
    return ImageSet(torch.stack(images), torch.tensor(labels), classes, paths)
