"""Cross-cutting training behaviour: side effects only, resumable state in ``state_dict``."""

from callbacks.rng_state import RNGStateCheckpoint
from callbacks.unfreeze import ProgressiveUnfreeze, Stage

__all__ = ["ProgressiveUnfreeze", "RNGStateCheckpoint", "Stage"]
