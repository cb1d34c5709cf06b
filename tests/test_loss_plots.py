"""LossPlots: the loss pictures reach TensorBoard and the run folder, and survive a resume."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L

from callbacks import LossPlots
from lightning_modules.cnn import CNNClassifier
from tests.pictures_helpers import assert_picture, tensorboard_images, tiny_datamodule, tiny_trainer

STEPS_PER_EPOCH = 4  # 60 training images in batches of 16


def _fit(tmp_path, data, max_epochs, ckpt_path=None) -> tuple[L.Trainer, LossPlots]:
    L.seed_everything(0)
    plots = LossPlots()
    trainer = tiny_trainer(tmp_path / "logs", [plots], max_epochs=max_epochs)
    trainer.fit(CNNClassifier(num_classes=3), tiny_datamodule(data), ckpt_path=ckpt_path)
    return trainer, plots


def test_loss_pictures_every_epoch_and_history_across_resume(tiny_data, tmp_path):
    trainer, plots = _fit(tmp_path, tiny_data, max_epochs=2)
    run = tmp_path / "logs/run/version_0"
    images = tensorboard_images(run)
    for tag in ("loss/iterations", "loss/epochs"):
        assert [step for step, _ in images[tag]] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH], tag
        for _, pixels in images[tag]:
            assert_picture(pixels)
    assert (run / "plots/loss_iterations.png").is_file() and (run / "plots/loss_epochs.png").is_file()
    assert plots.steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))

    checkpoint = next((run / "checkpoints").glob("*.ckpt"))
    _, resumed = _fit(tmp_path, tiny_data, max_epochs=3, ckpt_path=checkpoint)
    assert resumed.steps == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    assert resumed.losses[: 2 * STEPS_PER_EPOCH] == plots.losses
    assert {key: len(values) for key, values in resumed.epochs.items()} == dict.fromkeys(resumed.epochs, 3)


def test_stage_boundaries_come_from_any_callback_that_has_them():
    class Unfreeze:
        stage_start_steps = [40, 10]

    trainer = SimpleNamespace(callbacks=[LossPlots(), Unfreeze(), object()])
    assert LossPlots().stage_boundaries(trainer) == [10, 40]
    assert LossPlots().stage_boundaries(SimpleNamespace(callbacks=[])) == []
