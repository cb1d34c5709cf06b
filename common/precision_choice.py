"""Which precision a run trains in when the user does not say: bf16 where the hardware runs it natively.

bf16 autocast halves the bytes every convolution moves and, on hardware with
bf16 arithmetic, about doubles a training step's throughput (the measured
figures, per machine: docs/performance.md). Where
bf16 is only emulated (AVX2, AVX512 without BF16, GPUs before Ampere) the same
autocast is slower than fp32, so those keep fp32. The result is one of
Lightning's own precision settings (``bf16-mixed`` or ``32-true``): the
choice picks a plugin, it does not cast anything by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from common.lightning_private import cpu_bf16_feature  # torch's probes are private: read in the adapter

__all__ = ["PrecisionChoice", "choose_precision", "cpu_bf16_feature", "resolve_device_type"]

NATIVE = "bf16-mixed"
FALLBACK = "32-true"


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str
    reason: str

    def line(self) -> str:
        """The one line a run prints about its precision."""
        if not self.reason.startswith("auto"):
            return f"Precision: {self.precision} ({self.reason})."
        return f"Precision: {self.precision} ({self.reason}); --trainer.precision 32-true or bf16-mixed overrides it."


def resolve_device_type(accelerator: Any) -> str:
    """``cpu``, ``cuda``, ``mps`` or another device type, as Lightning's ``auto``/``gpu`` would pick."""
    name = getattr(accelerator, "class_path", None) or accelerator or "auto"
    name = (name if isinstance(name, str) else type(name).__name__).lower()
    if name in ("auto", "gpu"):
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    for device_type in ("cuda", "cpu", "mps", "xla", "tpu"):
        if device_type in name:
            return device_type
    return name


def choose_precision(accelerator: Any = "auto") -> PrecisionChoice:
    """bf16 autocast where the device runs bf16 natively, fp32 elsewhere."""
    device_type = resolve_device_type(accelerator)
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return PrecisionChoice(NATIVE, f"auto: {torch.cuda.get_device_name()} runs bf16 natively")
        return PrecisionChoice(FALLBACK, f"auto: {torch.cuda.get_device_name()} would only emulate bf16")
    if device_type == "cpu":
        feature = cpu_bf16_feature()
        if feature is not None:
            return PrecisionChoice(NATIVE, f"auto: this CPU runs bf16 natively ({feature})")
        return PrecisionChoice(FALLBACK, "auto: this CPU has neither AVX512_BF16 nor AMX, so bf16 would be emulated")
    return PrecisionChoice(FALLBACK, f"auto: no native-bf16 check for {device_type!r} devices")
