"""The one exception type for mistakes in what the user gave: a config, a flag, a data folder, a file.

The CLI turns exactly these into a short message and exit status 2, as it does
for an argument it cannot parse. Anything else is a bug and keeps its
traceback. It subclasses ``ValueError`` so callers that catch bad values still
catch it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["UserInputError", "user_input_errors_raised"]

_collectors: list[list[UserInputError]] = []


class UserInputError(ValueError):
    """A value the user chose is wrong; the message names it and, after ``HINT:``, the fix."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        for collected in _collectors:
            collected.append(self)


@contextmanager
def user_input_errors_raised() -> Iterator[list[UserInputError]]:
    """Collect the ``UserInputError``s made inside the block.

    For callers that receive them re-wrapped by code they do not control:
    jsonargparse reports an error raised while instantiating a union-typed
    argument as text inside its own ``ValueError``, and whether the original is
    chained depends on the release and on the order of the union's types.
    """
    collected: list[UserInputError] = []
    _collectors.append(collected)
    try:
        yield collected
    finally:
        _collectors.remove(collected)
