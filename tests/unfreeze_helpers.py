"""Test-only pieces for the unfreeze tests: a tiny model, a recorder, a DDP parameter gatherer, a config writer.

They live in an importable module (not the test file) so ``cli.py`` can name them
by class path, also in the DDP subprocess.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import yaml
from torch import nn
from typing_extensions import override

from lightning_modules import ImageClassifier
from tests.conftest import PICTURE_KEYS

# Every BatchNorm, SyncBatchNorm included: public classes, not torch's private _BatchNorm.
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

# Stages at epochs 0/1/2 over TinyNet: the stem and classifier, then layer2, then everything.
# bn1 and layer1 stay frozen until stage 2, so their BatchNorm statistics must not move before it.
TINY_STAGES = [
    {"epoch": 0, "train": ["conv1", "fc"], "lr": 1.0e-2},
    {"epoch": 1, "train": ["+layer2"], "lr": 1.0e-3},
    {"epoch": 2, "train": "all", "lr": 1.0e-4},
]


class TinyNet(nn.Module):
    """ResNet-like names (conv1, bn1, layer1, layer2, fc) at a few hundred parameters."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean(dim=(2, 3)))


class TinyClassifier(ImageClassifier):
    """``ImageClassifier`` over ``TinyNet``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = TinyNet(self.in_channels, self.num_classes)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and BatchNorm statistic, copied."""
    state = {name: p.detach().clone() for name, p in module.named_parameters()}
    for name, sub in module.named_modules():
        if isinstance(sub, BATCH_NORMS):
            state[f"{name}.running_mean"] = sub.running_mean.clone()
            state[f"{name}.running_var"] = sub.running_var.clone()
    return state


class ScheduleRecorder(L.Callback):
    """Per epoch: trainable names, groups, BatchNorm modes and a snapshot at the start and the end."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx != 0:
            return
        names = {id(p): name for name, p in pl_module.named_parameters()}
        optimizer = trainer.optimizers[0]
        self.epochs.append(
            {
                "epoch": trainer.current_epoch,
                "trainable": {name for name, p in pl_module.named_parameters() if p.requires_grad},
                "groups": [
                    {"name": g.get("name"), "lr": g["lr"], "params": [names[id(p)] for p in g["params"]]}
                    for g in optimizer.param_groups
                ],
                "bn_training": {n: m.training for n, m in pl_module.named_modules() if isinstance(m, BATCH_NORMS)},
                "start": snapshot(pl_module),
            }
        )

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            state = trainer.optimizers[0].state
            self.epochs[-1]["adam_steps"] = {int(s["step"]) for s in state.values() if "step" in s}

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs[-1]["end"] = snapshot(pl_module)


class GatherParameters(L.Callback):
    """Under DDP, all-gather every parameter and BatchNorm statistic at each epoch end.

    Rank zero appends, per epoch, the largest difference between ranks and a
    checksum of its own values to ``$UNFREEZE_GATHER_FILE`` (JSON lines).
    """

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        flat = torch.cat([value.flatten().double() for value in snapshot(pl_module).values()])
        gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        if trainer.is_global_zero:
            record = {
                "epoch": trainer.current_epoch,
                "max_rank_difference": max((g - gathered[0]).abs().max().item() for g in gathered),
                "identical": all(torch.equal(g, gathered[0]) for g in gathered),
                "checksum": flat.sum().item(),
                "trainable": sum(p.requires_grad for p in pl_module.parameters()),
            }
            with open(os.environ["UNFREEZE_GATHER_FILE"], "a") as file:
                file.write(json.dumps(record) + "\n")


def write_config(
    path: Path, data_dir: Path, name: str, stages: list[dict] | None = TINY_STAGES, callbacks: tuple[str, ...] = (),
    scheduler: str | None = "torch.optim.lr_scheduler.ReduceLROnPlateau", **unfreeze: Any,
) -> Path:
    """A complete fit config for ``TinyClassifier`` on ``data_dir``; ``stages=None`` leaves the callback out."""
    trainer_callbacks: list[dict] = [{"class_path": class_path} for class_path in callbacks]
    if stages is not None:
        trainer_callbacks.insert(
            0, {"class_path": "callbacks.ProgressiveUnfreeze", "init_args": {"stages": stages, **unfreeze}}
        )
    config = {
        **dict.fromkeys(PICTURE_KEYS),  # the drawing callbacks off: not what these tests are about
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 4,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "callbacks": trainer_callbacks,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "lightning_logs", "name": name},
            },
        },
        "model": {
            "class_path": "tests.unfreeze_helpers.TinyClassifier",
            "init_args": {
                "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 1.0e-3}},
                "scheduler": None if scheduler is None else {"class_path": scheduler, "init_args": _scheduler_args(scheduler)},
            },
        },
        "data": {
            "class_path": "datamodules.CIFAR10DataModule",
            "init_args": {"data_dir": str(data_dir), "val_size": 12, "batch_size": 16, "pin_memory": False},
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _scheduler_args(class_path: str) -> dict[str, Any]:
    if class_path.endswith("ReduceLROnPlateau"):
        # patience 0: the rate halves at the first epoch without progress, so the plateau acts within 4 epochs
        return {"mode": "min", "patience": 0, "factor": 0.5}
    return {"step_size": 1}
