"""The help a user reads says what this project does with a flag, not Lightning's defaults."""

from __future__ import annotations

import pytest

from tests.conftest import REPO


def _help(capsys, *args: str) -> str:
    import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # unwrapped: the formatter breaks lines by width


def test_the_top_help_says_what_the_project_is_and_lists_every_config(capsys):
    text = _help(capsys)
    assert "Lightning Trainer command line tool" not in text
    assert "attention-augmented CNNs" in text
    for config in sorted(path.stem for path in (REPO / "configs").glob("*.yaml")):
        assert config in text


def test_fit_help_gives_the_automatic_precision_and_the_run_lookup_of_ckpt_path(capsys):
    text = _help(capsys, "fit")
    precision = text.split("--trainer.precision PRECISION ")[1]
    assert precision.startswith("Numeric precision. Left unset, the run chooses: bf16-mixed where the device runs")
    assert "Default: ``'32-true'``" not in precision.split("(type:")[0]
    ckpt = text.split("--ckpt_path CKPT_PATH ")[1]
    assert ckpt.startswith("A checkpoint file, or 'last' (fit: resume the newest run of this config")
    assert "--model.help CLASS and --data.help CLASS" in text  # where the model's own options are


def test_test_help_says_best_is_the_newest_runs_best_checkpoint(capsys):
    ckpt = _help(capsys, "test").split("--ckpt_path CKPT_PATH ")[1]
    assert "'best' (validate/test/predict: the best-val/acc checkpoint of the newest run of this config)" in ckpt
