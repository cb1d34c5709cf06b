"""The only places where this project relies on non-public behaviour of Lightning, its CLI's jsonargparse, or torch.

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
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import ReduceLROnPlateau

__all__ = [
    "PRIVATE_NAMES",
    "SubcommandFailureHook",
    "batches_trained_this_epoch",
    "cpu_bf16_feature",
    "epochs_trained",
    "plateau_min_lr",
    "plateau_fit_groups",
    "plateau_restart",
    "quoted_user_error",
    "replace_help",
    "rewrap_ddp",
    "saves_every_n_train_steps",
    "scheduler_parts",
    "user_hparams",
]

# (owner, attribute) for every private name relied on here that a release could drop; a test checks
# that each still exists in the installed releases (CI runs it on the floor and the newest).
PRIVATE_NAMES: list[tuple[Any, str]] = []


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


def _relies_on(owner: Any, name: str) -> str:
    """Note that this file relies on ``owner.name``; returns ``name``."""
    PRIVATE_NAMES.append((owner, name))
    return name


_relies_on(LightningCLI, "_run_subcommand")


class SubcommandFailureHook:
    """Mixin for a ``LightningCLI``: ``on_subcommand_failure()`` runs when the subcommand raises, then it re-raises.

    LightningCLI has ``before_<subcommand>``/``after_<subcommand>`` hooks but
    none for a failure, and a callback's ``on_exception`` misses errors raised
    outside the trainer's call. Relies on ``LightningCLI._run_subcommand(subcommand)``
    running the whole subcommand (its before hook, the trainer call, its after
    hook). Checked against Lightning 2.6.0 (the floor) and 2.6.6.
    """

    def on_subcommand_failure(self) -> None:
        """What to undo after a failed subcommand; the exception follows."""

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)  # type: ignore[misc]
        except BaseException:
            self.on_subcommand_failure()
            raise


_INSTANTIATOR = "_instantiator"


def user_hparams(hparams: Any) -> dict[str, Any]:
    """The hyperparameters as the user configured them, without the key LightningCLI adds.

    Relies on the key ``_instantiator``, which Lightning's CLI puts into the
    ``hparams`` of every module it builds (``_given_hyperparameters_context``);
    it names Lightning's own machinery, not a setting. Checked against
    Lightning 2.6.0 (the floor) and 2.6.6.
    """
    return {key: value for key, value in dict(hparams).items() if key != _INSTANTIATOR}


def quoted_user_error(error: BaseException, raised: Sequence[BaseException]) -> BaseException | None:
    """The last of ``raised`` whose first line ``error``'s message quotes, else None.

    jsonargparse reports an error raised while instantiating a union-typed
    argument as text inside its own ``ValueError``, without always chaining the
    original. Relies on that text containing the original message's first
    line. Checked against jsonargparse 4.39.0 (the floor) and 4.53.0.
    """
    quoted = [e for e in raised if str(e).splitlines() and str(e).splitlines()[0] in str(error)]
    return quoted[-1] if quoted else None


_CPU_PROBES = (
    ("AMX", _relies_on(torch.cpu, "_is_amx_tile_supported")),
    ("AVX512_BF16", _relies_on(torch.cpu, "_is_avx512_bf16_supported")),
)


def cpu_bf16_feature() -> str | None:
    """The CPU feature that runs bf16 arithmetic natively (``AMX`` or ``AVX512_BF16``), or None.

    Read through PyTorch's own cpuinfo probes ``torch.cpu._is_amx_tile_supported``
    and ``torch.cpu._is_avx512_bf16_supported``, which know the instruction sets
    its kernels dispatch to; there is no public equivalent. A PyTorch without
    them counts as none. Checked against torch 2.14.1 (the floor).
    """
    for feature, probe in _CPU_PROBES:
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return feature
        except RuntimeError:  # a probe that cannot read the CPU answers no
            continue
    return None


def plateau_min_lr(scheduler: ReduceLROnPlateau) -> float | None:
    """The one floor rate a ``ReduceLROnPlateau`` keeps for every group; None if it was given one per group.

    Relies on the attributes ``default_min_lr`` (set when ``min_lr`` was one
    number) and ``min_lrs`` (one floor per group), which the scheduler's
    ``step`` reads. Checked against torch 2.14.1 (the floor).
    """
    if scheduler.default_min_lr is not None:
        return float(scheduler.default_min_lr)
    floors = set(scheduler.min_lrs)
    return float(floors.pop()) if len(floors) == 1 else None


def plateau_fit_groups(scheduler: ReduceLROnPlateau, floor: float) -> None:
    """One floor per parameter group of the scheduler's optimiser, after groups were added or replaced.

    Relies on ``min_lrs`` holding one floor per group, read by ``step``. Checked
    against torch 2.14.1 (the floor).
    """
    scheduler.min_lrs = [floor] * len(scheduler.optimizer.param_groups)


def plateau_restart(scheduler: ReduceLROnPlateau) -> None:
    """Forget the best value and the patience and cooldown spent, as a newly built scheduler would.

    Relies on ``best``, ``mode_worse``, ``num_bad_epochs`` and
    ``cooldown_counter``, what its constructor's ``_reset`` sets. Checked
    against torch 2.14.1 (the floor).
    """
    scheduler.best = scheduler.mode_worse
    scheduler.num_bad_epochs = 0
    scheduler.cooldown_counter = 0


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
