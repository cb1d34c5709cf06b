"""The README's "Does attention help?": every attention kind on cnn_fast's recipe against none, from files in results/.

Three kinds of file answer it, each written by the command that measured it:

- the runs' records, ``results/cnn_fast/seed<s>.json`` and ``results/cnn_fast_<kind>/seed<s>.json``
  (``scripts/attention_runs.sh``): test accuracy, and the paired comparison against none;
- ``results/attention_cost.json`` (``python -m benchmarks.attention_cost --families cnn --record ...``):
  parameters and quiet training and inference images/s, side by side;
- ``results/<name>/faithfulness/seed<s>.json`` (``explain.py --faithfulness --per-class 10`` on the test
  split, copied by the same script): the leaderboard of explanation methods on the same 100 test images.

A kind without runs is left out; a missing cost or leaderboard shows as ``-``, with a line saying what to run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_modules.attention import ATTENTION, NONE
from reporting.comparisons import Comparison, compare_configs
from reporting.runs import Run
from reporting.statistics import RESAMPLES
from reporting.tables import difference_cell, mcnemar_cell, test_accuracy_cell
from visualization import tables

__all__ = ["BASE_RUN", "COST_FILE", "FAITHFULNESS_DIR", "attention_lines", "attention_pairs", "run_name"]

BASE_RUN = "cnn_fast"  # the recipe every kind is trained with, and the name of its runs without attention
COST_FILE = "attention_cost.json"
FAITHFULNESS_DIR = "faithfulness"
COST_NETWORK = "cnn"  # benchmarks.attention_cost's name for cnn_fast's network


def run_name(kind: str) -> str:
    """The name (logger name, records folder) of the runs of ``kind`` on ``BASE_RUN``'s recipe."""
    return BASE_RUN if kind == NONE else f"{BASE_RUN}_{kind}"


def attention_pairs(groups: dict[str, list[Run]]) -> list[tuple[str, str]]:
    """Each kind with runs, against none: the pairs of the attention table."""
    if BASE_RUN not in groups:
        return []
    return [(run_name(kind), BASE_RUN) for kind in ATTENTION if run_name(kind) in groups]


def _verdict(comparison: Comparison) -> str:
    """What the interval allows one to say, in words."""
    boot = comparison.bootstrap
    if boot.low > 0:
        words = "better than none"
    elif boot.high < 0:
        words = "worse than none"
    else:
        words = "no detectable difference"
    return words if boot.about_configs else f"{words} (these two runs only: one seed a side)"


