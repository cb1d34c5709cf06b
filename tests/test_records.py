"""Run records under results/: written from real runs, read back into the same tables, and the README's source."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import report
from reporting import records
from tests.conftest import NO_PICTURES, REPO
from tests.test_report import CNN, FAST, SE, _bits, _fake_run

pytestmark = pytest.mark.xdist_group("test_records")


@pytest.fixture(scope="module")
def recorded(tiny_data, tmp_path_factory):
    """An MLP fitted for 2 epochs, tested and predicted, as a user publishes a run; then its record."""
    import cli

    root = tmp_path_factory.mktemp("records")
    logdir = root / "logs"
    args = ["--config", REPO / "configs" / "mlp.yaml", "--data.data_dir", tiny_data, "--data.val_size", 12,
            "--data.batch_size", 16, "--trainer.max_epochs", 2, "--trainer.logger.init_args.save_dir", logdir,
            *FAST]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        cli.main([str(arg) for arg in ["fit", *args]])
        for step in ("test", "predict"):
            cli.main([str(arg) for arg in [step, *args, "--ckpt_path", "best"]])
    results = root / "results"
    assert report.main([str(logdir), "--record-to", str(results), "--commit", "abc123"]) is None
    (path,) = results.glob("*/*.json")
    return logdir / "mlp" / "version_0", path, json.loads(path.read_text())


def _events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator


def test_a_record_holds_the_runs_own_numbers(recorded):
    run_dir, path, record = recorded
    assert path.relative_to(path.parent.parent) == Path("mlp/version_0.json")
    fit = _events(run_dir)
    val_acc = [event.value for event in fit.Scalars("val/acc")]
    assert [epoch["val_acc"] for epoch in record["epochs"]] == pytest.approx(val_acc)
    assert [epoch["epoch"] for epoch in record["epochs"]] == [1, 2]
    assert all(epoch["train_loss"] is not None and epoch["learning_rate"] == pytest.approx(1e-3)
               for epoch in record["epochs"])
    assert record["best_val_acc"] == pytest.approx(max(val_acc))
    # The test split's six images a class, as `predict` wrote them, and as `test` scored them.
    with (run_dir / "predictions.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    classes = sorted({row["true"] for row in rows})
    packed = record["test_predictions"]
    top1 = records._unpacked(packed["top1"], packed["count"])
    labels = records._unpacked(packed["labels"], packed["count"])
    assert [classes[i] for i in top1] == [row["top1"] for row in rows]
    assert [classes[i] for i in labels] == [row["true"] for row in rows]
    assert record["test"]["acc"] == pytest.approx(float(np.mean(top1 == labels)), abs=1e-6)
    assert set(record["test"]["acc_per_class"]) == set(classes)
    # What a reader needs to run it again; the commit given for a run.json that names none.
    assert record["commit"] == "abc123" or record["commit"].startswith(json.loads(
        (run_dir / "run.json").read_text())["commit"][:7])
    assert record["overrides"]["trainer.max_epochs"] == 2 and record["overrides"]["data.val_size"] == 12
    assert not any(key.startswith("trainer.logger") for key in record["overrides"])
    assert record["reproduce"][0].startswith("python cli.py fit --config configs/mlp.yaml ")
    assert "--trainer.max_epochs 2" in record["reproduce"][0]
    assert record["reproduce"][1].endswith("--ckpt_path best") and " test " in record["reproduce"][1]
    assert (record["seed"], record["precision"]) == (0, json.loads((run_dir / "run.json").read_text())["precision"])


def test_the_tables_from_records_equal_those_from_the_log_folders(recorded):
    run_dir, path, record = recorded
    from_logs = report.results_markdown(run_dir.parent.parent)
    from_records = report.results_markdown(path.parent.parent)
    # A record names its row by what was run: the config file and the overrides that change the training.
    recipe = records.recipe_of(record)
    assert recipe == "mlp.yaml --data.batch_size 16 --data.val_size 12 --trainer.max_epochs 2"
    # Records list every shipped config; those without a run say so in a row of dashes.
    unrun = [line for line in from_records.splitlines() if line.startswith("| `") and "| - | - |" in line]
    assert len(unrun) == len(list((REPO / "configs").glob("*.yaml"))) - 1
    kept = "\n".join(line for line in from_records.splitlines() if line not in unrun) + "\n"
    assert kept == from_logs.replace("| `mlp` |", f"| `{recipe}` |")
    assert report.details_markdown(path.parent.parent) == report.details_markdown(run_dir.parent.parent)


def test_paired_comparisons_are_recomputed_from_records_alone(tmp_path):
    """The records of four runs give the comparison their log folders gave, with the folders gone."""
    logdir = tmp_path / "logs"
    for seed in (0, 1):
        _fake_run(logdir, "cnn_se_fast", f"seed{seed}", seed, test_acc=SE[seed].count("1") / 12, right=_bits(SE[seed]))
        _fake_run(logdir, "cnn_fast", f"seed{seed}", seed, test_acc=CNN[seed].count("1") / 12, right=_bits(CNN[seed]))
    expected = report.results_markdown(logdir, resamples=500)
    written, skipped = report.record_runs(logdir, tmp_path / "results")
    assert len(written) == 4 and not skipped
    for folder in logdir.glob("*/*"):
        (folder / "predictions.csv").unlink()
    table = [block for block in report.results_markdown(tmp_path / "results", resamples=500).split("\n\n")
             if block.startswith("| comparison |")]
    assert table == [block for block in expected.split("\n\n") if block.startswith("| comparison |")]
    assert "+16.67 [" in table[0]


def test_runs_that_cannot_be_published_are_named_not_recorded(tmp_path, capsys):
    logdir = tmp_path / "logs"
    _fake_run(logdir, "cnn_fast", "untested", 0, test_acc=None, right=_bits("1100"))
    _fake_run(logdir, "cnn_fast", "unpredicted", 1, test_acc=0.5)
    assert report.main([str(logdir), "--record-to", str(tmp_path / "results")]) is None
    err = capsys.readouterr().err
    assert "cnn_fast/untested: not tested" in err and "cnn_fast/unpredicted: no predictions.csv" in err
    assert not (tmp_path / "results").exists()


def test_run_records_only_the_runs_it_names(tmp_path, capsys):
    """scripts/publish_run.sh records its own run; the others' records are left as they are."""
    logdir, results = tmp_path / "logs", tmp_path / "results"
    for seed in (0, 1):
        _fake_run(logdir, "cnn_fast", f"seed{seed}", seed, test_acc=CNN[seed].count("1") / 12, right=_bits(CNN[seed]))
    _fake_run(logdir, "cnn_se_fast", "seed0", 0, test_acc=SE[0].count("1") / 12, right=_bits(SE[0]))
    assert report.main([str(logdir), "--record-to", str(results), "--run", "cnn_fast/seed1"]) is None
    assert sorted(path.relative_to(results).as_posix() for path in results.glob("*/*.json")) == ["cnn_fast/seed1.json"]
    assert report.main([str(logdir), "--record-to", str(results), "--run", "cnn_se_fast"]) is None
    assert sorted(path.relative_to(results).as_posix() for path in results.glob("*/*.json")) == [
        "cnn_fast/seed1.json", "cnn_se_fast/seed0.json"]
    capsys.readouterr()
    # A typo records nothing and names the runs there are.
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(logdir), "--record-to", str(results), "--run", "cnn_fast/seed2"])
    assert exit_info.value.code == 2
    assert "--run cnn_fast/seed2: no run of that name" in capsys.readouterr().err
    assert len(list(results.glob("*/*.json"))) == 2
    with pytest.raises(SystemExit):
        report.main([str(logdir), "--run", "cnn_fast"])
    assert "add --record-to RESULTS" in capsys.readouterr().err


