"""The comparison report, built from short real runs and checked against what those runs logged."""

from __future__ import annotations

import io
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import report
from reporting.runs import read_run
from reporting.statistics import paired_bootstrap
from datamodules import CIFAR10DataModule
from tests.conftest import NO_PICTURES, REPO

# One xdist worker takes the whole module (`--dist loadgroup` in pyproject.toml): its module-scoped fit is
# then trained once per test run, not once on each worker.
pytestmark = pytest.mark.xdist_group("test_report")

THRESHOLDS = (0.01, 0.99)
TEST_ACC = "test acc (%) [95 % interval]"  # the README table's column
# The report reads scalars and run.json only: the drawing callbacks (half of a tiny fit) stay off.
FAST = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", *NO_PICTURES]


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


def _row(table: str, config: str) -> dict[str, str]:
    """The cells of ``config``'s row, by column header."""
    lines = [line for line in table.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header = rows[0]
    for cells in rows:
        if cells[0].strip("`") == config:
            return dict(zip(header, cells))
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
        epoch_at = dict(_logged(version_dir, "epoch"))
        best_step = next(step for step, value in _logged(version_dir, "val/acc") if value == max(val_acc))
        assert row["best_epoch"][index] == int(epoch_at[best_step]) + 1
        assert row["epochs"][index] == 2
        epoch_seconds = [value for _, value in _logged(version_dir, "time/epoch_seconds")]
        assert row["seconds_per_epoch"][index] == pytest.approx(statistics.median(epoch_seconds))
        assert row["parameters"] == sum(p.numel() for p in cli.model.parameters())
        for threshold in THRESHOLDS:
            expected = _expected_time_to(version_dir, threshold)
            got = row["time_to"][f"{threshold:g}"][index]
            assert (got is None) == (expected is None)
            if expected is not None:
                assert tuple(got) == pytest.approx(expected)
    assert rows["mlp"]["test_acc"] == [pytest.approx(float(tested.trainer.callback_metrics["test/acc"]))]
    assert rows["cnn"]["test_acc"] == [None, None]


def _every_column(report_md: Path) -> str:
    """The wide table's section of ``report.md`` (the README's table, with other columns, comes first)."""
    return report_md.read_text().split("## Every column")[1]


def test_seeds_group_into_one_row_with_mean_and_spread(logs, built):
    path, summary = built
    table = _every_column(path)
    cnn = next(row for row in summary["rows"] if row["config"] == "cnn")
    assert cnn["seeds"] == [0, 1]
    accuracies = cnn["best_val_acc"]
    cells = _row(table, "cnn")
    mean, std = statistics.fmean(accuracies), statistics.stdev(accuracies)
    assert cells["seeds"] == "0, 1"
    assert cells["best val/acc (%)"] == f"{100 * mean:.2f} ± {100 * std:.2f}"
    assert cells["test/acc (%)"] == "-"  # never tested
    assert cells["epochs"] == "2 ± 0"
    best_epochs = cnn["best_epoch"]
    one_decimal = (f"{value:.1f}".removesuffix(".0") for value in (statistics.fmean(best_epochs), statistics.stdev(best_epochs)))
    assert cells["best at epoch"] == " ± ".join(one_decimal)  # 18.5 ± 0.7, not 18.5 ± 0.707107


def test_single_seed_and_unreached_accuracy(logs, built):
    _, fits, tested = logs
    path, summary = built
    cells = _row(_every_column(path), "mlp")
    version_dir = Path(fits[("mlp", 0)].trainer.log_dir)
    best = max(value for _, value in _logged(version_dir, "val/acc"))
    assert cells["best val/acc (%)"] == f"{100 * best:.2f}"  # one seed: no spread
    assert cells["test/acc (%)"] == f"{100 * float(tested.trainer.callback_metrics['test/acc']):.2f}"
    seconds, epoch = _expected_time_to(version_dir, 0.01)
    assert cells["to 1 % val/acc"] == f"{seconds:.1f} s, ep {epoch}"
    assert cells["to 99 % val/acc"] == "-"  # lr 0 never gets near 99 %
    ((_, speed),) = _logged(version_dir, "perf/inference_images_per_second")
    assert cells["inference img/s"] == f"{speed:,.0f}"


def test_the_sources_numbers_stand_beside_ours(logs, built, tmp_path):
    path, summary = built
    table = _every_column(path)
    assert "SPEC: source's test acc (%)" in table
    assert _row(table, "cnn")["SPEC: source's test acc (%)"] == "80.98 @ 20 ep; 84.68 @ 50 ep"
    assert _row(table, "mlp")["SPEC: source's test acc (%)"] == "50-55 @ 20 ep"
    cnn = next(row for row in summary["rows"] if row["config"] == "cnn")
    assert cnn["spec"] == [{"test_acc_percent": "80.98", "epochs": 20}, {"test_acc_percent": "84.68", "epochs": 50}]
    # A config the source published nothing for says so.
    logdir, _, _ = logs
    copy = tmp_path / "logs"
    shutil.copytree(logdir / "mlp" / "version_0", copy / "resnet18" / "version_0",
                    ignore=shutil.ignore_patterns("*.ckpt"))
    record = json.loads((copy / "resnet18/version_0/run.json").read_text())
    (copy / "resnet18/version_0/run.json").write_text(json.dumps({**record, "config_name": "resnet18"}))
    assert _row(report.details_markdown(copy), "resnet18")["SPEC: source's test acc (%)"] == "—"
    assert _row(report.results_markdown(copy), "resnet18")["source's test acc (%)"] == "—"


def test_markdown_only_prints_the_tables_and_writes_nothing(logs, tmp_path, capsys):
    logdir, _, _ = logs
    copy = tmp_path / "logs"
    shutil.copytree(logdir, copy, ignore=shutil.ignore_patterns("report", "*.ckpt"))
    before = sorted(str(p) for p in copy.rglob("*"))
    assert report.main([str(copy), "--markdown-only"]) is None
    printed = capsys.readouterr().out
    groups = report.group_runs(report.find_runs(copy, report.DEFAULT_THRESHOLDS)[0])
    readme = [report.results_table(groups), report.TEST_ACCURACY_NOTE, "Where they ran:", "- "]
    assert printed.startswith("\n\n".join(readme))
    assert report.main([str(copy), "--details-only"]) is None
    printed = capsys.readouterr().out
    assert report.wide_table(groups, report.DEFAULT_THRESHOLDS) in printed
    assert [column for column in _row(printed, "cnn") if column.startswith("to ")] == [
        "to 50 % val/acc", "to 70 % val/acc", "to 80 % val/acc"]
    assert sorted(str(p) for p in copy.rglob("*")) == before


def _add_per_class(version_dir: Path, stage: str, values: dict[int, dict[str, float]]) -> None:
    """Log ``{step: {class: accuracy}}`` under ``<stage>/acc_per_class/<class>`` into a run, as a module would."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(version_dir), filename_suffix=f".{stage}_per_class")
    for step, per_class in values.items():
        for name, accuracy in per_class.items():
            writer.add_scalar(f"{stage}/acc_per_class/{name}", accuracy, global_step=step)
    writer.close()


def test_per_class_accuracy_is_read_at_the_best_epoch(logs, tmp_path):
    logdir, fits, _ = logs
    copy = tmp_path / "logs"
    shutil.copytree(logdir, copy, ignore=shutil.ignore_patterns("report", "*.ckpt"))
    seeds = {}
    for seed in (0, 1):
        version_dir = copy / "cnn" / Path(fits[("cnn", seed)].trainer.log_dir).name
        val_acc = _logged(version_dir, "val/acc")
        best_step = max(val_acc, key=lambda item: (item[1], -item[0]))[0]  # first epoch at the best
        steps = [step for step, _ in val_acc]
        # Each epoch's per-class values differ, so reading the wrong epoch shows.
        _add_per_class(version_dir, "val", {
            step: {"bird": 0.1 * seed + 0.01 * i, "cat": 0.5, "ship": 0.9 - 0.01 * i} for i, step in enumerate(steps)})
        _add_per_class(version_dir, "test", {7: {"bird": 0.2, "cat": 0.3, "ship": 0.4}, 9: {"bird": 0.6 + 0.1 * seed,
                                                                                            "cat": 0.7, "ship": 0.8}})
        seeds[seed] = steps.index(best_step)
    path = report.write_report(copy, thresholds=THRESHOLDS)
    text = path.read_text()
    summary = json.loads((path.parent / "report.json").read_text())
    cnn = next(row for row in summary["rows"] if row["config"] == "cnn")
    assert cnn["val_acc_per_class"] == [
        {"bird": pytest.approx(0.1 * s + 0.01 * i), "cat": 0.5, "ship": pytest.approx(0.9 - 0.01 * i)}
        for s, i in seeds.items()]
    assert cnn["test_acc_per_class"] == [{"bird": pytest.approx(0.6 + 0.1 * s), "cat": pytest.approx(0.7),
                                          "ship": pytest.approx(0.8)} for s in (0, 1)]
    birds = [0.1 * s + 0.01 * i for s, i in seeds.items()]
    val_section = text.split("## Per-class accuracy (%), validation, at the best val/acc epoch")[1]
    val_row = _row(val_section.split("## ")[0], "cnn")
    assert val_row["bird"] == f"{100 * statistics.fmean(birds):.2f} ± {100 * statistics.stdev(birds):.2f}"
    assert val_row["cat"] == "50.00 ± 0.00"
    test_row = _row(text.split("## Per-class accuracy (%), test")[1].split("## ")[0], "cnn")
    assert test_row["bird"] == f"{65:.2f} ± {100 * statistics.stdev([0.6, 0.7]):.2f}"
    assert test_row["ship"] == "80.00 ± 0.00"
    # The MLP's row holds what its own run logged at its best epoch (one seed: no spread).
    mlp_dir = copy / "mlp" / Path(fits[("mlp", 0)].trainer.log_dir).name
    mlp_best = max(_logged(mlp_dir, "val/acc"), key=lambda item: (item[1], -item[0]))[0]
    mlp_row = _row(val_section.split("## ")[0], "mlp")
    for name in ("bird", "cat", "ship"):
        (value,) = [v for step, v in _logged(mlp_dir, f"val/acc_per_class/{name}") if step == mlp_best]
        assert mlp_row[name] == f"{100 * value:.2f}", name


def test_no_per_class_table_when_no_run_logged_one(logs):
    logdir, _, _ = logs
    runs, _ = report.find_runs(logdir, THRESHOLDS)
    for run in runs:
        run.val_acc_per_class, run.test_acc_per_class = {}, {}
    groups = report.group_runs(runs)
    assert report.per_class_table(groups, "val") is None and report.per_class_table(groups, "test") is None


def test_figures_are_written_and_shown_in_tensorboard(logs, built):
    logdir, _, _ = logs
    path, _ = built
    accumulator = EventAccumulator(str(logdir / report.REPORT_RUN))
    accumulator.Reload()
    for name in ("val_acc_vs_epoch", "val_acc_vs_time"):
        # The PNG beside the report and the picture TensorBoard shows: the same figure (at two resolutions),
        # each drawn, not blank.
        png = Image.open(path.parent / f"{name}.png").convert("RGB")
        shown = accumulator.Images(f"report/{name}")[-1]
        assert png.width / png.height == pytest.approx(shown.width / shown.height, rel=1e-2)
        for picture in (png, Image.open(io.BytesIO(shown.encoded_image_string)).convert("RGB")):
            assert len(np.unique(np.asarray(picture).reshape(-1, 3), axis=0)) > 10  # lines and text, not one colour
        assert f"({name}.png)" in path.read_text()
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
    ((_, speed),) = _logged(version_dir, "perf/inference_images_per_second")
    assert record["inference_images_per_second"] == pytest.approx(speed)
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


def test_validate_and_test_logging_into_a_fitted_run_leave_its_history_alone(logs, tiny_data, tmp_path):
    """``validate``/``test`` of a checkpoint log at step 0; read with the fit's events, that purged its epochs."""
    import cli

    logdir, _, _ = logs
    copy = tmp_path / "logs"
    shutil.copytree(logdir, copy, ignore=shutil.ignore_patterns("report"))
    fitted = copy / "cnn" / "version_0"
    before = read_run(fitted, THRESHOLDS)
    best = next((fitted / "checkpoints").glob("best*.ckpt"))
    for subcommand in ("validate", "test"):
        args = [subcommand, "--config", REPO / "configs" / "cnn.yaml", "--data.data_dir", tiny_data,
                "--data.val_size", 12, "--data.batch_size", 16, "--trainer.logger.init_args.save_dir", copy,
                "--trainer.logger.init_args.version", 0, "--ckpt_path", best, *FAST]
        cli.main([str(arg) for arg in args])
    assert len(list(fitted.glob("events.out.tfevents.*"))) == 3

    after = read_run(fitted, THRESHOLDS)
    assert (after.epochs, after.val_acc, after.elapsed_seconds) == (before.epochs, before.val_acc, before.elapsed_seconds)
    assert after.epochs_trained == 2
    assert before.test_acc is None
    tested = [value for events in fitted.glob("events.out.tfevents.*")
              for step, value in _logged_file(events, "test/acc")]
    assert after.test_acc == pytest.approx(tested[-1])
    assert set(after.test_acc_per_class) == set(before.val_acc_per_class)  # the tiny data's classes


def _logged_file(path: Path, tag: str) -> list[tuple[int, float]]:
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)] if tag in accumulator.Tags()["scalars"] else []


