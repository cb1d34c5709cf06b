"""The only places where this project relies on behaviour of Lightning (or its CLI's jsonargparse) that is not public.

Everything else goes through documented Lightning, torch and jsonargparse
interfaces. What is here has no public equivalent; each function says what it
relies on and the Lightning releases it was checked against: the floor that
``pyproject.toml`` admits and the newest one tested. CI runs the test suite on
both (``.ci/run``), so a release that moves these internals fails there first.
If you upgrade Lightning and something here breaks, this file is the one to fix.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import lightning as L
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel

__all__ = ["batches_trained_this_epoch", "epochs_trained", "rewrap_ddp", "saves_every_n_train_steps", "scheduler_parts"]


def batches_trained_this_epoch(trainer: L.Trainer) -> int:
    """Training batches of the current epoch that Lightning counts as done, the ones a resume skips.

    Relies on ``trainer.fit_loop.epoch_loop.batch_progress.current.processed``:
    the counter Lightning itself restores its position from, so a loader that
    skips that many batches after a resume lines up with the restored
    ``global_step`` whichever hook saved (epoch end, an exception mid-step,
    SIGTERM). Counting batches ourselves would run ahead by Lightning's
    prefetch. Checked against Lightning 2.6.0 (the floor) and 2.6.6.
    """
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def epochs_trained(checkpoint: dict[str, Any]) -> int | None:
    """Epochs whose training ``checkpoint`` holds in full: the ``current_epoch`` a resumed fit starts at; None if unsaid.

    Relies on ``checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]``:
    an epoch-end save (``last.ckpt``) counts its epoch as processed, not yet
    completed, and Lightning's restart turns processed into completed; a
    mid-epoch save (SIGTERM) has not processed its epoch. Lightning itself only
    compares ``completed`` with ``max_epochs`` (raising when larger), so one
    epoch below the checkpoint's passes silently and trains nothing. The public
    ``checkpoint["epoch"]`` cannot tell the two saves apart. Checked against
    Lightning 2.6.0 (the floor) and 2.6.6.
    """
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return None


def saves_every_n_train_steps(callback: Any) -> int:
    """The ``every_n_train_steps`` a ``ModelCheckpoint`` was built with (0: it saves at epoch ends only).

    Relies on ``ModelCheckpoint._every_n_train_steps``, set in ``__init__`` from
    the public argument; ``FiniteCheckpoint`` checks the weights at a training
    step only when a save there is possible, not at every step. Checked against
    Lightning 2.6.0 (the floor) and 2.6.6.
    """
    return int(getattr(callback, "_every_n_train_steps", 0) or 0)


def rewrap_ddp(trainer: L.Trainer) -> None:
    """Wrap the module in a fresh ``DistributedDataParallel`` that registers the parameters that train now.

    DDP decides once, when it is built, which parameters it all-reduces; after
    an unfreeze the new ones would silently stay per-rank. Relies on
    ``DDPStrategy.configure_ddp()`` wrapping whatever ``strategy.model`` holds
    (public methods, but Lightning calls them only once, in its own setup) and
    on the old wrapper's reducer being freed when it is dropped (nothing else
    holds it). Collective: every rank calls this at the same epoch. Checked
    against Lightning 2.6.0 (the floor) and 2.6.6.
    """
    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy) or not isinstance(strategy.model, DistributedDataParallel):
        return
    strategy.model = strategy.model.module
    strategy.configure_ddp()


def scheduler_parts(factory: Any) -> tuple[type, dict[str, Any]] | None:
    """The class a scheduler factory builds and the keyword arguments it was configured with.

    LightningCLI hands ``model.scheduler`` over as a callable of the optimiser;
    what it builds is not public. jsonargparse 4.53.0 returns
    ``functools.partial(instantiator, cls, **init_args)``; 4.39.0 (the floor
    Lightning 2.6.0 needs) a closure ``partial_instance(*args)`` over
    ``val_class``, ``init_args`` and ``dict_kwargs``. A class, or a
    ``functools.partial`` of one as Python code passes it, is read the same way.
    Returns ``None`` for anything else, e.g. a function such as
    ``reference_plateau``: then the factory is only ever called as it is.
    """
    if inspect.isclass(factory):
        return factory, {}
    if isinstance(factory, functools.partial):
        cls = next((c for c in (factory.func, *factory.args) if inspect.isclass(c)), None)
        return (cls, dict(factory.keywords)) if cls is not None else None
    code, cells = getattr(factory, "__code__", None), getattr(factory, "__closure__", None) or ()
    if code is None or code.co_name != "partial_instance":
        return None
    captured = dict(zip(code.co_freevars, (cell.cell_contents for cell in cells)))
    cls = captured.get("val_class")
    if not inspect.isclass(cls):
        return None
    return cls, {**captured.get("init_args", {}), **captured.get("dict_kwargs", {})}


def replace_help(parser: Any, texts: dict[str, str]) -> None:
    """Give the options named in ``texts`` (by dest, e.g. ``trainer.precision``) these help texts, in ``parser``
    and in each of its subcommands' parsers.

    LightningCLI copies Lightning's docstrings into the help, which describe Lightning's defaults, not what
    this project does with a flag. Relies on argparse's ``parser._actions`` and jsonargparse's
    ``parser._subcommands_action.choices`` (the subcommand parsers); checked against jsonargparse 4.39.0 (the
    floor) and 4.53.0.
    """
    parsers = [parser, *getattr(getattr(parser, "_subcommands_action", None), "choices", {}).values()]
    for each in parsers:
        for action in each._actions:
            if action.dest in texts:
                action.help = texts[action.dest]
