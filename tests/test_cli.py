"""Every recipe runs through the CLI; checkpoints, resume and bad input behave."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import CONFIGS, REPO

FAST = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def tiny_args(config: Path, data: Path) -> list[str]:
    args = ["--config", config, "--data.data_dir", data, "--data.val_size", 12, *FAST]
    if "resnet" in config.stem:
        args += ["--model.pretrained", "false"]
    return args


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_fits_and_tests(config, tiny_data, run_cli, tmp_path):
    cli = run_cli("fit", *tiny_args(config, tiny_data), "--trainer.fast_dev_run", "true")
    assert cli.datamodule.classes == ["bird", "cat", "ship"]
    assert cli.model.num_classes == 3
    logged = cli.trainer.callback_metrics
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(logged)
    cli = run_cli("test", *tiny_args(config, tiny_data), "--trainer.fast_dev_run", "true")
    assert 0.0 <= cli.trainer.callback_metrics["test/acc"] <= 1.0
    assert "test/loss" in cli.trainer.callback_metrics


def _train(run_cli, data, *extra):
    return run_cli("fit", *tiny_args(REPO / "configs/cnn.yaml", data), "--data.batch_size", 16, *extra)


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_last_checkpoint_is_the_latest_epoch_even_without_improvement(tiny_data, run_cli, tmp_path):
    # lr 0: val/acc never improves after epoch 0, so Lightning's save_last would stay at epoch 0.
    cli = _train(run_cli, tiny_data, "--trainer.max_epochs", 3, "--model.optimizer.lr", 0.0)
    ckpt_dir = Path(cli.trainer.log_dir) / "checkpoints"
    last = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    assert last["epoch"] == 2
    best = list(ckpt_dir.glob("best-*.ckpt"))
    assert len(best) == 1 and torch.load(best[0], weights_only=False)["epoch"] == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_last_continues_the_run_bit_exactly(workers, tiny_data, run_cli, tmp_path, monkeypatch):
    # Worker processes must not change the order or the augmentation draws (issue 6, item 5);
    # mid-epoch resumes are covered in test_robustness.py.
    exact = ("--trainer.deterministic", "true", "--data.num_workers", workers)
    straight = _train(run_cli, tiny_data, *exact, "--trainer.max_epochs", 3, "--trainer.logger.init_args.name", "straight")
    expected = _weights(straight.model)

    _train(run_cli, tiny_data, *exact, "--trainer.max_epochs", 2, "--trainer.logger.init_args.name", "resumed")
    resumed = _train(
        run_cli, tiny_data, *exact, "--trainer.max_epochs", 3, "--trainer.logger.init_args.name", "resumed",
        "--ckpt_path", "last",
    )
    assert resumed.trainer.current_epoch == 3
    assert resumed.trainer.global_step == straight.trainer.global_step
    # The resumed run logs into the run it continues.
    assert Path(resumed.trainer.log_dir).name == "version_0"
    for key, value in _weights(resumed.model).items():
        assert torch.equal(value, expected[key]), key


def test_test_with_best_finds_the_fitted_run(tiny_data, run_cli):
    fit = _train(run_cli, tiny_data, "--trainer.max_epochs", 2)
    best = fit.trainer.checkpoint_callback.best_model_path
    cli = run_cli("test", *tiny_args(REPO / "configs/cnn.yaml", tiny_data), "--ckpt_path", "best")
    assert cli.trainer.ckpt_path == best
    assert Path(cli.trainer.log_dir) == Path(fit.trainer.log_dir)


def test_test_with_best_and_no_run_names_the_fix(tiny_data, run_cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("test", *tiny_args(REPO / "configs/cnn.yaml", tiny_data), "--ckpt_path", "best")
    assert exit_info.value.code == 2
    assert "run `fit` with this config first" in capsys.readouterr().err


def _empty_class(tmp_path: Path, tiny_data: Path) -> Path:
    root = tmp_path / "empty_class"
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "dog").mkdir(parents=True)
    (root / "train" / "cat" / "0.png").write_bytes((tiny_data / "train/cat/000.png").read_bytes())
    return root


BAD_INPUT = {
    "missing data_dir": (["--data.data_dir", "{tmp}/nowhere", "--data.download", "false"], "nowhere"),
    "empty data_dir": (["--data.data_dir", "{tmp}/empty", "--data.download", "false"], "empty"),
    "class folder without images": (["--data.data_dir", "{empty_class}"], "dog"),
    "unknown key": (["--model.init_args.colour", "red"], "colour"),
    "wrong type": (["--data.batch_size", "many"], "many"),
    "negative learning rate": (["--model.optimizer.lr", "-0.1"], "-0.1"),
    "batch size 0": (["--data.batch_size", "0"], "batch_size=0"),
    "val_size too large": (["--data.val_size", "1000"], "val_size=1000"),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_exits_2_naming_value_and_fix(case, tiny_data, run_cli, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    extra, named = BAD_INPUT[case]
    fill = {"tmp": tmp_path, "empty_class": _empty_class(tmp_path, tiny_data)}
    extra = [arg.format(**fill) for arg in extra]
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *tiny_args(REPO / "configs/cnn.yaml", tiny_data), *extra, "--trainer.fast_dev_run", "true")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert named in err
    if case not in ("unknown key", "wrong type"):  # jsonargparse's own messages name the key instead
        assert "HINT:" in err


def test_pretrained_offline_fails_fast_with_the_weights_path(tiny_data, tmp_path):
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "torch_home"),
        # A closed port on loopback: the download fails at once, as on an offline machine.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "fit", "--config", str(REPO / "configs/resnet_cbam.yaml"),
         "--data.data_dir", str(tiny_data)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in result.stderr
    assert "--model.pretrained false" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 60
    assert not list((tmp_path / "torch_home").rglob("*.pth"))