def test_a_run_moved_to_another_folder_is_reported_under_that_folder(logs, tmp_path):
    logdir, _, _ = logs
    moved = tmp_path / "logs" / "cnn_no_augmentation" / "version_0"
    shutil.copytree(logdir / "cnn" / "version_0", moved, ignore=shutil.ignore_patterns("*.ckpt"))
    assert json.loads((moved / "run.json").read_text())["config_name"] == "cnn"  # what the run was logged as
    assert read_run(moved, THRESHOLDS).config == "cnn_no_augmentation"
    assert "| `cnn_no_augmentation` |" in report.results_markdown(tmp_path / "logs", THRESHOLDS)


# ---- test accuracy, intervals and paired comparisons, on runs written by hand -------------------------------------


def _fake_run(logdir: Path, config: str, version: str, seed: int | None, *, test_acc: float | None,
              right: list[bool] | None = None, files: list[str] | None = None, parameters: int = 1000,
              epoch_seconds: tuple[float, ...] = (10.0, 12.0), inference: float = 500.0) -> Path:
    """A finished run as RunRecorder, the loggers and ``predict`` leave it: run.json, events, predictions.csv.

    ``right[i]``: whether the run's top-1 on image ``i`` was its true class; ``files`` names the images.
    """
    from torch.utils.tensorboard import SummaryWriter

    folder = logdir / config / version
    folder.mkdir(parents=True)
    record = {"config_name": config, "seed": seed, "model_class": "CNNClassifier", "parameters": parameters,
              "finished_at": "2026-12-01T00:00:00+00:00", "hardware": {"cpu": "Test CPU", "device": "cpu",
                                                                     "cpu_cores": 2}, "versions": {"python": "3.11"}}
    (folder / "run.json").write_text(json.dumps(record))
    writer = SummaryWriter(str(folder), filename_suffix=".fit")
    for epoch, seconds in enumerate(epoch_seconds):
        step = 10 * (epoch + 1)
        for tag, value in (("train/loss_epoch", 1.0), ("epoch", epoch), ("val/acc", 0.5 + epoch / 100),
                           ("time/epoch_seconds", seconds)):
            writer.add_scalar(tag, value, global_step=step)
    writer.add_scalar("perf/inference_images_per_second", inference, global_step=10 * len(epoch_seconds))
    writer.close()
    if test_acc is not None:  # `test` logs into the run's folder, in a file of its own, at step 0
        writer = SummaryWriter(str(folder), filename_suffix=".test")
        writer.add_scalar("test/acc", test_acc, global_step=0)
        writer.close()
    if right is not None:
        files = files or [f"test/cat/{i:04d}.jpg" for i in range(len(right))]
        lines = ["index,file,true,top1,top1_probability"]
        lines += [f"{i},{file},cat,{'cat' if ok else 'dog'},0.9" for i, (file, ok) in enumerate(zip(files, right))]
        (folder / "predictions.csv").write_text("\n".join(lines) + "\n")
    return folder


