"""The report's Markdown: the README's compact table, the wide table of docs/results.md, per-class tables."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from reporting.runs import Run
from reporting.statistics import t_interval
from visualization import tables

if TYPE_CHECKING:
    from reporting.comparisons import Comparison

# What the source reported for each recipe (SPEC section 5): CIFAR-10 *test* accuracy in
# percent, as text (one was a range), after how many epochs. Keyed by config name; a
# fast recipe carries the number of the model it races. Configs not here show "—":
# the source published no number for them.
SPEC_RESULTS: dict[str, tuple[tuple[str, int], ...]] = {
    "mlp": (("50-55", 20),),
    "cnn": (("80.98", 20), ("84.68", 50)),
    "cnn_fast": (("80.98", 20), ("84.68", 50)),
    "cnn_se": (("85.38", 50),),
    "cnn_se_fast": (("85.38", 50),),
    "resnet_cbam": (("90.63", 50),),
    "vgg16": (("above the CNN", 10),),
}



def mean_and_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for a single value: no spread to show)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _cell(values: Sequence[float | None], fmt: Callable[[float], str]) -> str:
    """``mean ± std`` over the values present; ``-`` when none is."""
    present = [value for value in values if value is not None]
    if not present:
        return "-"
    mean, std = mean_and_std(present)
    return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _epochs(value: float) -> str:
    """An epoch count or its mean/spread to one decimal, ``.0`` dropped: ``18.5``, ``0.7``, ``20``."""
    return f"{value:.1f}".removesuffix(".0")


def _time_to_cell(runs: Sequence[Run], key: str) -> str:
    """Seconds and epochs to first reach an accuracy; ``(k/n)`` when only k of n seeds got there."""
    reached = [run.time_to[key] for run in runs if run.time_to.get(key) is not None]
    if not reached:
        return "-"
    seconds = _cell([s for s, _ in reached], lambda v: f"{v:.1f}")
    epochs = _cell([float(e) for _, e in reached], _epochs)
    cell = f"{seconds} s, ep {epochs}" if seconds != "-" else f"ep {epochs}"
    return cell if len(reached) == len(runs) else f"{cell} ({len(reached)}/{len(runs)})"


def summarize(groups: dict[str, list[Run]], thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """The numbers behind each table row (means, spreads, per-seed values), for report.json and tests."""
    rows = []
    for config, runs in groups.items():
        rows.append(
            {
                "config": config,
                "model": runs[0].model,
                "parameters": runs[0].parameters,
                "seeds": [run.seed for run in runs],
                "best_val_acc": [run.best_val_acc for run in runs],
                "best_epoch": [run.best_epoch for run in runs],
                "spec": [{"test_acc_percent": acc, "epochs": ep} for acc, ep in SPEC_RESULTS.get(config, ())],
                "test_acc": [run.test_acc for run in runs],
                "epochs": [run.epochs_trained for run in runs],
                "seconds_per_epoch": [run.seconds_per_epoch for run in runs],
                "time_to": {f"{t:g}": [run.time_to[f"{t:g}"] for run in runs] for t in thresholds},
                "inference_images_per_second": [run.inference_images_per_second for run in runs],
                "versions": [run.version for run in runs],
                "val_acc_per_class": [run.val_acc_per_class for run in runs],
                "test_acc_per_class": [run.test_acc_per_class for run in runs],
            }
        )
    return rows


def spec_cell(config: str) -> str:
    """The source's number(s) for this config, ``80.98 @ 20 ep``; ``—`` where it published none."""
    return "; ".join(f"{accuracy} @ {epochs} ep" for accuracy, epochs in SPEC_RESULTS.get(config, ())) or "—"


def _config_cells(config: str, runs: Sequence[Run]) -> list[str]:
    """The cells that name a row: config, model, parameters."""
    return [config, runs[0].model, f"{runs[0].parameters:,}"]


def _seeds_cell(runs: Sequence[Run]) -> str:
    return ", ".join("?" if run.seed is None else str(run.seed) for run in runs)


def measured_flip(groups: dict[str, list[Run]]) -> bool:
    """Whether any run measured flip TTA: its column and note appear only then."""
    return any(run.test_acc_flip is not None for runs in groups.values() for run in runs)


