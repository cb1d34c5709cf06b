"""Compare finished runs: Markdown tables, paired comparisons and accuracy curves, from records or log folders.

    python report.py results --markdown-only             # the README's results block, from the records
    python report.py results --details-only              # docs/results.md's tables, from the records
    python report.py results --attention-only            # the README's "Does attention help?" table
    python report.py lightning_logs --record-to results  # a record (results/<config>/<run>.json) per tested run
    python report.py lightning_logs --record-to results --run cnn_fast/seed1  # that run's record only
    python report.py results --update README.md docs/results.md  # rewrite their generated blocks
    python report.py lightning_logs                      # writes lightning_logs/report/
    python report.py lightning_logs --out reports/today --thresholds 0.5 0.6 0.7
    python report.py lightning_logs --markdown-only      # prints the README's results, writes nothing
    python report.py lightning_logs --details-only       # prints docs/results.md's tables, writes nothing
    python report.py lightning_logs --markdown-only --compare cnn_se_fast cnn_fast

Two views of the same runs. The README's (``reporting.tables.results_table``): per config, the
command, the test accuracy with its 95 % interval over seeds, the training time with the
conditions it was measured in (device, threads, precision, load), and the source's number; from
records, every shipped config has a row, and one without a record says why
(``results/not_run.yaml``). Then each attention config against its base on the same test images
(``reporting.comparisons``: a paired bootstrap over images and seeds, and McNemar's exact test
per seed). The wide one (``wide_table``), for ``docs/results.md``: beside the best validation
accuracy, parameters, seconds per epoch, the wall time and epochs each config needed to first
reach given validation accuracies, inference images per second, and the source's number
(``SPEC_RESULTS``), which is a test accuracy. A third, for the README's "Does attention help?"
(``reporting.attention``): each attention kind on cnn_fast's recipe against none, with its
paired interval, its quiet cost and its most faithful explanation.

The published tables are built from the records under ``results/`` (``reporting.records``): a
few KB per run, in the repository, each with the predictions that the paired comparisons need. A
log directory works too: each ``<logdir>/<config>/<run>`` folder's TensorBoard events
(``val/acc``, ``test/acc``, ``time/*``, ``perf/*``, and per-class accuracies), the ``run.json``
that ``callbacks.RunRecorder`` wrote (parameters, seed, hardware, versions) and the
``predictions.csv`` that ``predict`` wrote (``reporting.runs``).

Outputs, in ``--out`` (default ``<logdir>/report``): ``report.md`` (both views),
``report.json`` (the numbers behind every cell and comparison), and ``val_acc_vs_epoch.png`` /
``val_acc_vs_time.png``. The wide table and figures are also logged to the
TensorBoard run ``<logdir>/report``, so ``tensorboard --logdir <logdir>`` shows
them next to the runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from callbacks.run_record import RUN_RECORD_FILE
from reporting import records
from reporting.attention import attention_lines
from reporting.comparisons import Comparison, compare_configs, default_pairs
from reporting.runs import DEFAULT_THRESHOLDS, REPORT_RUN, ReportError, Run, find_runs, group_runs
from reporting.tables import environment_lines, measured_flip, per_class_table, results_table, comparison_table, summarize, wide_table
from reporting.statistics import RESAMPLES
from visualization.report_figures import Curve, accuracy_curves

__all__ = ["attention_markdown", "details_markdown", "main", "results_markdown", "write_report"]


# ---- writing it ------------------------------------------------------------------------------


def _curves(groups: dict[str, list[Run]], by_time: bool) -> list[Curve]:
    curves = []
    for config, runs in groups.items():
        for run in runs:
            points = zip(run.elapsed_seconds if by_time else run.epochs, run.val_acc)
            points = [(x, y) for x, y in points if x is not None]
            curves.append(Curve(f"{config} (seed {run.seed})", config, [x for x, _ in points], [y for _, y in points]))
    return curves


def _reportable_runs(source: Path, thresholds: Sequence[float]) -> tuple[list[Run], list[str]]:
    """The finished runs in ``source`` (records, else log folders) and a line per file or folder skipped.

    Raises:
        ReportError: if ``source`` holds no finished run, or a threshold is not a fraction.
    """
    if not source.is_dir():
        raise ReportError(
            f"'{source}' is not a folder.\nHINT: pass results (the records) or the save_dir of your runs, "
            "e.g. lightning_logs."
        )
    bad = [t for t in thresholds if not 0 < t <= 1]
    if bad:
        raise ReportError(
            f"thresholds {bad} are not accuracies in (0, 1].\nHINT: give fractions, e.g. --thresholds 0.5 0.6 0.7."
        )
    from_records = records.is_results_dir(source)
    runs, skipped = records.find_records(source, thresholds) if from_records else find_runs(source, thresholds)
    if not runs:
        detail = "".join(f"\n  {line}" for line in skipped)
        where = f"'{source}/<config>/<run>.json'" if from_records else f"'{source}/<config>/<run>'"
        raise ReportError(
            f"No finished run under {where}.{detail}\n"
            "HINT: train first (python cli.py fit --config configs/cnn.yaml) and point the report at its save_dir."
        )
    return runs, skipped


def record_runs(logdir: Path, results_dir: Path, commit: str | None = None,
                runs: Sequence[str] | None = None) -> tuple[list[Path], list[str]]:
    """Write a record of every finished, tested and predicted run under ``logdir``; the rest are named.

    ``runs`` (``NAME`` or ``NAME/VERSION``) records only those: a script publishing one run leaves the
    others' records as they are, and does not read every event file under a busy ``lightning_logs``.

    Raises:
        ReportError: if ``logdir`` is not a folder of runs, or a name in ``runs`` matches none of them.
    """
    if not logdir.is_dir() or records.is_results_dir(logdir):
        raise ReportError(f"'{logdir}' is not a folder of runs.\nHINT: pass the runs' save_dir, e.g. lightning_logs.")
    run_dirs = sorted(path for path in logdir.glob("*/*") if (path / RUN_RECORD_FILE).is_file())
    if runs is not None:
        # Each run answers to its logger name and to name/version.
        names = {run_dir: {run_dir.parent.name, run_dir.relative_to(logdir).as_posix()} for run_dir in run_dirs}
        wanted = {run.strip("/") for run in runs}
        unknown = sorted(wanted.difference(*names.values()))
        if unknown:
            raise ReportError(
                f"--run {' '.join(unknown)}: no run of that name under '{logdir}' "
                f"(runs there: {', '.join(d.relative_to(logdir).as_posix() for d in run_dirs) or 'none'})."
                "\nHINT: NAME is the logger's name (--trainer.logger.init_args.name), VERSION its version."
            )
        run_dirs = [run_dir for run_dir in run_dirs if wanted & names[run_dir]]
    written, skipped = [], []
    for run_dir in run_dirs:
        try:
            written.append(records.write_record(run_dir, results_dir, commit))
        except ReportError as reason:
            skipped.append(f"{run_dir.relative_to(logdir)}: {reason}")
    return written, skipped


TEST_ACCURACY_NOTE = (
    "Test accuracy: each run's best-validation checkpoint on the official test split (`cli.py test "
    "--ckpt_path best`), mean over seeds with its 95 % Student-t interval (n - 1 degrees of freedom: the t "
    "factor is 12.7 with 2 seeds, 4.3 with 3); one seed shows no interval. Training time: the fit's epochs, "
    "training and validation, mean over seeds; it was measured beside other work at the load shown, so "
    "compare speeds in the quiet benchmarks of docs/performance.md, not here. The source's number is a test "
    "accuracy too."
)
FLIP_NOTE = (
    " With flip TTA: the same checkpoint and images, each classified with its mirror and the two predictions "
    "averaged (`cli.py test --model.test_time_flip true`), mean over the seeds that measured it; a second "
    "number, never the published one."
)
COMPARISON_NOTE = (
    "Paired comparisons on the same test images, from each run's predictions. Difference: the first "
    "config's mean test accuracy minus the second's, in points, with a 95 % percentile interval from "
    "{resamples:,} bootstrap replicates (seed {seed}). Each replicate draws the test images with replacement, "
    "the same draw for both configs, and adds the seed-to-seed spread pooled over both configs' runs as a "
    "Student-t draw (reporting.statistics.paired_bootstrap); the row says what its interval holds. "
    "p: twice the smaller share of replicates on either side of zero. "
    "McNemar per seed both configs ran: images only the first got right vs only the second, and the exact "
    "two-sided p-value. Epochs: each side's training length; where they differ (the source's cnn_se.yaml "
    "trains 50, cnn.yaml 20), the difference is not the attention block's alone. "
    "Parameters: the first config's against the second's; what each costs in time is "
    "measured quietly, side by side, in docs/performance.md."
)


def _readme_lines(groups: dict[str, list[Run]], comparisons: Sequence[Comparison], notes: Sequence[str],
                  resamples: int, seed: int, missing: dict[str, str] | None = None) -> list[str]:
    """The README's results: the compact table, the paired comparisons, and what was not compared."""
    lines = [results_table(groups, missing), "", TEST_ACCURACY_NOTE + (FLIP_NOTE if measured_flip(groups) else "")]
    if comparisons:
        lines += ["", comparison_table(groups, comparisons), "", COMPARISON_NOTE.format(resamples=resamples, seed=seed)]
    if notes:
        lines += ["", "Notes on the comparisons:", "", *(f"- {note}" for note in notes)]
    return lines


