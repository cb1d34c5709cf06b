"""Progressive unfreezing: the schedule at every epoch, frozen means frozen, resume, DDP, the source's reset mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from callbacks import ProgressiveUnfreeze
from tests.conftest import NO_PICTURES, REPO, config_with_stages
from tests.test_cli import tiny_args
from tests.unfreeze_helpers import ScheduleRecorder, write_config
from common.user_input import UserInputError

RECORDER = "tests.unfreeze_helpers.ScheduleRecorder"

STEM_AND_HEAD = {"net.conv1.weight", "net.fc.weight", "net.fc.bias"}
LAYER2 = {"net.layer2.0.weight", "net.layer2.1.weight", "net.layer2.1.bias"}
REST = {"net.bn1.weight", "net.bn1.bias", "net.layer1.0.weight", "net.layer1.1.weight", "net.layer1.1.bias"}
# What each stage of TINY_STAGES adds, and its learning rate.
ADDED = [(STEM_AND_HEAD, 1e-2), (LAYER2, 1e-3), (REST, 1e-4)]


def _fit(run_cli, tmp_path: Path, data: Path, name: str, *extra, **config):
    path = write_config(tmp_path / f"{name}.yaml", data, name, **config)
    return run_cli("fit", "--config", path, *extra)


def _callback(cli, kind: type):
    return next(c for c in cli.trainer.callbacks if isinstance(c, kind))


@pytest.mark.parametrize(
    ("stages", "named"),
    [
        ([{"epoch": 0, "train": ["fc"], "lr": 1e-3}, {"epoch": 0, "train": "all", "lr": 1e-4}], "strictly increasing"),
        ([{"epoch": 0, "train": ["fc"], "lr": 0.0}], "lr=0.0"),
        ([{"epoch": 0, "train": ["fc"], "lr": -1e-3}], "lr=-0.001"),
        ([{"epoch": 1, "train": ["fc"], "lr": 1e-3}], "stages[0].epoch=1"),
        ([{"epoch": 0, "train": ["fc", "+conv1"], "lr": 1e-3}], "mixes"),
        ([{"epoch": 0, "train": [], "lr": 1e-3}], "non-empty list"),
        ([{"epoch": 0, "modules": ["fc"], "lr": 1e-3}], "unknown keys ['modules']"),
    ],
)
def test_stages_are_checked_at_construction(stages, named):
    with pytest.raises(ValueError, match="HINT:") as error:
        ProgressiveUnfreeze(stages)
    assert named in str(error.value)


def _exit_2_message(capsys, run) -> str:
    """What the CLI printed for a mistake in the user's input: it must exit 2, not raise."""
    with pytest.raises(SystemExit) as stop:
        run()
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_unknown_module_is_rejected_at_start_with_the_valid_names(tiny_data, run_cli, tmp_path, capsys):
    stages = [{"epoch": 0, "train": ["conv1", "layer9"], "lr": 1e-3}]
    message = _exit_2_message(capsys, lambda: _fit(run_cli, tmp_path, tiny_data, "unknown", stages=stages))
    assert "no module 'layer9'" in message
    assert "'conv1', 'bn1', 'layer1', 'layer1.0'" in message


def test_trainable_set_groups_and_frozen_weights_follow_the_schedule(tiny_data, run_cli, tmp_path):
    cli = _fit(run_cli, tmp_path, tiny_data, "schedule", callbacks=(RECORDER,))  # every run has the rate monitor
    epochs = _callback(cli, ScheduleRecorder).epochs
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    for record in epochs:
        stage = min(record["epoch"], 2)
        expected = set().union(*(added for added, _ in ADDED[: stage + 1]))
        assert record["trainable"] == expected, record["epoch"]
        grouped = [name for group in record["groups"] for name in group["params"]]
        assert sorted(grouped) == sorted(expected)  # each trainable parameter in exactly one group
        assert [g["name"] for g in record["groups"]] == [f"stage{i}" for i in range(stage + 1)]
        for index, group in enumerate(record["groups"]):
            assert set(group["params"]) == ADDED[index][0]
        if record["epoch"] == stage:  # the epoch a stage starts, every group takes its rate (SPEC)
            assert [g["lr"] for g in record["groups"]] == [ADDED[stage][1]] * (stage + 1)
        for name, value in record["start"].items():
            moved = not torch.equal(value, record["end"][name])
            frozen_parameter = name in REST | LAYER2 and name not in expected
            frozen_statistic = "running" in name and name.rsplit(".", 1)[0] + ".weight" not in expected
            if frozen_parameter or frozen_statistic:
                assert not moved, (record["epoch"], name)
            elif name in expected or "running" in name:
                assert moved, (record["epoch"], name)
        assert record["bn_training"] == {
            "net.bn1": stage >= 2, "net.layer1.1": stage >= 2, "net.layer2.1": stage >= 1
        }
    unfreeze = _callback(cli, ProgressiveUnfreeze)
    assert unfreeze.stage_boundaries == [0, 1, 2]
    assert unfreeze.stage_start_steps == [0, 4, 8]  # 60 training images in batches of 16: 4 steps an epoch
    logged = cli.trainer.callback_metrics
    assert logged["unfreeze/stage"] == 2
    # Lightning's own monitor follows the groups as they are added (named after the stages).
    assert logged["lr-Adam/stage2"] == 1e-4
    # patience 0: the plateau scheduler has lowered some rate, and keeps one floor per group.
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert len(scheduler.min_lrs) == 3


