"""benchmarks.attention_cost: each variant's row is measured against its own family's base."""

from __future__ import annotations

from benchmarks import attention_cost
from lightning_modules import CNNClassifier, CNNSEClassifier, ResNet18CBAMClassifier, ResNet18Classifier


def test_each_row_is_priced_against_its_familys_base(monkeypatch):
    speeds = {CNNClassifier: 400.0, CNNSEClassifier: 300.0, ResNet18Classifier: 50.0, ResNet18CBAMClassifier: 40.0}
    # Two rounds: the best of each is kept (the second round is faster for the base only).
    calls: list[type] = []

    def train(cls, precision, compile, batch_size, steps, warmup):
        calls.append(cls)
        return speeds[cls] * (2 if cls is CNNClassifier and calls.count(cls) == 2 else 1), 0.0

    monkeypatch.setattr(attention_cost, "bare_step_seconds", train)
    monkeypatch.setattr(attention_cost, "inference_images_per_second", lambda cls, *args: 3 * speeds[cls])
    monkeypatch.setattr(attention_cost, "FAMILIES", {"cnn": ((CNNClassifier, CNNSEClassifier), 8),
                                                     "resnet18": ((ResNet18Classifier, ResNet18CBAMClassifier), 4)})
    rows = {row[0]: row for row in attention_cost.measure(["cnn", "resnet18"], "32-true", 2, 1, 0)}
    assert rows["CNNClassifier"][4:6] == ["800", "1.00x"]  # its best round
    assert rows["CNNSEClassifier"][4:6] == ["300", "0.38x"]  # 300 / 800
    assert rows["CNNSEClassifier"][6:] == ["900", "0.75x"]  # inference: 900 / 1,200
    assert rows["ResNet18CBAMClassifier"][5] == "0.80x"  # against the ResNet18, not the CNN
    assert rows["CNNSEClassifier"][3] == "+0.23 %" and rows["CNNClassifier"][3] == "+0.00 %"

