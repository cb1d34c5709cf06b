"""The comparison report, built from short real runs and checked against what those runs logged."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import report
from datamodules import CIFAR10DataModule
from tests.conftest import REPO

THRESHOLDS = (0.01, 0.99)
FAST = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false"]


@pytest.fixture(scope="module")
def logs(tiny_data, tmp_path_factory):
    """Two seeds of the CNN and one MLP run that cannot learn (lr 0), two epochs each, the MLP tested too."""
    import cli

    root = tmp_path_factory.mktemp("report_runs")
    logdir = root / "logs"

    def run(subcommand: str, config: str, *extra: object):
        args = [subcommand, "--config", REPO / "configs" / config, "--data.data_dir", tiny_data,
                "--data.val_size", 12, "--data.batch_size", 16, "--trainer.max_epochs", 2,
                "--trainer.logger.init_args.save_dir", logdir, *FAST, *extra]
        return cli.main([str(arg) for arg in args])

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        fits = {
            ("cnn", 0): run("fit", "cnn.yaml", "--seed_everything", 0),
            ("cnn", 1): run("fit", "cnn.yaml", "--seed_everything", 1),
            ("mlp", 0): run("fit", "mlp.yaml", "--model.optimizer.lr", 0.0),
        }
        tested = run("test", "mlp.yaml", "--ckpt_path", "best")
    return logdir, fits, tested


@pytest.fixture(scope="module")
def built(logs):
    logdir, _, _ = logs
    path = report.write_report(logdir, thresholds=THRESHOLDS)
    return path, json.loads((path.parent / "report.json").read_text())


def _logged(version_dir: Path, tag: str) -> list[tuple[int, float]]:
    accumulator = EventAccumulator(str(version_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def _row(table: str, config: str) -> list[str]:
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] == config:
            return cells
    raise AssertionError(f"no row for {config} in\n{table}")


def _expected_time_to(version_dir: Path, threshold: float) -> tuple[float, int] | None:
    epochs = dict(_logged(version_dir, "epoch"))
    elapsed = dict(_logged(version_dir, "time/elapsed_seconds"))
    for step, accuracy in _logged(version_dir, "val/acc"):
        if accuracy >= threshold:
            return elapsed[step], int(epochs[step]) + 1
    return None


def test_report_numbers_are_the_runs_own(logs, built):
    _, fits, tested = logs
    path, summary = built
    rows = {row["config"]: row for row in summary["rows"]}
    assert list(rows) == ["cnn", "mlp"]
    for (config, seed), cli in fits.items():
        row = rows[config]
        index = row["seeds"].index(seed)
        version_dir = Path(cli.trainer.log_dir)
        assert row["versions"][index] == version_dir.name
        val_acc = [value for _, value in _logged(version_dir, "val/acc")]
        assert len(val_acc) == 2
        # The last epoch's accuracy is also what the trainer itself ended with.
        assert val_acc[-1] == pytest.approx(float(cli.trainer.callback_metrics["val/acc"]))
        assert row["best_val_acc"][index] == max(val_acc)
        assert row["epochs"][index] == 2
        epoch_seconds = [value for _, value in _logged(version_dir, "time/epoch_seconds")]
        assert row["seconds_per_epoch"][index] == pytest.approx(statistics.fmean(epoch_seconds))
        assert row["parameters"] == sum(p.numel() for p in cli.model.parameters())
        for threshold in THRESHOLDS:
            expected = _expected_time_to(version_dir, threshold)
            got = row["time_to"][f"{threshold:g}"][index]
            assert (got is None) == (expected is None)
            if expected is not None:
                assert tuple(got) == pytest.approx(expected)
    assert rows["mlp"]["test_acc"] == [pytest.approx(float(tested.trainer.callback_metrics["test/acc"]))]
    assert rows["cnn"]["test_acc"] == [None, None]


def test_seeds_group_into_one_row_with_mean_and_spread(logs, built):
    path, summary = built
    table = path.read_text()
    cnn = next(row for row in summary["rows"] if row["config"] == "cnn")
    assert cnn["seeds"] == [0, 1]
    accuracies = cnn["best_val_acc"]
    cells = _row(table, "cnn")
    mean, std = statistics.fmean(accuracies), statistics.stdev(accuracies)
    assert cells[3] == "0, 1"
    assert cells[4] == f"{100 * mean:.2f} ± {100 * std:.2f}"
    assert cells[5] == "-"  # never tested
    assert cells[6] == "2 ± 0"


def test_single_seed_and_unreached_accuracy(logs, built):
    _, fits, tested = logs
    path, summary = built
    cells = _row(path.read_text(), "mlp")
    version_dir = Path(fits[("mlp", 0)].trainer.log_dir)
    best = max(value for _, value in _logged(version_dir, "val/acc"))
    assert cells[4] == f"{100 * best:.2f}"  # one seed: no spread
    assert cells[5] == f"{100 * float(tested.trainer.callback_metrics['test/acc']):.2f}"
    seconds, epoch = _expected_time_to(version_dir, 0.01)
    assert cells[8] == f"{seconds:.1f} s, ep {epoch}"
    assert cells[9] == "-"  # lr 0 never gets near 99 %
    assert float(cells[10].replace(",", "")) > 0


def test_figures_are_written_and_shown_in_tensorboard(logs, built):
    logdir, _, _ = logs
    path, _ = built
    for name in ("val_acc_vs_epoch", "val_acc_vs_time"):
        png = path.parent / f"{name}.png"
        assert png.stat().st_size > 5_000
        assert f"({name}.png)" in path.read_text()
    accumulator = EventAccumulator(str(logdir / report.REPORT_RUN))
    accumulator.Reload()
    images = accumulator.Tags()["images"]
    assert {"report/val_acc_vs_epoch", "report/val_acc_vs_time"} <= set(images)
    assert accumulator.Images("report/val_acc_vs_time")[-1].width > 100
    assert "report/table/text_summary" in accumulator.Tags()["tensors"]


def test_run_record_and_resumable_clock(logs):
    _, fits, _ = logs
    cli = fits[("cnn", 1)]
    version_dir = Path(cli.trainer.log_dir)
    record = json.loads((version_dir / "run.json").read_text())
    assert record["config_name"] == "cnn" and record["seed"] == 1
    assert record["parameters"] == sum(p.numel() for p in cli.model.parameters())
    assert record["model_class"] == "CNNClassifier"
    assert record["hardware"]["cpu_cores"] and record["versions"]["torch"] == torch.__version__
    assert record["inference_images_per_second"] > 0
    epoch_seconds = [value for _, value in _logged(version_dir, "time/epoch_seconds")]
    assert record["elapsed_seconds"] == pytest.approx(sum(epoch_seconds))
    # What a resume restores: the clock as it stood at the last epoch.
    last = torch.load(version_dir / "checkpoints" / "last.ckpt", weights_only=False)
    state = next(value for key, value in last["callbacks"].items() if key.startswith("RunRecorder"))
    assert state == {"elapsed_seconds": pytest.approx(record["elapsed_seconds"]), "epochs_timed": 2}


def test_unfinished_and_rerun_seeds_are_not_averaged_in(logs, tmp_path):
    logdir, fits, _ = logs
    copy = tmp_path / "logs"
    shutil.copytree(logdir, copy, ignore=shutil.ignore_patterns("report", "*.ckpt"))
    # A crashed run: its record was never closed.
    crashed = copy / "cnn" / "version_9"
    shutil.copytree(copy / "cnn" / "version_0", crashed)
    record = json.loads((crashed / "run.json").read_text())
    (crashed / "run.json").write_text(json.dumps({**record, "finished_at": None}))
    # A rerun of seed 0 that finished later replaces the earlier seed-0 run.
    rerun = copy / "cnn" / "version_10"
    shutil.copytree(copy / "cnn" / "version_1", rerun)
    record = json.loads((rerun / "run.json").read_text())
    (rerun / "run.json").write_text(json.dumps({**record, "seed": 0, "finished_at": "9999-01-01T00:00:00+00:00"}))

    path = report.write_report(copy, thresholds=THRESHOLDS)
    summary = json.loads((path.parent / "report.json").read_text())
    cnn = next(row for row in summary["rows"] if row["config"] == "cnn")
    assert cnn["seeds"] == [0, 1]
    assert cnn["versions"] == ["version_10", "version_1"]
    text = path.read_text()
    assert "cnn/version_9: fit did not finish" in text
    assert "cnn/version_0: seed 0 rerun later" in text


def test_report_without_runs_names_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "HINT:" in capsys.readouterr().err


def test_pixel_permutation_is_fixed_per_seed(tiny_data):
    def datamodule(seed: int) -> CIFAR10DataModule:
        data = CIFAR10DataModule(tiny_data, val_size=12, augment=False, permute_pixels=True, permutation_seed=seed)
        data.setup("fit")
        data.setup("test")
        return data

    first, again, other = datamodule(7), datamodule(7), datamodule(8)
    assert torch.equal(first.permutation(32 * 32), again.permutation(32 * 32))
    assert not torch.equal(first.permutation(32 * 32), other.permutation(32 * 32))
    order = first.permutation(32 * 32)
    for loader in (first.train_dataloader(), first.val_dataloader(), first.test_dataloader()):
        raw, labels = next(iter(loader))
        images, _ = first.on_after_batch_transfer((raw, labels), 0)
        expected = (raw.float() / 255).flatten(2)[:, :, order].view_as(images)  # every channel moved alike
        assert torch.equal(images, expected)
        assert not torch.equal(images, raw.float() / 255)
