"""The only places where this project relies on Lightning behaviour that is not public API.

Everything else goes through documented Lightning, torch and jsonargparse
interfaces. What is here has no public equivalent; each function says what it
relies on and the Lightning releases it was checked against: the floor that
``pyproject.toml`` admits and the newest one tested. CI runs the test suite on
both (``.ci/run``), so a release that moves these internals fails there first.
If you upgrade Lightning and something here breaks, this file is the one to fix.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel

__all__ = ["batches_trained_this_epoch", "rewrap_ddp"]


def batches_trained_this_epoch(trainer: L.Trainer) -> int:
    """Training batches of the current epoch that Lightning counts as done, the ones a resume skips.

    Relies on ``trainer.fit_loop.epoch_loop.batch_progress.current.processed``:
    the counter Lightning itself restores its position from, so a loader that
    skips that many batches after a resume lines up with the restored
    ``global_step`` whichever hook saved (epoch end, an exception mid-step,
    SIGTERM). Counting batches ourselves would run ahead by Lightning's
    prefetch. Checked against Lightning 2.5 and 2.6.
    """
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def rewrap_ddp(trainer: L.Trainer) -> None:
    """Wrap the module in a fresh ``DistributedDataParallel`` that registers the parameters that train now.

    DDP decides once, when it is built, which parameters it all-reduces; after
    an unfreeze the new ones would silently stay per-rank. Relies on
    ``DDPStrategy.configure_ddp()`` wrapping whatever ``strategy.model`` holds
    (public methods, but Lightning calls them only once, in its own setup) and
    on the old wrapper's reducer being freed when it is dropped (nothing else
    holds it). Collective: every rank calls this at the same epoch. Checked
    against Lightning 2.5 and 2.6.
    """
    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy) or not isinstance(strategy.model, DistributedDataParallel):
        return
    strategy.model = strategy.model.module
    strategy.configure_ddp()
