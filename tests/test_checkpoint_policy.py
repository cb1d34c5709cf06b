"""Where checkpoints go, when they are written and who can read them.

Standard Lightning flags behave as Lightning documents them
(``enable_checkpointing``, ``default_root_dir``), a failed start writes nothing,
and checkpoint files honour the umask like every other file a run writes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from callbacks import AtomicCheckpointIO
from tests.conftest import NO_PICTURES, REPO
from tests.test_cli import tiny_args

CNN = REPO / "configs" / "cnn.yaml"
# Without the drawing callbacks: checkpoints are what these tests are about.
SHORT = ["--data.batch_size", "16", "--trainer.limit_train_batches", 2, "--trainer.limit_val_batches", 1, *NO_PICTURES]


def _fit(run_cli, data: Path, *extra):
    return run_cli("fit", *tiny_args(CNN, data), *SHORT, *extra)


def test_enable_checkpointing_false_trains_and_writes_no_checkpoint(tiny_data, run_cli, tmp_path):
    cli = _fit(run_cli, tiny_data, "--trainer.max_epochs", 1, "--trainer.enable_checkpointing", "false")
    assert cli.trainer.global_step == 2
    assert cli.trainer.checkpoint_callback is None
    assert list(tmp_path.rglob("*.ckpt")) == []
    assert (tmp_path / "lightning_logs/cnn/version_0/config.yaml").is_file()  # the run itself is still logged


def test_logger_false_trains_without_logs(tiny_data, run_cli, tmp_path):
    # Every config monitors learning rates; with no logger that monitor is left out rather than failing.
    cli = _fit(run_cli, tiny_data, "--trainer.max_epochs", 1, "--trainer.logger", "false")
    assert cli.trainer.global_step == 2 and cli.trainer.logger is None
    assert not list(tmp_path.rglob("events.out.tfevents*"))


def test_a_resume_that_fails_before_training_writes_nothing(tiny_data, run_cli, tmp_path):
    _fit(run_cli, tiny_data, "--trainer.max_epochs", 3)
    last = tmp_path / "lightning_logs/cnn/version_0/checkpoints/last.ckpt"
    before = last.read_bytes()
    # A run that trained 3 epochs, resumed with max_epochs=1: refused (exit 2) once the checkpoint is read.
    with pytest.raises(SystemExit) as exit_info:
        _fit(run_cli, tiny_data, "--trainer.max_epochs", 1, "--ckpt_path", last)
    assert exit_info.value.code == 2
    assert sorted(tmp_path.rglob("*last*.ckpt")) == [last]
    assert last.read_bytes() == before
    # So `--ckpt_path last` still finds the full state, Adam's moments included.
    resumed = _fit(run_cli, tiny_data, "--trainer.max_epochs", 4, "--ckpt_path", "last")
    assert Path(resumed.trainer.log_dir).name == "version_0"
    assert resumed.trainer.global_step == 8
    assert torch.load(last, weights_only=True)["optimizer_states"][0]["state"]


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_checkpoints_honour_the_umask_like_the_other_files_of_the_run(umask, tiny_data, run_cli, tmp_path):
    previous = os.umask(umask)
    try:
        _fit(run_cli, tiny_data, "--trainer.max_epochs", 1)
    finally:
        os.umask(previous)
    run = tmp_path / "lightning_logs/cnn/version_0"
    checkpoints = sorted(run.glob("checkpoints/*.ckpt"))
    assert [p.name for p in checkpoints if p.name == "last.ckpt"] == ["last.ckpt"] and len(checkpoints) == 2
    expected = 0o666 & ~umask
    assert stat.S_IMODE((run / "config.yaml").stat().st_mode) == expected
    for path in checkpoints:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path.name


def test_the_atomic_writer_leaves_no_temporary_file_and_honours_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "x.ckpt")
    finally:
        os.umask(previous)
    assert [p.name for p in tmp_path.iterdir()] == ["x.ckpt"]
    assert stat.S_IMODE((tmp_path / "x.ckpt").stat().st_mode) == 0o640


def test_last_with_a_pinned_version_resumes_that_run_only(tiny_data, run_cli, tmp_path):
    # One run per seed under one name (`--trainer.logger.init_args.version <seed>`): seed 1's
    # first `--ckpt_path last` must start afresh, not resume seed 0's newer, finished run.
    seed0 = _fit(run_cli, tiny_data, "--trainer.max_epochs", 2, "--trainer.logger.init_args.version", 0)
    assert seed0.trainer.global_step == 4
    pinned = ["--trainer.logger.init_args.version", 1, "--seed_everything", 1, "--ckpt_path", "last"]
    seed1 = _fit(run_cli, tiny_data, "--trainer.max_epochs", 1, *pinned)
    assert seed1.trainer.ckpt_path is None and seed1.trainer.global_step == 2
    assert Path(seed1.trainer.log_dir).name == "version_1"
    resumed = _fit(run_cli, tiny_data, "--trainer.max_epochs", 2, *pinned)
    assert resumed.trainer.ckpt_path == str(Path("lightning_logs/cnn/version_1/checkpoints/last.ckpt"))
    assert resumed.trainer.global_step == 4 and Path(resumed.trainer.log_dir).name == "version_1"
    with pytest.raises(SystemExit):  # nothing to test in a pinned run without checkpoints
        run_cli("test", *tiny_args(CNN, tiny_data), *NO_PICTURES, "--trainer.logger.init_args.version", 7,
                "--ckpt_path", "best")


def test_default_root_dir_places_the_run_and_the_checkpoint_lookup(tiny_data, run_cli, tmp_path):
    root = ["--trainer.default_root_dir", "experiments/a"]
    _fit(run_cli, tiny_data, "--trainer.max_epochs", 1, *root)
    run = tmp_path / "experiments/a/lightning_logs/cnn/version_0"
    assert (run / "checkpoints/last.ckpt").is_file() and (run / "config.yaml").is_file()
    assert not (tmp_path / "lightning_logs").exists()

    resumed = _fit(run_cli, tiny_data, "--trainer.max_epochs", 2, *root, "--ckpt_path", "last")
    assert Path(resumed.trainer.log_dir) == Path("experiments/a/lightning_logs/cnn/version_0")
    assert resumed.trainer.global_step == 4  # continued from epoch 1, not started afresh

    tested = run_cli("test", *tiny_args(CNN, tiny_data), *NO_PICTURES, *root, "--ckpt_path", "best")
    assert Path(tested.trainer.log_dir) == Path("experiments/a/lightning_logs/cnn/version_0")
    assert (run / "config_test.yaml").is_file()  # beside the fit config, not over it
    # The run's saved config names the same place when run again: it is not nested a second time.
    saved = (run / "config.yaml").read_text()
    assert "save_dir: experiments/a/lightning_logs" in saved
    again = run_cli("fit", "--config", run / "config.yaml", "--trainer.max_epochs", 3, "--ckpt_path", "last")
    assert Path(again.trainer.log_dir) == Path("experiments/a/lightning_logs/cnn/version_0")
    assert again.trainer.global_step == 6
