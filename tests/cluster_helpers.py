"""Pieces the cluster tests hand to real processes: a signal-sending callback, a clean environment, free ports."""

from __future__ import annotations

import os
import signal
import socket

import lightning as L

# Variables through which a scheduler, torchrun or an earlier in-process run
# (seed_everything sets PL_GLOBAL_SEED) would steer Lightning; each test sets its own.
_STEERING = ("PL_", "SLURM_", "TORCHELASTIC_", "MASTER_", "NODE_RANK", "LOCAL_RANK", "GROUP_RANK", "RANK",
             "WORLD_SIZE", "LOCAL_WORLD_SIZE")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without scheduler or rank variables, one thread per process, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STEERING)}
    return {**env, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in extra.items()}}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SignalsAtStep(L.Callback):
    """Send this process the named signals, in order, once the given global step has finished.

    ``["SIGUSR1"]`` is SLURM's warning before a time limit or preemption
    (``#SBATCH --signal=USR1@90``); ``["SIGUSR1", "SIGTERM"]`` adds the kill that follows.
    """

    def __init__(self, step: int = 6, signals: list[str] | None = None, mid_step: bool = False, rank: int = -1) -> None:
        self.step = step
        self.signals = signals or ["SIGUSR1"]
        self.mid_step = mid_step
        self.rank = rank  # -1: every rank

    def _send(self, trainer) -> None:
        if trainer.global_step == self.step and self.rank in (-1, trainer.global_rank):
            for name in self.signals:
                os.kill(os.getpid(), getattr(signal, name))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.mid_step:
            self._send(trainer)

    def on_after_backward(self, trainer, pl_module) -> None:
        # As a signal that arrives while backward runs: Python handles it as soon as backward returns.
        if self.mid_step:
            self._send(trainer)
