"""Samplers whose order is a function of (seed, epoch), so a run can stop anywhere and resume bit-exactly.

PyTorch's ``RandomSampler`` and every DataLoader iterator draw from the global
torch generator: a resumed run that builds its loaders afresh draws at other
moments than the straight run did, and every later augmentation draw shifts
(persistent workers make it worse: their seed is drawn once per process). Here
no loader touches the global generator. The training order of epoch ``e`` is
``randperm`` seeded with ``seed + e``, and a resumed run skips the batches the
interrupted epoch had already trained on, which Lightning counts for us.

Both samplers subclass ``DistributedSampler``: Lightning then keeps them under
DDP instead of injecting its own, and each rank reads its own shard.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DistributedSampler
from typing_extensions import override

__all__ = ["EvalShardSampler", "ResumableShuffleSampler"]


class ResumableShuffleSampler(DistributedSampler):
    """Shuffle per epoch from ``seed + epoch``; the first epoch after a resume starts mid-way.

    Args:
        dataset: The training set.
        seed: Shuffle seed; the same on every rank.
        num_replicas: Number of processes (DDP world size; 1 without DDP).
        rank: This process's rank.
    """

    def __init__(self, dataset: Sized, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._resume_at: tuple[int, int] | None = None

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """Continue a run saved during ``epoch`` after it had trained ``samples_done`` samples (of this rank).

        The epoch is set here because Lightning creates the first iterator
        before it sets the sampler epoch, and loader workers read the order
        then, ahead of the first batch.
        """
        if samples_done >= self.num_samples:  # saved at the epoch's end: the next one starts afresh
            self.set_epoch(epoch + 1)
            return
        self.set_epoch(epoch)
        self._resume_at = (epoch, samples_done)

    @override
    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
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
