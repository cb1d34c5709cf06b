"""benchmarks.epoch_cost: a shipped recipe's epoch cost from its own training and inference speeds."""

from __future__ import annotations

import pytest

from benchmarks import epoch_cost


def test_epoch_cost_adds_the_splits_at_their_speeds_and_scales_by_the_recipes_epochs(tiny_data, capsys, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    (row,) = epoch_cost.main(["--configs", "cnn_fast", "--data", str(tiny_data), "--steps", "1", "--warmup", "1",
                              "--val-batches", "1", "--rounds", "1", "--budget-hours", "2",
                              "--override", "data.val_size", "12", "--override", "data.batch_size", "16"])
    assert row["epochs"] == 20  # cnn_fast.yaml's length, read from the config
    assert row["train_images_per_second"] > 0 and row["inference_images_per_second"] > 0
    built = epoch_cost._built("cnn_fast", tiny_data, 1, ["--data.val_size", "12"])
    built.datamodule.setup("fit")
    train, val = len(built.datamodule.train_set), len(built.datamodule.val_set)
    expected = train / row["train_images_per_second"] + val / row["inference_images_per_second"]
    assert row["epoch_seconds"] == pytest.approx(expected)
    assert row["total_hours"] == pytest.approx(20 * expected / 3600)
    printed = capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # nothing left in the caller's directory (fit's config.yaml went elsewhere)
    assert "| cnn_fast |" in printed and "x the 2 h budget" in printed
    # The precision fit would choose here (bf16-mixed where the CPU runs it natively), not Lightning's default.
    from common.precision_choice import choose_precision
    assert built.trainer.precision == choose_precision("cpu").precision
    assert f"quiet seconds per epoch, {choose_precision('cpu').precision}," in printed


def test_a_progressive_schedule_is_priced_epoch_by_epoch_at_each_sizes_own_speed(tiny_data_16, capsys, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped, progressive = epoch_cost.main([
        "--configs", "resnet18_fast", "--data", str(tiny_data_16), "--steps", "1", "--warmup", "1",
        "--val-batches", "1", "--rounds", "1", "--progressive-resize", "0.5",
        "--override", "data.val_size", "12", "--override", "data.batch_size", "16"])
    # 16 px images at min_scale 0.5 with the default ramp over resnet18_fast's 30 epochs.
    assert progressive["epoch_sizes"] == [8] * 12 + [12] * 7 + [16] * 11
    speeds = progressive["train_images_per_second_by_size"]
    assert set(speeds) == {8, 12, 16} and speeds[16] == shipped["train_images_per_second"]
    built = epoch_cost._built("resnet18_fast", tiny_data_16, 1, ["--data.val_size", "12"])
    built.datamodule.setup("fit")
    train, val = len(built.datamodule.train_set), len(built.datamodule.val_set)
    seconds = sum(train / speeds[size] for size in progressive["epoch_sizes"]) \
        + 30 * val / progressive["inference_images_per_second"]
    assert progressive["total_hours"] == pytest.approx(seconds / 3600)
    printed = capsys.readouterr().out
    assert "| resnet18_fast + progressive_resize 0.5 | 8 px: " in printed and "full run x" in printed