def wide_table(groups: dict[str, list[Run]], thresholds: Sequence[float]) -> str:
    """One row per config: mean ± std over its seeds."""
    header = ["config", "model", "parameters", "seeds", "best val/acc (%)", "best at epoch",
              "SPEC: source's test acc (%)", "test/acc (%)", "epochs", "s/epoch"]
    header += [f"to {100 * t:g} % val/acc" for t in thresholds]
    header += ["inference img/s"]
    # Flip test-time augmentation gets its own column, only where a run measured it.
    flip = measured_flip(groups)
    if flip:
        header.insert(header.index("test/acc (%)") + 1, "test/acc with flip TTA (%)")
    rows = []
    for config, runs in groups.items():
        rows.append([
            *_config_cells(config, runs),
            _seeds_cell(runs),
            _cell([run.best_val_acc for run in runs], _percent),
            _cell([float(run.best_epoch) for run in runs], _epochs),
            spec_cell(config),
            _cell([run.test_acc for run in runs], _percent),
            *([_cell([run.test_acc_flip for run in runs], _percent)] if flip else []),
            _cell([float(run.epochs_trained) for run in runs], _epochs),
            _cell([run.seconds_per_epoch for run in runs], lambda v: f"{v:.1f}"),
            *(_time_to_cell(runs, f"{t:g}") for t in thresholds),
            _cell([run.inference_images_per_second for run in runs], lambda v: f"{v:,.0f}"),
        ])
    return tables.markdown_table(header, rows)


def per_class_table(groups: dict[str, list[Run]], stage: str) -> str | None:
    """Per-class accuracy (%) per config, mean ± std over seeds; ``None`` when no run logged it.

    ``stage`` is ``val`` (at each run's best val/acc epoch) or ``test``.
    """
    by_config = {config: [getattr(run, f"{stage}_acc_per_class") for run in runs] for config, runs in groups.items()}
    classes = sorted({name for seeds in by_config.values() for per_class in seeds for name in per_class})
    if not classes:
        return None
    rows = [
        [config, *(_cell([per_class.get(name) for per_class in seeds], _percent) for name in classes)]
        for config, seeds in by_config.items()
        if any(seeds)
    ]
    return tables.markdown_table(["config", *classes], rows)


def environment_lines(runs: Sequence[Run]) -> list[str]:
    """Where the runs ran: speed columns compare only between runs on the same hardware."""
    seen: dict[str, list[str]] = {}
    for run in runs:
        hw, ver = run.hardware, run.versions
        chip = hw.get("gpu") or hw.get("cpu", "?")
        where = f"{chip} ({hw.get('device', '?')}, {hw.get('cpu_cores', '?')} CPU cores)"
        libs = ", ".join(f"{name} {ver[name]}" for name in ("python", "torch", "lightning", "torchvision") if name in ver)
        seen.setdefault(f"{where}; {libs}", []).append(f"{run.config}/{run.version}")
    lines = [f"- {key}: {', '.join(names)}" for key, names in seen.items()]
    if len(seen) > 1:
        lines.append("- Runs differ in hardware or versions: compare their speed columns with care.")
    return lines


# ---- the README's table: test accuracy, intervals, paired comparisons -----------------------


def test_accuracy_cell(runs: Sequence[Run]) -> str:
    """Mean test accuracy [its 95 % t-interval over seeds] and the number of seeds; one seed: no interval."""
    tested = [run.test_acc for run in runs if run.test_acc is not None]
    if not tested:
        return "-"
    mean, half = t_interval(tested)
    seeds = f"{len(tested)} seed{'s' if len(tested) > 1 else ''}"
    if half is None:
        cell = f"{_percent(mean)} ({seeds})"
    else:
        cell = f"{_percent(mean)} [{_percent(mean - half)}, {_percent(mean + half)}] ({seeds})"
    return cell if len(tested) == len(runs) else f"{cell}, {len(runs) - len(tested)} untested"


def _duration(seconds: float) -> str:
    """``31 s``, ``4.2 min``, ``3.1 h``: short enough to read at a glance."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _conditions_cell(runs: Sequence[Run]) -> str:
    """Device, threads, precision and load: what the training time depends on.

    Runs that differ only in their load share one entry, with the range of their loads.
    """
    loads: dict[str, list[float | None]] = {}
    for run in runs:
        hw = run.hardware
        device = hw.get("gpu") or f"CPU {hw.get('cpu_cores', '?')} cores"
        threads = [count for count in run.threads if count is not None]
        counted = " or ".join(map(str, threads)) if threads else "?"
        plural = "" if threads == [1] else "s"
        resumed = f" in {len(run.segments)} parts" if len(run.segments) > 1 else ""
        loads.setdefault(f"{device}, {counted} thread{plural}{resumed}, {run.precision or '?'}", []).append(
            run.load_average)
    return "; ".join(f"{conditions}, {_load_range(values)}" for conditions, values in loads.items())


def _load_range(values: Sequence[float | None]) -> str:
    """``load 2.1``, ``load 2.1-2.4``, with how many runs did not record theirs."""
    recorded = sorted(value for value in values if value is not None)  # as numbers: "10.2" sorts before "9.4"
    if not recorded:
        return "load not recorded"
    low, high = f"{recorded[0]:.1f}", f"{recorded[-1]:.1f}"
    missing = len(values) - len(recorded)
    return f"load {low}" + (f"-{high}" if high != low else "") + (f" ({missing} not recorded)" if missing else "")


def _mean_present(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not ``None``; ``None`` when none is."""
    present = [value for value in values if value is not None]
    return statistics.fmean(present) if present else None


