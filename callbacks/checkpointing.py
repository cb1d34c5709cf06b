"""Checkpoints that survive the failures they exist for: crashes, preemption, full disks.

Two pieces:

- ``AtomicCheckpointIO`` writes each checkpoint to a hidden temporary file in
  the target folder, flushes it to disk, and only then renames it over the old
  file. A crash, a kill or a full disk mid-write leaves the previous file whole
  and no partial file behind. It also refuses to write weights that are NaN or
  infinite, which would overwrite the last good state with a useless one.
- ``LastCheckpoint`` is the unmonitored ``last.ckpt`` that is rewritten at every
  epoch end and, when training stops on an exception (SIGTERM, Ctrl-C, a
  crash), at the step it stopped, so a resume loses no finished step.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

__all__ = ["AtomicCheckpointIO", "LastCheckpoint", "non_finite_weights"]


def non_finite_weights(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state_dict`` holding a NaN or an infinity."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    ]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that replaces files atomically and never saves non-finite weights."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}.")
        broken = non_finite_weights(checkpoint.get("state_dict", {}))
        if broken:
            rank_zero_warn(
                f"Not writing {path}: the weights {broken[:5]} hold NaN or Inf; the previous file is kept.\n"
                "HINT: see the non-finite loss error above for the step and the usual causes."
            )
            return
        if get_filesystem(path).protocol not in ("file", ("file", "local")):
            super().save_checkpoint(checkpoint, path)  # remote stores replace objects whole anyway
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself; not every platform can open a folder for this."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: rewritten every epoch and at the step where training stops on an exception.

    Lightning's ``save_last`` only follows top-k saves, so a run whose metric stops
    improving would resume from a stale epoch; this checkpoint monitors nothing.

    Args:
        filename: File name without ``.ckpt``.
        save_on_exception: Also save when training stops on an exception,
            including SIGTERM and Ctrl-C.
        **kwargs: Passed to ``ModelCheckpoint``.
    """

    def __init__(self, filename: str = "last", save_on_exception: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_top_k", 1)
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(filename=filename, save_on_exception=save_on_exception, **kwargs)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        saving = self._should_save_on_exception(trainer)
        super().on_exception(trainer, pl_module, exception)
        if saving and trainer.is_global_zero:
            print(
                f"Training stopped at epoch {trainer.current_epoch}, step {trainer.global_step} "
                f"({type(exception).__name__}); saved {self.format_checkpoint_name({})}.\n"
                "HINT: resume with the same command plus --ckpt_path last.",
                file=sys.stderr,
            )
