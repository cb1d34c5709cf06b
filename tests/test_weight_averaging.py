"""Lightning's EMAWeightAveraging added from the command line: checkpoints and a resume keep the average.

Issue 32 lists it as a candidate for the flagship's recipe; a user tries it with
``--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging`` on any config.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import NO_PICTURES, REPO
from tests.test_cli import tiny_args

# cnn.yaml: a schedule not sized by the fit's length, so a 1-epoch fit can be resumed to 2.
CNN = REPO / "configs" / "cnn.yaml"
EMA = ["--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay", "0.5"]
SHORT = ["--data.batch_size", "16", "--trainer.limit_train_batches", 3, "--trainer.limit_val_batches", 1,
         "--trainer.enable_progress_bar", "false", *NO_PICTURES]


def _fit(run_cli, data, *extra):
    return run_cli("fit", *tiny_args(CNN, data), *SHORT, *EMA, *extra)


def test_a_resumed_ema_run_ends_on_the_straight_runs_average_and_its_checkpoints_hold_it(tiny_data, run_cli,
                                                                                          tmp_path):
    straight = _fit(run_cli, tiny_data, "--trainer.max_epochs", 2, "--trainer.logger.init_args.version", "straight")
    _fit(run_cli, tiny_data, "--trainer.max_epochs", 1, "--trainer.logger.init_args.version", "cut")
    resumed = _fit(run_cli, tiny_data, "--trainer.max_epochs", 2, "--trainer.logger.init_args.version", "cut",
                   "--ckpt_path", "last")
    assert resumed.trainer.global_step == straight.trainer.global_step == 6
    torch.testing.assert_close(resumed.model.state_dict(), straight.model.state_dict(), rtol=0, atol=0)

    last = torch.load(tmp_path / "lightning_logs/cnn/straight/checkpoints/last.ckpt", weights_only=False)
    # The checkpoint's weights (what test and predict load) are the average, which fit ends on; the raw weights
    # ride beside them for a resume.
    torch.testing.assert_close(last["state_dict"], straight.model.state_dict(), rtol=0, atol=0)
    raw = last["current_model_state"]
    assert any(not torch.equal(raw[name], value) for name, value in last["state_dict"].items())


def test_a_run_stopped_mid_epoch_resumes_onto_the_straight_runs_average(tiny_data, run_cli, tmp_path):
    """Ctrl-C (or a crash) after step 4 of 6, inside the second epoch: ``last.ckpt`` is written there, and the
    average, its count and the raw weights all come back with it."""
    straight = _fit(run_cli, tiny_data, "--trainer.max_epochs", 2, "--trainer.logger.init_args.version", "straight")
    with pytest.raises(SystemExit):
        _fit(run_cli, tiny_data, "--trainer.max_epochs", 2, "--trainer.logger.init_args.version", "cut",
             "--trainer.callbacks+=tests.fault_helpers.CrashAtStep", "--trainer.callbacks.init_args.step", 4)
    last = tmp_path / "lightning_logs/cnn/cut/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4
    resumed = _fit(run_cli, tiny_data, "--trainer.max_epochs", 2, "--trainer.logger.init_args.version", "cut",
                   "--ckpt_path", "last")
    assert resumed.trainer.global_step == straight.trainer.global_step == 6
    torch.testing.assert_close(resumed.model.state_dict(), straight.model.state_dict(), rtol=0, atol=0)
