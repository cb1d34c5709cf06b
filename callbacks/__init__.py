"""Cross-cutting training behaviour: side effects only, resumable state in ``state_dict``."""

from callbacks.rng_state import RNGStateCheckpoint

__all__ = ["RNGStateCheckpoint"]
