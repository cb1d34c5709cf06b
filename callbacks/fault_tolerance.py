"""What a crash, a preemption or a NaN leaves behind: something to resume from, and a clear message.

- ``AtomicCheckpointIO`` writes each checkpoint to a temporary file in the same
  folder and renames it over the target: a save interrupted half-way (killed
  job, full disk) leaves the previous ``last.ckpt`` intact and no partial file.
  It refuses to write NaN/Inf weights over a good file.
- ``FiniteCheckpoint`` is ``ModelCheckpoint`` that skips a save, and its
  bookkeeping, while the model holds NaN/Inf values: its best path never names
  a file that was not written, and top-k never deletes the good file for it.
- ``LastCheckpoint`` is ``last.ckpt``: rewritten at every epoch end and, when
  fit stops on an exception (SIGTERM, Ctrl-C, a crash), at the step it stopped.
  The datamodule's sampler resumes mid-epoch at the next unseen batch, so
  ``--ckpt_path last`` loses no finished step. A fit that fails before its
  first training step (a refused resume, a bad schedule) writes nothing: its
  optimiser state may not even be loaded yet, and the previous file is the
  truth.
- ``StopOnNonFiniteLoss`` stops at the first NaN/Inf loss, before its backward
  pass can reach the weights; under DDP every process stops at that step, with
  the same message.
"""

from __future__ import annotations

import math
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from common.lightning_private import saves_every_n_train_steps

__all__ = [
    "AtomicCheckpointIO",
    "FiniteCheckpoint",
    "LastCheckpoint",
    "NonFiniteLossError",
    "StopOnNonFiniteLoss",
    "non_finite_weights",
    "replaced_atomically",
]


def non_finite_weights(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state_dict`` that hold a NaN or an infinity."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    ]


@contextmanager
def replaced_atomically(path: str | Path, mode: str = "wb", **open_args: Any) -> Iterator[IO[Any]]:
    """A file to write ``path`` through: a temporary beside it, fsynced and renamed over ``path`` when complete.

    An interrupted write (killed job, full disk, an exception in the block)
    leaves the previous ``path`` and no temporary behind. The temporary is
    created with ``os.open(..., 0o666)`` so the umask decides its mode, as for
    every other file the run writes (``mkstemp`` would make it readable by its
    owner only).

    Args:
        path: The file to (re)place; its folder must exist.
        mode: ``"wb"`` or ``"w"``.
        **open_args: For ``open``, e.g. ``newline=""`` for CSV.
    """
    path = Path(path)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, mode, **open_args) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` through ``replaced_atomically``: a temporary file renamed over the target; never NaN weights."""

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
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with replaced_atomically(path) as file:
            torch.save(checkpoint, file)


class FiniteCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that skips a save, with its bookkeeping, while the model holds NaN/Inf values.

    ``AtomicCheckpointIO`` refuses to write such weights, but by then
    ``ModelCheckpoint`` has recorded the file as its best (or latest) and removed
    the top-k file it replaced: ``best_model_path`` would name a file that was
    never written, and the last good one would be gone. Here the check comes
    before ``ModelCheckpoint`` decides anything, and the processes agree on it
    (``reduce_boolean_decision``), since saving is collective. Costs one pass
    over the weights and one small all-reduce per epoch (per due step with
    ``every_n_train_steps``).
    """

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        every = saves_every_n_train_steps(self)
        if every < 1 or trainer.global_step % every or self._finite(trainer, pl_module):
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._finite(trainer, pl_module):
            super().on_train_epoch_end(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._finite(trainer, pl_module):
            super().on_validation_end(trainer, pl_module)

    def _finite(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Whether every process's weights are finite; warns (once, rank zero) when not."""
        broken = non_finite_weights(pl_module.state_dict())
        if trainer.strategy.reduce_boolean_decision(not broken, all=True):
            return True
        rank_zero_warn(
            f"{type(self).__name__}: not saving at epoch {trainer.current_epoch}, step {trainer.global_step}: the model "
            f"holds NaN/Inf values{f' ({broken[:3]})' if broken else ' on another process'}; "
            f"the checkpoints keep the last good state (best: {self.best_model_path or 'none yet'})."
        )
        return False


class LastCheckpoint(FiniteCheckpoint):
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
    """Raise on every process at the first non-finite training loss of any, before backward touches the weights.

    The processes agree first (``trainer.strategy.reduce_boolean_decision``, as
    ``EarlyStopping`` does), then all raise the same ``NonFiniteLossError``: a
    process that raised alone would leave the others to die in backward's
    all-reduce (gloo: "Connection closed by peer") or to wait for NCCL's timeout.

    Cost: each check waits for the loss on the host (one device sync) and, under
    DDP, adds a one-element all-reduce. ``check_every_n_steps`` trades safety for
    that sync: in between, a non-finite loss is only remembered on the device,
    its backward and optimiser step run, and the stop comes at the next check
    (or the epoch's end) with NaN weights; checkpoints refuse NaN weights
    (``FiniteCheckpoint``, ``AtomicCheckpointIO``), so the last good files stay.
    At 1 (the default) the weights never see the step.

    Args:
        check_every_n_steps: Check every this many training steps.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        if check_every_n_steps < 1:
            raise ValueError(
                f"check_every_n_steps={check_every_n_steps} must be at least 1.\nHINT: e.g. check_every_n_steps: 1."
            )
        self.check_every_n_steps = check_every_n_steps
        self._unchecked: torch.Tensor | None = None  # whether a loss since the last check was not finite (device)
        self._first_unchecked_step = 0

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()).all()
        if self._unchecked is None:
            self._unchecked, self._first_unchecked_step = bad, trainer.global_step
        else:
            self._unchecked = self._unchecked | bad
        if (trainer.global_step + 1) % self.check_every_n_steps == 0:
            self._check(trainer, loss)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, None)  # the epoch's last steps since a check; every rank ran as many

    def _check(self, trainer: L.Trainer, loss: torch.Tensor | None) -> None:
        """Agree over the processes whether a loss since the last check was not finite; if so, all raise."""
        if self._unchecked is None:
            return
        found, first = bool(self._unchecked), self._first_unchecked_step  # the host sync
        self._unchecked = None
        if not trainer.strategy.reduce_boolean_decision(found, all=False):
            return
        where = f"at epoch {trainer.current_epoch}, global step {trainer.global_step}"
        if loss is not None and self.check_every_n_steps == 1:
            losses = trainer.strategy.all_gather(loss.detach().float().reshape(1)).reshape(-1).tolist()
            what = f"The training loss is {losses[0]}" if len(losses) == 1 else (
                f"The training loss is not finite on process(es) "
                f"{[rank for rank, value in enumerate(losses) if not math.isfinite(value)]} of {len(losses)} "
                f"(losses {losses})"
            )
            weights = "the weights in every checkpoint are from before this step"
        else:
            what = (f"A training loss of global steps {first}-{trainer.global_step} was not finite "
                    f"(checked every {self.check_every_n_steps} steps); stopped")
            weights = "the checkpoints keep the last finite weights"
        raise NonFiniteLossError(
            f"{what} {where}.\n"
            "Usual causes: a learning rate too high for the model, inputs that are not normalised or hold "
            "NaN/Inf, or fp16 overflow (use bf16-mixed).\n"
            f"HINT: lower --model.optimizer.lr, check the data, or resume from last.ckpt with a fix; {weights}."
        )
