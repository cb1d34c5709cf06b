"""Issue 6: faults, interruptions and bad input lose nothing, and every failure says what to do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from callbacks.checkpointing import AtomicCheckpointIO, non_finite_weights
from tests.conftest import REPO, write_image_folder
from tests.faults import fault_at
from tests.test_cli import tiny_args

CNN = REPO / "configs/cnn.yaml"
# 60 training images in batches of 16: 4 steps per epoch, 8 in a run of 2 epochs.
RUN = ["--data.batch_size", 16, "--trainer.max_epochs", 2, "--trainer.deterministic", "true"]


def fit(run_cli, data: Path, name: str, *extra):
    return run_cli("fit", *tiny_args(CNN, data), *RUN, "--trainer.logger.init_args.name", name, *extra)


def last_ckpt(root: Path, name: str) -> Path:
    return root / "lightning_logs" / name / "version_0" / "checkpoints" / "last.ckpt"


def assert_same_weights(module: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    for key, value in module.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.fixture(scope="module")
def straight(tiny_data, tmp_path_factory):
    """The uninterrupted reference run for each ``num_workers``: (global step, weights)."""
    import cli

    runs = {}
    old = Path.cwd()
    os.chdir(tmp_path_factory.mktemp("straight"))
    try:
        for workers in (0, 2):
            run = cli.main(["fit", *map(str, tiny_args(CNN, tiny_data)), *map(str, RUN), "--data.num_workers", str(workers)])
            runs[workers] = run.trainer.global_step, {k: v.clone() for k, v in run.model.state_dict().items()}
    finally:
        os.chdir(old)
    return runs


# ---- 1. preemption --------------------------------------------------------------------


def test_sigterm_saves_exits_143_and_resume_matches_the_straight_run(tiny_data, straight, run_cli, tmp_path):
    command = [sys.executable, str(REPO / "cli.py"), "fit", *map(str, tiny_args(CNN, tiny_data)), *map(str, RUN),
               "--trainer.logger.init_args.name", "preempted", "--trainer.callbacks+=" + fault_at("sigterm", 5)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 143, result.stderr
    assert "stopped by SIGTERM" in result.stderr and "--ckpt_path last" in result.stderr
    assert torch.load(last_ckpt(tmp_path, "preempted"), weights_only=True)["global_step"] == 5

    resumed = fit(run_cli, tiny_data, "preempted", "--ckpt_path", "last")
    step, weights = straight[0]
    assert resumed.trainer.global_step == step == 8
    assert_same_weights(resumed.model, weights)


# ---- 2 and 5. crashes and bit-exact resume --------------------------------------------


@pytest.mark.parametrize(("kind", "workers"), [("crash", 2), ("ctrl_c", 0)])
def test_crash_mid_epoch_leaves_a_checkpoint_that_resumes_bit_exactly(kind, workers, tiny_data, straight, run_cli,
                                                                      tmp_path, capsys):
    workers_arg = ("--data.num_workers", workers)
    try:
        with pytest.raises((RuntimeError, SystemExit)) as stop:
            fit(run_cli, tiny_data, kind, *workers_arg, "--trainer.callbacks+=" + fault_at(kind, 6))
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores Ctrl-C once it caught one
    if kind == "ctrl_c":
        assert stop.value.code == 1
    assert "HINT: resume with the same command plus --ckpt_path last" in capsys.readouterr().err
    assert torch.load(last_ckpt(tmp_path, kind), weights_only=True)["global_step"] == 6

    resumed = fit(run_cli, tiny_data, kind, *workers_arg, "--ckpt_path", "last")
    step, weights = straight[workers]
    assert resumed.trainer.global_step == step
    assert_same_weights(resumed.model, weights)


# ---- 3. interrupted saves -------------------------------------------------------------


def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_partial_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, target)

    def half_written_then_full_disk(obj, file, *args, **kwargs):
        file.write(b"\x80\x02 half a pickle")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written_then_full_disk)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, target)
    monkeypatch.undo()

    assert torch.load(target, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_full_disk_during_training_keeps_last_ckpt_loadable(tiny_data, run_cli, tmp_path, monkeypatch):
    fit(run_cli, tiny_data, "full", "--trainer.max_epochs", 1)
    ckpt_dir = last_ckpt(tmp_path, "full").parent

    def full_disk(obj, file, *args, **kwargs):
        file.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        fit(run_cli, tiny_data, "full", "--ckpt_path", "last")
    monkeypatch.undo()
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not [p for p in ckpt_dir.iterdir() if p.name.endswith(".tmp")]


# ---- 4. loadable checkpoints ----------------------------------------------------------


def test_checkpoints_load_weights_only_and_validate_reproduces_val_acc(tiny_data, run_cli, tmp_path):
    trained = fit(run_cli, tiny_data, "loadable", "--model.optimizer.lr", 3e-3)
    best = Path(trained.trainer.checkpoint_callback.best_model_path)
    logged = trained.trainer.checkpoint_callback.best_model_score
    for path in (best, best.parent / "last.ckpt"):
        checkpoint = torch.load(path, weights_only=True)
        assert not non_finite_weights(checkpoint["state_dict"])

    validated = run_cli("validate", *tiny_args(CNN, tiny_data), *RUN, "--trainer.logger.init_args.name", "loadable",
                        "--ckpt_path", "best")
    assert validated.trainer.callback_metrics["val/acc"] == logged

    model = type(trained.model).load_from_checkpoint(best, weights_only=True)
    (metrics,) = validated.trainer.validate(model, datamodule=validated.datamodule, verbose=False)
    assert metrics["val/acc"] == pytest.approx(logged.item(), abs=0)


# ---- 6. non-finite loss ---------------------------------------------------------------


def test_a_nan_loss_stops_at_its_step_and_no_checkpoint_holds_nan(tiny_data, run_cli, tmp_path, monkeypatch, capsys):
    from lightning_modules import ImageClassifier

    model_step = ImageClassifier.model_step

    def nan_from_step_5(self, batch):
        loss, preds, labels = model_step(self, batch)
        return (loss * float("nan") if self.trainer.global_step >= 5 else loss), preds, labels

    monkeypatch.setattr(ImageClassifier, "model_step", nan_from_step_5)
    with pytest.raises(SystemExit) as stop:
        fit(run_cli, tiny_data, "nan", "--trainer.max_epochs", 3)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "global step 5 (epoch 1, batch 1)" in err
    assert "learning rate" in err and "normalisation" in err and "float16" in err

    ckpt_dir = last_ckpt(tmp_path, "nan").parent
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == 5
    for path in ckpt_dir.glob("*.ckpt"):
        assert not non_finite_weights(torch.load(path, weights_only=True)["state_dict"]), path


def test_non_finite_weights_are_never_written(tmp_path):
    target = tmp_path / "last.ckpt"
    with pytest.warns(UserWarning, match="NaN or Inf"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("inf")])}}, target)
    assert not target.exists()


# ---- 7. broken data -------------------------------------------------------------------


def _copy_of(tiny_data: Path, root: Path, *, splits: tuple[str, ...] = ("train", "test")) -> Path:
    for split in splits:
        for image in (tiny_data / split).rglob("*.png"):
            copy = root / image.relative_to(tiny_data)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(image.read_bytes())
    return root


def _expect_exit_2(run_cli, capsys, command: str, data: Path, *extra) -> str:
    with pytest.raises(SystemExit) as stop:
        run_cli(command, *tiny_args(CNN, data), "--trainer.fast_dev_run", "true", *extra)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "HINT:" in err and "Traceback" not in err
    return err


def test_a_missing_test_split_is_named(tiny_data, run_cli, tmp_path, capsys):
    data = _copy_of(tiny_data, tmp_path / "no_test", splits=("train",))
    assert "has no 'test' split" in _expect_exit_2(run_cli, capsys, "test", data)


def test_a_class_mismatch_between_train_and_test_is_named(tiny_data, run_cli, tmp_path, capsys):
    data = _copy_of(tiny_data, tmp_path / "mismatch")
    (data / "test" / "ship").rename(data / "test" / "boat")
    err = _expect_exit_2(run_cli, capsys, "test", data)
    assert "boat" in err and "ship" in err


def test_an_empty_class_folder_is_named(tiny_data, run_cli, tmp_path, capsys):
    data = _copy_of(tiny_data, tmp_path / "empty_class")
    (data / "train" / "dog").mkdir()
    assert str(data / "train" / "dog") in _expect_exit_2(run_cli, capsys, "fit", data)


def _with_broken_files(tiny_data: Path, root: Path) -> tuple[Path, list[str]]:
    data = _copy_of(tiny_data, root)
    cat = data / "train" / "cat"
    (cat / "truncated.png").write_bytes((cat / "000.png").read_bytes()[:100])
    (cat / "empty.png").write_bytes(b"")
    (cat / "notes.png").write_text("not an image")
    return data, ["truncated.png", "empty.png", "notes.png"]


BROKEN_FILES_PENDING = pytest.mark.xfail(
    reason="PENDING the checking loader (datamodules/image_folder.py, data branch); the placeholder raises "
    "a raw decode error. Remove this mark once it lands.",
    strict=False,
)


@BROKEN_FILES_PENDING
def test_broken_image_files_are_listed_before_training(tiny_data, run_cli, tmp_path, capsys):
    data, names = _with_broken_files(tiny_data, tmp_path / "broken")
    err = _expect_exit_2(run_cli, capsys, "fit", data)
    assert all(name in err for name in names)


@BROKEN_FILES_PENDING
def test_broken_image_files_are_skipped_with_a_warning_when_asked(tiny_data, run_cli, tmp_path):
    data, names = _with_broken_files(tiny_data, tmp_path / "broken")
    with pytest.warns(UserWarning) as warned:
        cli = run_cli("fit", *tiny_args(CNN, data), "--trainer.fast_dev_run", "true", "--data.skip_broken", "true")
    message = " ".join(str(w.message) for w in warned)
    assert all(name in message for name in names)
    assert len(cli.datamodule.train_set) + len(cli.datamodule.val_set) == 72


# ---- 8. offline download --------------------------------------------------------------


def test_download_without_network_fails_fast_naming_the_folder_and_leaves_nothing(run_cli, tmp_path, capsys,
                                                                                   monkeypatch):
    # A closed port on loopback: connections fail at once, as on an offline machine.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    data = tmp_path / "cifar"
    with pytest.raises(SystemExit) as stop:
        run_cli("fit", "--config", CNN, "--data.data_dir", data, "--data.download", "true")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"into '{data}'" in err and "--data.download false" in err
    assert not [p for p in data.rglob("*") if p.is_file()]


# ---- 10. distributed ------------------------------------------------------------------


def test_ddp_on_two_cpu_processes_writes_once_and_syncs_val_acc(tmp_path, run_cli):
    # 2 x 21 validation images: each rank validates a different, odd-sized shard.
    data = write_image_folder(tmp_path / "data", per_class={"train": 20, "test": 2})
    args = [*map(str, tiny_args(CNN, data)), "--data.val_size", "21", "--data.batch_size", "8",
            "--trainer.max_epochs", "1", "--model.optimizer.lr", "1e-5", "--trainer.logger.init_args.name", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "fit", *args, "--trainer.strategy", "ddp", "--trainer.devices", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "lightning_logs" / "ddp").iterdir())
    assert [p.name for p in runs] == ["version_0"]
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1
    checkpoints = sorted(p.name for p in (runs[0] / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints, checkpoints

    best = next((runs[0] / "checkpoints").glob("best-*.ckpt"))
    logged = torch.load(best, weights_only=True)["callbacks"]
    (score,) = [state["best_model_score"] for key, state in logged.items() if "val/acc" in key]
    single = run_cli("validate", *args, "--ckpt_path", str(best))
    assert 0 < score < 1  # a perfect score would agree with any subset
    assert single.trainer.callback_metrics["val/acc"] == score
