"""Every config in ``configs/`` parses, and broken copies of each exit with status 2 naming the key.

The mutations are data: each edits a parsed copy of a config (or its text),
and names what the error message must mention.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CONFIGS
from tests.test_cli import tiny_args

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    """A mutation that sets the dotted ``path`` (``init_args`` included) to ``value``."""

    def mutate(config: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return mutate


def _rename(path: str, new_name: str) -> Mutation:
    def mutate(config: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[new_name] = node.pop(leaf)

    return mutate


# name -> (mutation of the parsed config, or a text to append; what stderr must name)
MUTATIONS: dict[str, tuple[Mutation | str, str]] = {
    "unknown top-level key": (_set("trainr", {"max_epochs": 1}), "trainr"),
    "misspelt trainer key": (_rename("trainer.max_epochs", "max_epoch"), "max_epoch"),
    "unknown model argument": (_set("model.init_args.drop_rate", 0.1), "drop_rate"),
    "wrong type": (_set("data.init_args.batch_size", "many"), "batch_size"),
    "malformed YAML": ("\ntrainer: [max_epochs: 1\n", "did not find expected"),  # names line and column
    "batch size 0": (_set("data.init_args.batch_size", 0), "batch_size"),
    "negative learning rate": (_set("model.init_args.optimizer.init_args.lr", -1.0), "lr"),
}


def _progressive_unfreeze_mutation() -> dict[str, tuple[Mutation | str, str]]:
    """An unfreeze stage at a negative epoch, once ``callbacks.ProgressiveUnfreeze`` exists.

    ASSUMES its init args take ``stages`` as a list of ``{"epoch", "layers"}``;
    adjust here when the callback lands.
    """
    import callbacks

    if not hasattr(callbacks, "ProgressiveUnfreeze"):
        return {}
    stage = {"epoch": -1, "layers": ["net"]}
    callback = {"class_path": "callbacks.ProgressiveUnfreeze", "init_args": {"stages": [stage]}}
    return {"unfreeze stage at a negative epoch": (_set("trainer.callbacks", [callback]), "epoch")}


MUTATIONS.update(_progressive_unfreeze_mutation())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_parses(config, run_cli, capsys):
    with pytest.raises(SystemExit) as done:
        run_cli("fit", "--config", config, "--print_config")
    assert done.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["model"]["class_path"]


def _mutated_copy(config: Path, mutation: Mutation | str, folder: Path) -> Path:
    text = config.read_text()
    if isinstance(mutation, str):
        text += mutation
    else:
        parsed = copy.deepcopy(yaml.safe_load(text))
        mutation(parsed)
        text = yaml.safe_dump(parsed, sort_keys=False)
    folder.mkdir(exist_ok=True)
    copied = folder / config.name  # same stem: tiny_args keys on it
    copied.write_text(text)
    return copied


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_mutated_configs_exit_2_naming_the_key(config, tiny_data, run_cli, tmp_path, capsys):
    failures = []
    for name, (mutation, key) in MUTATIONS.items():
        broken = _mutated_copy(config, mutation, tmp_path / name.replace(" ", "_"))
        with pytest.raises(SystemExit) as stop:
            run_cli("fit", *tiny_args(broken, tiny_data), "--trainer.fast_dev_run", "true")
        err = capsys.readouterr().err
        if stop.value.code != 2 or key not in err:
            failures.append(f"{name}: exit {stop.value.code}, stderr ends {err[-300:]!r}")
    assert not failures, "\n".join(failures)