def test_train_bn_lets_frozen_batchnorm_learn(tiny_data, run_cli, tmp_path):
    cli = _fit(run_cli, tmp_path, tiny_data, "train_bn", "--trainer.max_epochs", 1, callbacks=(RECORDER,), train_bn=True)
    (record,) = _callback(cli, ScheduleRecorder).epochs
    batch_norm = {"net.bn1.weight", "net.bn1.bias", "net.layer1.1.weight", "net.layer1.1.bias"}
    batch_norm |= {"net.layer2.1.weight", "net.layer2.1.bias"}
    assert record["trainable"] == STEM_AND_HEAD | batch_norm
    assert all(record["bn_training"].values())
    assert not torch.equal(record["start"]["net.layer1.1.running_mean"], record["end"]["net.layer1.1.running_mean"])
    assert torch.equal(record["start"]["net.layer1.0.weight"], record["end"]["net.layer1.0.weight"])


def _optimizer_view(cli) -> list[tuple]:
    names = {id(p): n for n, p in cli.model.named_parameters()}
    return [(g["name"], g["lr"], [names[id(p)] for p in g["params"]]) for g in cli.trainer.optimizers[0].param_groups]


@pytest.mark.parametrize("stage_lr", ["all", "reset"])
def test_resume_after_each_epoch_matches_the_straight_run(tiny_data, run_cli, tmp_path, stage_lr):
    straight = _fit(run_cli, tmp_path, tiny_data, "straight", stage_lr=stage_lr)
    expected = {n: p.detach().clone() for n, p in straight.model.named_parameters()}
    expected_trainable = {n for n, p in straight.model.named_parameters() if p.requires_grad}
    expected_groups = _optimizer_view(straight)
    expected_steps = _callback(straight, ProgressiveUnfreeze).stage_start_steps
    # One run stopped after every epoch: 1 epoch, then resumed to 2, to 3 and to the end. Each resume crosses a
    # stage change, and any state it lost would move the final bits.
    _fit(run_cli, tmp_path, tiny_data, "resumed", "--trainer.max_epochs", 1, stage_lr=stage_lr)
    for k in (2, 3, None):
        length = [] if k is None else ["--trainer.max_epochs", k]
        resumed = _fit(run_cli, tmp_path, tiny_data, "resumed", *length, "--ckpt_path", "last",
                       stage_lr=stage_lr)
        assert resumed.trainer.current_epoch == (k or straight.trainer.current_epoch)
    assert Path(resumed.trainer.log_dir).name == "version_0"  # every resume continued the one run
    assert resumed.trainer.global_step == straight.trainer.global_step
    for param_name, param in resumed.model.named_parameters():
        assert torch.equal(param, expected[param_name]), param_name
    assert {n for n, p in resumed.model.named_parameters() if p.requires_grad} == expected_trainable
    assert _optimizer_view(resumed) == expected_groups
    assert _callback(resumed, ProgressiveUnfreeze).stage_start_steps == expected_steps


@pytest.mark.parametrize("setting", [{"stage_lr": "reset"}, {"reset_optimizer": True}], ids=["stage_lr", "old_key"])
def test_reset_starts_a_fresh_adam_each_stage(tiny_data, run_cli, tmp_path, setting):
    cli = _fit(run_cli, tmp_path, tiny_data, "reset", callbacks=(RECORDER,), **setting)
    epochs = _callback(cli, ScheduleRecorder).epochs
    for record in epochs:
        stage = min(record["epoch"], 2)
        expected = set().union(*(added for added, _ in ADDED[: stage + 1]))
        (group,) = record["groups"]  # one group, all trainable parameters
        assert set(group["params"]) == record["trainable"] == expected
        assert group["name"] == f"stage{stage}"
        if record["epoch"] == stage:
            assert group["lr"] == ADDED[stage][1]
            assert record["adam_steps"] == {1}  # moments and step counts start over
        else:
            assert record["adam_steps"] == {4 * (record["epoch"] - stage) + 1}


