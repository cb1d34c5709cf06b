"""A LightningDataModule for small labelled image sets held in memory as uint8.

Images are decoded once into one uint8 tensor. Loaders hand out uint8 batches
(a quarter of the bytes of float32 to copy to the device), and the batch is
converted to float, augmented and optionally pixel-permuted after it reaches
the device, in ``on_after_batch_transfer``. Normalisation belongs to the model
(its ``mean``/``std`` are linked from here), so a checkpoint carries everything
it needs to classify a plain [0, 1] image.

Where images come from is decided by what ``data_dir`` holds:

- ``data_dir/train/<class>/*.{png,jpg}`` (and ``data_dir/test/...``): an image folder;
- ``data_dir/<torchvision folder>`` (e.g. ``cifar-10-batches-py``): torchvision's format;
- nothing, with ``download=True``: torchvision downloads it in ``prepare_data``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from datamodules.augment import BatchAugment
from datamodules.image_folder import DataError, ImageSet, find_classes, load_image_folder, read_loose_images
from datamodules.progressive_resize import ProgressiveResize, resize_batch
from datamodules.sampling import EvalShardSampler, ResumableLoader, ResumableShuffleSampler, loader_generator
from common.lightning_private import batches_trained_this_epoch

__all__ = ["ImageDataModule", "InMemoryImages", "IndexedImages"]


class InMemoryImages(Dataset):
    """Indexes uint8 image and label tensors; batches are gathered in one indexing op."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # The DataLoader calls this with a whole batch of indices: one gather
        # instead of batch_size __getitem__ calls and a stack.
        index = _index_on(self.images.device, indices)
        return self.images[index], self.labels[index]


class IndexedImages(InMemoryImages):
    """``InMemoryImages`` whose batches also carry each image's index in the set.

    For prediction: under DDP each rank sees a strided shard, and the index
    travelling with every prediction is what lets the ranks' rows be merged
    into one file and checked for gaps and repeats.
    """

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index], torch.tensor(index)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = _index_on(self.images.device, indices)
        return self.images[index], self.labels[index], index


def _index_on(device: torch.device, indices: list[int]) -> torch.Tensor:
    """The batch's indices as a tensor on ``device``, where the images are (``keep_on_device``).

    A CPU index into a GPU tensor is copied to the GPU by every indexing, from
    pageable memory, which waits for the GPU: twice a batch (images and labels).
    Here it crosses once, from pinned memory and without waiting.
    """
    index = torch.as_tensor(indices)
    if device.type == "cpu":
        return index
    if device.type == "cuda":
        index = index.pin_memory()
    return index.to(device, non_blocking=True)


