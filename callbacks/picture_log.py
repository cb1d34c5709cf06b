"""Where the pictures of a run go: TensorBoard image tags and PNG files in the run's folder (and scores: scalars).

Shared by the loss-plot and interpretability callbacks, so both tolerate the same
set-ups: no logger at all (``fast_dev_run`` disables loggers), a logger without
images (CSV), several loggers. Callers write from rank zero only.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.loggers.logger import DummyLogger
from PIL import Image

__all__ = ["image_writers", "log_picture", "picture_dir", "scalar_loggers"]


def image_writers(trainer: L.Trainer) -> list:
    """The ``experiment`` objects of the loggers that take images (TensorBoard's SummaryWriter)."""
    return [logger.experiment for logger in _real_loggers(trainer) if hasattr(logger.experiment, "add_image")]


def scalar_loggers(trainer: L.Trainer) -> list:
    """The loggers that take scalars through ``log_metrics`` (all real ones: TensorBoard, CSV, ...)."""
    return _real_loggers(trainer)


def picture_dir(trainer: L.Trainer, name: str) -> Path | None:
    """``<run log dir>/<name>``, or ``None`` without a logger: no run folder, no files.

    Read from the logger, not ``trainer.log_dir``: that one broadcasts (every
    rank must call it, and only rank zero writes) and falls back to the working
    directory when loggers are off.
    """
    loggers = _real_loggers(trainer)
    if not loggers:
        return None
    logger = loggers[0]
    root = getattr(logger, "log_dir", None) or logger.save_dir
    return Path(root) / name if root else None


def log_picture(trainer: L.Trainer, tag: str, image: np.ndarray, step: int, folder: Path | None) -> None:
    """Send one ``[H, W, 3]`` uint8 picture to every image logger and, if ``folder`` is set, a PNG.

    The PNG is named after the tag (``gradcam/all_layers`` -> ``gradcam_all_layers.png``)
    and overwritten each time, so the folder always holds the newest pictures.
    """
    for writer in image_writers(trainer):
        writer.add_image(tag, image, global_step=step, dataformats="HWC")
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{tag.replace('/', '_')}.png")


def _real_loggers(trainer: L.Trainer) -> list:
    """The loggers, less the stand-in ``fast_dev_run`` puts in their place (it accepts any call)."""
    return [logger for logger in trainer.loggers if not isinstance(logger, DummyLogger)]