def test_schedulers_other_than_plateau_are_refused(tiny_data, run_cli, tmp_path, capsys):
    message = _exit_2_message(
        capsys, lambda: _fit(run_cli, tmp_path, tiny_data, "steplr", scheduler="torch.optim.lr_scheduler.StepLR")
    )
    assert "ReduceLROnPlateau or a constant" in message
    assert "StepLR" in message and "HINT:" in message


def test_constant_learning_rate_works_with_stages(tiny_data, run_cli, tmp_path):
    cli = _fit(run_cli, tmp_path, tiny_data, "constant", "--trainer.max_epochs", 2, scheduler=None)
    assert [lr for _, lr, _ in _optimizer_view(cli)] == [1e-3, 1e-3]  # stage 1 lowered every group


def test_discriminative_config_groups_new_and_pretrained_modules(tiny_data_16, run_cli):
    config = REPO / "configs/resnet_cbam_discriminative.yaml"
    cli = run_cli("fit", *tiny_args(config, tiny_data_16), "--trainer.fast_dev_run", "true", *NO_PICTURES)
    new, pretrained = cli.trainer.optimizers[0].param_groups
    assert (new["name"], new["lr"], pretrained["name"], pretrained["lr"]) == ("new", 1e-3, "pretrained", 1e-5)
    net = cli.model.net
    new_ids = {id(p) for name in ("conv1", "cbam", "fc") for p in net.get_submodule(name).parameters()}
    assert {id(p) for p in new["params"]} == new_ids
    assert {id(p) for p in pretrained["params"]} == {id(p) for p in cli.model.parameters()} - new_ids


def test_resnet_cbam_config_schedule_through_the_cli(tiny_data_16, run_cli, tmp_path):
    stages = [{"epoch": 0, "train": ["conv1", "cbam", "fc"], "lr": 1.0e-3},
              {"epoch": 1, "train": ["+layer3", "+layer4"], "lr": 1.0e-4}]
    config = config_with_stages(tmp_path, stages)
    # Offline the tests build it without ImageNet weights: the run says what that means and where to go.
    with pytest.warns(UserWarning, match=r"pretrained=False(.|\n)*configs/resnet_cbam_fast.yaml"):
        cli = run_cli(
            "fit", *tiny_args(config, tiny_data_16), "--trainer.callbacks+=" + RECORDER,
            "--trainer.max_epochs", 2, "--trainer.limit_train_batches", 1, "--trainer.limit_val_batches", 1,
            "--data.batch_size", 4,
        )
    first, second = (
        {name.split(".")[1] for name in record["trainable"]} for record in _callback(cli, ScheduleRecorder).epochs
    )
    assert first == {"conv1", "cbam", "fc"}  # the new stem trains from the start
    assert second == {"conv1", "cbam", "fc", "layer3", "layer4"}
    assert [(name, lr) for name, lr, _ in _optimizer_view(cli)] == [("stage0", 1e-4), ("stage1", 1e-4)]


def test_added_scope_keeps_earlier_groups_at_their_rates(tiny_data, run_cli, tmp_path):
    cli = _fit(run_cli, tmp_path, tiny_data, "added", "--trainer.max_epochs", 3, callbacks=(RECORDER,),
               stage_lr="added", scheduler=None)
    third = _callback(cli, ScheduleRecorder).epochs[2]
    assert [g["lr"] for g in third["groups"]] == [rate for _, rate in ADDED]


def test_unknown_lr_scope_is_refused():
    with pytest.raises(UserInputError, match="lr_applies_to='some'"):
        ProgressiveUnfreeze(stages=[{"epoch": 0, "train": "all", "lr": 1e-3}], lr_applies_to="some")
    with pytest.raises(UserInputError, match="stage_lr='some'.*\nHINT: stage_lr: all"):
        ProgressiveUnfreeze(stages=[{"epoch": 0, "train": "all", "lr": 1e-3}], stage_lr="some")


