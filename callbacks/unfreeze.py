"""Progressive unfreezing: a schedule of which modules train, from which epoch, at which learning rate.

SPEC section 4: ResNet18 + CBAM first trains only its new modules, then layer3
and layer4 join at a 10x lower learning rate, then everything at 10x lower again.
The schedule is configuration (``configs/resnet_cbam.yaml``)::

    - class_path: callbacks.ProgressiveUnfreeze
      init_args:
        stages:
          - {epoch: 0,  train: [conv1, cbam, fc], lr: 1.0e-3}
          - {epoch: 5,  train: [+layer3, +layer4], lr: 1.0e-4}
          - {epoch: 20, train: all, lr: 1.0e-5}

Epochs count from 0, as Lightning's ``current_epoch`` does (the source counted
from 1: its stage 2 began at its epoch 6, our epoch 5).

Why not Lightning's ``BaseFinetuning``: three of its choices break this project.

- It freezes in ``setup``, before DDP wraps the model. DDP registers only the
  parameters that require grad at wrap time, so layers unfrozen later are never
  all-reduced and the replicas drift apart silently (Lightning issue 20340).
  Here every change of the trainable set re-wraps the module in a new
  ``DistributedDataParallel``, built by the strategy itself: the new reducer
  registers exactly the parameters that train now, and its construction
  broadcasts rank zero's weights. Keeping frozen parameters registered instead
  makes DDP fail at the second step, waiting for gradients they never get (or
  needs ``find_unused_parameters`` and a graph walk every step).
- On resume it freezes again in ``setup`` and restores only the param groups,
  so layers unfrozen before the checkpoint come back frozen (Lightning issue
  21901). Here the stage is the callback's state; ``on_fit_start`` rebuilds the
  trainable set and the groups of that stage before Lightning loads the
  optimiser and scheduler state, which then match group for group.
- Frozen BatchNorm keeps updating its running statistics in train mode. Here
  it is put in eval mode at every epoch start (after the validation loop has
  restored modes) unless ``train_bn`` is set. Which BatchNorm layers are frozen
  is kept by dotted name, not by module: ``--trainer.sync_batchnorm true``
  replaces every BatchNorm with a new ``SyncBatchNorm`` (same name, same
  parameters) after this callback's ``setup``.

Learning rates: one setting, ``stage_lr``, says what a stage does to the optimiser.

- ``all`` (default, SPEC section 4: "everything at 1e-5"): the stage adds one
  parameter group, ``stage<i>``, for the parameters it unfreezes, so the
  optimiser's moments survive an unfreeze; its ``lr`` becomes every group's rate.
- ``added``: as ``all``, but only the new group gets the stage's rate; earlier
  groups keep theirs (as the scheduler left them), a discriminative schedule.
- ``reset``: the source's behaviour: every trainable parameter goes into one
  fresh group at the stage's rate, with the optimiser state (Adam's moments and
  step counts) and the plateau counters cleared.

The older keys ``reset_optimizer: true`` and ``lr_applies_to: all|added`` still
work, with a deprecation warning naming ``stage_lr``; together they are refused
where they disagree (``reset_optimizer`` used to override ``lr_applies_to`` silently).

As in Lightning's ``BaseFinetuning``, mechanics and policy are apart: one path
begins stages (at fit start, resumed or not, and at an epoch start), and the
``stage_lr`` policy only decides the groups and their rates (``_regroup``).

Schedulers: ``ReduceLROnPlateau`` keeps one minimum per group, extended here as
groups are added (through ``common.lightning_private``, which owns its internals).
Schedulers that compute rates from per-group base rates would rescale or break
when groups appear, so they are refused at start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import numpy as np
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_deprecation, rank_zero_warn
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau
from typing_extensions import override

from common.lightning_private import plateau_fit_groups, plateau_min_lr, plateau_restart, rewrap_ddp
from common.user_input import UserInputError

__all__ = ["ProgressiveUnfreeze", "Stage"]

# Every BatchNorm, also after Lightning's sync_batchnorm converted it (public classes, not torch's _BatchNorm).
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

ALL = "all"
STAGE_LR = ("all", "added", "reset")


@dataclass(frozen=True)
class Stage:
    """One step of the schedule.

    Attributes:
        epoch: First epoch (0-based) of the stage.
        train: Dotted module names that train from this epoch on, or ``None`` for all parameters.
        lr: Learning rate of the parameters this stage adds.
        extends: Whether ``train`` adds to the previous stage's modules (names written ``+name``).
    """

    epoch: int
    train: tuple[str, ...] | None
    lr: float
    extends: bool = False

    @classmethod
    def from_config(cls, index: int, config: Mapping[str, Any] | Stage) -> Stage:
        """Check one configured stage; errors name the stage and the fix."""
        if isinstance(config, Stage):
            return config
        unknown = set(config) - {"epoch", "train", "lr"}
        missing = {"epoch", "train", "lr"} - set(config)
        if unknown or missing:
            raise UserInputError(
                f"stages[{index}]={dict(config)}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}.\n"
                "HINT: each stage is {epoch: 0, train: [conv1, cbam, fc], lr: 1.0e-3}."
            )
        epoch, train, lr = config["epoch"], config["train"], config["lr"]
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise UserInputError(f"stages[{index}].epoch={epoch!r} must be a non-negative integer (epochs count from 0).")
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            raise UserInputError(f"stages[{index}].lr={lr!r} must be a positive number.\nHINT: e.g. lr: 1.0e-4.")
        if train == ALL:
            return cls(epoch, None, float(lr))
        if isinstance(train, str) or not isinstance(train, Sequence) or not train:
            raise UserInputError(
                f"stages[{index}].train={train!r} must be `all` or a non-empty list of module names.\n"
                "HINT: e.g. train: [conv1, cbam, fc], or train: [+layer3] to add to the previous stage."
            )
        added = [name.startswith("+") for name in train]
        if any(added) and not all(added):
            raise UserInputError(
                f"stages[{index}].train={list(train)} mixes `+name` and `name`.\n"
                "HINT: write every name with `+` to add to the previous stage, or none to list the full set."
            )
        return cls(epoch, tuple(name.removeprefix("+") for name in train), float(lr), extends=all(added))

    def trains(self) -> str:
        """What the stage trains, as configured: ``+layer3, +layer4``, ``conv1, fc`` or ``all``."""
        if self.train is None:
            return ALL
        return ", ".join(f"+{name}" if self.extends else name for name in self.train)


class ProgressiveUnfreeze(L.Callback):
    """Train more of the model at each stage, each newly unfrozen part in its own parameter group.

    Logs ``unfreeze/stage`` each epoch; each group's rate is Lightning's
    ``LearningRateMonitor``'s job (``lr-Adam/stage<i>``). ``stage_start_steps``
    (the global step at which each stage began) and ``stage_boundaries`` (their
    epochs) let plots mark the stages (``stage_label``); the former is kept in checkpoints.

    Args:
        stages: The schedule, one mapping per stage with ``epoch`` (0-based, the
            first must be 0, increasing), ``train`` (``all``, or dotted module
            names of the model's ``net``: a list of ``+name`` adds to the previous
            stage, a list of plain names is the whole trainable set) and ``lr``
            (positive). Names resolve against ``pl_module.net`` when the module
            has one (every ``ImageClassifier``), else the LightningModule itself.
        train_bn: Let BatchNorm layers in frozen modules learn and update their
            running statistics from the start; by default they do neither.
        stage_lr: ``"all"``: a stage's ``lr`` becomes the rate of every group;
            ``"added"``: only of the parameters that stage unfreezes; ``"reset"``:
            the source's fresh optimiser state and one group at the stage's rate.
        reset_optimizer: Deprecated: ``stage_lr: reset``.
        lr_applies_to: Deprecated: ``stage_lr: all`` or ``stage_lr: added``.

    Raises:
        UserInputError: A malformed stage, epochs not increasing, a non-positive
            rate, an unknown ``stage_lr``, or old keys that disagree with it.
    """

    def __init__(
        self,
        stages: Sequence[Mapping[str, Any] | Stage],
        train_bn: bool = False,
        stage_lr: Literal["all", "added", "reset"] | None = None,
        reset_optimizer: bool | None = None,
        lr_applies_to: Literal["all", "added"] | None = None,
    ) -> None:
        self.stage_lr = _stage_lr(stage_lr, reset_optimizer, lr_applies_to)
        if not stages:
            raise UserInputError(
                "ProgressiveUnfreeze needs at least one stage.\nHINT: e.g. stages: [{epoch: 0, train: all, lr: 1.0e-3}]."
            )
        self.stages = [Stage.from_config(index, stage) for index, stage in enumerate(stages)]
        if self.stages[0].epoch != 0:
            raise UserInputError(
                f"stages[0].epoch={self.stages[0].epoch}: the first stage must start at epoch 0, "
                "or nothing would train before it.\nHINT: set the first stage's epoch to 0."
            )
        epochs = [stage.epoch for stage in self.stages]
        if any(later <= earlier for earlier, later in zip(epochs, epochs[1:])):
            raise UserInputError(f"Stage epochs {epochs} must be strictly increasing.\nHINT: e.g. 0, 5, 20.")
        self.train_bn = train_bn
        self.stage = -1  # index of the stage in effect; -1 before fit starts
        self.stage_start_steps: list[int] = []
        self._trainable: list[list[nn.Parameter]] = []  # per stage, in model order
        self._covered: list[set[str]] = []  # per stage, dotted names (in pl_module) of the modules that train

    @property
    def reset_optimizer(self) -> bool:
        """Whether each stage starts a fresh optimiser (``stage_lr: reset``)."""
        return self.stage_lr == "reset"

    @property
    def lr_applies_to(self) -> str:
        """The groups a stage's rate applies to: ``all`` (also under ``reset``: there is one) or ``added``."""
        return "added" if self.stage_lr == "added" else ALL

    def stage_label(self, index: int) -> str:
        """``stage 1: +layer3, +layer4 @ 1e-4``: its number (as ``unfreeze/stage``, ``stage<i>``), what trains, its rate."""
        stage = self.stages[index]
        return f"stage {index}: {stage.trains()} @ {np.format_float_scientific(stage.lr, trim='-', exp_digits=1)}"

    @property
    def stage_boundaries(self) -> list[int]:
        """First epoch of each stage."""
        return [stage.epoch for stage in self.stages]

    def stage_at(self, epoch: int) -> int:
        """Index of the stage in effect during ``epoch``."""
        return max(index for index, stage in enumerate(self.stages) if stage.epoch <= epoch)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            raise UserInputError(
                f"ProgressiveUnfreeze supports single-device and DDP training, not {type(trainer.strategy).__name__}.\n"
                "HINT: use --trainer.strategy ddp (or auto on one device)."
            )
        self._resolve(pl_module)
        if pl_module.hparams.get("pretrained") is False:
            rank_zero_warn(
                "ProgressiveUnfreeze is fine-tuning a network built with pretrained=False: its early stages keep "
                "randomly initialised layers frozen and train the rest at rates meant for pretrained weights.\n"
                "HINT: to train from scratch, use configs/resnet_cbam_fast.yaml (every layer trains from the "
                "first epoch); to fine-tune, give the ImageNet weights (README, Quick start)."
            )

    def _resolve(self, pl_module: L.LightningModule) -> None:
        """Turn every stage's names into its trainable parameters and covered modules, checking them."""
        root = pl_module.net if isinstance(getattr(pl_module, "net", None), nn.Module) else pl_module
        batch_norm = [p for m in pl_module.modules() if isinstance(m, _BATCH_NORMS) for p in m.parameters()]
        name_of = {id(m): name for name, m in pl_module.named_modules()}
        self._trainable, self._covered = [], []
        names: list[str] = []
        for index, stage in enumerate(self.stages):
            if stage.train is None:
                modules = [pl_module]
            else:
                names = [*names, *stage.train] if stage.extends else list(stage.train)
                modules = [_submodule(root, name, index) for name in names]
            covered = {name_of[id(m)] for module in modules for m in module.modules()}
            chosen = {id(p) for module in modules for p in module.parameters()}
            if self.train_bn:
                chosen |= {id(p) for p in batch_norm}
            trainable = [p for p in pl_module.parameters() if id(p) in chosen]
            previous = {id(p) for p in self._trainable[-1]} if self._trainable else set()
            if not previous < chosen:
                what = "would freeze parameters that already train" if previous - chosen else "adds no parameters"
                raise UserInputError(
                    f"stages[{index}] (train={stage.trains()}) {what}.\n"
                    "HINT: each stage must unfreeze more of the model; write `+name` to add to the previous stage."
                )
            self._trainable.append(trainable)
            self._covered.append(covered)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        optimizer = _single_optimizer(trainer)
        if len(optimizer.param_groups) > 1:
            raise UserInputError(
                f"The model's optimiser has {len(optimizer.param_groups)} parameter groups, but ProgressiveUnfreeze "
                "sets the groups and their learning rates itself.\n"
                "HINT: leave model.backbone_lr unset when the trainer has a ProgressiveUnfreeze callback."
            )
        # A fresh run starts at stage 0; a resumed one at the stage its checkpoint holds, its groups rebuilt from
        # scratch. Lightning loads the optimiser and scheduler state after this hook, into exactly these groups.
        optimizer.param_groups.clear()
        optimizer.state.clear()
        self._begin_stages(trainer, pl_module, first=0, target=max(self.stage, 0))

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        target = self.stage_at(trainer.current_epoch)
        if target > self.stage:
            self._begin_stages(trainer, pl_module, first=self.stage + 1, target=target)
        self._apply_batch_norm_modes(pl_module)
        pl_module.log("unfreeze/stage", float(self.stage), on_step=False, on_epoch=True)

    def _begin_stages(self, trainer: L.Trainer, pl_module: L.LightningModule, first: int, target: int) -> None:
        """Mechanics: stages ``first..target`` begin now; groups by the ``stage_lr`` policy, then what trains."""
        optimizer = _single_optimizer(trainer)
        scheduler = _plateau_or_none(trainer)
        self.stage = target
        # One start step per stage begun; a resume already holds the steps of the stages it restored.
        self.stage_start_steps += [trainer.global_step] * (target + 1 - len(self.stage_start_steps))
        self._regroup(optimizer, scheduler, first)
        if scheduler is not None:
            plateau_fit_groups(scheduler, plateau_min_lr(scheduler))  # checked by _plateau_or_none
        self._apply_trainable(trainer, pl_module)

    def _regroup(self, optimizer: Optimizer, scheduler: ReduceLROnPlateau | None, first: int) -> None:
        """Policy: the parameter groups and rates once stages ``first..self.stage`` have begun."""
        if self.stage_lr == "reset":
            optimizer.param_groups.clear()
            optimizer.state.clear()
            self._add_group(optimizer, self.stage, self._trainable[self.stage])
            if scheduler is not None:
                plateau_restart(scheduler)  # the source built a fresh scheduler with its fresh optimiser
            return
        for index in range(first, self.stage + 1):
            self._add_group(optimizer, index, self._new_in(index))
        if self.stage_lr == ALL:
            for group in optimizer.param_groups:
                group["lr"] = self.stages[self.stage].lr

    def _new_in(self, index: int) -> list[nn.Parameter]:
        """Parameters that start training at stage ``index``."""
        before = {id(p) for p in self._trainable[index - 1]} if index > 0 else set()
        return [p for p in self._trainable[index] if id(p) not in before]

    def _add_group(self, optimizer: Optimizer, index: int, params: list[nn.Parameter]) -> None:
        optimizer.add_param_group({"params": params, "lr": self.stages[index].lr, "name": f"stage{index}"})

    def _apply_trainable(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Set ``requires_grad`` for the current stage, then let DDP register exactly that set."""
        trainable = {id(p) for p in self._trainable[self.stage]}
        for param in pl_module.parameters():
            param.requires_grad_(id(param) in trainable)
        rewrap_ddp(trainer)

    def _apply_batch_norm_modes(self, pl_module: L.LightningModule) -> None:
        """Frozen BatchNorm in eval mode, so its running statistics stay put."""
        if self.train_bn:
            return
        covered = self._covered[self.stage]
        for name, module in pl_module.named_modules():
            if isinstance(module, _BATCH_NORMS):
                module.train(pl_module.training and name in covered)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "stage_start_steps": list(self.stage_start_steps)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        stage = state_dict["stage"]
        if stage >= len(self.stages):
            raise UserInputError(
                f"The checkpoint is at unfreeze stage {stage}, but this schedule has {len(self.stages)} stages.\n"
                "HINT: resume with the schedule the checkpoint was trained with."
            )
        self.stage = stage
        self.stage_start_steps = list(state_dict["stage_start_steps"])


def _stage_lr(stage_lr: str | None, reset_optimizer: bool | None, lr_applies_to: str | None) -> str:
    """The ``stage_lr`` policy, from the setting or from the two keys it replaces (with a deprecation warning)."""
    for key, value, allowed in (("stage_lr", stage_lr, STAGE_LR), ("lr_applies_to", lr_applies_to, STAGE_LR[:2])):
        if value is not None and value not in allowed:
            raise UserInputError(
                f"{key}={value!r} is not one of {', '.join(map(repr, allowed))}.\n"
                "HINT: stage_lr: all lowers every group to the stage's rate (SPEC), added only the new group, "
                "reset starts a fresh optimiser each stage."
            )
    if reset_optimizer is None and lr_applies_to is None:
        return stage_lr or ALL
    given = {k: v for k, v in (("reset_optimizer", reset_optimizer), ("lr_applies_to", lr_applies_to)) if v is not None}
    old = ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in given.items())
    if reset_optimizer and lr_applies_to == "added":
        raise UserInputError(
            f"ProgressiveUnfreeze: {old} disagree: a reset optimiser has one group, "
            "so no earlier group keeps its rate.\n"
            "HINT: replace both with stage_lr: reset (the source's fresh optimiser) or stage_lr: added."
        )
    translated = "reset" if reset_optimizer else lr_applies_to or ALL
    if stage_lr is not None and stage_lr != translated:
        raise UserInputError(
            f"ProgressiveUnfreeze: stage_lr: {stage_lr} and the older {old} disagree.\n"
            f"HINT: remove {', '.join(given)}; stage_lr alone says it."
        )
    verb = "are" if len(given) > 1 else "is"
    rank_zero_deprecation(f"ProgressiveUnfreeze: {old} {verb} deprecated; write stage_lr: {translated} instead.")
    return translated


def _submodule(root: nn.Module, name: str, index: int) -> nn.Module:
    """``root.get_submodule(name)``, or an error listing the names there are."""
    try:
        return root.get_submodule(name)
    except AttributeError:
        valid = [n for n, _ in root.named_modules() if n and n.count(".") < 2]
        raise UserInputError(
            f"stages[{index}]: the model has no module {name!r}.\n"
            f"HINT: use one of {valid}, a dotted path below them, or `all`."
        ) from None


def _single_optimizer(trainer: L.Trainer) -> Optimizer:
    if len(trainer.optimizers) != 1:
        raise UserInputError(
            f"ProgressiveUnfreeze needs exactly one optimiser, the model configured {len(trainer.optimizers)}.\n"
            "HINT: return one optimiser from configure_optimizers."
        )
    return trainer.optimizers[0]


def _plateau_or_none(trainer: L.Trainer) -> ReduceLROnPlateau | None:
    """The ReduceLROnPlateau in use, if any; other schedulers cannot follow groups added later."""
    schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
    if not schedulers:
        return None
    if len(schedulers) > 1 or not isinstance(schedulers[0], ReduceLROnPlateau):
        names = [type(s).__name__ for s in schedulers]
        raise UserInputError(
            f"ProgressiveUnfreeze works with ReduceLROnPlateau or a constant learning rate, not {names}: "
            "schedulers that compute rates from per-group base rates break or rescale when groups are added.\n"
            "HINT: use torch.optim.lr_scheduler.ReduceLROnPlateau, or --model.scheduler null."
        )
    scheduler = schedulers[0]
    if plateau_min_lr(scheduler) is None:
        raise UserInputError(
            "ReduceLROnPlateau has a different min_lr per group, which cannot cover groups added later.\n"
            "HINT: give min_lr as one number."
        )
    return scheduler