def _details_lines(groups: dict[str, list[Run]], runs: Sequence[Run], skipped: Sequence[str],
                   thresholds: Sequence[float]) -> list[str]:
    """Every column, per-class accuracy, where the runs ran and what was not counted (``docs/results.md``)."""
    lines = [
        "Mean ± sample std over seeds where a config has several. "
        "`to X % val/acc`: training wall seconds and epochs until validation accuracy first reached X "
        "(`-`: never; `(k/n)`: only k of n seeds). Wall time counts training and validation epochs, "
        "not data loading. Inference: forward passes on validation batches in eval mode. "
        "`SPEC`: what the source reported for the same model and recipe (SPEC section 5) after that many "
        "epochs, a *test* accuracy on CIFAR-10's test split: compare it with `test/acc`, not with the "
        "validation columns, which are measured on images held out of the training set (`—`: the source "
        "reported none).",
        "",
        wide_table(groups, thresholds),
        "",
    ]
    for stage, title in (("val", "validation, at the best val/acc epoch"), ("test", "test")):
        per_class = per_class_table(groups, stage)
        if per_class is not None:
            lines += [f"## Per-class accuracy (%), {title}", "", per_class, ""]
    lines += ["## Where they ran", *environment_lines([run for group in groups.values() for run in group])]
    counted = {id(run) for group in groups.values() for run in group}
    superseded = [f"{run.config}/{run.version}: seed {run.seed} rerun later" for run in runs if id(run) not in counted]
    if skipped or superseded:
        lines += ["", "## Not counted", *(f"- {line}" for line in [*skipped, *superseded])]
    return lines