def read_cost(results_dir: Path) -> dict[str, Any] | None:
    path = results_dir / COST_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_leaderboards(results_dir: Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each run name's leaderboard of its lowest seed that has one (``faithfulness/seed<s>.json``)."""
    found = {}
    for name in names:
        files = sorted((results_dir / name / FAITHFULNESS_DIR).glob("*.json"))
        if files:
            found[name] = {"file": f"{name}/{FAITHFULNESS_DIR}/{files[0].name}", **json.loads(files[0].read_text())}
    return found


def _most_faithful(leaderboard: dict[str, Any] | None) -> str:
    """The leaderboard's first method and layer with its ROAD combined score [95 %], and how many share its rank."""
    if not leaderboard:
        return "-"
    rows = [row for row in leaderboard["leaderboard"] if row.get("rank") is not None]
    if not rows:
        return "none ranked"
    top = rows[0]
    where = top["method"] if top["layer"] in (None, "-", "") else f"{top['method']} @ {top['layer']}"
    score = (f"{top['road_combined']:.3f} [{top['road_combined_low']:.3f}, {top['road_combined_high']:.3f}]"
             if top.get("road_combined") is not None else "")
    tied = sum(row["rank"] == top["rank"] for row in rows) - 1
    return f"{where} {score}" + (f"; {tied} more share rank {top['rank']}" if tied else "")


def _speed_cell(cost_rows: dict[str, dict[str, Any]], kind: str, key: str) -> str:
    if kind not in cost_rows or NONE not in cost_rows:
        return "-"
    value, none = cost_rows[kind][key], cost_rows[NONE][key]
    return f"{value / none:.2f}x ({value:,.0f}/s)"


def _parameters_cell(runs: Sequence[Run], base: Sequence[Run]) -> str:
    parameters, none = runs[0].parameters, base[0].parameters
    if parameters is None or none is None:
        return "-"
    return f"{parameters:,}" if runs is base else f"{parameters:,} ({100 * (parameters / none - 1):+.2f} %)"


def attention_lines(groups: dict[str, list[Run]], results_dir: Path | None, resamples: int = RESAMPLES,
                    seed: int = 0) -> list[str]:
    """The table (one row per kind with runs, none first) and the lines that say how it was measured.

    ``results_dir``: where the cost and the leaderboards are; ``None`` (log folders): runs only.
    """
    pairs = attention_pairs(groups)
    if not pairs:
        return [f"No runs of `{BASE_RUN}` and an attention kind yet: `scripts/attention_runs.sh` trains them."]
    comparisons, notes = compare_configs(groups, pairs, resamples, seed)
    by_first = {c.first: c for c in comparisons}
    cost = read_cost(results_dir) if results_dir is not None else None
    cost_rows = {row["attention"]: row for row in (cost or {}).get("rows", []) if row["network"] == COST_NETWORK}
    names = [BASE_RUN, *(first for first, _ in pairs)]
    leaderboards = read_leaderboards(results_dir, names) if results_dir is not None else {}
    header = ["attention", "parameters", "test acc (%) [95 % interval]", "minus none (points) [95 % interval]",
              "verdict", "McNemar per seed (only it right vs only none right, p)", "training speed vs none",
              "inference speed vs none", "most faithful map on 100 test images (ROAD combined [95 %])"]
    rows = []
    for name in names:
        kind = NONE if name == BASE_RUN else name.removeprefix(f"{BASE_RUN}_")
        comparison = by_first.get(name)
        difference = verdict = mcnemar = "-"
        if comparison is not None:
            difference, verdict = difference_cell(comparison), _verdict(comparison)
            mcnemar = mcnemar_cell(comparison) or "-"
        rows.append([f"`{kind}`", _parameters_cell(groups[name], groups[BASE_RUN]), test_accuracy_cell(groups[name]),
                     difference, verdict, mcnemar,
                     _speed_cell(cost_rows, kind, "train_images_per_second"),
                     _speed_cell(cost_rows, kind, "inference_images_per_second"),
                     _most_faithful(leaderboards.get(name))])
    lines = [tables.markdown_table(header, rows), "", _method_note(resamples, seed)]
    if cost is not None:
        load = cost.get("load_average")
        lines += ["", f"Speeds: `{cost['command']}` on {cost['machine'].get('cpu', '?')} "
                  f"({cost['threads']} threads, {cost['precision']}; 1-minute load {load:.1f} at the end, its own threads "
                  "included), "
                  f"{cost['measured_at'][:10]}, commit {str(cost.get('commit'))[:7]}: the bare training step and "
                  "eval-mode inference on random images, best of its rounds, each kind beside none in one process."]
    else:
        lines += ["", f"Speeds: not measured into `{COST_FILE}` yet "
                  f"(`python -m benchmarks.attention_cost --families cnn --record results/{COST_FILE}`, quiet)."]
    fingerprints = {board.get("images_sha256") for board in leaderboards.values()}
    if leaderboards:
        board = next(iter(leaderboards.values()))
        files = ", ".join(f"`{found['file']}`" for found in leaderboards.values())
        lines += ["", f"Most faithful map: the first row of `explain.py --faithfulness` on the best checkpoint of "
                  f"each kind's first seed, over {board['images']} test images (the first 10 of each class): ranked "
                  "by ROAD combined, methods that fail the randomisation check left out; overlapping intervals "
                  f"share a rank. Files: {files}."]
        if len(fingerprints) > 1:
            notes.append("the leaderboards scored different images: their most faithful maps do not compare")
    missing = [name for name in names if name not in leaderboards]
    if missing and results_dir is not None:
        notes.append(f"no leaderboard yet for {', '.join(missing)} (scripts/attention_runs.sh writes them)")
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return lines


def _method_note(resamples: int, seed: int) -> str:
    return (f"Each kind on `{BASE_RUN}.yaml`'s recipe (`--model.attention KIND`, 20 epochs, bf16), against the "
            "same recipe without attention on the same test images. Minus none: the paired bootstrap over "
            f"images and seeds ({resamples:,} replicates, seed {seed}); verdict: whether that interval excludes "
            "zero. McNemar: per seed both sides ran, the images only one of the two got right, and the exact "
            "two-sided p-value. Parameters: the whole network, and its change against none.")
