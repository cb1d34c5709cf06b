"""Turn the floors in pyproject.toml into exact pins, or check that they are what is installed.

``python .ci/floor_pins.py`` prints one pip requirement per line: every runtime
and ``dev`` dependency at the version after its ``>=`` (``"lightning>=2.6.0,<3"``
becomes ``lightning==2.6.0``). Reading the pins from pyproject.toml means a
floor cannot be changed without ``.ci/floors`` testing the new one.

``python .ci/floor_pins.py --check`` compares those pins with the installed
distributions and exits non-zero on any difference, so a resolver that quietly
picked something else cannot pass for the floor.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

# "name[extra,...] specifier, specifier" as written in our pyproject.toml; markers are not used there.
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")

# lightning 2.6.x depends on the standalone ``pytorch-lightning`` without a
# version, so a floor install would pair lightning 2.6.0 with the newest
# pytorch-lightning. Hold it at lightning's own release: one Lightning per environment.
COMPANIONS = {"lightning": "pytorch-lightning"}


def floors() -> list[tuple[str, str, str]]:
    """``(name, extras, floor)`` for each runtime and ``dev`` dependency, in pyproject order.

    Raises:
        SystemExit: A dependency has no ``>=`` floor, or more than one.
    """
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = project["dependencies"] + project.get("optional-dependencies", {}).get("dev", [])
    found = []
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        if match is None:
            sys.exit(f"{PYPROJECT}: cannot read the requirement {requirement!r}.")
        name, extras, specifiers = match.group(1), match.group(2) or "", match.group(3)
        lower = [spec.strip()[2:].strip() for spec in specifiers.split(",") if spec.strip().startswith(">=")]
        if len(lower) != 1:
            sys.exit(
                f"{PYPROJECT}: {requirement!r} has {len(lower)} '>=' floors, not one.\n"
                "HINT: give every dependency exactly one tested floor, e.g. 'name>=1.2.3'."
            )
        found.append((name, extras, lower[0]))
    return found


def pinned() -> list[tuple[str, str, str]]:
    """``floors()`` plus each companion, held at the release of the package it comes with."""
    found = floors()
    return found + [(COMPANIONS[name], "", floor) for name, _, floor in found if name in COMPANIONS]


def pins() -> list[str]:
    """The pip requirements that install every floor exactly."""
    return [f"{name}{extras}=={floor}" for name, extras, floor in pinned()]


def check() -> int:
    """Compare each pin with the installed distribution; print the differences."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    expected = pinned()
    wrong = []
    for name, _, floor in expected:
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "nothing"
        # A local tag (torch 2.14.1+cu130) is still that release.
        if installed == "nothing" or Version(Version(installed).public) != Version(floor):
            wrong.append(f"{name}: pinned {floor}, installed {installed}")
    if wrong:
        print("Not the floors:\n  " + "\n  ".join(wrong), file=sys.stderr)
        return 1
    print(f"Installed exactly the {len(expected)} floors.")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        sys.exit(check())
    if sys.argv[1:]:
        sys.exit(f"usage: python {sys.argv[0]} [--check]")
    print("\n".join(pins()))
