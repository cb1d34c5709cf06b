"""Progressive resizing: small training images early, full size at the end, from the config alone.

Issue 32 lists it as a candidate for the flagship's recipe. The size is a pure function of the
epoch and the fit's length, so these tests check that a real fit trains each epoch at the
schedule's size, validates at full size, resumes onto the same sizes, logs the size, and that
the combinations that cannot work are refused before a batch trains.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.user_input import UserInputError
from datamodules import CIFAR10DataModule
from datamodules.image_folder import DataError
from datamodules.progressive_resize import ProgressiveResize, resize_batch
from lightning_modules import CNNClassifier, ResNet18Classifier
from tests.conftest import NO_PICTURES, REPO
from tests.test_cli import tiny_args


class _SizeSpy(L.Callback):
    """The image size of every batch the model gets, per stage and epoch."""

    def __init__(self) -> None:
        self.train: dict[int, set[tuple[int, int]]] = {}
        self.val: set[tuple[int, int]] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.setdefault(trainer.current_epoch, set()).add(tuple(batch[0].shape[-2:]))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.val.add(tuple(batch[0].shape[-2:]))


class _StopAfter(L.Callback):
    """Ends the fit after epoch ``epoch`` (0-based), as an interruption would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = trainer.current_epoch >= self.epoch


def _trainer(max_epochs: int, *callbacks: L.Callback, **kwargs) -> L.Trainer:
    options = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, limit_train_batches=2, limit_val_batches=1)
    return L.Trainer(max_epochs=max_epochs, callbacks=list(callbacks), **{**options, **kwargs})


def _data(folder, **kwargs) -> CIFAR10DataModule:
    return CIFAR10DataModule(data_dir=str(folder), val_size=12, batch_size=8, **kwargs)


def test_the_schedule_holds_the_small_size_ramps_and_ends_at_full_size():
    schedule = ProgressiveResize(min_scale=0.75, ramp_start=0.25, ramp_end=0.75, multiple=4)
    # 24 px through the first quarter, then the ramp's nearest multiple of 4: 28 from 3/8 of the
    # fit (scale 0.8125, 26 px), 32 from 5/8 (scale 0.9375, 30 px).
    assert [height for height, _ in schedule.epoch_sizes(30, (32, 32))] == [24] * 12 + [28] * 7 + [32] * 11
    # Shares of the fit: twice the epochs, twice as long at each size (give or take the rounding).
    assert [height for height, _ in schedule.epoch_sizes(60, (32, 32))] == [24] * 23 + [28] * 15 + [32] * 22
    # Non-square images keep their shape's proportions; no side drops below one multiple.
    assert schedule.size_at(0, 30, (32, 48)) == (24, 36)
    assert ProgressiveResize(min_scale=0.01).size_at(0, 10, (32, 32)) == (4, 4)
    assert ProgressiveResize(min_scale=0.5, multiple=64).size_at(0, 10, (32, 32)) == (32, 32)  # never above full


@pytest.mark.parametrize("kwargs, names", [
    ({"min_scale": 0.0}, "min_scale"), ({"min_scale": 1.5}, "min_scale"),
    ({"ramp_start": 0.8, "ramp_end": 0.5}, "ramp_start"), ({"ramp_end": 1.2}, "ramp_end"),
    ({"multiple": 0}, "multiple"), ({"multiple": 2.5}, "multiple"),
])
def test_bad_schedules_are_refused_by_name(kwargs, names):
    with pytest.raises(UserInputError, match=names):
        ProgressiveResize(**kwargs)


def test_resizing_keeps_the_range_and_leaves_full_size_batches_alone():
    images = torch.rand(2, 3, 16, 16)
    assert resize_batch(images, (16, 16)) is images
    small = resize_batch(images, (8, 8))
    assert small.shape == (2, 3, 8, 8) and 0 <= small.min() and small.max() <= 1
    # Antialiased: a 2x2 block average, not every other pixel.
    blocks = torch.nn.functional.avg_pool2d(images, 2)
    assert (small - blocks).abs().mean() < (images[..., ::2, ::2] - blocks).abs().mean()


