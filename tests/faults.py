"""Faults on cue, for tests: callbacks that signal or raise at a chosen training step.

They are passed on the command line (``--trainer.callbacks+=...``), so a test
can interrupt a real ``cli.py`` run, in-process or in a subprocess.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L
from typing_extensions import override


def fault_at(kind: str, step: int) -> str:
    """The ``--trainer.callbacks+=`` value that brings ``kind`` (a ``Fault.KINDS`` key) at ``step``."""
    return f'{{"class_path": "tests.faults.Fault", "init_args": {{"kind": "{kind}", "step": {step}}}}}'


class Fault(L.Callback):
    """Bring a fault once ``global_step`` reaches ``step``, after that batch trained.

    Args:
        kind: ``sigterm`` (a real signal to this process), ``ctrl_c`` (as if
            Ctrl-C was pressed) or ``crash`` (a ``RuntimeError``).
        step: The global step after which the fault comes.
    """

    KINDS = ("sigterm", "ctrl_c", "crash")

    def __init__(self, kind: str, step: int) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"kind={kind!r} is not one of {self.KINDS}.")
        self.kind = kind
        self.step = step

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step != self.step:
            return
        if self.kind == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning stops after this batch
        elif self.kind == "ctrl_c":
            raise KeyboardInterrupt
        else:
            raise RuntimeError(f"injected crash at step {self.step}")
