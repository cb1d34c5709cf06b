"""Sources, splits, classes, samplers, augmentation placement and the pixel permutation."""

from __future__ import annotations

import hashlib
import inspect
import pickle
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10

from datamodules import CIFAR10DataModule
from datamodules.augment import BatchAugment
from datamodules.image_datamodule import split_indices
from datamodules.image_folder import DataError
from datamodules.sampling import EvalShardSampler, ResumableShuffleSampler
from tests.conftest import write_image_folder


def test_classes_and_shape_come_from_the_folder(tmp_path):
    write_image_folder(tmp_path, classes=("apple", "pear"), per_class={"train": 3, "test": 1}, size=24)
    dm = CIFAR10DataModule(data_dir=tmp_path, val_size=1)
    assert dm.source == "folder"
    assert dm.classes == ["apple", "pear"]
    assert dm.num_classes == 2
    assert dm.input_shape == (3, 24, 24)


def test_split_sizes_disjoint_and_deterministic(tiny_data):
    dm = CIFAR10DataModule(data_dir=tiny_data, val_size=20, split_seed=3)
    dm.setup("fit")
    assert len(dm.train_set) == 52 and len(dm.val_set) == 20
    train, val = split_indices(72, 20, seed=3)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(72))
    again, _ = split_indices(72, 20, seed=3)
    other, _ = split_indices(72, 20, seed=4)
    assert torch.equal(train, again)
    assert not torch.equal(train, other)
    # The datamodule's validation images are exactly the seeded subset.
    dm2 = CIFAR10DataModule(data_dir=tiny_data, val_size=20, split_seed=3)
    dm2.setup("fit")
    assert torch.equal(dm.val_set.images, dm2.val_set.images)


def test_test_split_is_untouched_by_fit(tiny_data):
    dm = CIFAR10DataModule(data_dir=tiny_data, val_size=10)
    dm.setup("test")
    assert len(dm.test_set) == 18
    assert dm.train_set is None and dm.val_set is None


def test_batches_are_uint8_until_the_device_and_augmented_only_in_training(tiny_data):
    dm = CIFAR10DataModule(data_dir=tiny_data, val_size=10, batch_size=8)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 32, 32) and labels.dtype == torch.int64

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    dm.trainer = trainer
    trainer.state.stage = "validate"
    plain, _ = dm.on_after_batch_transfer((images, labels), 0)
    torch.testing.assert_close(plain, images.float() / 255)
    trainer.state.stage = "train"
    torch.manual_seed(0)
    augmented, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert augmented.shape == plain.shape and 0 <= augmented.min() and augmented.max() <= 1
    assert not torch.equal(augmented, plain)


def test_pixel_permutation_is_fixed_seeded_and_shared_by_splits(tiny_data):
    dm = CIFAR10DataModule(data_dir=tiny_data, val_size=10, permute_pixels=True, permutation_seed=7, augment=False)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    permuted, _ = dm.on_after_batch_transfer((images, torch.zeros(4)), 0)
    perm = dm.permutation(32 * 32)
    expected = (images.float() / 255).flatten(2)[:, :, perm].view(4, 3, 32, 32)
    torch.testing.assert_close(permuted, expected)
    assert sorted(perm.tolist()) == list(range(1024)) and not torch.equal(perm, torch.arange(1024))
    same = CIFAR10DataModule(data_dir=tiny_data, permute_pixels=True, permutation_seed=7).permutation(1024)
    other = CIFAR10DataModule(data_dir=tiny_data, permute_pixels=True, permutation_seed=8).permutation(1024)
    assert torch.equal(perm, same) and not torch.equal(perm, other)


def test_folder_without_test_split_is_named(tmp_path):
    write_image_folder(tmp_path, per_class={"train": 4})
    dm = CIFAR10DataModule(data_dir=tmp_path, val_size=2)
    with pytest.raises(DataError, match="no 'test' split"):
        dm.setup("test")


def test_class_mismatch_between_splits_is_named(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), per_class={"train": 4})
    write_image_folder(tmp_path, classes=("a", "c"), per_class={"test": 2})
    dm = CIFAR10DataModule(data_dir=tmp_path, val_size=2)
    with pytest.raises(DataError, match="differ"):
        dm.setup("test")


