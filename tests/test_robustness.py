"""Faults lose nothing: preemption, crashes, interrupted saves, NaN losses, broken data, bad configs, DDP."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import callbacks.fault_tolerance as fault_tolerance
import cli
from callbacks import AtomicCheckpointIO
from lightning_modules import CNNClassifier
from tests.conftest import CONFIGS, NO_PICTURES, REPO, config_with_stages
from tests.test_cli import tiny_args

CNN = REPO / "configs" / "cnn.yaml"
# 72 tiny images, 12 for validation, batches of 16: 4 training steps an epoch.
SMALL = ["--data.batch_size", "16", "--trainer.deterministic", "true"]
# The resume and crash tests run without the drawing callbacks (NO_PICTURES): they were half of each
# tiny fit. That pictures leave the training stream alone is test_interpretability's and test_cli's
# resume test's to show; test_cluster's DDP runs keep them (written once, on rank zero).


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _cli_process(cwd: Path, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "cli.py"), *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _assert_same_weights(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in actual.items():
        assert torch.equal(value, expected[key]), key


@pytest.fixture(scope="module")
def straight_weights(tiny_data, tmp_path_factory):
    """``get(workers)``: the weights of the uninterrupted 3-epoch fit (12 steps) that the resume tests match.

    Trained once per loader-worker count and module, not once per test: four tests compare with it.
    """
    import cli

    trained: dict[int, dict[str, torch.Tensor]] = {}

    def get(workers: int = 0) -> dict[str, torch.Tensor]:
        if workers not in trained:
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(tmp_path_factory.mktemp(f"straight{workers}"))
                run = cli.main([str(a) for a in ("fit", *tiny_args(CNN, tiny_data), *SMALL, *NO_PICTURES,
                                                 "--trainer.max_epochs", 3, "--data.num_workers", workers)])
            assert run.trainer.global_step == 12
            trained[workers] = _weights(run.model)
        return trained[workers]

    return get


@pytest.mark.xdist_group("straight_weights")  # one worker trains the module's straight runs
def test_sigterm_saves_exits_nonzero_and_resume_matches_the_straight_run(tiny_data, run_cli, tmp_path, straight_weights):
    result = _cli_process(tmp_path, "fit", *tiny_args(CNN, tiny_data), *SMALL, *NO_PICTURES, "--trainer.max_epochs", 3,
                          "--trainer.logger.init_args.name", "preempted",
                          "--trainer.callbacks+=tests.fault_helpers.SigtermAtStep",
                          "--trainer.callbacks.init_args.step", 6)
    assert result.returncode == 143, result.stderr[-2000:]
    assert "--ckpt_path last" in result.stderr
    last = tmp_path / "lightning_logs/preempted/version_0/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6  # mid-epoch 1: nothing trained is lost

    resumed = run_cli("fit", *tiny_args(CNN, tiny_data), *SMALL, *NO_PICTURES, "--trainer.max_epochs", 3,
                      "--trainer.logger.init_args.name", "preempted", "--ckpt_path", "last")
    assert resumed.trainer.global_step == 12
    _assert_same_weights(_weights(resumed.model), straight_weights(0))
    # run.json keeps both parts of the fit: the first process's and the resume's.
    first, second = json.loads((last.parent.parent / "run.json").read_text())["segments"]
    assert (first["resumed_from"], first["epochs_before"], first["steps_before"]) == (None, 0, 0)
    assert (Path(second["resumed_from"]), second["epochs_before"], second["steps_before"]) == (last, 1, 6)
    assert first["torch_threads"] == second["torch_threads"] >= 1


@pytest.mark.xdist_group("straight_weights")  # one worker trains the module's straight runs
@pytest.mark.parametrize(("ctrl_c", "workers"), [(True, 0), (False, 2)], ids=["ctrl-c", "exception-2-workers"])
def test_a_crash_mid_epoch_resumes_bit_exactly_from_last(tiny_data, run_cli, tmp_path, capsys, ctrl_c, workers,
                                                         straight_weights):
    # Ctrl-C: Lightning's graceful shutdown exits 1; a crash: the error itself, with its traceback.
    with pytest.raises(SystemExit if ctrl_c else RuntimeError) as raised:
        run_cli("fit", *tiny_args(CNN, tiny_data), *SMALL, *NO_PICTURES, "--trainer.max_epochs", 3, "--data.num_workers", workers,
                "--trainer.callbacks+=tests.fault_helpers.CrashAtStep", "--trainer.callbacks.init_args.step", 6,
                "--trainer.callbacks.init_args.ctrl_c", str(ctrl_c).lower())
    assert (raised.value.code == 1) if ctrl_c else (str(raised.value) == "injected crash")
    assert "HINT: resume with the same command plus --ckpt_path last" in capsys.readouterr().err
    last = tmp_path / "lightning_logs/cnn/version_0/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6
    resumed = run_cli("fit", *tiny_args(CNN, tiny_data), *SMALL, *NO_PICTURES, "--trainer.max_epochs", 3,
                      "--data.num_workers", workers, "--ckpt_path", "last")
    assert resumed.trainer.global_step == 12
    _assert_same_weights(_weights(resumed.model), straight_weights(workers))


def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)

    def dies_half_way(obj, file):
        file.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fault_tolerance.torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_a_full_disk_during_training_keeps_last_ckpt_loadable(tiny_data, run_cli, tmp_path, monkeypatch):
    run_cli("fit", *tiny_args(CNN, tiny_data), *SMALL, *NO_PICTURES, "--trainer.max_epochs", 1)
    checkpoints = tmp_path / "lightning_logs/cnn/version_0/checkpoints"

    def full_disk(obj, file, *args, **kwargs):
        file.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fault_tolerance.torch, "save", full_disk)
    with pytest.warns(UserWarning, match="Could not save"), pytest.raises(OSError, match="No space left"):
        run_cli("fit", *tiny_args(CNN, tiny_data), *SMALL, *NO_PICTURES, "--trainer.max_epochs", 2, "--ckpt_path", "last")
    monkeypatch.undo()
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not [p for p in checkpoints.iterdir() if p.name.endswith(".tmp")]


def test_non_finite_weights_are_never_written_over_a_good_checkpoint(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    with pytest.warns(UserWarning, match="NaN"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan"), 0.0])}}, target)
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.ones(3))


def test_checkpoints_load_weights_only_and_reproduce_val_acc(tiny_data, run_cli, tmp_path):
    fit = run_cli("fit", *tiny_args(CNN, tiny_data), *SMALL, *NO_PICTURES, "--trainer.max_epochs", 2)
    assert isinstance(fit.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    best = Path(fit.trainer.checkpoint_callback.best_model_path)
    checkpoint = torch.load(best, weights_only=True)
    # The best checkpoint is the first epoch with the highest val/acc (ModelCheckpoint keeps only improvements).
    events = EventAccumulator(fit.trainer.log_dir)
    events.Reload()
    val_acc = [event.value for event in events.Scalars("val/acc")]
    assert len(val_acc) == 2
    assert checkpoint["epoch"] == val_acc.index(max(val_acc))
    logged = float(fit.trainer.checkpoint_callback.best_model_score)
    model = CNNClassifier.load_from_checkpoint(best, weights_only=True)
    validate = run_cli("validate", *tiny_args(CNN, tiny_data), *SMALL, *NO_PICTURES, "--ckpt_path", best)
    assert float(validate.trainer.callback_metrics["val/acc"]) == pytest.approx(logged, abs=1e-6)
    assert model.hparams.num_classes == 3


@pytest.mark.xdist_group("straight_weights")  # one worker trains the module's straight runs
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bit_exact_with_loader_workers(tiny_data, run_cli, workers, straight_weights):
    common = [*tiny_args(CNN, tiny_data), *SMALL, *NO_PICTURES, "--data.num_workers", workers]
    children = set(multiprocessing.active_children())
    first = run_cli("fit", *common, "--trainer.max_epochs", 1, "--trainer.logger.init_args.name", "resumed")
    resumed = run_cli("fit", *common, "--trainer.max_epochs", 3, "--trainer.logger.init_args.name", "resumed",
                      "--ckpt_path", "last")
    _assert_same_weights(_weights(resumed.model), straight_weights(workers))
    # No loader worker outlives its fit, the inference timing's included (it forked a persistent pair that
    # lived on, and their shutdown at a later garbage collection waited 5 s a worker); the timing still ran.
    assert set(multiprocessing.active_children()) == children
    for fit in (first, resumed):
        assert json.loads((Path(fit.trainer.log_dir) / "run.json").read_text())["inference_images_per_second"] > 0


def test_a_nan_loss_on_one_ddp_rank_stops_every_rank_at_once_and_no_checkpoint_holds_nan(tiny_data, tmp_path):
    # Two gloo processes, NaN in rank 1's batch only: both must stop at that step with the same message
    # (a rank that raised alone left the other to die in backward's all-reduce); the timeout fails a hang.
    result = _cli_process(tmp_path, "fit", *tiny_args(CNN, tiny_data), *SMALL, "--trainer.max_epochs", 3,
                          "--trainer.devices", 2, "--trainer.strategy", "ddp", *NO_PICTURES,
                          "--trainer.callbacks+=tests.fault_helpers.NaNInputAtStep",
                          "--trainer.callbacks.init_args.step", 3, "--trainer.callbacks.init_args.rank", 1,
                          timeout=240)
    assert result.returncode == 1, result.stderr[-3000:]
    messages = [line for line in result.stderr.splitlines() if line.startswith("error: The training loss")]
    assert len(messages) == 2 and messages[0] == messages[1], result.stderr[-3000:]
    assert "not finite on process(es) [1] of 2" in messages[0] and "global step 3" in messages[0]
    assert "learning rate" in result.stderr and "HINT:" in result.stderr
    assert "Connection closed by peer" not in result.stderr
    checkpoints = list((tmp_path / "lightning_logs").rglob("*.ckpt"))
    assert sorted(p.name.split("-")[0] for p in checkpoints) == ["best", "last.ckpt"]
    # last.ckpt stays at the end of epoch 0 (2 steps of 2 x 16 images): under DDP no save at an exception.
    assert torch.load(checkpoints[0].parent / "last.ckpt", weights_only=True)["global_step"] == 2
    for path in checkpoints:
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


def test_an_error_message_reaches_stderr_in_one_write_so_ranks_cannot_splice_it(monkeypatch):
    # Every DDP rank prints the same message to one shared pipe; a message written in pieces (print's text, then
    # its newline) let the other rank's message start on its last line. One write under PIPE_BUF is atomic.
    class RecordingStream:
        def __init__(self):
            self.writes: list[str] = []

        def write(self, text: str) -> int:
            self.writes.append(text)
            return len(text)

        def flush(self) -> None:
            self.writes.append("<flush>")

    stream = RecordingStream()
    monkeypatch.setattr(sys, "stderr", stream)
    message = "error: The training loss is not finite\nUsual causes: ...\nHINT: lower the learning rate."
    cli._tell(message)
    assert stream.writes == [message + "\n", "<flush>"]


def test_a_nan_loss_stops_with_the_loss_and_step_or_at_the_next_check(tiny_data, run_cli, capsys):
    nan_at_6 = ["--trainer.callbacks+=tests.fault_helpers.NaNInputAtStep", "--trainer.callbacks.init_args.step", 6]
    common = [*tiny_args(CNN, tiny_data), *SMALL, *NO_PICTURES, "--trainer.max_epochs", 3, *nan_at_6]
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *common)
    assert exit_info.value.code == 1
    assert "The training loss is nan at epoch 1, global step 6." in capsys.readouterr().err
    # Checked every 4 steps: step 6's NaN is found at step 7, the end of that window.
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *common, "--nan_stop.check_every_n_steps", 4)
    assert exit_info.value.code == 1
    assert "A training loss of global steps 4-7 was not finite (checked every 4 steps); stopped at epoch 1, global step 7" \
        in capsys.readouterr().err


def test_a_skipped_save_keeps_the_best_path_and_the_file_it_names(tiny_data, run_cli, tmp_path):
    # monitor null, top 1: each epoch's save replaces the previous file. Epoch 1's model holds NaN: its save is
    # skipped, so the bookkeeping must still name epoch 0's file, and that file must still be there.
    with pytest.warns(UserWarning, match="not saving at epoch 1"):
        cli = run_cli("fit", *tiny_args(CNN, tiny_data), *SMALL, *NO_PICTURES, "--trainer.max_epochs", 2,
                      "--checkpoint.monitor", "null", "--trainer.callbacks+=tests.fault_helpers.NaNWeightsAtValidation")
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert best.is_file() and torch.load(best, weights_only=True)["epoch"] == 0
    assert sorted(p.name for p in best.parent.iterdir()) == sorted([best.name, "last.ckpt"])
    assert torch.load(best.parent / "last.ckpt", weights_only=True)["epoch"] == 0


def _with_broken_file(tiny_data: Path, tmp_path: Path) -> Path:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return data


def test_broken_files_are_named_before_training_or_skipped(tiny_data, run_cli, tmp_path, capsys):
    data = _with_broken_file(tiny_data, tmp_path)
    args = [*tiny_args(CNN, data), "--trainer.fast_dev_run", "true"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *args)
    assert exit_info.value.code == 2
    assert str(data / "train" / "cat" / "broken.png") in capsys.readouterr().err
    with pytest.warns(UserWarning, match="broken.png"):
        cli = run_cli("fit", *args, "--data.skip_broken", "true")
    assert len(cli.datamodule.train_set) + len(cli.datamodule.val_set) == 72


def test_offline_download_fails_fast_and_leaves_no_partial_files(tmp_path):
    env_proxy = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    data = tmp_path / "data"
    command = [sys.executable, str(REPO / "cli.py"), "fit", "--config", str(CNN), "--data.data_dir", str(data),
               "--data.download", "true"]
    result = subprocess.run(command, cwd=tmp_path, env={**os.environ, **env_proxy}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert str(data) in result.stderr and "HINT:" in result.stderr
    assert not [p for p in data.rglob("*") if p.is_file()] if data.exists() else True


MUTATIONS = {
    "unknown key": (lambda c: c["model"]["init_args"].__setitem__("colour", "red"), "colour"),
    "misspelt trainer key": (lambda c: c["trainer"].__setitem__("max_epoch", 3), "max_epoch"),
    "wrong type": (lambda c: c["data"]["init_args"].__setitem__("batch_size", "many"), "batch_size"),
}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_parses(config, run_cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "--config", config, "--print_config")
    assert exit_info.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["class_path"].startswith("lightning_modules.")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("mutation", MUTATIONS, ids=list(MUTATIONS))
def test_mutated_configs_exit_2_naming_the_key(config, mutation, run_cli, tmp_path, capsys):
    content = yaml.safe_load(config.read_text())
    mutate, key = MUTATIONS[mutation]
    mutate(content)
    broken = tmp_path / config.name
    broken.write_text(yaml.safe_dump(content))
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "--config", broken, "--print_config")
    assert exit_info.value.code == 2
    assert key in capsys.readouterr().err


def test_malformed_yaml_exits_2(run_cli, tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    original = CNN.read_text()
    broken.write_text(original.replace("max_epochs: 20", "max_epochs: [20"))
    assert broken.read_text() != original  # the config still has the line this test breaks
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "--config", broken)
    assert exit_info.value.code == 2
    line = original[: original.index("max_epochs: 20")].count("\n") + 1
    assert f"line {line}," in capsys.readouterr().err  # the parser's message points at the broken line


def test_an_unfreeze_stage_at_a_negative_epoch_exits_2(tiny_data, run_cli, tmp_path, capsys):
    config = config_with_stages(tmp_path, [{"epoch": -1, "train": ["conv1", "cbam", "fc"], "lr": 1.0e-3}])
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *tiny_args(config, tiny_data))
    assert exit_info.value.code == 2
    assert "epoch=-1" in capsys.readouterr().err
