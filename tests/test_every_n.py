"""The one "every n epochs" rule the picture, probe and plot callbacks share."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from callbacks import ConfusionMatrixPlot, FaithfulnessScores, InterpretabilityDumps, LossPlots, MistakeGallery
from callbacks.every_n import nth_epoch
from common.user_input import UserInputError


@pytest.mark.parametrize(
    "kind", [LossPlots, ConfusionMatrixPlot, MistakeGallery, InterpretabilityDumps, FaithfulnessScores]
)
def test_every_n_epochs_below_one_is_a_user_error_with_a_hint(kind: type) -> None:
    with pytest.raises(UserInputError, match=r"every_n_epochs=0 must be at least 1\.\nHINT: e\.g\. every_n_epochs: 1"):
        kind(every_n_epochs=0)


def test_mistake_gallery_count_below_one_is_a_user_error() -> None:
    with pytest.raises(UserInputError, match="count=0 must be at least 1"):
        MistakeGallery(count=0)


def test_nth_epoch_counts_epochs_from_zero() -> None:
    due = [epoch for epoch in range(9) if nth_epoch(SimpleNamespace(current_epoch=epoch), 3)]
    assert due == [2, 5, 8]