def _bits(pattern: str) -> list[bool]:
    return [c == "1" for c in pattern]


# Twelve test images. Seed 0: SE alone right on 5 images, the CNN alone on 1; seed 1: 3 and 3.
SE = {0: "111111111100", 1: "111111100011"}
CNN = {0: "111100000110", 1: "111111011100"}


@pytest.fixture
def attention_logs(tmp_path) -> Path:
    """cnn_se_fast and cnn_fast, two seeds each with predictions, a third cnn_fast seed without; lenet once."""
    logdir = tmp_path / "logs"
    for seed in (0, 1):
        _fake_run(logdir, "cnn_se_fast", f"seed{seed}", seed, test_acc=SE[seed].count("1") / 12, right=_bits(SE[seed]),
                  parameters=1100, epoch_seconds=(13.0, 14.0), inference=400.0)
        _fake_run(logdir, "cnn_fast", f"version_{seed}", seed, test_acc=CNN[seed].count("1") / 12,
                  right=_bits(CNN[seed]), epoch_seconds=(10.0, 11.0 + seed))
    _fake_run(logdir, "cnn_fast", "version_2", 2, test_acc=0.5, epoch_seconds=(10.0, 13.0))
    _fake_run(logdir, "lenet", "version_0", 0, test_acc=0.6125)
    return logdir


