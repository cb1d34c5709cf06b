"""The GPU check's smoke mode: every row of benchmarks/gpu_check.py runs on CPU, so the script cannot rot between GPU loans."""

from __future__ import annotations

import re
import runpy
import sys

import pytest
import torch
import yaml

from benchmarks import gpu_check, gpu_cli_rows, gpu_data
from tests.conftest import REPO


def test_smoke_run_fills_every_row_without_an_error(tmp_path, capsys, monkeypatch, one_thread):
    # In this process (the script's main, as `python -m benchmarks.gpu_check` calls it): its recipe, DDP and
    # test rows start `cli.py` processes of their own, as on the GPU, one thread each.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "table.md"
    gpu_check.main(["--smoke", "--work", str(tmp_path / "work"), "--out", str(out), "--budget", "600"])
    table = capsys.readouterr().out
    assert out.read_text().strip() == table.strip()  # the file is the printed table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| check", "| ---"))]
    assert len(rows) == 10
    by_check = {}
    for row in rows:
        by_check.setdefault(row.split(" | ")[0].strip("| "), []).append(row)
    (cudnn,) = by_check.pop("cudnn")  # cuDNN autotuning is measured on a GPU only
    assert "skipped: cuDNN runs on CUDA only" in cudnn
    assert not [row for rows in by_check.values() for row in rows if "error" in row or "skipped" in row]
    assert len(by_check["fit"]) == 3 and len(by_check["bare step"]) == 3  # one row per switch, compile included
    assert all(row.split(" | ")[4].endswith("%") for row in by_check["fit"])  # fit as a share of the bare step
    assert [row for row in by_check["fit"] if "compile on" in row and "keep_on_device on" in row]
    (recipe,) = by_check["recipe"]
    assert "2 epochs" in recipe and "stages by epoch 0,0 as configured" in recipe and "none blank" in recipe
    assert re.search(r"ms/step by stage [0-9.]+/[0-9.]+/[0-9.]+; 50 epochs at the shipped stages", recipe)
    (ddp,) = by_check["DDP"]
    assert "stages by epoch 0,1,2 as configured" in ddp and "ONE device" in ddp
    (test,) = by_check["test"]
    assert "test/acc" in test
    assert "36 training files (30 trained, 6 validated) from 12 generated noise images, tiled" in table


def test_run_as_a_module_without_a_gpu_exits_2_and_points_at_smoke(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])
    monkeypatch.delitem(sys.modules, "benchmarks.gpu_check")  # run afresh, as a new process would; put back after
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("benchmarks.gpu_check", run_name="__main__")  # what `python -m benchmarks.gpu_check` runs
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "HINT: add --smoke" in err


def test_a_failing_row_prints_its_error_and_the_next_row_runs(tmp_path):
    table = gpu_check.Table(budget=60, out=tmp_path / "table.md")

    def broken() -> list[str]:
        raise RuntimeError("CUDA error: an illegal memory access\nwas encountered")

    table.run("fit", "broken", broken)
    table.run("fit", "fine", lambda: ["1", "2", "50%", ""])
    assert "**error** RuntimeError: CUDA error: an illegal memory access was encountered" in table.rows[0][-1]
    assert table.rows[1][2:5] == ["1", "2", "50%"]
    assert "broken" in (tmp_path / "table.md").read_text()


def test_rows_past_the_budget_are_skipped_not_run(tmp_path):
    table = gpu_check.Table(budget=0, out=None)
    ran = []
    table.run("fit", "late", lambda: ran.append(1) or ["", "", "", ""])
    assert ran == [] and "skipped" in table.rows[0][-1]


def test_lay_out_tiles_the_carried_images_with_links(tmp_path):
    carried = gpu_data.write_generated_images(tmp_path / "carried", classes=2, per_class=3)
    counts = gpu_data.lay_out(carried, tmp_path / "data", train_per_class=7, test_per_class=2)
    assert counts == {"distinct": 6, "train_files": 14}
    files = sorted((tmp_path / "data" / "train" / "class1").iterdir())
    assert len(files) == 7 and files[0].read_bytes() == files[3].read_bytes() == files[6].read_bytes()
    assert [p.name for p in sorted((tmp_path / "data" / "test" / "class0").iterdir())] == ["00_0000.png", "00_0001.png"]


def test_fit_rows_run_the_shipped_config_with_every_layer_training(tmp_path, tiny_data):
    """The fit rows get the per-step standard callbacks, not the drawing ones; the ResNet's schedule trains all."""
    import cli

    config = gpu_cli_rows.fit_config("resnet_cbam", tmp_path)
    built = cli.main(["--config", str(config), "--data.data_dir", str(tiny_data), "--model.pretrained", "false",
                      "--trainer.accelerator", "cpu"], run=False)
    names = {type(c).__name__ for c in built.trainer.callbacks}
    assert {"LossPlots", "LearningRateMonitor", "StopOnNonFiniteLoss", "ProgressiveUnfreeze"} <= names  # every step
    assert not names & {"ConfusionMatrixPlot", "MistakeGallery", "InterpretabilityDumps", "FaithfulnessScores"}
    (unfreeze,) = [c for c in yaml.safe_load(config.read_text())["trainer"]["callbacks"]
                   if c["class_path"].endswith("ProgressiveUnfreeze")]
    assert unfreeze["init_args"]["stages"] == [{"epoch": 0, "train": "all", "lr": 1.0e-5}]


def test_expected_stages_follow_the_shipped_schedule():
    assert gpu_cli_rows.expected_stages(REPO / "configs" / "resnet_cbam.yaml", 22) == [0] * 5 + [1] * 15 + [2] * 2
