"""The one exception type for mistakes in what the user gave: a config, a flag, a data folder, a file.

The CLI turns exactly these into a short message and exit status 2, as it does
for an argument it cannot parse. Anything else is a bug and keeps its
traceback. It subclasses ``ValueError`` so callers that catch bad values still
catch it.
"""

from __future__ import annotations

__all__ = ["UserInputError"]


class UserInputError(ValueError):
    """A value the user chose is wrong; the message names it and, after ``HINT:``, the fix."""