def test_a_file_that_is_not_a_record_is_named(tmp_path):
    (tmp_path / "cnn").mkdir()
    (tmp_path / "cnn" / "notes.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(report.ReportError, match=r"cnn/notes.json: not a run record of format 1 \(format 99\)"):
        report.results_markdown(tmp_path)


def _block(text: str, command: str) -> str:
    match = re.search(rf"<!-- {re.escape(command)} -->\n\n(.*?)<!-- end of report.py's output -->", text, re.S)
    assert match, f"no block '<!-- {command} -->' ... '<!-- end of report.py's output -->'"
    return match.group(1)


def test_the_readme_and_docs_publish_the_records_as_report_py_prints_them():
    """After a change to results/: `python report.py results --update README.md docs/results.md`."""
    readme = _block((REPO / "README.md").read_text(), "python report.py results --markdown-only")
    assert readme == report.results_markdown(REPO / "results")
    details = _block((REPO / "docs" / "results.md").read_text(), "python report.py results --details-only")
    assert details == report.details_markdown(REPO / "results")
    attention = _block((REPO / "README.md").read_text(), "python report.py results --attention-only")
    assert attention == report.attention_markdown(REPO / "results")


def test_every_shipped_config_has_a_row_and_one_without_a_run_says_why(recorded, tmp_path):
    _, path, _ = recorded
    results = tmp_path / "results"
    (results / "mlp").mkdir(parents=True)
    (results / "mlp" / path.name).write_bytes(path.read_bytes())
    (results / "not_run.yaml").write_text("resnet_cbam: needs the ImageNet ResNet18 weights\n")
    printed = report.results_markdown(results)
    table = printed.split("\n\n")[0]
    shipped = sorted(config.stem for config in (REPO / "configs").glob("*.yaml"))
    rows = [line.split("|")[1].strip().strip("`") for line in table.splitlines()[2:]]
    assert sorted(row.split()[0].removesuffix(".yaml") for row in rows) == shipped
    assert "| `resnet_cbam.yaml` | - | - | needs the ImageNet ResNet18 weights |" in table
    assert "| `lenet.yaml` | - | - | not run yet |" in table
    (results / "not_run.yaml").write_text("resnet_cbam_typo: why\n")
    with pytest.raises(report.ReportError, match="resnet_cbam_typo"):
        report.results_markdown(results)


def test_a_run_resumed_after_its_test_is_not_published_with_the_old_numbers(tmp_path, capsys):
    """Fit, test and predict, then a resume: the test and predictions saw other weights than the record's."""
    logdir = tmp_path / "logs"
    folder = _fake_run(logdir, "cnn_fast", "version_0", 0, test_acc=0.5, right=_bits("1100"))
    record = json.loads((folder / "run.json").read_text())
    record["finished_at"] = "2099-01-01T00:00:00+00:00"  # the fit finished again after the test
    (folder / "run.json").write_text(json.dumps(record))
    assert report.main([str(logdir), "--record-to", str(tmp_path / "results")]) is None
    assert "cnn_fast/version_0: tested before its fit last finished (resumed since?)" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_a_fit_trained_in_parts_keeps_each_parts_commit_and_threads(tmp_path):
    """A run cut by a session's end and resumed on other commits and thread counts says so, not only its last part."""
    logdir = tmp_path / "logs"
    folder = _fake_run(logdir, "resnet_cbam_fast", "version_0", 0, test_acc=0.5, right=_bits("1100"))
    started = json.loads((folder / "run.json").read_text())
    started["hardware"]["torch_threads"] = 2  # the last part's
    started["segments"] = [{"commit": "aaa", "torch_threads": 1, "epochs_before": 0},
                           {"commit": "bbb", "torch_threads": 1, "epochs_before": 4},
                           {"commit": "ccc", "torch_threads": 2, "epochs_before": 14}]
    (folder / "run.json").write_text(json.dumps(started))
    assert report.main([str(logdir), "--record-to", str(tmp_path / "results")]) is None
    (path,) = (tmp_path / "results").glob("*/*.json")
    assert [part["commit"] for part in json.loads(path.read_text())["segments"]] == ["aaa", "bbb", "ccc"]
    assert "| CPU 2 cores, 1 or 2 threads in 3 parts, " in report.results_markdown(tmp_path / "results")


def test_publish_run_trains_tests_predicts_and_records(tiny_data, tmp_path):
    """scripts/publish_run.sh end to end in a copy of the project: it records its own run, not the others
    beside it in LOGS; recording it again gives the same record.

    One pass: its ``--ckpt_path last`` resuming a finished or cut fit is the CLI's, tested in
    test_checkpoint_policy and test_robustness (a second pass cost four more process start-ups).
    """
    project = tmp_path / "project"
    shutil.copytree(REPO, project, ignore=shutil.ignore_patterns(".git", ".venv*", "results", "lightning_logs",
                                                                  "__pycache__", "data", "*.egg-info"))
    env = {**os.environ, "DATA": str(tiny_data), "LOGS": str(tmp_path / "logs"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # Without the drawing callbacks: the script's steps and the record are the point, not the pictures.
    _fake_run(tmp_path / "logs", "cnn_fast", "seed0", 0, test_acc=CNN[0].count("1") / 12, right=_bits(CNN[0]))
    command = ["bash", "scripts/publish_run.sh", "mlp_tiny", "mlp", "--data.val_size", "12", "--data.batch_size",
               "16", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
               "--trainer.logger.init_args.version", "seed3", *NO_PICTURES]
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = (project / "results").glob("*/*.json")
    assert path.relative_to(project / "results").as_posix() == "mlp_tiny/seed3.json"
    written = path.read_text()
    assert report.main([str(tmp_path / "logs"), "--record-to", str(project / "results"), "--run", "mlp_tiny"]) is None
    assert [path] == list((project / "results").glob("*/*.json")) and path.read_text() == written
    record = json.loads(written)
    assert path.parent.name == "mlp_tiny" and record["config_file"] == "configs/mlp.yaml"
    assert [epoch["epoch"] for epoch in record["epochs"]] == [1]
    assert record["test_predictions"]["count"] == 18  # tiny_data: 3 classes of 6 test images
    flipped_right = record["test"]["acc_flip"] * 18  # flip TTA, logged beside the plain accuracy
    assert 0 <= round(flipped_right) <= 18 and abs(flipped_right - round(flipped_right)) < 1e-4
    readme = report.results_markdown(project / "results")  # and published beside it, in a column of its own
    assert "| test acc (%) [95 % interval] | with flip TTA (%) |" in readme and "With flip TTA:" in readme
    assert f"| {100 * record['test']['acc_flip']:.2f} |" in readme


def test_publish_run_sees_a_pixel_permutation_set_on_the_command_line():
    """The script skips flip TTA on permuted pixels by reading the effective config, overrides included."""
    script = (REPO / "scripts" / "publish_run.sh").read_text()
    pattern = re.search(r'grep -q "([^"]+)" <<< "\$effective"', script).group(1)
    printed = subprocess.run([sys.executable, "cli.py", "test", "--config", "configs/mlp.yaml",
                              "--data.permute_pixels", "true", "--print_config"],
                             cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout
    assert re.search(pattern, printed, re.MULTILINE)
    assert not re.search(pattern, printed.replace("permute_pixels: true", "permute_pixels: false"), re.MULTILINE)


def test_update_rewrites_only_the_generated_block(recorded, tmp_path):
    _, path, _ = recorded
    results = path.parent.parent
    page = tmp_path / "page.md"
    start = f"<!-- python report.py {results} --markdown-only -->"
    page.write_text(f"# Before\n\n{start}\n\nan old table\n<!-- end of report.py's output -->\n\nAfter.\n")
    assert report.main([str(results), "--update", str(page)]) is None
    text = page.read_text()
    assert text.startswith(f"# Before\n\n{start}\n\n") and text.endswith("<!-- end of report.py's output -->\n\nAfter.\n")
    assert "an old table" not in text and _block(text, start[5:-4]) == report.results_markdown(results)
    (tmp_path / "other.md").write_text("no block here\n")
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(results), "--update", str(tmp_path / "other.md")])
    assert exit_info.value.code == 2


def test_attention_none_is_the_default_spelled_out_not_an_override():
    shipped = {"model": {"init_args": {"attention": None, "rd_ratio": 16}}}
    assert records.overrides({"model": {"init_args": {"attention": "none", "rd_ratio": 16}}}, shipped) == {}
    assert records.overrides({"model": {"init_args": {"attention": "eca", "rd_ratio": 8}}}, shipped) == {
        "model.attention": "eca", "model.rd_ratio": 8}


def test_a_changed_record_does_not_make_the_code_dirty(tmp_path):
    """Runs train while report.py --record-to rewrites results/: only a change to the code marks a commit +dirty."""
    from callbacks.run_record import git_commit

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run.json").write_text("{}")
    (tmp_path / "model.py").write_text("x = 1\n")
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "first"]):
        subprocess.run([*git, *command], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "results" / "run.json").write_text('{"rewritten": true}')
    assert git_commit(tmp_path) == head
    (tmp_path / "model.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == f"{head}+dirty"


def test_a_run_from_another_checkout_is_recorded_against_the_shipped_config(tmp_path):
    """A run trained in a clone elsewhere (a GPU machine, a worktree) names that clone's configs/cnn_fast.yaml."""
    import yaml

    folder = _fake_run(tmp_path / "logs", "cnn_fast_eca", "seed0", 0, test_acc=0.5, right=_bits("1100"))
    resolved = records._shipped_config(records.CONFIGS / "cnn_fast.yaml")
    ran = {**resolved, "model": {**resolved["model"], "init_args": {**resolved["model"]["init_args"],
                                                                     "attention": "eca"}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(ran))
    started = json.loads((folder / "run.json").read_text())
    started["config_files"] = ["/elsewhere/clone/configs/cnn_fast.yaml"]
    (folder / "run.json").write_text(json.dumps(started))
    record = records.record_of(folder)
    assert record["config_file"] == "configs/cnn_fast.yaml"
    assert record["overrides"] == {"model.attention": "eca"}
    assert records.recipe_of(record) == "cnn_fast.yaml --model.attention eca"
