"""When an every-n-epochs callback is due, and the check of its counts: one copy for every such callback."""

from __future__ import annotations

import lightning as L

from common.user_input import UserInputError

__all__ = ["nth_epoch", "require_at_least"]


def require_at_least(minimum: int, **counts: int) -> None:
    """Raise ``UserInputError`` naming the first of ``counts`` below ``minimum``."""
    for name, value in counts.items():
        if value < minimum:
            raise UserInputError(f"{name}={value} must be at least {minimum}.\nHINT: e.g. {name}: {max(minimum, 1)}.")


def nth_epoch(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """Whether the current epoch is an ``every_n_epochs``-th one (epochs count from 0: epoch ``n - 1`` is the first)."""
    return (trainer.current_epoch + 1) % every_n_epochs == 0
