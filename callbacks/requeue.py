"""SLURM's requeue signal handled at a step boundary, so the checkpoint it leaves resumes bit-exactly.

Under SLURM, Lightning's auto-requeue saves ``hpc_ckpt_<n>.ckpt`` in
``default_root_dir`` and calls ``scontrol requeue`` from inside its SIGUSR1
handler, wherever training happens to be. Python runs a handler as soon as the
current C++ call returns, so a signal that lands during backward or the
optimiser step saves weights, progress counters and random-number state from
different moments: the resume repeats part of a step and drifts from the run it
continues (tests/test_cluster.py shows it). The SIGTERM that follows the requeue
needs nothing: Lightning only raises it at a step boundary.

``DeferredRequeue`` keeps Lightning's handler and runs it later: at the next
training-step end, or the end of a validation run inside fit, where every
checkpoint of this project is consistent. Under DDP the ranks first agree
(any rank signalled means all save, at the same step), since saving is collective.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Callable

import lightning as L
from typing_extensions import override

__all__ = ["DeferredRequeue"]

REQUEUE_SIGNAL = signal.SIGUSR1  # Lightning's SLURMEnvironment default, and SLURM's `--signal=USR1@<seconds>`


class DeferredRequeue(L.Callback):
    """Run the SIGUSR1 handler that fit installed (Lightning's requeue under SLURM) at the next step boundary.

    Without a handler in place (not under SLURM, or ``auto_requeue=False``) it
    does nothing and costs nothing; with one, a boolean is reduced over the
    ranks after each training step.
    """

    def __init__(self) -> None:
        self._handler: Callable[[int, FrameType | None], Any] | None = None
        self._pending = False

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registers its handlers after on_fit_start and restores the previous ones when fit ends.
        handler = signal.getsignal(REQUEUE_SIGNAL)
        if not callable(handler) or threading.current_thread() is not threading.main_thread():
            return
        self._handler, self._pending = handler, False
        signal.signal(REQUEUE_SIGNAL, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self._pending = True

    def _run_pending(self, trainer: L.Trainer) -> None:
        if self._handler is None:
            return
        if trainer.strategy.reduce_boolean_decision(self._pending, all=False):
            self._pending = False
            self._handler(REQUEUE_SIGNAL, None)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._run_pending(trainer)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A long validation must not eat SLURM's warning time; its end is where ModelCheckpoint saves too.
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._run_pending(trainer)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._handler = None
