"""What a crash, a preemption or a NaN leaves behind: something to resume from, and a clear message.

- ``AtomicCheckpointIO`` writes each checkpoint to a temporary file in the same
  folder and renames it over the target: a save interrupted half-way (killed
  job, full disk) leaves the previous ``last.ckpt`` intact and no partial file.
  It refuses to write NaN/Inf weights over a good file.
- ``LastCheckpoint`` is ``last.ckpt``: rewritten at every epoch end and, when
  fit stops on an exception (SIGTERM, Ctrl-C, a crash), at the step it stopped.
  The datamodule's sampler resumes mid-epoch at the next unseen batch, so
  ``--ckpt_path last`` loses no finished step. A fit that fails before its
  first training step (a refused resume, a bad schedule) writes nothing: its
  optimiser state may not even be loaded yet, and the previous file is the
  truth.
- ``StopOnNonFiniteLoss`` stops at the first NaN/Inf loss, before its backward
  pass can reach the weights.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

__all__ = ["AtomicCheckpointIO", "LastCheckpoint", "NonFiniteLossError", "StopOnNonFiniteLoss", "non_finite_weights"]


def non_finite_weights(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state_dict`` that hold a NaN or an infinity."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    ]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, fsync, then ``os.replace``; never NaN weights.

    The temporary file is created with ``os.open(..., 0o666)`` so the umask
    decides its mode, as for every other file the run writes (``mkstemp``
    would make checkpoints readable by their owner only).
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}.")
        broken = non_finite_weights(checkpoint.get("state_dict", {}))
        if broken:  # e.g. BatchNorm statistics of the step that diverged
            rank_zero_warn(f"Not writing {path}: {broken[:3]} hold NaN/Inf values; the previous file is kept.")
            return
        if get_filesystem(path).protocol not in ("file", ("file", "local")):
            super().save_checkpoint(checkpoint, path)  # object stores replace whole objects anyway
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``, monitoring nothing: rewritten every epoch and where fit stops on an exception.

    Lightning's ``save_last`` only follows top-k saves, so a run whose metric
    stops improving would resume from a stale epoch.

    Args:
        filename: File name without ``.ckpt``.
        save_on_exception: Also save when fit stops on an exception, SIGTERM and Ctrl-C included,
            once it has trained at least one step.
        **kwargs: Passed to ``ModelCheckpoint``.
    """

    def __init__(self, filename: str = "last", save_on_exception: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_top_k", 1)
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(filename=filename, **kwargs)
        self.save_on_exception = save_on_exception
        self._first_step: int | None = None  # global step when this fit's training began

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_step = None

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_step = trainer.global_step  # everything a resume restores is in place by now
        super().on_train_start(trainer, pl_module)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not self.save_on_exception or trainer.state.fn != "fit":
            return
        if self._first_step is None or trainer.global_step == self._first_step:
            return  # nothing trained: the optimiser and loops may not be restored, the previous file is the truth
        # Saving is collective under DDP: only SIGTERM, which Lightning raises on
        # every rank at the same step, is sure to reach all of them.
        if trainer.world_size > 1 and not isinstance(exception, SIGTERMException):
            return
        path = self.format_checkpoint_name({})
        if non_finite_weights(pl_module.state_dict()):  # the step that diverged already reached BatchNorm
            rank_zero_warn(f"Not saving {path} at step {trainer.global_step}: the model holds NaN/Inf values; "
                           "the file keeps the last good state.")
            return
        try:
            trainer.save_checkpoint(path, self.save_weights_only)
        except Exception as error:  # never hide the original exception behind a failed save
            rank_zero_warn(f"Could not save {path} after {type(exception).__name__}: {error}")
            return
        if trainer.is_global_zero:
            print(
                f"\n{type(exception).__name__} at epoch {trainer.current_epoch}, step {trainer.global_step}: "
                f"saved {path}.\nHINT: resume with the same command plus --ckpt_path last.",
                file=sys.stderr,
            )


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
