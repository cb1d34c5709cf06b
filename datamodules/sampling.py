"""Samplers whose order is a function of (seed, epoch), so a run can stop anywhere and resume bit-exactly.

PyTorch's ``RandomSampler`` and every DataLoader iterator draw from the global
torch generator: a resumed run that builds its loaders afresh draws at other
moments than the straight run did, and every later augmentation draw shifts
(persistent workers make it worse: their seed is drawn once per process). Here
no loader touches the global generator. The training order of epoch ``e`` is
``randperm`` seeded with ``seed + e``, and a resumed run skips the batches the
interrupted epoch had already trained on, which Lightning counts for us.
``ResumableLoader`` shows Lightning that the training loader resumes.

Both samplers subclass ``DistributedSampler``: Lightning then keeps them under
DDP instead of injecting its own, and each rank reads its own shard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler
from typing_extensions import override

__all__ = ["EvalShardSampler", "ResumableLoader", "ResumableShuffleSampler", "loader_generator"]


class ResumableShuffleSampler(DistributedSampler):
    """Shuffle per epoch from ``seed + epoch``; the first epoch after a resume starts mid-way.

    When an epoch's last batch would hold a single image, that image sits the epoch out
    (another one each epoch, as the order is reshuffled): BatchNorm cannot normalise one value
    per channel in training, which a block that pools to 1x1 before its BatchNorm (Gather-Excite)
    would otherwise meet at the end of every epoch.

    Args:
        dataset: The training set.
        seed: Shuffle seed; the same on every rank.
        num_replicas: Number of processes (DDP world size; 1 without DDP).
        rank: This process's rank.
        batch_size: The loader's batch size; ``None`` keeps every image.
    """

    def __init__(self, dataset: Sized, seed: int, num_replicas: int = 1, rank: int = 0,
                 batch_size: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        lone_last = batch_size is not None and batch_size > 1 and self.num_samples % batch_size == 1
        self.per_epoch = self.num_samples - 1 if lone_last else self.num_samples
        self._resume_at: tuple[int, int] | None = None

    @override
    def __len__(self) -> int:
        return self.per_epoch

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """Continue a run saved during ``epoch`` after it had trained ``samples_done`` samples (of this rank).

        The epoch is set here because Lightning creates the first iterator
        before it sets the sampler epoch, and loader workers read the order
        then, ahead of the first batch.
        """
        if samples_done >= self.per_epoch:  # saved at the epoch's end: the next one starts afresh
            self.set_epoch(epoch + 1)
            return
        self.set_epoch(epoch)
        self._resume_at = (epoch, samples_done)

    @override
    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[: self.per_epoch]
        if self._resume_at is not None:
            epoch, skip = self._resume_at
            self._resume_at = None  # only the interrupted epoch is partial
            if epoch == self.epoch and skip < len(indices):
                indices = indices[skip:]
        return iter(indices)


class EvalShardSampler(DistributedSampler):
    """Every sample exactly once over all ranks, in order, without the padding ``DistributedSampler`` adds.

    Padding repeats samples so ranks get equal counts, which biases a
    synchronised accuracy; metrics here sum counts over ranks, so unequal
    shards are harmless.
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    @override
    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))


def loader_generator(seed: int) -> torch.Generator:
    """A private generator for a DataLoader's worker seeds, so building a loader draws nothing globally."""
    return torch.Generator().manual_seed(seed)


class ResumableLoader(DataLoader):
    """A training loader that tells Lightning it resumes mid-epoch, and how far its epoch got.

    Lightning saves the ``state_dict`` of a training loader that has one and,
    when it resumes mid-epoch, hands it back to ``load_state_dict`` before the
    first iterator is made; for such a loader it does not warn that a resume
    repeats batches. The datamodule sets the same position when it builds the
    loader, since after an epoch's end Lightning restores no loader state.

    Args:
        *args: Passed to ``DataLoader``; the sampler must be a ``ResumableShuffleSampler``.
        position: Returns ``{"epoch": ..., "samples_done": ...}`` for this rank, or ``{}`` outside fit.
        **kwargs: Passed to ``DataLoader``.
    """

    def __init__(self, *args: Any, position: Callable[[], dict[str, int]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableShuffleSampler):
            raise TypeError(f"ResumableLoader needs a ResumableShuffleSampler, got {type(self.sampler).__name__}.")
        self.position = position

    def state_dict(self) -> dict[str, int]:
        return self.position()

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict:
            self.sampler.resume_at(state_dict["epoch"], state_dict["samples_done"])
