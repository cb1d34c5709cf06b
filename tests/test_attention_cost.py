"""benchmarks.attention_cost: each kind's row is measured against its own network without attention."""

from __future__ import annotations

import json

from benchmarks import attention_cost
from lightning_modules import CNNClassifier, ResNet18Classifier
from lightning_modules.attention import ATTENTION


def test_each_row_is_priced_against_its_networks_none(monkeypatch):
    speeds = {(CNNClassifier, "none"): 400.0, (CNNClassifier, "se"): 300.0,
              (ResNet18Classifier, "none"): 50.0, (ResNet18Classifier, "se"): 40.0}
    # Two rounds: the best of each is kept (the second round is faster for the CNN without attention only).
    calls: list[tuple] = []

    def train(build, precision, compile, batch_size, steps, warmup):
        key = (build.func, build.keywords["attention"])
        calls.append(key)
        return speeds[key] * (2 if key == (CNNClassifier, "none") and calls.count(key) == 2 else 1), 0.0

    monkeypatch.setattr(attention_cost, "bare_step_seconds", train)
    monkeypatch.setattr(attention_cost, "inference_images_per_second",
                        lambda build, *args: 3 * speeds[(build.func, build.keywords["attention"])])
    measured = attention_cost.measure(["cnn", "resnet18"], ["se"], "32-true", 2, 1, 0)
    rows = {tuple(row[:2]): row for row in attention_cost.table_rows(measured)}
    assert list(rows) == [("cnn", "none"), ("cnn", "se"), ("resnet18", "none"), ("resnet18", "se")]  # none added
    assert rows[("cnn", "none")][5:7] == ["800", "1.00x"]  # its best round
    assert rows[("cnn", "se")][5:7] == ["300", "0.38x"]  # 300 / 800
    assert rows[("cnn", "se")][7:] == ["900", "0.75x"]  # inference: 900 / 1,200
    assert rows[("resnet18", "se")][6] == "0.80x"  # against the ResNet18, not the CNN
    assert rows[("cnn", "se")][4] == "+0.23 %" and rows[("cnn", "none")][4] == "+0.00 %"


def test_every_registered_kind_is_offered():
    assert attention_cost.KINDS == ["none", *ATTENTION]


def test_the_record_holds_the_raw_figures_and_where_they_were_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(attention_cost, "bare_step_seconds", lambda build, *args: (100.0, 0.0))
    monkeypatch.setattr(attention_cost, "inference_images_per_second", lambda build, *args: 500.0)
    measured = attention_cost.measure(["cnn"], ["eca"], "32-true", 1, 1, 0)
    path = tmp_path / "results" / "attention_cost.json"
    attention_cost.write_record(path, measured, "32-true", 1, 1)
    record = json.loads(path.read_text())
    assert [(row["attention"], row["train_images_per_second"]) for row in record["rows"]] == [
        ("none", 100.0), ("eca", 100.0)]
    assert record["rows"][1]["parameters"] == sum(p.numel() for p in CNNClassifier(attention="eca").parameters())
    assert record["precision"] == "32-true" and record["machine"]["cpu_cores"] >= 1
