"""Keep the random number generators in checkpoints, so a resumed run draws what the straight run would.

Lightning checkpoints hold no RNG state (Lightning issue 17543): a resumed run
repeats epoch 0's shuffle order and augmentation draws, and is not bit-exact.
This callback stores the torch (CPU and CUDA), NumPy and Python generators of
each process in plain tensors and lists, so checkpoints still load with
``torch.load(..., weights_only=True)``.

Of CUDA it keeps the current device's generator only, the one this process
draws from: a run saved with 4 GPUs visible resumes with 1 (a list of every
visible device, as older checkpoints hold, could not be restored by index there).

What it cannot restore: the generators inside persistent loader workers (ours do
no random work; augmentation runs after the batch transfer) and, under DDP, the
generators of ranks other than zero, since only rank zero writes the checkpoint
(augmentation draws from its own per-rank stream, see ``ImageDataModule``).
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from typing_extensions import override

__all__ = ["RNGStateCheckpoint"]


def collect_rng_state() -> dict[str, Any]:
    """Every global generator of this process, as tensors and plain Python values."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device's
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``collect_rng_state``."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible device, by index
            device = torch.cuda.current_device()
            cuda = cuda[device] if device < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


class RNGStateCheckpoint(L.Callback):
    """Save the generators with every checkpoint and restore them on resume."""

    @override
    def state_dict(self) -> dict[str, Any]:
        return collect_rng_state()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            restore_rng_state(state_dict)
