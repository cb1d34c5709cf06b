"""The optimiser options the fast recipes are built from: sized schedules, Nesterov SGD, label smoothing."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial

import lightning as L
import pytest
import torch
from torch.nn import functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau

from datamodules import CIFAR10DataModule
from lightning_modules import CNNClassifier
from tests.conftest import NO_PICTURES, REPO

FAST = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.enable_checkpointing", "false"]


def _fit(run_cli, tiny_data, config: str, *extra: object):
    # 72 training images less 12 validated = 60, in batches of 16: 4 optimiser steps an epoch. The
    # schedules are what these tests are about: the drawing callbacks are off.
    return run_cli("fit", "--config", REPO / "configs" / config, "--data.data_dir", tiny_data,
                   "--data.val_size", 12, "--data.batch_size", 16, *FAST, *NO_PICTURES, *extra)


def _only_scheduler(cli):
    (config,) = cli.trainer.lr_scheduler_configs
    return config


def test_one_cycle_is_sized_from_the_fit_and_stepped_every_step(tiny_data, run_cli):
    cli = _fit(run_cli, tiny_data, "cnn_fast.yaml", "--trainer.max_epochs", 2)
    config = _only_scheduler(cli)
    assert isinstance(config.scheduler, OneCycleLR)
    assert config.interval == "step"
    assert config.scheduler.total_steps == 8 == cli.trainer.global_step
    # The same schedule built by hand and stepped 8 times ends at the same rate.
    reference = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9, nesterov=True)
    by_hand = OneCycleLR(reference, max_lr=0.1, pct_start=0.25, total_steps=8)
    for _ in range(8):
        reference.step()
        by_hand.step()
    optimizer = cli.trainer.optimizers[0]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"], rel=1e-12)
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(reference.param_groups[0]["momentum"], rel=1e-12)


def test_sgd_nesterov_weight_decay_and_label_smoothing_come_from_yaml(tiny_data, run_cli):
    cli = _fit(run_cli, tiny_data, "cnn_fast.yaml", "--trainer.max_epochs", 2)
    (group,) = cli.trainer.optimizers[0].param_groups
    assert type(cli.trainer.optimizers[0]) is torch.optim.SGD
    assert group["nesterov"] is True and group["weight_decay"] == 5e-4
    assert cli.model.label_smoothing == 0.1


def test_cosine_without_t_max_spans_the_fit(tiny_data):
    # From Python: jsonargparse insists on T_max in YAML, so this path is for code that builds modules.
    data = CIFAR10DataModule(tiny_data, val_size=12, batch_size=16)
    model = CNNClassifier(num_classes=3, optimizer=partial(torch.optim.SGD, lr=0.1),
                          scheduler=partial(CosineAnnealingLR, eta_min=1e-3))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    (config,) = trainer.lr_scheduler_configs
    assert (config.interval, config.scheduler.T_max) == ("step", 8)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3, rel=1e-9)  # eta_min, reached


def test_a_length_the_user_gave_is_kept(tiny_data, run_cli):
    cli = _fit(run_cli, tiny_data, "cnn.yaml", "--trainer.max_epochs", 2,
               "--model.scheduler.class_path", "torch.optim.lr_scheduler.CosineAnnealingLR",
               "--model.scheduler.init_args.T_max", 3)
    config = _only_scheduler(cli)
    assert (config.interval, config.scheduler.T_max) == ("epoch", 3)


def test_plateau_still_steps_each_epoch_on_val_loss(tiny_data, run_cli):
    config = _only_scheduler(_fit(run_cli, tiny_data, "cnn.yaml", "--trainer.max_epochs", 1))
    assert isinstance(config.scheduler, ReduceLROnPlateau)
    assert (config.interval, config.monitor) == ("epoch", "val/loss")


def test_an_unbounded_fit_cannot_size_a_schedule(tiny_data, run_cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _fit(run_cli, tiny_data, "cnn_fast.yaml", "--trainer.max_epochs", -1)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unbounded" in err and "HINT:" in err and "--trainer.max_steps" in err


def test_bad_label_smoothing_exits_2(tiny_data, run_cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _fit(run_cli, tiny_data, "cnn_fast.yaml", "--model.label_smoothing", 1.5, "--trainer.fast_dev_run", "true")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "label_smoothing=1.5" in err and "HINT:" in err


def test_label_smoothing_applies_to_the_training_loss_only():
    torch.manual_seed(0)
    model = CNNClassifier(num_classes=3, label_smoothing=0.1).eval()  # eval: no dropout, same logits twice
    images, labels = torch.rand(5, 3, 32, 32), torch.tensor([0, 1, 2, 1, 0])
    with torch.no_grad():
        logits = model(images)
        trained = model.training_step((images, labels), 0)
        evaluated, _, _ = model.model_step((images, labels))
    assert trained == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item(), rel=1e-6)
    assert evaluated == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert abs(trained - evaluated) > 1e-3


@pytest.mark.parametrize("config, target, epochs_run", [("cnn_fast", 0.01, 1), ("cnn_fast", 1.0, 2), ("cnn", 1.0, 2)])
def test_time_to_accuracy_runs_a_recipe_until_its_target(config, target, epochs_run, tiny_data, tmp_path, monkeypatch):
    from argparse import Namespace

    from benchmarks.time_to_accuracy import recipe, time_to_target

    monkeypatch.chdir(tmp_path)
    args = Namespace(data=tiny_data, target=target, max_epochs=2, val_size=12)
    history = recipe(config, args, 0, extra=["--trainer.accelerator", "cpu", *NO_PICTURES])
    assert [epoch for epoch, _, _ in history] == list(range(1, epochs_run + 1))
    seconds = [s for _, s, _ in history]
    assert seconds == sorted(seconds) and seconds[0] > 0
    expected = next((s for _, s, accuracy in history if accuracy >= target), float("inf"))
    assert time_to_target(history, target) == expected
    assert (expected == seconds[0]) == (target == 0.01)  # any accuracy passes 1 %; epoch 1 is short of 100 %
    assert not list(tmp_path.iterdir())  # its logs went to a temporary folder


def test_time_to_accuracy_races_a_config_against_the_reference_loop_from_the_command_line(tiny_data, tmp_path):
    # As users run it (python -m): the stop callback comes from the imported module, not __main__.
    command = [sys.executable, "-m", "benchmarks.time_to_accuracy", "--data", str(tiny_data), "--configs", "reference",
               "cnn_fast", "--target", "1.0", "--max-epochs", "2", "--val-size", "12",
               "--cli", " ".join(["--trainer.accelerator cpu", *NO_PICTURES])]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 0 ")]
    assert [row.split("|")[2].strip() for row in rows] == ["reference", "cnn_fast"]
    by_epoch = {row.split("|")[2].strip(): row.split("|")[3].strip().split(" / ") for row in rows}
    assert len(by_epoch["cnn_fast"]) == 2  # the target out of its reach (the reference loop may hit 100 % here)
    # The reference loop shows each epoch as it ends: a long run is not silent for an hour.
    progress = [line for line in done.stdout.splitlines() if line.startswith("reference loop, seed 0: epoch")]
    assert [line.split(", ")[2].split(" at ")[0].replace(" ", "") for line in progress] == by_epoch["reference"]


def test_time_to_accuracy_without_training_images_exits_2_naming_the_folder(tmp_path, monkeypatch, capsys):
    from benchmarks import time_to_accuracy

    monkeypatch.setattr(sys, "argv", ["time_to_accuracy", "--data", str(tmp_path / "nowhere"), "--configs",
                                      "reference", "cnn_fast"])
    with pytest.raises(SystemExit) as exit_info:
        time_to_accuracy.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nowhere holds no train/ folder" in err and "HINT:" in err


def test_a_fit_too_short_for_the_warm_up_exits_2(tiny_data, run_cli, capsys):
    # 4 steps at pct_start 0.25 end the warm-up at step 0: an empty phase, which OneCycleLR divides by.
    with pytest.raises(SystemExit) as exit_info:
        _fit(run_cli, tiny_data, "cnn_fast.yaml", "--trainer.max_epochs", 1)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "{'total_steps': 4}" in err and "HINT:" in err


def test_resuming_a_sized_schedule_with_another_length_exits_2(tiny_data, run_cli, capsys):
    args = ["--config", REPO / "configs/cnn_fast.yaml", "--data.data_dir", tiny_data, "--data.val_size", 12,
            "--data.batch_size", 16, *FAST[:-2], *NO_PICTURES]  # with checkpoints
    run_cli("fit", *args, "--trainer.max_epochs", 2)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *args, "--trainer.max_epochs", 3, "--ckpt_path", "last")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "sized for 8 steps (total_steps), but this fit now runs 12" in err and "HINT:" in err
