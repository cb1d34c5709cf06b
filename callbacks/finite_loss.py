"""Stop at the first NaN or infinite training loss, before it reaches the weights.

A non-finite loss gives non-finite gradients, and one optimiser step later
every weight is NaN: the run goes on for hours learning nothing, and each
checkpoint it writes replaces a good one. Checking the loss before the backward
pass stops the run while the weights are still those of the last good step, so
the checkpoint written on the way out is a valid place to resume from (with a
lower learning rate, say).
"""

from __future__ import annotations

import lightning as L
import torch
from typing_extensions import override

__all__ = ["NonFiniteLossError", "StopOnNonFiniteLoss"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(L.Callback):
    """Raise ``NonFiniteLossError`` naming the step when the loss is NaN or Inf, before backward."""

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if torch.isfinite(loss).all():
            return
        batch = trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1
        raise NonFiniteLossError(
            f"The training loss is {loss.detach().flatten()[0].item()} at global step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}, batch {batch}); stopped before it reached the weights.\n"
            "HINT: usual causes are a learning rate too high (try --model.optimizer.lr 10x lower), "
            "bad normalisation or broken data (check --data.mean/--data.std and the images), "
            "and float16 overflow (try --trainer.precision bf16-mixed or 32). "
            "last.ckpt holds the weights before this step."
        )
