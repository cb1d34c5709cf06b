"""Cross-cutting training behaviour: side effects only, resumable state in ``state_dict``."""

from callbacks.evaluation_pictures import ConfusionMatrixPlot, MistakeGallery
from callbacks.faithfulness import FaithfulnessScores
from callbacks.fault_tolerance import AtomicCheckpointIO, FiniteCheckpoint, LastCheckpoint, StopOnNonFiniteLoss
from callbacks.interpretability import InterpretabilityDumps
from callbacks.loss_plots import LossPlots
from callbacks.predictions import PredictionWriter
from callbacks.requeue import DeferredRequeue
from callbacks.rng_state import RNGStateCheckpoint
from callbacks.run_record import RunRecorder
from callbacks.unfreeze import ProgressiveUnfreeze, Stage

__all__ = [
    "AtomicCheckpointIO",
    "ConfusionMatrixPlot",
    "DeferredRequeue",
    "FaithfulnessScores",
    "FiniteCheckpoint",
    "InterpretabilityDumps",
    "LastCheckpoint",
    "LossPlots",
    "MistakeGallery",
    "PredictionWriter",
    "ProgressiveUnfreeze",
    "RNGStateCheckpoint",
    "RunRecorder",
    "Stage",
    "StopOnNonFiniteLoss",
]
