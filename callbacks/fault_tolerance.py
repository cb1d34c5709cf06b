"""What a crash, a preemption or a NaN leaves behind: something to resume from, and a clear message.

- ``AtomicCheckpointIO`` writes each checkpoint to a temporary file in the same
  folder and renames it over the target: a save interrupted half-way (killed
  job, full disk) leaves the previous ``last.ckpt`` intact and no partial file.
- ``InterruptCheckpoint`` saves ``interrupted.ckpt`` when fit stops on an
  exception, SIGTERM or Ctrl-C, so the weights of the unfinished epoch are
  kept for inspection. ``--ckpt_path last`` resumes from ``last.ckpt``, written
  at the last epoch end: Lightning cannot resume a map-style loader mid-epoch
  exactly, and an epoch boundary resumes bit-exactly (RNG state included).
- ``StopOnNonFiniteLoss`` stops at the first NaN/Inf loss, before its backward
  pass can reach the weights, so no checkpoint holds NaN weights.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

__all__ = ["AtomicCheckpointIO", "InterruptCheckpoint", "NonFiniteLossError", "StopOnNonFiniteLoss"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, fsync, then ``os.replace``."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}.")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)


class InterruptCheckpoint(L.Callback):
    """Save ``interrupted.ckpt`` beside the other checkpoints when fit stops on an exception."""

    filename = "interrupted.ckpt"

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != "fit" or trainer.checkpoint_callback is None or trainer.sanity_checking:
            return
        # Saving is collective under DDP; only a SIGTERM (synchronised across ranks
        # by Lightning) is sure to reach every rank, any other error may be one rank's.
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if trainer.world_size > 1 and not isinstance(exception, SIGTERMException):
            return
        directory = trainer.checkpoint_callback.dirpath
        if directory is None:
            return
        path = Path(directory) / self.filename
        if not _all_finite(pl_module):  # e.g. BatchNorm statistics of the step that diverged
            rank_zero_warn(f"Not saving {path}: the model holds NaN/Inf values. Resume from last.ckpt.")
            return
        try:
            trainer.save_checkpoint(path)
        except Exception as error:  # never hide the original exception behind a failed save
            rank_zero_warn(f"Could not save {path} after {type(exception).__name__}: {error}")
            return
        if trainer.is_global_zero:
            print(
                f"\n{type(exception).__name__} at epoch {trainer.current_epoch}, step {trainer.global_step}: "
                f"weights saved to {path}.\nResume with --ckpt_path last (the last finished epoch, {directory}/last.ckpt)."
            )


def _all_finite(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point())


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(L.Callback):
    """Raise at the first non-finite training loss, before backward touches the weights."""

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if torch.isfinite(loss).all():
            return
        raise NonFiniteLossError(
            f"The training loss is {loss.item()} at epoch {trainer.current_epoch}, global step {trainer.global_step}.\n"
            "Usual causes: a learning rate too high for the model, inputs that are not normalised or hold "
            "NaN/Inf, or fp16 overflow (use bf16-mixed).\n"
            "HINT: lower --model.optimizer.lr, check the data, or resume from last.ckpt with a fix; the "
            "weights in every checkpoint are from before this step."
        )