def _mean_or_dash(values: Sequence[float | None], fmt: Callable[[float], str]) -> str:
    mean = _mean_present(values)
    return "-" if mean is None else fmt(mean)


def results_table(groups: dict[str, list[Run]], missing: dict[str, str] | None = None) -> str:
    """The README's table: what to run, what it reached on the test split, and what it took.

    ``missing``: shipped configs without runs, each with why; they get a row that says so.
    """
    header = ["command", "parameters", "epochs", "test acc (%) [95 % interval]", "training time",
              "where (device, threads, precision, load)", "source's test acc (%)"]
    # Flip test-time augmentation beside the plain number, never in its place; only where a run measured it.
    flip = measured_flip(groups)
    if flip:
        header.insert(header.index("test acc (%) [95 % interval]") + 1, "with flip TTA (%)")
    rows = []
    for config, runs in groups.items():
        rows.append([
            f"`{runs[0].recipe or config}`",
            f"{runs[0].parameters:,}",
            _epochs_cell(runs),
            test_accuracy_cell(runs),
            *([_mean_or_dash([run.test_acc_flip for run in runs], _percent)] if flip else []),
            _mean_or_dash([run.training_seconds for run in runs], _duration),
            _conditions_cell(runs),
            spec_cell(config),
        ])
    for config, reason in (missing or {}).items():
        rows.append([f"`{config}.yaml`", "-", "-", reason, *(["-"] if flip else []), "-", "-", spec_cell(config)])
    return tables.markdown_table(header, rows)


def _p_value(p: float, resamples: int) -> str:
    return f"< {1 / resamples:g}" if p == 0 else f"{p:.2g}"


def _ratio_cell(first: float | None, second: float | None, fmt: Callable[[float], str]) -> str:
    """``first vs second (×ratio)``; ``-`` when either is unknown."""
    if first is None or second is None or not second:
        return "-"
    return f"{fmt(first)} vs {fmt(second)} (×{first / second:.3f})"


def _interval_scope(comparison: Comparison) -> str:
    """What a row's interval can speak for, from its own seeds (``paired_bootstrap``'s ``about_configs``)."""
    first, second = (len(seeds) for seeds in comparison.seeds)
    if not comparison.bootstrap.about_configs:
        return f"these two runs only: {comparison.bootstrap.caveat}"
    if min(first, second) == 1:
        return "test images and seeds (the config with one run taken to vary as the other)"
    return "test images and seeds"


def _epochs_cell(runs: Sequence[Run]) -> str:
    return ", ".join(str(epochs) for epochs in sorted({run.epochs_trained for run in runs}))


def difference_cell(comparison: Comparison) -> str:
    """The paired difference in points and its interval: ``+1.05 [+0.48, +1.63]``."""
    boot = comparison.bootstrap
    return f"{100 * boot.difference:+.2f} [{100 * boot.low:+.2f}, {100 * boot.high:+.2f}]"


def mcnemar_cell(comparison: Comparison) -> str:
    """McNemar per shared seed: ``seed 0: 495 vs 390, p = 0.00047; ...``; empty with no seed in common."""
    return "; ".join(f"seed {s}: {a} vs {b}, p = {p:.2g}" for s, a, b, p in comparison.mcnemar)


def comparison_table(groups: dict[str, list[Run]], comparisons: Sequence[Comparison]) -> str:
    """One row per pair: the accuracy difference with its interval and p-values, and both configs' parameters.

    Speeds are left out: the runs' own seconds were measured beside other work; the quiet, side-by-side
    costs are benchmarks/attention_cost.py's (docs/performance.md).
    """
    header = ["comparison", "test acc difference (points) [95 % interval]", "p", "runs", "epochs",
              "the interval holds", "McNemar per seed", "parameters"]
    rows = []
    for c in comparisons:
        boot = c.bootstrap
        first, second = groups[c.first], groups[c.second]
        parameters = [_mean_present([run.parameters for run in runs]) for runs in (first, second)]
        rows.append([
            f"{c.first} − {c.second}",
            difference_cell(c),
            _p_value(boot.p_value, boot.resamples),
            f"{len(c.seeds[0])} vs {len(c.seeds[1])} on {boot.images:,} images",
            # The source's recipes differ in length (cnn_se.yaml 50 epochs, cnn.yaml 20): a difference
            # at unequal budget is not the attention block's alone, and the row must show it.
            " vs ".join(_epochs_cell(runs) for runs in (first, second)),
            _interval_scope(c),
            mcnemar_cell(c) or "no seed in common",
            _ratio_cell(*parameters, lambda v: f"{v:,.0f}"),
        ])
    return tables.markdown_table(header, rows)