def _already_stacked(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The identity collate: ``InMemoryImages.__getitems__`` returns the batch already stacked."""
    return batch


def split_indices(total: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, disjoint (train, val) index split of ``range(total)``.

    Raises:
        DataError: if ``val_size`` leaves no training images or is negative.
    """
    if not 0 <= val_size < total:
        raise DataError(
            f"val_size={val_size} does not fit a training set of {total} images.\n"
            f"HINT: choose --data.val_size between 0 and {total - 1}."
        )
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


class ImageDataModule(L.LightningDataModule):
    """Train/val/test splits of an in-memory image set with batched augmentation.

    Subclasses name the torchvision dataset and the normalisation statistics.

    Args:
        data_dir: Folder holding the data (see the module docstring for layouts).
        download: Let torchvision download the data when ``data_dir`` lacks it.
        val_size: Images carved from the training split for validation.
        split_seed: Seed of the train/validation split.
        batch_size: Images per batch for every split.
        num_workers: DataLoader worker processes. The data already sit in memory
            as tensors, so 0 (load in the training process) is usually fastest.
        augment: ``True``: the reference training augmentation (SPEC section 2);
            ``False``: none; or a :class:`~datamodules.augment.BatchAugment` with
            other settings (e.g. crop and flip only, for short schedules).
        permute_pixels: Shuffle pixel positions with one fixed permutation for
            every image of every split (removes spatial structure).
        permutation_seed: Seed of that permutation.
        mean: Per-channel normalisation mean; ``None`` takes the dataset's.
        std: Per-channel normalisation std; ``None`` takes the dataset's.
        pin_memory: Pin host batches for faster copies to a GPU.
        skip_broken: Leave unreadable image files out (with a warning listing
            them) instead of stopping with that list.
        keep_on_device: On a GPU, move the whole uint8 dataset to device memory
            when it fits (CIFAR-10 train is 150 MB), so batches are gathered
            there and nothing crosses the bus. Forces ``num_workers=0``.
        predict_dir: A folder of the user's own PNG/JPEG images (any size,
            resized to the training images') for ``predict``; files in a
            sub-folder named after a class are labelled with it. Default: the
            test split.
        progressive_resize: Train the early epochs on smaller images and the
            last ones at full size (:class:`~datamodules.progressive_resize.ProgressiveResize`);
            validation and test stay at full size. Only for networks that end in
            a global pooling (the ResNet18 recipes); refused with permuted pixels.
    """

    torchvision_dataset: ClassVar[Any]
    torchvision_folder: ClassVar[str]
    channels: ClassVar[int] = 3
    default_mean: ClassVar[tuple[float, ...]]
    default_std: ClassVar[tuple[float, ...]]

    def __init__(
        self,
        data_dir: str | Path = "data",
        download: bool = False,
        val_size: int = 5000,
        split_seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        augment: bool | BatchAugment = True,
        permute_pixels: bool = False,
        permutation_seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        pin_memory: bool = True,
        skip_broken: bool = False,
        keep_on_device: bool = False,
        predict_dir: str | Path | None = None,
        progressive_resize: ProgressiveResize | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} must be at least 1.\nHINT: e.g. --data.batch_size 64.")
        if num_workers < 0:
            raise DataError(f"num_workers={num_workers} must be 0 or more.\nHINT: e.g. --data.num_workers 0.")
        if val_size < 0:
            raise DataError(f"val_size={val_size} must be 0 or more.\nHINT: e.g. --data.val_size 5000.")
        # mean/std are logged by the model, which receives the resolved values.
        self.save_hyperparameters(ignore=["mean", "std", "augment", "progressive_resize"])
        if not isinstance(augment, (bool, BatchAugment)):
            raise DataError(
                f"augment={augment!r} must be true, false or a datamodules.augment.BatchAugment.\n"
                "HINT: e.g. augment: {class_path: datamodules.augment.BatchAugment, init_args: {degrees: 0}}."
            )
        # Plain values only: checkpoints keep these hyperparameters and load with weights_only=True.
        self.hparams["augment"] = augment if isinstance(augment, bool) else augment.settings()
        if progressive_resize is not None and not isinstance(progressive_resize, ProgressiveResize):
            raise DataError(
                f"progressive_resize={progressive_resize!r} must be a datamodules.progressive_resize.ProgressiveResize.\n"
                "HINT: e.g. progressive_resize: {class_path: datamodules.progressive_resize.ProgressiveResize, "
                "init_args: {min_scale: 0.75}}."
            )
        if progressive_resize is not None and permute_pixels:
            raise DataError(
                "progressive_resize changes the number of pixels, which the fixed pixel permutation of "
                "permute_pixels cannot follow.\nHINT: leave --data.progressive_resize out for permuted configs."
            )
        self.progressive_resize = progressive_resize
        self.hparams["progressive_resize"] = None if progressive_resize is None else progressive_resize.settings()
        self.data_dir = Path(data_dir).expanduser()
        self.download = download
        self.val_size = val_size
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.keep_on_device = keep_on_device
        self.skip_broken = skip_broken
        self.mean = tuple(mean) if mean is not None else self.default_mean
        self.std = tuple(std) if std is not None else self.default_std
        for name, stats in (("mean", self.mean), ("std", self.std)):
            if len(stats) != self.channels:
                raise DataError(
                    f"{name}={list(stats)} has {len(stats)} values, the images have {self.channels} channels.\n"
                    f"HINT: give one value per channel to --data.{name}."
                )
        if any(s <= 0 for s in self.std):
            raise DataError(f"std={list(self.std)} must be positive.\nHINT: fix --data.std.")
        self.predict_dir = Path(predict_dir).expanduser() if predict_dir is not None else None
        if self.predict_dir is not None and not self.predict_dir.is_dir():
            raise DataError(
                f"predict_dir '{self.predict_dir}' is not a folder.\n"
                "HINT: point --data.predict_dir at a folder of .png/.jpg images, or leave it out to predict the test split."
            )
        self.augmenter = augment if isinstance(augment, BatchAugment) else BatchAugment() if augment else None
        self.permute_pixels = permute_pixels
        self.permutation_seed = permutation_seed
        self.source = self._detect_source()
        self._classes: list[str] | None = None
        self._image_size: tuple[int, int] | None = None
        self.train_set: InMemoryImages | None = None
        self.val_set: InMemoryImages | None = None
        self.test_set: InMemoryImages | None = None
        self.predict_set: IndexedImages | None = None
        self.predict_paths: list[str] = []  # file of each predicted image, relative to its folder, when known
        self._permutation: torch.Tensor | None = None
        self._device_permutation: torch.Tensor | None = None  # the same, on the batches' device
        self._generators: dict[torch.device, torch.Generator] = {}  # augmentation, one per device
        self._shuffle_seed: int | None = None
        self._resume_at: tuple[int, int] | None = None  # from a checkpoint, until the train loader is built

    # ---- where the data come from -------------------------------------------------

    def _detect_source(self) -> str:
        if (self.data_dir / "train").is_dir():
            return "folder"
        if (self.data_dir / self.torchvision_folder).is_dir():
            return "torchvision"
        if self.download:
            return "torchvision"
        what = "does not exist" if not self.data_dir.exists() else "holds neither train/ nor " + self.torchvision_folder
        raise DataError(
            f"data_dir '{self.data_dir}' {what}, and download is off.\n"
            f"HINT: pass --data.download true to fetch it, or point --data.data_dir at a folder holding "
            f"{self.torchvision_folder}/ or train/<class>/*.png and test/<class>/*.png."
        )

    def _torchvision_split(self, split: str) -> Any:
        return self.torchvision_dataset(str(self.data_dir), train=split == "train", download=False)

    def _load_split(self, split: str) -> ImageSet:
        if self.source == "folder":
            split_dir = self.data_dir / split
            if not split_dir.is_dir():
                raise DataError(
                    f"The image folder '{self.data_dir}' has no '{split}' split.\n"
                    f"HINT: create {split_dir}/<class>/*.png (the same class folders as train/)."
                )
            images = load_image_folder(split_dir, channels=self.channels, skip_broken=self.skip_broken)
            if images.classes != self.classes:
                raise DataError(
                    f"The classes of '{split_dir}' {images.classes} differ from those of train/ {self.classes}.\n"
                    "HINT: every split needs the same class folders."
                )
            return images
        dataset = self._torchvision_split(split)
        images = torch.as_tensor(dataset.data)
        images = images.permute(0, 3, 1, 2) if images.ndim == 4 else images.unsqueeze(1)
        return ImageSet(images.contiguous(), torch.as_tensor(dataset.targets), list(dataset.classes), [])

    @property
    def classes(self) -> list[str]:
        """Class names, read from the data (folder names or the dataset's metadata)."""
        if self._classes is None:
            if self.source == "folder":
                self._classes = find_classes(self.data_dir / "train")
            else:
                self.prepare_data()
                self._classes = list(self._torchvision_split("test").classes)
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        if self._image_size is None:
            if self.train_set is not None:
                self._image_size = tuple(self.train_set.images.shape[-2:])
            else:
                self._image_size = self._peek_image_size()
        return (self.channels, *self._image_size)

    def _peek_image_size(self) -> tuple[int, int]:
        if self.source == "folder":
            from torchvision.io import read_image

            class_dir = self.data_dir / "train" / self.classes[0]
            first = next(p for p in sorted(class_dir.iterdir()) if p.is_file())
            return tuple(read_image(str(first)).shape[-2:])
        self.prepare_data()
        return tuple(self._load_split("test").images.shape[-2:])

    # ---- Lightning hooks --------------------------------------------------------------

    def prepare_data(self) -> None:
        if self.source == "torchvision" and self.download:
            existing = set(self.data_dir.rglob("*")) if self.data_dir.exists() else set()
            for train in (True, False):
                try:
                    self.torchvision_dataset(str(self.data_dir), train=train, download=True)
                except OSError as error:  # URLError and socket errors are OSErrors
                    _remove_new_files(self.data_dir, existing)  # a half-written archive would pass for data
                    raise DataError(
                        f"Could not download {self.torchvision_dataset.__name__} into '{self.data_dir}': {error}.\n"
                        f"HINT: without network, place {self.torchvision_folder}/ or train/<class>/*.png there "
                        "yourself and set --data.download false."
                    ) from error

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and self.train_set is None:
            full = self._load_split("train")
            train_index, val_index = split_indices(len(full.labels), self.val_size, self.split_seed)
            self.train_set = InMemoryImages(full.images[train_index], full.labels[train_index])
            self.val_set = InMemoryImages(full.images[val_index], full.labels[val_index])
            self._image_size = tuple(full.images.shape[-2:])
        if stage == "test" and self.test_set is None:
            test = self._load_split("test")
            self.test_set = InMemoryImages(test.images, test.labels)
            self._image_size = tuple(test.images.shape[-2:])
        if stage == "predict" and self.predict_set is None:
            if self.predict_dir is None:
                found = self._load_split("test")
                self._image_size = tuple(found.images.shape[-2:])
                self.predict_paths = [f"test/{path}" for path in found.paths]
            else:
                found = read_loose_images(self.predict_dir, self.input_shape, self.classes)
                self.predict_paths = found.paths
            self.predict_set = IndexedImages(found.images, found.labels)
        if stage == "fit" and self.progressive_resize is not None and self.trainer is not None:
            self.progressive_resize.scale_at(0, self.trainer.max_epochs)  # refuses a fit without max_epochs, now
        if stage == "fit" and self.trainer is not None and self.trainer.world_size > 1:
            # Without seed_everything each rank would take its own torch.initial_seed(): the shards of
            # one shuffled order would overlap. Every rank takes rank 0's (a checkpoint's, on resume).
            self._shuffle_seed = self.trainer.strategy.broadcast(self.shuffle_seed, src=0)
        if self.keep_on_device:
            self._move_to_device()

    def _move_to_device(self) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type != "cuda":
            return
        sets = [s for s in (self.train_set, self.val_set, self.test_set, self.predict_set) if s is not None]
        needed = sum(s.images.nbytes + s.labels.nbytes for s in sets)
        free, _ = torch.cuda.mem_get_info(device)
        if needed > free // 2:  # leave room for the model and activations
            rank_zero_warn(f"keep_on_device: the data need {needed / 2**20:.0f} MiB, too much of the "
                           f"{free / 2**20:.0f} MiB free on {device}; keeping them in host memory.")
            return
        for dataset in sets:
            dataset.images, dataset.labels = dataset.images.to(device), dataset.labels.to(device)
        self.num_workers = 0  # CUDA tensors cannot be shared with forked workers

    def _loader(self, dataset: InMemoryImages | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("setup() must run before the dataloaders are requested.")
        on_host = not dataset.images.is_cuda
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        options = dict(
            batch_size=self.batch_size,
            generator=loader_generator(self.shuffle_seed),
            num_workers=self.num_workers,
            collate_fn=_already_stacked,
            pin_memory=self.pin_memory and on_host and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )
        if shuffle:
            sampler = ResumableShuffleSampler(dataset, self.shuffle_seed, num_replicas=world_size, rank=rank,
                                              batch_size=self.batch_size)
            if self._resume_at is not None:
                # Set before the loader exists: its workers read the order as soon as the first iterator
                # is made, before Lightning sets the epoch, and Lightning hands a loader its state only
                # when it resumes mid-epoch, not after an epoch's end.
                sampler.resume_at(*self._resume_at)
                self._resume_at = None
            return ResumableLoader(dataset, sampler=sampler, position=self._position, **options)
        return DataLoader(dataset, sampler=EvalShardSampler(dataset, num_replicas=world_size, rank=rank), **options)

    def _position(self) -> dict[str, int]:
        """The current training epoch and the samples of it this rank has trained."""
        if self.trainer is None:
            return {}
        done = batches_trained_this_epoch(self.trainer) * self.batch_size
        return {"epoch": self.trainer.current_epoch, "samples_done": done}

    @property
    def shuffle_seed(self) -> int:
        """The run's ``seed_everything`` seed, else rank 0's initial seed, kept in checkpoints for resumes.

        Shuffle and augmentation derive from it; under DDP every rank holds rank 0's (see ``setup``).
        """
        if self._shuffle_seed is None:
            seed = os.environ.get("PL_GLOBAL_SEED")
            self._shuffle_seed = int(seed) if seed is not None else torch.initial_seed() % 2**62
        return self._shuffle_seed

    def state_dict(self) -> dict[str, Any]:
        """The shuffle seed and where the training epoch stands, so a resume continues at the next unseen batch."""
        return {"shuffle_seed": self.shuffle_seed, **self._position()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._shuffle_seed = state_dict.get("shuffle_seed", self._shuffle_seed)
        if "epoch" in state_dict:
            self._resume_at = (state_dict["epoch"], state_dict["samples_done"])

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, shuffle=False)

    def permutation(self, num_pixels: int) -> torch.Tensor:
        """The fixed pixel permutation: seeded, so every split and every process agrees."""
        if self._permutation is None or len(self._permutation) != num_pixels:
            generator = torch.Generator().manual_seed(self.permutation_seed)
            self._permutation = torch.randperm(num_pixels, generator=generator)
        return self._permutation

    def _augment_generator(self, device: torch.device) -> torch.Generator | None:
        """This rank's augmentation stream, seeded for the batch about to train.

        The seed is a hash of (shuffle seed, rank, epoch, batch of the epoch): every DDP rank draws its
        own crops, flips and jitter (the global generators are seeded alike on every rank), and a
        resume, which restarts at the same epoch and batch, draws what the straight run drew on each
        rank; nothing needs saving per rank. Seeding a CUDA generator is host-side: no sync.
        """
        if device.type == "meta":  # shape-only runs (tests): no generator exists there
            return None
        rank = self.trainer.global_rank
        position = (self.trainer.current_epoch, batches_trained_this_epoch(self.trainer))
        words = np.random.SeedSequence([self.shuffle_seed, rank, *position]).generate_state(2)
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        return generator.manual_seed(int(words[0]) << 32 | int(words[1]))

    def _permutation_on(self, device: torch.device, num_pixels: int) -> torch.Tensor:
        """``permutation(num_pixels)`` on ``device``, copied there once rather than with every batch."""
        permutation = self.permutation(num_pixels)
        cached = self._device_permutation
        if cached is None or cached.device != device or len(cached) != num_pixels:
            cached = self._device_permutation = permutation.to(device)
        return cached

    def train_image_size(self, epoch: int) -> tuple[int, int]:
        """``(height, width)`` of the training images of epoch ``epoch`` (0-based) of this fit."""
        full = self.input_shape[1:]
        if self.progressive_resize is None:
            return full
        return self.progressive_resize.size_at(epoch, self.trainer.max_epochs, full)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels, *index = batch  # predict batches carry the dataset index too
        images = images.float().div_(255)
        training = self.trainer is not None and self.trainer.training
        if self.augmenter is not None and training:
            images = self.augmenter(images, generator=self._augment_generator(images.device))
        if self.progressive_resize is not None and training:
            images = resize_batch(images, self.train_image_size(self.trainer.current_epoch))  # after the crop
        if self.permute_pixels:
            flat = images.flatten(2)
            images = flat[:, :, self._permutation_on(images.device, flat.shape[-1])].view_as(images)
        return images, labels, *index


def _remove_new_files(folder: Path, existing: set[Path]) -> None:
    """Delete what appeared under ``folder`` since ``existing`` was listed, deepest first."""
    if not folder.exists():
        return
    for path in sorted(set(folder.rglob("*")) - existing, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)