def test_a_fit_trains_each_epoch_at_the_schedules_size_and_validates_at_full_size(tiny_data_16, tmp_path):
    schedule = ProgressiveResize(min_scale=0.5, ramp_start=0.25, ramp_end=0.75, multiple=4)
    spy = _SizeSpy()
    torch.manual_seed(0)
    model = ResNet18Classifier(num_classes=3, input_shape=(3, 16, 16))
    _trainer(4, spy).fit(model, datamodule=_data(tiny_data_16, progressive_resize=schedule))
    assert spy.train == {0: {(8, 8)}, 1: {(8, 8)}, 2: {(12, 12)}, 3: {(16, 16)}}
    assert spy.val == {(16, 16)}
    # The same fit, cut after epoch 1 and resumed, trains its last two epochs at the straight fit's sizes.
    checkpoint = tmp_path / "epoch1.ckpt"
    cut, trainer = _SizeSpy(), _trainer(4, _StopAfter(1))
    trainer.callbacks.append(cut)
    trainer.fit(ResNet18Classifier(num_classes=3, input_shape=(3, 16, 16)),
                datamodule=_data(tiny_data_16, progressive_resize=schedule))
    trainer.save_checkpoint(checkpoint)
    assert cut.train == {0: {(8, 8)}, 1: {(8, 8)}}
    resumed = _SizeSpy()
    _trainer(4, resumed).fit(ResNet18Classifier(num_classes=3, input_shape=(3, 16, 16)),
                             datamodule=_data(tiny_data_16, progressive_resize=schedule), ckpt_path=checkpoint)
    assert resumed.train == {2: {(12, 12)}, 3: {(16, 16)}}


def test_the_size_is_logged_per_epoch_and_kept_in_the_checkpoints_hyperparameters(tiny_data_16, run_cli, tmp_path):
    """From a shipped config and the command line alone, as a user would try it."""
    config = REPO / "configs" / "resnet18_fast.yaml"
    run_cli("fit", *tiny_args(config, tiny_data_16), "--data.batch_size", 8, "--trainer.max_epochs", 3,
            "--trainer.limit_train_batches", 1, "--trainer.limit_val_batches", 1, *NO_PICTURES,
            "--data.progressive_resize", "datamodules.progressive_resize.ProgressiveResize",
            "--data.progressive_resize.min_scale", "0.5", "--data.progressive_resize.ramp_start", "0.0",
            "--data.progressive_resize.ramp_end", "1.0", "--data.progressive_resize.multiple", "2")
    run = tmp_path / "lightning_logs" / "resnet18_fast" / "version_0"
    events = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    assert [int(event.value) for event in events.Scalars("train/image_size")] == [8, 10, 14]
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["datamodule_hyper_parameters"]["progressive_resize"]["min_scale"] == 0.5


def test_a_network_with_a_fixed_head_is_refused_before_a_batch_trains(tiny_data):
    spy = _SizeSpy()
    with pytest.raises(UserInputError, match="progressive_resize"):
        _trainer(2, spy).fit(CNNClassifier(num_classes=3), datamodule=_data(tiny_data, progressive_resize=ProgressiveResize()))
    assert spy.train == {}


def test_permuted_pixels_and_open_ended_fits_are_refused(tiny_data_16):
    with pytest.raises(DataError, match="permute_pixels"):
        _data(tiny_data_16, progressive_resize=ProgressiveResize(), permute_pixels=True)
    with pytest.raises(UserInputError, match="max_epochs"):
        _trainer(-1, max_steps=2).fit(ResNet18Classifier(num_classes=3, input_shape=(3, 16, 16)),
                                      datamodule=_data(tiny_data_16, progressive_resize=ProgressiveResize()))