def test_a_configured_augmentation_is_the_one_applied_and_checkpoints_stay_plain(tiny_data, tmp_path):
    crop_flip = BatchAugment(brightness=0, contrast=0, saturation=0, hue=0, degrees=0)
    dm = CIFAR10DataModule(data_dir=tiny_data, val_size=10, batch_size=8, augment=crop_flip)
    assert dm.augmenter is crop_flip
    assert dm.hparams["augment"] == crop_flip.settings() and dm.hparams["augment"]["degrees"] == 0
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    dm.trainer, trainer.state.stage = trainer, "train"
    torch.manual_seed(0)
    augmented, _ = dm.on_after_batch_transfer((images, labels), 0)
    # Crop and flip only move pixels: every augmented value is an original value or the zero padding.
    originals = set((images.float() / 255).unique().tolist()) | {0.0}
    assert set(augmented.unique().tolist()) <= originals
    assert not torch.equal(augmented, images.float() / 255)
    # The hyperparameters a checkpoint keeps load under weights_only=True.
    torch.save({"augment": dm.hparams["augment"]}, tmp_path / "hparams.pt")
    assert torch.load(tmp_path / "hparams.pt", weights_only=True)["augment"] == crop_flip.settings()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"augment": "crop"}, "augment='crop'"), ({"batch_size": 0}, "batch_size=0"), ({"val_size": -1}, "val_size=-1"), ({"mean": (0.5,)}, "mean"),
     ({"std": (0.5, 0.0, 0.5)}, "std")],
)
def test_bad_arguments_name_the_value(tiny_data, kwargs, match):
    with pytest.raises(DataError, match=match):
        CIFAR10DataModule(data_dir=tiny_data, **kwargs)


def test_missing_data_dir_without_download_is_named(tmp_path):
    with pytest.raises(DataError, match="does not exist.*\n.*HINT"):
        CIFAR10DataModule(data_dir=tmp_path / "nowhere")


class SmallCIFAR10(CIFAR10):
    """torchvision's CIFAR-10 reader over a small file set written by the test (checksums of our own files)."""

    train_list: list = []
    test_list: list = []
    meta = {**CIFAR10.meta}


