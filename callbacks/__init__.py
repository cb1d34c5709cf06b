"""Cross-cutting training behaviour: side effects only, resumable state in ``state_dict``."""

from callbacks.checkpointing import AtomicCheckpointIO, LastCheckpoint
from callbacks.finite_loss import NonFiniteLossError, StopOnNonFiniteLoss
from callbacks.rng_state import RNGStateCheckpoint

__all__ = ["AtomicCheckpointIO", "LastCheckpoint", "NonFiniteLossError", "RNGStateCheckpoint", "StopOnNonFiniteLoss"]