def test_the_readme_table_gives_test_accuracy_with_a_t_interval(tmp_path):
    logdir = tmp_path / "logs"
    for seed, accuracy in enumerate((0.80, 0.82, 0.84)):
        _fake_run(logdir, "cnn_fast", f"version_{seed}", seed, test_acc=accuracy, epoch_seconds=(10.0, 20.0 + seed))
    _fake_run(logdir, "mlp", "version_0", 0, test_acc=0.5566)
    _fake_run(logdir, "lenet", "version_0", 0, test_acc=0.62)
    _fake_run(logdir, "lenet", "version_1", 1, test_acc=None)
    printed = report.results_markdown(logdir)
    cnn = _row(printed, "cnn_fast")
    # Mean 82 %, sample std 2 points, t(2) = 4.3027: half-width 4.3027 * 2 / sqrt(3) = 4.97 points.
    assert cnn[TEST_ACC] == "82.00 [77.03, 86.97] (3 seeds)"
    assert (cnn["epochs"], cnn["parameters"]) == ("2", "1,000")
    assert cnn["training time"] == "31 s"  # the fits' epochs: 30, 31 and 32 s
    assert cnn["source's test acc (%)"] == "80.98 @ 20 ep; 84.68 @ 50 ep"
    assert _row(printed, "mlp")[TEST_ACC] == "55.66 (1 seed)"  # one seed: no interval
    assert _row(printed, "lenet")[TEST_ACC] == "62.00 (1 seed), 1 untested"
    assert "Paired comparisons" not in printed  # no pair of an attention config and its base


