"""report.py --attention-only: each attention kind against none, from records, the cost file and the leaderboards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import report
from benchmarks import attention_cost
from reporting.attention import COST_FILE, FAITHFULNESS_DIR
from reporting.statistics import paired_bootstrap
from tests.test_report import _fake_run

IMAGES = 40
RESAMPLES = 400
# Per seed, which of the 40 test images each side got right. ECA: every image none got right and
# ten more, on both seeds; SE: the same count as none, on other images.
NONE_RIGHT = {0: [i < 20 for i in range(IMAGES)], 1: [i >= 20 for i in range(IMAGES)]}
ECA_RIGHT = {0: [i < 30 for i in range(IMAGES)], 1: [i >= 10 for i in range(IMAGES)]}
SE_RIGHT = {0: [i % 2 == 0 for i in range(IMAGES)], 1: [i % 2 == 1 for i in range(IMAGES)]}


def _leaderboard(method: str, layer: str, score: float, tied: int, images: str = "abc") -> dict:
    rows = [{"method": method, "layer": layer, "flagged": False, "rank": 1, "road_combined": score,
             "road_combined_low": score - 0.05, "road_combined_high": score + 0.05}]
    rows += [{"method": f"other{i}", "layer": "-", "flagged": False, "rank": 1, "road_combined": score - 0.01,
              "road_combined_low": score - 0.06, "road_combined_high": score + 0.04} for i in range(tied)]
    rows += [{"method": "random", "layer": "", "flagged": False, "rank": None, "road_combined": 0.0,
              "road_combined_low": -0.01, "road_combined_high": 0.01}]
    return {"images": 100, "images_sha256": images, "leaderboard": rows}


@pytest.fixture
def results(tmp_path) -> Path:
    """Records of none, SE and ECA on two seeds each (SE with more parameters), as attention_runs.sh leaves them."""
    logdir = tmp_path / "logs"
    for name, right, parameters in (("cnn_fast", NONE_RIGHT, 1000), ("cnn_fast_se", SE_RIGHT, 1100),
                                    ("cnn_fast_eca", ECA_RIGHT, 1003)):
        for seed in (0, 1):
            _fake_run(logdir, name, f"seed{seed}", seed, test_acc=sum(right[seed]) / IMAGES, right=right[seed],
                      parameters=parameters)
    results = tmp_path / "results"
    written, skipped = report.record_runs(logdir, results)
    assert len(written) == 6 and not skipped
    return results


def _rows(text: str) -> dict[str, dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].split("|")[1:-1]]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[2:]]
    return {row[0].strip("`"): dict(zip(header, row)) for row in rows}


def test_each_kind_is_paired_against_none_and_worded_by_its_interval(results):
    rows = _rows(report.attention_markdown(results, resamples=RESAMPLES))
    assert list(rows) == ["none", "se", "eca"]  # none first, then the registry's order; kinds without runs left out
    expected = paired_bootstrap(np.array([ECA_RIGHT[0], ECA_RIGHT[1]]), np.array([NONE_RIGHT[0], NONE_RIGHT[1]]),
                                RESAMPLES, 0)
    difference = f"{100 * expected.difference:+.2f} [{100 * expected.low:+.2f}, {100 * expected.high:+.2f}]"
    assert rows["eca"]["minus none (points) [95 % interval]"] == difference
    assert expected.low > 0 and rows["eca"]["verdict"] == "better than none"
    assert rows["se"]["minus none (points) [95 % interval]"].startswith("+0.00 [")
    assert rows["se"]["verdict"] == "no detectable difference"
    assert rows["none"]["verdict"] == "-"
    # McNemar per seed: ECA alone right on 10 images, none alone on 0.
    assert rows["eca"]["McNemar per seed (only it right vs only none right, p)"].startswith("seed 0: 10 vs 0, p = ")
    assert rows["se"]["parameters"] == "1,100 (+10.00 %)"
    assert rows["eca"]["test acc (%) [95 % interval]"].endswith("(2 seeds)")
    assert rows["eca"]["test acc (%) [95 % interval]"].startswith("75.00 [")


def test_one_seed_a_side_says_the_interval_is_about_these_runs_only(tmp_path):
    logdir = tmp_path / "logs"
    _fake_run(logdir, "cnn_fast", "seed0", 0, test_acc=0.5, right=NONE_RIGHT[0])
    _fake_run(logdir, "cnn_fast_eca", "seed0", 0, test_acc=0.75, right=ECA_RIGHT[0])
    report.record_runs(logdir, tmp_path / "results")
    rows = _rows(report.attention_markdown(tmp_path / "results"))
    assert rows["eca"]["verdict"] == "better than none (these two runs only: one seed a side)"


def test_costs_and_the_most_faithful_map_come_from_their_own_files(results, monkeypatch):
    text = report.attention_markdown(results)
    assert "not measured into `attention_cost.json` yet" in text
    assert "no leaderboard yet for cnn_fast, cnn_fast_se, cnn_fast_eca" in text
    assert _rows(text)["eca"]["training speed vs none"] == "-"

    speeds = {"none": (500.0, 2000.0), "se": (400.0, 1900.0), "eca": (450.0, 1000.0)}
    monkeypatch.setattr(attention_cost, "bare_step_seconds",
                        lambda build, *args: (speeds[build.keywords["attention"]][0], 0.0))
    monkeypatch.setattr(attention_cost, "inference_images_per_second",
                        lambda build, *args: speeds[build.keywords["attention"]][1])
    measured = attention_cost.measure(["cnn", "resnet18"], ["se", "eca"], "bf16-mixed", 1, 1, 0)
    attention_cost.write_record(results / COST_FILE, measured, "bf16-mixed", 1, 1)
    for name, board in (("cnn_fast", _leaderboard("layercam", "conv3", 0.31, 2)),
                        ("cnn_fast_eca", _leaderboard("guided_gradcam", "-", 0.42, 0)),
                        ("cnn_fast_se", _leaderboard("hirescam", "conv2", 0.25, 0, images="other"))):
        (results / name / FAITHFULNESS_DIR).mkdir(parents=True)
        (results / name / FAITHFULNESS_DIR / "seed0.json").write_text(json.dumps(board))
    text = report.attention_markdown(results)
    rows = _rows(text)
    assert rows["se"]["training speed vs none"] == "0.80x (400/s)"  # the CNN's, not the ResNet's
    assert rows["eca"]["inference speed vs none"] == "0.50x (1,000/s)"
    faithful = "most faithful map on 100 test images (ROAD combined [95 %])"
    assert rows["none"][faithful] == "layercam @ conv3 0.310 [0.260, 0.360]; 2 more share rank 1"
    assert rows["eca"][faithful] == "guided_gradcam 0.420 [0.370, 0.470]"
    assert "the leaderboards scored different images" in text  # SE's fingerprint differs
    assert "bf16-mixed" in text and "not measured" not in text and "no leaderboard yet" not in text


def test_attention_only_prints_the_block_the_readme_holds(results, capsys, tmp_path):
    assert report.main([str(results), "--attention-only"]) is None
    printed = capsys.readouterr().out
    assert printed == report.attention_markdown(results)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n<!-- python report.py {results} --attention-only -->\n\nold\n"
                      "<!-- end of report.py's output -->\ntail\n")
    assert report.update_blocks(readme, results) == 1
    assert readme.read_text() == (f"# x\n\n<!-- python report.py {results} --attention-only -->\n\n{printed}"
                                  "<!-- end of report.py's output -->\ntail\n")


def test_no_attention_runs_says_what_trains_them(tmp_path):
    logdir = tmp_path / "logs"
    _fake_run(logdir, "cnn", "version_0", 0, test_acc=0.5, right=NONE_RIGHT[0])
    assert "scripts/attention_runs.sh" in report.attention_markdown(logdir)
