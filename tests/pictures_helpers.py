"""What the picture tests share: a tiny trainer and reading images back from TensorBoard."""

from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from datamodules import CIFAR10DataModule
from visualization.grids import GRID_PAD


def tiny_datamodule(data: Path) -> CIFAR10DataModule:
    """72 training images in 3 classes: 60 train (4 batches of 16), 12 validation."""
    return CIFAR10DataModule(data_dir=str(data), val_size=12, batch_size=16)  # str: checkpoints load weights_only


def tiny_trainer(log_dir: Path, callbacks: list, max_epochs: int = 2, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(log_dir, name="run", version=0),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def tensorboard_images(log_dir: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    """``{tag: [(step, RGB array), ...]}`` of every image event under ``log_dir``."""
    found: dict[str, list[tuple[int, np.ndarray]]] = {}
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={IMAGES: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()[IMAGES]:
            for event in accumulator.Images(tag):
                pixels = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
                found.setdefault(tag, []).append((event.step, pixels))
    return found


def assert_picture(pixels: np.ndarray, min_side: int = 100) -> None:
    """A real picture: big enough to read and not one flat colour."""
    assert pixels.ndim == 3 and pixels.shape[2] == 3
    assert min(pixels.shape[:2]) >= min_side, pixels.shape
    assert pixels.std() > 1.0, "constant picture"


def grid_cells(picture: np.ndarray, rows: int, cols: int, side: int = 128) -> list[list[np.ndarray]]:
    """Cut an ``image_grid`` picture of square ``side``-pixel cells back into the cells' images.

    Also checks the picture has exactly ``rows`` x ``cols`` cells: the caption
    bands make up the rest of each row's height and are dropped.
    """
    height = (picture.shape[0] - GRID_PAD) // rows
    assert picture.shape == (rows * height + GRID_PAD, cols * (side + GRID_PAD) + GRID_PAD, 3), picture.shape
    assert height >= side + GRID_PAD, picture.shape
    return [
        [picture[(r + 1) * height - side : (r + 1) * height, GRID_PAD + c * (side + GRID_PAD) :][:, :side]
         for c in range(cols)]
        for r in range(rows)
    ]