def test_a_runs_epoch_time_is_its_median_so_one_slowed_epoch_does_not_move_it(tmp_path):
    logdir = tmp_path / "logs"
    _fake_run(logdir, "cnn_fast", "version_0", 0, test_acc=0.8, epoch_seconds=(100.0, 104.0, 3036.0, 98.0, 101.0))
    assert _row(report.details_markdown(logdir), "cnn_fast")["s/epoch"] == "101.0"  # the mean would be 687.8


def test_paired_comparison_reads_the_runs_predictions(attention_logs):
    printed = report.results_markdown(attention_logs, resamples=2000)
    (table,) = [block for block in printed.split("\n\n") if block.startswith("| comparison |")]
    row = _row(table, "cnn_se_fast − cnn_fast")
    # SE: 10 and 9 right of 12; the CNN: 6 and 9 (its third seed has no predictions): +4/24 = +16.67 points.
    first = np.array([_bits(SE[0]), _bits(SE[1])])
    second = np.array([_bits(CNN[0]), _bits(CNN[1])])
    expected = paired_bootstrap(first, second, resamples=2000, seed=0)
    assert row["test acc difference (points) [95 % interval]"] == (
        f"+16.67 [{100 * expected.low:+.2f}, {100 * expected.high:+.2f}]")
    assert row["p"] == f"{expected.p_value:.2g}"
    assert row["runs"] == "2 vs 2 on 12 images"
    assert row["epochs"] == "2 vs 2"  # each run's epochs trained: an unequal budget shows
    assert row["the interval holds"] == "test images and seeds"
    # Exact McNemar by hand: 5 vs 1 discordant images gives 2 * (1 + 6) / 64; 3 vs 3 gives 1 (capped).
    assert row["McNemar per seed"] == "seed 0: 5 vs 1, p = 0.22; seed 1: 3 vs 3, p = 1"
    assert row["parameters"] == "1,100 vs 1,000 (×1.100)"
    assert "s/epoch" not in row and "inference img/s" not in row  # loaded seconds: not beside the accuracies
    assert "- cnn_fast/version_2: no predictions.csv" in printed
    assert len(table.splitlines()) == 3  # one pair only: the others lack a config


