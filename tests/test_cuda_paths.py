"""Paths that only a GPU takes, held on the CPU: CUDA functions mocked, host-device syncs counted."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from callbacks import rng_state
from callbacks.rng_state import RNGStateCheckpoint
from datamodules import CIFAR10DataModule
from datamodules.image_datamodule import InMemoryImages
from lightning_modules.cnn import CNNClassifier


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


class CountOps(TorchDispatchMode):
    """Count the aten ops a block runs, and the host-to-device copies among them."""

    # Each reads a device value on the host (item, bool, unique's size, nonzero's): the host waits for the GPU.
    SYNCS = ("aten._local_scalar_dense", "aten.item", "aten._unique2", "aten.nonzero", "aten.is_nonzero")

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []
        self.host_copies: list[str] = []
        self.host_indices: list[str] = []  # a CPU index into a device tensor: copied by every indexing

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in self.SYNCS:
            self.syncs.append(name)
        out = func(*args, **(kwargs or {}))
        made_on_device = name == "aten.lift_fresh" and out.device.type != "cpu"  # torch.tensor([...], device=)
        if made_on_device or name == "aten._to_copy" and args[0].device.type == "cpu" and out.device.type != "cpu":
            self.host_copies.append(name)
        if name == "aten.index" and args[0].device.type != "cpu":
            self.host_indices += [name for i in args[1] if i is not None and i.device.type == "cpu"]
        return out


class HostData(TorchFunctionMode):
    """Record tensors made from Python data straight on a device (``torch.tensor([...], device=...)``).

    They are copied from pageable host memory, which waits for the GPU; the dispatcher never sees them
    as a copy (no aten op runs above the device kernel), so they are caught at the Python call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.made: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if func in (torch.tensor, torch.as_tensor) and device is not None and torch.device(device).type != "cpu":
            if not isinstance(args[0], torch.Tensor):
                self.made.append(func.__name__)
        return func(*args, **kwargs)


def test_a_training_step_and_its_batch_transfer_read_nothing_back_to_the_host(tiny_data):
    """No host-device sync per step: nothing reads a device value on the host (torchmetrics' checks did)."""
    model = CNNClassifier(num_classes=3, widths=(4, 8, 8), hidden=16)
    dm = CIFAR10DataModule(data_dir=tiny_data, val_size=10, batch_size=8, permute_pixels=True)
    dm.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    dm.trainer.state.stage = "train"
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(8) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer: the step's own work is what is counted
        dm.on_after_batch_transfer((images, labels), 0)  # first batch: the permutation is made
        with CountOps() as ops:
            batch = dm.on_after_batch_transfer((images, labels), 0)
            model.training_step(batch, 0)
    assert ops.syncs == []


def test_batches_on_the_device_copy_nothing_from_the_host(tiny_data):
    """Augmentation, pixel permutation and keep_on_device gathers, on the meta device (what a GPU gets)."""
    device = torch.device("meta")
    dm = CIFAR10DataModule(data_dir=tiny_data, val_size=10, batch_size=8, permute_pixels=True)
    dm.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    dm.trainer.state.stage = "train"
    images = torch.empty(8, 3, 32, 32, dtype=torch.uint8, device=device)
    labels = torch.empty(8, dtype=torch.int64, device=device)
    dm.on_after_batch_transfer((images, labels), 0)  # first batch: the permutation moves to the device once
    kept = InMemoryImages(torch.empty(20, 3, 32, 32, dtype=torch.uint8, device=device),
                          torch.empty(20, dtype=torch.int64, device=device))
    with CountOps() as ops, HostData() as made:
        dm.on_after_batch_transfer((images, labels), 0)
        gathered = kept.__getitems__(list(range(8)))
    assert made.made == []
    assert ops.host_copies == ["aten._to_copy"]  # the batch's indices, once (pinned, non-blocking on CUDA)
    assert ops.host_indices == [] and all(t.device == device for t in gathered)
