"""Exit status 2 and a HINT for mistakes in the user's input; a traceback for everything else."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from tests.test_cli import tiny_args

CNN = REPO / "configs" / "cnn.yaml"


def test_a_bug_in_a_model_keeps_its_traceback_instead_of_exit_2(tiny_data, run_cli):
    # A TypeError from code, not from the config: it must reach the user with its traceback, not as
    # "exit 2". jsonargparse may wrap it (it tries each type of the model union), never swallow it.
    with pytest.raises(Exception) as raised:  # SystemExit is no Exception: an exit 2 would escape this
        run_cli("fit", *tiny_args(CNN, tiny_data), "--model.class_path", "tests.fault_helpers.BuggyCNNClassifier",
                "--trainer.fast_dev_run", "true")
    chain, error = [], raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    # Chained as itself, or quoted by jsonargparse's wrapper (older releases): either way the user reads it.
    assert any("object of type 'int' has no len" in str(e) for e in chain)


def test_a_bad_value_the_project_checks_exits_2_with_its_hint(tiny_data, run_cli, capsys):
    with pytest.raises(SystemExit) as stop:
        run_cli("fit", *tiny_args(CNN, tiny_data), "--model.widths", "[8, 16]", "--trainer.fast_dev_run", "true")
    assert stop.value.code == 2
    assert "widths=[8, 16] must name 3 block widths" in capsys.readouterr().err


def test_a_bad_value_found_once_training_starts_exits_2_too(tiny_data, run_cli, capsys):
    # The datamodule reads the folder in setup, after the config was accepted.
    with pytest.raises(SystemExit) as stop:
        run_cli("fit", *tiny_args(CNN, tiny_data), "--data.val_size", 10_000, "--trainer.fast_dev_run", "true")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "val_size" in err and "HINT:" in err