def test_compare_names_its_pairs_and_says_what_it_could_not_compare(attention_logs, capsys):
    # lenet has no predictions; a cnn_fast run whose file scores other than its test/acc is named.
    folder = _fake_run(attention_logs, "cnn_cbam_fast", "version_0", 0, test_acc=0.5, right=_bits("1" * 12),
                       files=[f"mine/{i}.png" for i in range(12)])
    assert report.main([str(attention_logs), "--markdown-only", "--resamples", "100", "--compare", "cnn_fast",
                        "lenet", "--compare", "cnn_cbam_fast", "cnn_fast"]) is None
    printed = capsys.readouterr().out
    assert "- cnn_fast - lenet: not compared, one side has no predictions" in printed
    assert "- cnn_cbam_fast - cnn_fast: not compared, their runs predicted different images" in printed
    assert "- cnn_cbam_fast/version_0: its predictions.csv scores 100.00 %, its test/acc 50.00 %" in printed
    assert "| cnn_se_fast − cnn_fast |" not in printed  # --compare replaces the default pairs
    assert not (folder.parent.parent / report.REPORT_RUN).exists()
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(attention_logs), "--markdown-only", "--compare", "cnn_fast", "resnet18"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "No runs of resnet18 to compare" in error and "HINT: configs with runs: cnn_cbam_fast, cnn_fast" in error


def test_details_only_prints_docs_results_and_the_report_holds_both(attention_logs, capsys):
    assert report.main([str(attention_logs), "--details-only"]) is None
    details = capsys.readouterr().out
    assert _row(details, "cnn_fast")["test/acc (%)"] == _cell_of_percentages(
        [CNN[0].count("1") / 12, CNN[1].count("1") / 12, 0.5])
    assert "## Where they ran" in details and "Paired comparisons" not in details
    assert not (attention_logs / report.REPORT_RUN).exists()
    path = report.write_report(attention_logs, resamples=500)
    text = path.read_text()
    readme, every_column = text.split("## Every column")
    printed = report.results_markdown(attention_logs)
    # Two seeds at 10/12 and 9/12: half-width t(1) * |83.33 - 75| / 2 = 12.706 * 4.17 points.
    assert _row(readme, "cnn_se_fast")[TEST_ACC] == _row(printed, "cnn_se_fast")[TEST_ACC] == "79.17 [26.22, 132.11] (2 seeds)"
    assert _row(every_column, "lenet")["test/acc (%)"] == "61.25"
    summary = json.loads((path.parent / "report.json").read_text())
    (comparison,) = summary["comparisons"]
    assert (comparison["first"], comparison["second"]) == ("cnn_se_fast", "cnn_fast")
    assert comparison["seeds"] == [[0, 1], [0, 1]]  # cnn_fast's seed 2 has no predictions
    assert comparison["mcnemar"] == [[0, 5, 1, 0.21875], [1, 3, 3, 1.0]]
    assert comparison["bootstrap"]["difference"] == pytest.approx(4 / 24)


def _cell_of_percentages(values: list[float]) -> str:
    """The wide table's ``mean ± sample std`` cell, in percent."""
    return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def test_the_where_cell_gives_one_entry_per_setting_with_the_range_of_loads():
    from dataclasses import replace

    from reporting.runs import Run
    from reporting.tables import _conditions_cell

    base = Run(config="cnn_fast", version="seed0", path="", seed=0, model="CNNClassifier", parameters=1,
               finished_at="", hardware={"cpu_cores": 2, "torch_threads": 1}, versions={}, val_acc=[], epochs=[],
               elapsed_seconds=[], epoch_seconds=[], test_acc=None, inference_images_per_second=None,
               precision="bf16-mixed", load_average=2.24)
    seeds = [base, replace(base, seed=1, load_average=2.06), replace(base, seed=2, load_average=None)]
    assert _conditions_cell(seeds[:1]) == "CPU 2 cores, 1 thread, bf16-mixed, load 2.2"
    assert _conditions_cell(seeds[:2]) == "CPU 2 cores, 1 thread, bf16-mixed, load 2.1-2.2"
    assert _conditions_cell(seeds) == "CPU 2 cores, 1 thread, bf16-mixed, load 2.1-2.2 (1 not recorded)"
    assert _conditions_cell([replace(base, load_average=10.2), replace(base, load_average=9.4)]) == \
        "CPU 2 cores, 1 thread, bf16-mixed, load 9.4-10.2"  # by value, not as text
    other = replace(base, hardware={"cpu_cores": 2, "torch_threads": 2}, load_average=None)
    assert _conditions_cell([base, other]) == ("CPU 2 cores, 1 thread, bf16-mixed, load 2.2; "
                                               "CPU 2 cores, 2 threads, bf16-mixed, load not recorded")