def results_markdown(
    logdir: Path | str,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    pairs: Sequence[tuple[str, str]] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> str:
    """The README's results as Markdown, read from the logs; writes nothing (``--markdown-only``).

    Args:
        logdir: ``results`` (the records: every shipped config gets a row) or the runs' save_dir.
        thresholds: As ``write_report``; they only decide which runs are readable here.
        pairs: ``(first, second)`` configs to compare; ``None``: ``DEFAULT_COMPARISONS`` that have runs.
        resamples: Bootstrap replicates per comparison.
        seed: Seed of the bootstrap: the same logs give the same intervals.

    Raises:
        ReportError: as ``write_report``, and if a pair names a config without runs.
    """
    source = Path(logdir)
    runs, _ = _reportable_runs(source, thresholds)
    groups = group_runs(runs)
    comparisons, notes = compare_configs(groups, default_pairs(groups) if pairs is None else pairs, resamples, seed)
    environment = environment_lines([run for group in groups.values() for run in group])
    # Published records list every shipped config: a row without a run says why.
    missing = records.missing_configs(source, list(groups)) if records.is_results_dir(source) else None
    lines = [*_readme_lines(groups, comparisons, notes, resamples, seed, missing), "", "Where they ran:", "",
             *environment]
    return "\n".join(lines) + "\n"


def details_markdown(logdir: Path | str, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> str:
    """Every column, per-class accuracy and where the runs ran, for ``docs/results.md``; writes nothing.

    Raises:
        ReportError: as ``write_report``.
    """
    runs, skipped = _reportable_runs(Path(logdir), thresholds)
    return "\n".join(_details_lines(group_runs(runs), runs, skipped, thresholds)) + "\n"


def attention_markdown(logdir: Path | str, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                       resamples: int = RESAMPLES, seed: int = 0) -> str:
    """The README's "Does attention help?" table and its notes (``--attention-only``); writes nothing.

    Raises:
        ReportError: as ``write_report``.
    """
    source = Path(logdir)
    runs, _ = _reportable_runs(source, thresholds)
    costs_dir = source if records.is_results_dir(source) else None
    return "\n".join(attention_lines(group_runs(runs), costs_dir, resamples, seed)) + "\n"


def write_report(
    logdir: Path | str,
    out: Path | str | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    pairs: Sequence[tuple[str, str]] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Path:
    """Build the report of every finished run under ``logdir``; returns the path of ``report.md``.

    ``pairs``, ``resamples`` and ``seed`` are ``results_markdown``'s.

    Raises:
        ReportError: if ``logdir`` holds no finished run, a threshold is not a fraction, or a pair
            names a config without runs.
    """
    logdir = Path(logdir)
    runs, skipped = _reportable_runs(logdir, thresholds)
    groups = group_runs(runs)
    comparisons, notes = compare_configs(groups, default_pairs(groups) if pairs is None else pairs, resamples, seed)
    out = Path(out) if out is not None else logdir / REPORT_RUN
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "val_acc_vs_epoch": accuracy_curves(
            _curves(groups, by_time=False), xlabel="epoch", title="Validation accuracy by epoch", thresholds=thresholds
        ),
        "val_acc_vs_time": accuracy_curves(
            _curves(groups, by_time=True), xlabel="training wall time (s)",
            title="Validation accuracy by wall time", thresholds=thresholds,
        ),
    }
    for name, figure in figures.items():
        figure.savefig(out / f"{name}.png", dpi=120)
    lines = [
        "# Run comparison",
        "",
        f"Runs under `{logdir}`.",
        "",
        *_readme_lines(groups, comparisons, notes, resamples, seed),
        "",
        "## Does attention help?",
        "",
        *attention_lines(groups, logdir if records.is_results_dir(logdir) else None, resamples, seed),
        "",
        "## Every column",
        "",
        *_details_lines(groups, runs, skipped, thresholds),
        "",
        "![validation accuracy by epoch](val_acc_vs_epoch.png)",
        "![validation accuracy by wall time](val_acc_vs_time.png)",
    ]
    report_md = out / "report.md"
    report_md.write_text("\n".join(lines) + "\n")
    summary = {"logdir": str(logdir), "thresholds": list(thresholds), "rows": summarize(groups, thresholds),
               "comparisons": [asdict(comparison) for comparison in comparisons], "not_compared": notes,
               "runs": [asdict(run) for run in runs], "skipped": skipped}
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    _log_to_tensorboard(logdir / REPORT_RUN, wide_table(groups, thresholds), figures)
    return report_md


def _log_to_tensorboard(run_dir: Path, table: str, figures: dict[str, Any]) -> None:
    """Replace the report's TensorBoard run, so it always shows the latest report only."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    for old in run_dir.glob("events.out.tfevents.*"):
        old.unlink()
    writer = SummaryWriter(str(run_dir))
    try:
        writer.add_text("report/table", table, global_step=0)
        for name, figure in figures.items():
            writer.add_figure(f"report/{name}", figure, global_step=0, close=False)
    finally:
        writer.close()


END_MARKER = "<!-- end of report.py's output -->"


def update_blocks(path: Path, source: Path, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> int:
    """Rewrite each generated block of ``path`` from ``source``; returns how many were rewritten.

    A block is ``<!-- python report.py SOURCE --markdown-only -->`` (``--details-only``, ``--attention-only``), a blank
    line, the output, then ``<!-- end of report.py's output -->``: the README and docs/results.md
    hold them, and a test checks they match the records.

    Raises:
        ReportError: if ``path`` has no block for ``source``, or a block has no end marker.
    """
    text = path.read_text()
    rewritten = 0
    for flag, build in (("--markdown-only", lambda: results_markdown(source, thresholds)),
                        ("--details-only", lambda: details_markdown(source, thresholds)),
                        ("--attention-only", lambda: attention_markdown(source, thresholds))):
        start = f"<!-- python report.py {source} {flag} -->\n\n"
        if start not in text:
            continue
        head, rest = text.split(start, 1)
        if END_MARKER not in rest:
            raise ReportError(f"{path}: the block '{start.strip()}' has no end line '{END_MARKER}'.")
        text = head + start + build() + END_MARKER + rest.split(END_MARKER, 1)[1]
        rewritten += 1
    if not rewritten:
        raise ReportError(f"{path} has no block '<!-- python report.py {source} --markdown-only -->' or "
                          "'... --details-only -->'.\nHINT: add one where the tables belong, with its end line.")
    path.write_text(text)
    return rewritten


def main(argv: Sequence[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", type=Path, help="results (the records) or the runs' save_dir, e.g. lightning_logs")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <logdir>/report)")
    parser.add_argument(
        "--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS),
        help="validation accuracies (fractions) for the time-to-accuracy columns",
    )
    printed = parser.add_mutually_exclusive_group()
    printed.add_argument(
        "--markdown-only", action="store_true",
        help="print only the README's results (test accuracy with intervals, paired comparisons, costs) "
             "and where the runs ran; write no files",
    )
    printed.add_argument(
        "--attention-only", action="store_true",
        help="print only the README's \"Does attention help?\" table (each kind on cnn_fast's recipe against "
             "none: paired interval, quiet cost, most faithful map); write no files",
    )
    printed.add_argument(
        "--details-only", action="store_true",
        help="print only docs/results.md's tables (every column, per-class accuracy, where the runs ran); "
             "write no files",
    )
    parser.add_argument(
        "--compare", nargs=2, action="append", metavar=("FIRST", "SECOND"),
        help="compare FIRST - SECOND on the same test images (repeatable); default: each attention config "
             "against its base, where both have runs",
    )
    printed.add_argument(
        "--record-to", type=Path, default=None, metavar="RESULTS",
        help="write a record (RESULTS/<config>/<run>.json) of every finished run under LOGDIR that was tested and "
             "predicted; no report",
    )
    printed.add_argument(
        "--update", type=Path, nargs="+", default=None, metavar="FILE",
        help="rewrite the generated blocks of these Markdown files (README.md docs/results.md) from LOGDIR",
    )
    parser.add_argument("--commit", default=None,
                        help="with --record-to: the commit the runs trained at, where their run.json has none")
    parser.add_argument("--run", action="append", default=None, metavar="NAME[/VERSION]",
                        help="with --record-to: record only this run, or every version of NAME (repeatable)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap replicates per comparison")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap")
    args = parser.parse_args(argv)
    if args.resamples < 1:
        parser.error(f"--resamples {args.resamples} must be at least 1 (e.g. 10000).")
    if args.run is not None and args.record_to is None:
        parser.error("--run picks the runs --record-to records; add --record-to RESULTS.")
    pairs = [tuple(pair) for pair in args.compare] if args.compare else None
    try:
        if args.update is not None:
            for path in args.update:
                print(f"{path}: {update_blocks(path, args.logdir, args.thresholds)} block(s) rewritten")
            return None
        if args.record_to is not None:
            written, skipped = record_runs(args.logdir, args.record_to, args.commit, args.run)
            for path in written:
                print(f"recorded {path}")
            for line in skipped:
                print(f"not recorded: {line}", file=sys.stderr)
            return None
        if args.attention_only:
            print(attention_markdown(args.logdir, args.thresholds, args.resamples, args.bootstrap_seed), end="")
            return None
        if args.details_only:
            print(details_markdown(args.logdir, args.thresholds), end="")
            return None
        if args.markdown_only:
            print(results_markdown(args.logdir, args.thresholds, pairs, args.resamples, args.bootstrap_seed), end="")
            return None
        path = write_report(args.logdir, args.out, args.thresholds, pairs, args.resamples, args.bootstrap_seed)
    except ReportError as error:
        parser.exit(2, f"error: {error}\n")
    print(path.read_text())
    print(f"Written to {path.parent}", file=sys.stderr)
    return path


if __name__ == "__main__":
    main()
