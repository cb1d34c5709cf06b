"""Cross-cutting training behaviour: side effects only, resumable state in ``state_dict``."""

from callbacks.interpretability import InterpretabilityDumps
from callbacks.loss_plots import LossPlots
from callbacks.rng_state import RNGStateCheckpoint

__all__ = ["InterpretabilityDumps", "LossPlots", "RNGStateCheckpoint"]
