"""Flip test-time augmentation: a second test number beside the plain one, never in its place."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from datamodules import CIFAR10DataModule
from lightning_modules import CNNClassifier
from common.user_input import UserInputError


def _tester() -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)


def _data(tiny_data, **kwargs) -> CIFAR10DataModule:
    return CIFAR10DataModule(data_dir=tiny_data, val_size=12, batch_size=8, augment=False, **kwargs)


def test_flip_accuracy_is_logged_beside_the_plain_one(tiny_data):
    torch.manual_seed(0)
    model = CNNClassifier(num_classes=3, test_time_flip=True)
    datamodule = _data(tiny_data)
    (flipped,) = _tester().test(model, datamodule=datamodule, verbose=False)
    model.test_time_flip = False
    (plain,) = _tester().test(model, datamodule=datamodule, verbose=False)
    assert "test/acc_flip" not in plain
    assert flipped["test/acc"] == pytest.approx(plain["test/acc"])  # the plain number is unchanged
    # By hand: the mean of the image's and its mirror's probabilities, on the same test images.
    model.eval()
    right = total = 0
    with torch.no_grad():
        for images, labels in datamodule.test_dataloader():
            images = datamodule.on_after_batch_transfer((images, labels), 0)[0]
            probs = model(images).softmax(dim=1) + model(images.flip(-1)).softmax(dim=1)
            right += int((probs.argmax(dim=1) == labels).sum())
            total += len(labels)
    assert flipped["test/acc_flip"] == pytest.approx(right / total)


def test_flip_on_permuted_pixels_is_refused(tiny_data):
    model = CNNClassifier(num_classes=3, test_time_flip=True)
    with pytest.raises(UserInputError, match="pixel-permuted"):
        _tester().test(model, datamodule=_data(tiny_data, permute_pixels=True), verbose=False)


def test_flip_predictions_go_beside_the_plain_ones_never_over_them(tiny_data, tmp_path):
    import csv

    from callbacks import PredictionWriter

    torch.manual_seed(0)
    model = CNNClassifier(num_classes=3)
    datamodule = _data(tiny_data)

    def predict(flip: bool) -> list[dict[str, str]]:
        model.test_time_flip = flip
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[PredictionWriter(output_dir=str(tmp_path))])
        trainer.predict(model, datamodule=datamodule, return_predictions=False)
        with open(tmp_path / ("predictions_flip.csv" if flip else "predictions.csv"), newline="") as file:
            return list(csv.DictReader(file))

    plain = predict(False)
    written = (tmp_path / "predictions.csv").stat().st_mtime_ns
    flipped = predict(True)
    assert (tmp_path / "predictions.csv").stat().st_mtime_ns == written  # the plain file is left alone
    # By hand: the top class and its probability of the mean of the image's and its mirror's predictions.
    model.eval()
    with torch.no_grad():
        images = torch.cat([datamodule.on_after_batch_transfer(batch, 0)[0] for batch in datamodule.predict_dataloader()])
        probs = (model(images).softmax(dim=1) + model(images.flip(-1)).softmax(dim=1)) / 2
    classes = model.class_names()
    assert [row["top1"] for row in flipped] == [classes[i] for i in probs.argmax(dim=1).tolist()]
    assert [float(row["top1_probability"]) for row in flipped] == pytest.approx(probs.amax(dim=1).tolist(), abs=1e-5)
    assert [row["top1_probability"] for row in flipped] != [row["top1_probability"] for row in plain]


def test_flip_predictions_on_permuted_pixels_are_refused(tiny_data):
    model = CNNClassifier(num_classes=3, test_time_flip=True)
    with pytest.raises(UserInputError, match="pixel-permuted"):
        _tester().predict(model, datamodule=_data(tiny_data, permute_pixels=True))
