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