def _write_cifar_batches(root: Path) -> list[str]:
    """Write a small dataset in torchvision's CIFAR-10 pickle format, with its own checksums."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    classes = ["plane", "car", "bird"]

    def dump(name: str, payload: dict) -> list[str]:
        path = folder / name
        path.write_bytes(pickle.dumps(payload))
        return [name, hashlib.md5(path.read_bytes()).hexdigest()]

    def batch(n: int) -> dict:
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 3, n))}

    SmallCIFAR10.train_list = [dump("data_batch_1", batch(20))]
    SmallCIFAR10.test_list = [dump("test_batch", batch(5))]
    name, md5 = dump("batches.meta", {"label_names": classes})
    SmallCIFAR10.meta = {"filename": name, "key": "label_names", "md5": md5}
    return classes


def test_torchvision_format_is_read_with_its_own_class_names(tmp_path):
    classes = _write_cifar_batches(tmp_path)

    class SmallDataModule(CIFAR10DataModule):
        torchvision_dataset = SmallCIFAR10

    dm = SmallDataModule(data_dir=tmp_path, val_size=5)
    assert dm.source == "torchvision"
    assert dm.classes == classes
    dm.setup("fit")
    assert len(dm.train_set) == 15 and dm.train_set.images.shape[1:] == (3, 32, 32)
    assert dm.train_set.images.dtype == torch.uint8
    dm.setup("test")
    assert len(dm.test_set) == 5


def test_resumed_sampler_continues_the_interrupted_epoch_where_it_stopped():
    straight = ResumableShuffleSampler(range(50), seed=3)
    straight.set_epoch(2)
    resumed = ResumableShuffleSampler(range(50), seed=3)
    resumed.resume_at(epoch=2, samples_done=16)
    assert list(resumed) == list(straight)[16:]
    resumed.set_epoch(3)  # later epochs are whole again
    straight.set_epoch(3)
    assert list(resumed) == list(straight)
    at_epoch_end = ResumableShuffleSampler(range(50), seed=3)
    at_epoch_end.resume_at(epoch=2, samples_done=50)
    assert list(at_epoch_end) == list(straight)  # epoch 3, from its start


def test_an_epoch_whose_last_batch_would_be_one_image_leaves_out_another_image_each_epoch():
    sampler = ResumableShuffleSampler(range(49), seed=3, batch_size=16)  # 3 batches of 16 and a lone 49th
    left_out = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler) == 48 and len(set(order)) == 48
        left_out += sorted(set(range(49)) - set(order))
    assert len(set(left_out)) > 1  # not always the same image
    assert len(ResumableShuffleSampler(range(50), seed=3, batch_size=16)) == 50  # a last batch of two stays
    assert len(ResumableShuffleSampler(range(49), seed=3)) == 49
    resumed = ResumableShuffleSampler(range(49), seed=3, batch_size=16)
    resumed.resume_at(epoch=2, samples_done=48)  # saved at the shortened epoch's end
    sampler.set_epoch(3)
    assert list(resumed) == list(sampler)


def test_shuffle_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        sampler = ResumableShuffleSampler(range(50), seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
    assert sorted(order(0, 1)) == list(range(50))


@pytest.mark.parametrize("size", [12, 13])
def test_eval_shards_cover_every_sample_once_without_padding(size):
    shards = [list(EvalShardSampler(range(size), num_replicas=2, rank=rank)) for rank in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(size))
    assert [len(EvalShardSampler(range(size), num_replicas=2, rank=rank)) for rank in (0, 1)] == list(map(len, shards))


def _rank_view(tiny_data, monkeypatch, rank: int, processed: int = 0) -> CIFAR10DataModule:
    """A datamodule in training, as DDP rank ``rank`` sees it ``processed`` batches into epoch 0."""
    dm = CIFAR10DataModule(data_dir=tiny_data, val_size=10, batch_size=8)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    trainer.state.stage = "train"
    trainer.fit_loop.epoch_loop.batch_progress.current.processed = processed
    monkeypatch.setattr(trainer.strategy, "_global_rank", rank, raising=False)
    monkeypatch.setattr(type(trainer), "global_rank", property(lambda t: t.strategy._global_rank))
    dm.trainer = trainer
    dm._shuffle_seed = 7  # the seed every rank agreed on
    return dm


def test_each_rank_augments_with_its_own_stream_that_a_resume_redraws(tiny_data, monkeypatch):
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = (images, torch.zeros(8, dtype=torch.int64))
    global_state = torch.get_rng_state()
    rank0, rank1 = (_rank_view(tiny_data, monkeypatch, rank).on_after_batch_transfer(batch, 0)[0] for rank in (0, 1))
    assert not torch.equal(rank0, rank1)  # batch position i gets other crops, flips and jitter on rank 1
    # What a resume at the same epoch and batch draws on rank 1, and that the next batch draws anew.
    again = _rank_view(tiny_data, monkeypatch, 1).on_after_batch_transfer(batch, 0)[0]
    later = _rank_view(tiny_data, monkeypatch, 1, processed=3).on_after_batch_transfer(batch, 0)[0]
    assert torch.equal(again, rank1) and not torch.equal(later, rank1)
    assert torch.equal(global_state, torch.get_rng_state())  # the global generators are training's


def test_ranks_agree_on_rank_0s_shuffle_seed_without_seed_everything(tiny_data, monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    dm = CIFAR10DataModule(data_dir=tiny_data, val_size=10, batch_size=8)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    monkeypatch.setattr(type(trainer), "world_size", property(lambda t: 2))
    sent = []
    monkeypatch.setattr(trainer.strategy, "broadcast", lambda obj, src=0: sent.append((obj, src)) or 12345)
    dm.trainer = trainer
    dm.setup("fit")
    assert sent == [(torch.initial_seed() % 2**62, 0)] and dm.shuffle_seed == 12345
    assert dm.train_dataloader().sampler.seed == 12345


def test_cifar10_normalisation_statistics_are_written_once():
    """The model's default, the datamodule's and the benchmarks' all import one definition: copies drift."""
    from lightning_modules import ImageClassifier
    from tests.conftest import REPO

    sources = [*REPO.glob("*.py"), *REPO.glob("*/*.py")]
    typed = [str(p.relative_to(REPO)) for p in sources if "tests" not in p.parts and "0.4914" in p.read_text()]
    assert typed == ["datamodules/cifar10.py"]
    assert inspect.signature(ImageClassifier).parameters["mean"].default == CIFAR10DataModule.default_mean
