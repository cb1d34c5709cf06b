"""LossPlots: the loss pictures reach TensorBoard and the run folder, and survive a resume."""

from __future__ import annotations

import lightning as L

from callbacks import LossPlots, ProgressiveUnfreeze, loss_plots
from lightning_modules.cnn import CNNClassifier
from tests.pictures_helpers import assert_picture, tensorboard_images, tiny_datamodule, tiny_trainer
from tests.unfreeze_helpers import TINY_STAGES, TinyClassifier

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


def test_unfreeze_stages_are_marked_with_what_they_train(tiny_data, tmp_path, monkeypatch):
    drawn = []

    def recording(*args, **kwargs):
        figure = real(*args, **kwargs)
        drawn.append([(mark.xy[0], mark.get_text()) for mark in figure.axes[0].texts])  # step, label
        return figure

    real = loss_plots.loss_curve_figure
    monkeypatch.setattr(loss_plots, "loss_curve_figure", recording)
    L.seed_everything(0)
    plots = LossPlots()
    trainer = tiny_trainer(tmp_path, [plots, ProgressiveUnfreeze(TINY_STAGES)], max_epochs=3)
    trainer.fit(TinyClassifier(num_classes=3), tiny_datamodule(tiny_data))
    # TINY_STAGES start at epochs 0, 1, 2: steps 0, 4 and 8.
    marks = list(zip([0, 4, 8], ["stage 0: conv1, fc @ 1e-2", "stage 1: +layer2 @ 1e-3", "stage 2: all @ 1e-4"]))
    assert drawn == [marks[:1], marks[:2], marks]  # one picture an epoch, with the stages begun so far
    assert plots.stage_marks(trainer) == marks
