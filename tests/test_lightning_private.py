"""The adapter is the one place for private library names, and what it relies on exists in the installed releases."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common import lightning_private
from tests.conftest import REPO

# Private names this project once reached for outside the adapter; the pattern that finds each.
PRIVATE_USES = {
    "LightningModule._trainer": r"\bself\._trainer\b",
    "LightningCLI._run_subcommand": r"\b_run_subcommand\b",
    "the CLI's hparams key _instantiator": r"[\"']_instantiator[\"']",
    "torch.cpu's bf16 probes": r"\b_is_(amx_tile|avx512_bf16)_supported\b",
    "ModelCheckpoint._every_n_train_steps": r"\b_every_n_train_steps\b",
    "argparse's and jsonargparse's parser internals": r"\._actions\b|\b_subcommands_action\b",
}
PROJECT_CODE = [
    "*.py", "callbacks/*.py", "datamodules/*.py", "lightning_modules/*.py", "visualization/*.py", "benchmarks/*.py",
    "reporting/*.py", "common/*.py",
]


def test_no_private_library_name_outside_the_adapter() -> None:
    found = [
        f"{path.relative_to(REPO)}: {what}"
        for pattern in PROJECT_CODE
        for path in sorted(REPO.glob(pattern))
        if path.name != "lightning_private.py"
        for what, regex in PRIVATE_USES.items()
        if re.search(regex, path.read_text())
    ]
    assert found == []


@pytest.mark.parametrize(("owner", "name"), lightning_private.PRIVATE_NAMES, ids=lambda v: getattr(v, "__name__", v))
def test_every_private_name_the_adapter_relies_on_exists(owner: object, name: str) -> None:
    assert hasattr(owner, name), f"{owner} lost {name}: update common/lightning_private.py for this release"


def test_a_failed_subcommand_runs_the_failure_hook_then_raises() -> None:
    calls: list[str] = []

    class Base:
        def _run_subcommand(self, subcommand: str) -> None:
            calls.append(subcommand)
            raise KeyboardInterrupt

    class CLI(lightning_private.SubcommandFailureHook, Base):
        def on_subcommand_failure(self) -> None:
            calls.append("undo")

    with pytest.raises(KeyboardInterrupt):
        CLI()._run_subcommand("fit")
    assert calls == ["fit", "undo"]


def test_user_hparams_drop_only_the_cli_key() -> None:
    hparams = {"lr": 0.1, "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    assert lightning_private.user_hparams(hparams) == {"lr": 0.1}
