"""Paths that only a GPU takes, held on the CPU: CUDA functions mocked, host-device syncs counted."""

from __future__ import annotations

import pytest
import torch

from callbacks import rng_state
from callbacks.rng_state import RNGStateCheckpoint


class FakeCuda:
    """Per-device CUDA generator states, as torch.cuda's functions would keep them, on ``visible`` devices."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, visible: int, current: int = 0) -> None:
        self.states = {d: torch.full((16,), d, dtype=torch.uint8) for d in range(visible)}
        self.current = current
        cuda = rng_state.torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: visible)
        monkeypatch.setattr(cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(cuda, "get_rng_state", self.get)
        monkeypatch.setattr(cuda, "set_rng_state", self.set)
        monkeypatch.setattr(cuda, "get_rng_state_all", lambda: [self.get(d) for d in range(visible)])
        monkeypatch.setattr(cuda, "set_rng_state_all", lambda states: [self.set(s, d) for d, s in enumerate(states)])

    def _index(self, device: int | str | torch.device) -> int:
        index = torch.device(device).index if not isinstance(device, int) else device
        index = self.current if index is None else index
        if index not in self.states:  # as torch raises for a device that is not there
            raise RuntimeError(f"CUDA error: invalid device ordinal {index}")
        return index

    def get(self, device: int | str | torch.device = "cuda") -> torch.Tensor:
        return self.states[self._index(device)].clone()

    def set(self, state: torch.Tensor, device: int | str | torch.device = "cuda") -> None:
        self.states[self._index(device)] = state.clone()


def test_rng_state_saved_with_4_gpus_visible_resumes_on_1(monkeypatch):
    saved_on = FakeCuda(monkeypatch, visible=4, current=2)  # rank 2 of 4, say
    state = RNGStateCheckpoint().state_dict()
    assert torch.equal(state["cuda"], saved_on.states[2])
    resumed_on = FakeCuda(monkeypatch, visible=1)
    RNGStateCheckpoint().load_state_dict(state)
    assert torch.equal(resumed_on.states[0], saved_on.states[2])


def test_rng_state_of_an_older_checkpoint_with_every_device_still_loads(monkeypatch):
    FakeCuda(monkeypatch, visible=4)
    state = RNGStateCheckpoint().state_dict()
    old = [torch.full((16,), 10 + d, dtype=torch.uint8) for d in range(4)]
    resumed_on = FakeCuda(monkeypatch, visible=1)
    RNGStateCheckpoint().load_state_dict({**state, "cuda": old})
    assert torch.equal(resumed_on.states[0], old[0])