@pytest.mark.parametrize(
    ("old", "expected"),
    [
        ({"reset_optimizer": True}, "reset"),
        ({"reset_optimizer": True, "lr_applies_to": "all"}, "reset"),
        ({"lr_applies_to": "added"}, "added"),
        ({"reset_optimizer": False, "lr_applies_to": "all"}, "all"),  # what a config saved by an older run holds
    ],
)
def test_old_keys_still_work_and_name_the_new_one(old, expected):
    with pytest.warns(DeprecationWarning, match=f"write stage_lr: {expected} instead"):
        unfreeze = ProgressiveUnfreeze([{"epoch": 0, "train": "all", "lr": 1e-3}], **old)
    assert unfreeze.stage_lr == expected


@pytest.mark.parametrize(
    ("given", "named"),
    [
        # reset_optimizer used to override lr_applies_to silently
        ({"reset_optimizer": True, "lr_applies_to": "added"}, "HINT: replace both with stage_lr: reset"),
        ({"stage_lr": "added", "reset_optimizer": True}, "HINT: remove reset_optimizer"),
    ],
)
def test_settings_that_disagree_are_refused(given, named):
    with pytest.raises(UserInputError, match=named):
        ProgressiveUnfreeze([{"epoch": 0, "train": "all", "lr": 1e-3}], **given)


def test_stage_label_says_what_the_stage_trains_and_its_rate():
    unfreeze = ProgressiveUnfreeze([{"epoch": 0, "train": ["conv1", "fc"], "lr": 1e-3},
                                    {"epoch": 5, "train": ["+layer3", "+layer4"], "lr": 1e-4},
                                    {"epoch": 9, "train": "all", "lr": 2.5e-5}])
    assert [unfreeze.stage_label(i) for i in range(3)] == [
        "stage 0: conv1, fc @ 1e-3", "stage 1: +layer3, +layer4 @ 1e-4", "stage 2: all @ 2.5e-5"
    ]


def test_backbone_lr_and_stages_are_refused_together(tiny_data, run_cli, capsys):
    message = _exit_2_message(capsys, lambda: run_cli(
        "fit", *tiny_args(REPO / "configs/resnet_cbam.yaml", tiny_data), "--model.backbone_lr", "1e-5",
        "--trainer.fast_dev_run", "true",
    ))
    assert "backbone_lr" in message


def _ddp_fit(config: Path, cwd: Path, gather_file: Path, *extra: str) -> None:
    env = {**os.environ, "UNFREEZE_GATHER_FILE": str(gather_file), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, str(REPO / "cli.py"), "fit", "--config", str(config),
        "--trainer.devices", "2", "--trainer.strategy", "ddp", *extra,
    ]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]


def test_ddp_replicas_stay_identical_through_every_stage_and_a_resume(tiny_data, tmp_path):
    config = write_config(tmp_path / "ddp.yaml", tiny_data, "ddp", callbacks=("tests.unfreeze_helpers.GatherParameters",))
    gather_file = tmp_path / "gathered.jsonl"
    _ddp_fit(config, tmp_path, gather_file, "--trainer.max_epochs", "2")
    _ddp_fit(config, tmp_path, gather_file, "--trainer.max_epochs", "4", "--ckpt_path", "last")
    records = [json.loads(line) for line in gather_file.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert [r["trainable"] for r in records] == [3, 6, 11, 11]
    for record in records:
        assert record["identical"], record
    # The weights moved: stages after the first really trained, on every rank alike.
    assert len({r["checksum"] for r in records}) == 4


def test_frozen_batchnorm_stays_frozen_after_sync_batchnorm_conversion():
    """Lightning converts BatchNorm to SyncBatchNorm after the callbacks' setup (``--trainer.sync_batchnorm``)."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import SingleDeviceStrategy

    from tests.unfreeze_helpers import TINY_STAGES, TinyClassifier

    model = TinyClassifier(num_classes=3)
    unfreeze = ProgressiveUnfreeze(TINY_STAGES)
    trainer = SimpleNamespace(strategy=SingleDeviceStrategy("cpu"), current_epoch=1)
    unfreeze.setup(trainer, model, "fit")
    model.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.net)  # what the strategy's setup does
    unfreeze.stage = 1  # stage 1: conv1, fc and layer2 train; bn1 and layer1 stay frozen
    model.train()
    unfreeze._apply_batch_norm_modes(model)
    modes = {name: m.training for name, m in model.named_modules() if isinstance(m, torch.nn.SyncBatchNorm)}
    assert modes == {"net.bn1": False, "net.layer1.1": False, "net.layer2.1": True}
