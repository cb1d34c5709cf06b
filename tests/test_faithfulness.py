"""Faithfulness scores: right on models whose answer is known, and in TensorBoard for a real run."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import explain
from benchmarks.attribution_budgets import seed_correlation
from benchmarks.faithfulness_goals import balanced_images
from callbacks import FaithfulnessScores
from lightning_modules.cnn import CNN, CNNClassifier
from tests.pictures_helpers import tensorboard_images, tiny_datamodule, tiny_trainer
from common.user_input import UserInputError
from visualization.attributions import (
    IG_STEPS,
    SMOOTHGRAD_SAMPLES,
    attribution_mode,
    completeness_gap,
    integrated_gradients,
    normalize_per_image,
    occlusion,
    smoothgrad,
)
from visualization.cams import layer_cams
from visualization.faithfulness import METRICS, FaithfulnessResult, faithfulness_scores
from visualization.faithfulness_tables import leaderboard_table
from visualization.methods import CAM_METHODS, METHODS
from visualization.metrics import (
    auc,
    centre_map,
    deletion_insertion_curve,
    linear_impute,
    random_map,
    randomized_top_layers,
    rank_correlation,
    road_curve,
)
from visualization.ranking import bootstrap_interval, leaderboard_rows, shared_ranks

# One xdist worker takes the whole module (`--dist loadgroup` in pyproject.toml): its module-scoped fit is
# then trained once per test run, not once on each worker.
pytestmark = pytest.mark.xdist_group("test_faithfulness")

SIZE = 32
PATCH = (slice(0, 8), slice(0, 8))  # the top-left 8x8 pixels: 1/16 of the image
GAIN = 10.0  # logit per unit of the patch's mean brightness


class ReadsOnePatch(nn.Module):
    """Two classes; class 0's logit is GAIN * (mean of the top-left patch - 0.5), class 1's is 0.

    The 1x1 conv is the identity and the ReLU passes [0, 1] images unchanged:
    they are there for the attribution methods to hook.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patch = self.relu(self.conv(x))[:, :, PATCH[0], PATCH[1]].mean(dim=(1, 2, 3))
        return torch.stack([GAIN * (patch - 0.5), torch.zeros_like(patch)], dim=1)


class IgnoresTheInput(nn.Module):
    """A conv whose output is multiplied by 0 before a linear layer: the logits are the bias alone."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.conv(x)).mean(dim=(2, 3)) * 0)


def patch_images(count: int = 6) -> torch.Tensor:
    """Noise in [0, 0.6] with the patch at 0.9: class 0 with probability sigmoid(4)."""
    images = torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 0.6
    images[:, :, PATCH[0], PATCH[1]] = 0.9
    return images


def patch_map(count: int) -> torch.Tensor:
    maps = torch.zeros(count, SIZE, SIZE)
    maps[:, PATCH[0], PATCH[1]] = 1
    return maps


def far_corner_map(count: int) -> torch.Tensor:
    """Highest at the bottom-right corner, falling with the distance from it: the patch comes last."""
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    return (rows + cols).float().expand(count, -1, -1).clone()


def test_a_map_on_the_patch_scores_what_a_hand_count_gives_and_beats_the_baselines():
    model, images = ReadsOnePatch(), patch_images()
    n, sigmoid = len(images), lambda v: 1 / (1 + math.exp(-v))
    on, off = sigmoid(GAIN * (0.9 - 0.5)), sigmoid(GAIN * (0.0 - 0.5))  # patch at 0.9, or removed (fill 0)
    # 16 steps of 64 pixels: the first step removes exactly the patch, the rest changes nothing.
    deletion = deletion_insertion_curve(model, images, patch_map(n), steps=16, mode="delete", fill=0.0)
    insertion = deletion_insertion_curve(model, images, patch_map(n), steps=16, mode="insert", fill=0.0)
    torch.testing.assert_close(deletion, torch.tensor([on] + [off] * 16).expand(n, -1), rtol=0, atol=1e-6)
    torch.testing.assert_close(insertion, torch.tensor([off] + [on] * 16).expand(n, -1), rtol=0, atol=1e-6)

    maps = {
        "patch": patch_map(n),
        "random": random_map(n, (SIZE, SIZE), torch.Generator().manual_seed(0)),
        "centre": centre_map(n, (SIZE, SIZE)),
        "elsewhere": far_corner_map(n),
    }
    areas = {
        mode: {name: auc(deletion_insertion_curve(model, images, m, steps=16, mode=mode, fill=0.0))
               for name, m in maps.items()}
        for mode in ("delete", "insert")
    }
    for baseline in ("random", "centre", "elsewhere"):
        assert (areas["delete"]["patch"] < areas["delete"][baseline]).all(), areas
        assert (areas["insert"]["patch"] > areas["insert"][baseline]).all(), areas
    # A map away from the evidence does no better than chance: the patch goes last.
    assert (areas["delete"]["elsewhere"] > areas["delete"]["random"]).all(), areas
    assert (areas["insert"]["elsewhere"] < areas["insert"]["random"]).all(), areas


def test_every_method_on_the_patch_model_points_at_the_patch_end_to_end():
    model, images = ReadsOnePatch(), patch_images()
    result = faithfulness_scores(model, images, ["conv"], methods=METHODS, steps=8, road_steps=4, randomize_layers=0)
    maps = [name for name in result.scores["deletion_auc"] if name not in ("random", "centre")]
    assert maps == ["gradcam_conv", *(f"{m}_conv" for m in CAM_METHODS), "guided_backprop", "deconvolution",
                    "guided_gradcam", "integrated_gradients", "smoothgrad", "occlusion"]
    for method in maps:
        for baseline in ("random", "centre"):
            assert (result.scores["deletion_auc"][method] < result.scores["deletion_auc"][baseline]).all(), method
            assert (result.scores["insertion_auc"][method] > result.scores["insertion_auc"][baseline]).all(), method
            assert (result.scores["road_auc"][method] < result.scores["road_auc"][baseline]).all(), method
            assert (result.scores["road_combined"][method] > result.scores["road_combined"][baseline]).all(), method


def test_the_new_maps_of_the_patch_model_match_hand_counts():
    """Class 0's logit is GAIN * (mean of the patch's 3 x 64 values - 0.5): gradient GAIN / 192 on the patch, 0 off it."""
    model, images = ReadsOnePatch(), patch_images()
    n, slope = len(images), GAIN / 192
    on_patch = torch.zeros(n, 3, SIZE, SIZE)
    on_patch[:, :, PATCH[0], PATCH[1]] = slope
    # The logit is linear in the image: integrated gradients from black are the image times the gradient.
    torch.testing.assert_close(integrated_gradients(model, images, 0), images * on_patch)
    # Noise of 0.15 never takes the 0.9 patch below the ReLU's 0: every noisy gradient is the same.
    torch.testing.assert_close(smoothgrad(model, images, 0), on_patch)
    # Occlusion, 8-pixel squares every 4: hiding the square at (0, 0) removes the whole patch (a drop of
    # GAIN * 0.9); pixel (4, 4) lies in 4 squares that hide 64, 32, 32 and 16 of its pixels.
    hidden = occlusion(model, images, 0)
    torch.testing.assert_close(hidden[:, :, 0, 0], torch.full((n, 3), GAIN * 0.9))
    torch.testing.assert_close(hidden[:, :, 4, 4], torch.full((n, 3), GAIN * 0.9 * (64 + 32 + 32 + 16) / 64 / 4))
    assert (hidden[:, :, 12:, :] == 0).all() and (hidden[:, :, :, 12:] == 0).all()  # no square there touches the patch
    cams = {method: layer_cams(model, images, 0, {"conv": model.conv}, method)["conv"] for method in CAM_METHODS}
    for method, cam in cams.items():  # the patch is the brightest place of each channel: every variant peaks on all of it
        assert (cam[:, PATCH[0], PATCH[1]] == 1).all(), method
    # HiResCAM and LayerCAM weight each location by its own gradient: nothing off the patch.
    torch.testing.assert_close(cams["hirescam"], patch_map(n))
    torch.testing.assert_close(cams["layercam"], patch_map(n))
    # Score-CAM: every channel's mask keeps the patch whole, so all channels get the same weight: the
    # map is the summed activation, here the image's brightness.
    torch.testing.assert_close(cams["scorecam"], normalize_per_image(images.sum(dim=1)))


def test_road_least_relevant_first_keeps_the_patch_to_the_last_step():
    model, images = ReadsOnePatch(), patch_images()
    n, sigmoid = len(images), lambda v: 1 / (1 + math.exp(-v))
    on, off = sigmoid(GAIN * (0.9 - 0.5)), sigmoid(GAIN * (0.0 - 0.5))
    # 16 steps of 64 pixels: the 960 pixels off the patch go first, the patch with the last step (then all is fill 0).
    lerf = road_curve(model, images, patch_map(n), steps=16, fill=0.0, noise=0.0, order="lerf")
    torch.testing.assert_close(lerf, torch.tensor([on] * 16 + [off]).expand(n, -1), rtol=0, atol=1e-6)
    morf = road_curve(model, images, patch_map(n), steps=16, fill=0.0, noise=0.0, order="morf")
    assert (morf[:, 1:] < on - 0.1).all()  # the patch is gone (imputed from darker neighbours) from the first step
    with pytest.raises(ValueError, match="order='random'"):
        road_curve(model, images, patch_map(n), order="random")


def test_a_model_that_ignores_the_input_scores_as_unfaithful():
    model, images = IgnoresTheInput(), patch_images()
    probability = model(images).softmax(dim=1).max(dim=1).values
    result = faithfulness_scores(model, images, ["conv"], methods=METHODS, steps=4, road_steps=4)
    # Every curve of every map, baselines included, is flat at the clean probability: no map explains anything.
    for metric in ("deletion_auc", "insertion_auc", "road_auc", "road_lerf_auc"):
        for method, values in result.scores[metric].items():
            torch.testing.assert_close(values, probability, msg=f"{metric}/{method}")
    assert all((values == 0).all() for values in result.scores["road_combined"].values())
    # The model's maps are constant (zero gradients; Score-CAM: no mask changes the probability), so the
    # randomisation check has nothing to rank, and no method gets a rank.
    spearman = result.scores["randomization_spearman"]
    assert set(spearman) == {"gradcam_conv", *(f"{m}_conv" for m in CAM_METHODS), *METHODS[:6]}
    assert all(values.isnan().all() for values in spearman.values())
    assert sorted(result.flagged()) == sorted(spearman)
    assert all(row["rank"] is None for row in leaderboard_rows(result))


def test_road_imputation_continues_a_linear_ramp_into_a_hole():
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    ramp = torch.stack([0.02 * rows + 0.01 * cols, 0.5 - 0.01 * rows, 0.03 * cols])[None]
    hole = torch.zeros(1, 16, 16, dtype=torch.bool)
    hole[0, 4:12, 3:10] = True
    # The weighted mean of the 8 neighbours of a linear function is its value: the ramp solves the system.
    imputed = linear_impute(ramp + 7 * hole[:, None], hole, fill=0.0)
    torch.testing.assert_close(imputed, ramp, rtol=0, atol=2e-3)
    # With nothing left to go on, the pixels tend to the fill.
    everything = linear_impute(ramp, torch.ones_like(hole), fill=torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(everything, torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1).expand_as(ramp))
    noisy = linear_impute(ramp, hole, noise=0.01, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy[:, :, ~hole[0]], ramp[:, :, ~hole[0]])
    assert 0.005 < (noisy - ramp)[:, :, hole[0]].std() < 0.02


def test_rank_correlation_matches_hand_counts():
    base = torch.tensor([[1.0, 2, 3, 4, 5]])
    swapped = torch.tensor([[2.0, 1, 4, 3, 5]])  # d^2 sums to 4: 1 - 6 * 4 / (5 * 24) = 0.8
    maps_a = torch.cat([base, base, base, base])
    maps_b = torch.cat([base.exp(), -base, swapped, torch.ones_like(base)])
    rho = rank_correlation(maps_a, maps_b)
    torch.testing.assert_close(rho[:3], torch.tensor([1.0, -1.0, 0.8]))
    assert rho[3].isnan()


def test_bootstrap_interval_of_a_hand_counted_case():
    assert bootstrap_interval(torch.full((10,), 0.25)) == pytest.approx((0.25, 0.25))
    # Means of two draws from {0, 1}: 0, 0.5 or 1 with chances 1/4, 1/2, 1/4; the 2.5 % and 97.5 % quantiles are 0 and 1.
    assert bootstrap_interval(torch.tensor([0.0, 1.0])) == (0.0, 1.0)
    assert bootstrap_interval(torch.tensor([0.0, 1.0]), confidence=0.4) == (0.5, 0.5)
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_interval(torch.tensor([1.0, math.nan]))


def test_overlapping_intervals_share_a_rank_and_separated_ones_do_not():
    # Higher is better. a and b overlap; c overlaps b only (a chain: still b's group); d stands apart; e ties d.
    intervals = {"a": (0.9, 0.85, 0.95), "b": (0.8, 0.7, 0.86), "c": (0.65, 0.6, 0.71), "d": (0.3, 0.2, 0.4),
                 "e": (0.3, 0.3, 0.3)}
    assert shared_ranks(list(intervals.values()), higher_is_better=True) == [1, 1, 1, 4, 4]
    # Lower is better: the order turns, and a missing interval (NaN) is the mean alone.
    lower_is_better = [(0.2, 0.1, 0.3), (0.5, math.nan, math.nan), (0.45, 0.4, 0.6)]
    assert shared_ranks(lower_is_better, higher_is_better=False) == [1, 2, 2]


def test_the_leaderboard_ranks_on_intervals_and_never_ranks_a_method_that_fails_randomisation():
    def scores(*means: float) -> torch.Tensor:  # 8 images spread by +-0.01 around the mean
        return torch.tensor(means).repeat_interleave(8) + torch.linspace(-0.01, 0.01, 8).repeat(len(means))

    combined = {"edges": scores(0.9), "gradcam_conv3": scores(0.5), "layercam_conv3": scores(0.505),
                "occlusion": scores(0.2), "random": scores(0.0), "centre": scores(0.1)}
    result = FaithfulnessResult(scores={
        "road_combined": combined,
        "deletion_auc": {name: 1 - values for name, values in combined.items()},
        "randomization_spearman": {"edges": scores(0.9), "gradcam_conv3": scores(0.1), "layercam_conv3": scores(0.2),
                                   "occlusion": scores(0.0)},
    })
    rows = leaderboard_rows(result)
    assert [(r["method"], r["layer"], r["rank"], r["flagged"]) for r in rows] == [
        ("layercam", "conv3", 1, False), ("gradcam", "conv3", 1, False), ("occlusion", "", 3, False),
        ("edges", "", None, True), ("centre", "", None, False), ("random", "", None, False),
    ]  # edges has the best scores, but its map survives randomisation (0.9 >= 0.5): flagged, no rank
    assert [r["deletion_auc_rank"] for r in rows[:3]] == [1, 1, 3]
    assert rows[1]["road_combined"] == pytest.approx(0.5) and 0.49 < rows[1]["road_combined_low"] < 0.5
    table = leaderboard_table(rows)
    assert table.splitlines()[0] == (
        "| rank | method | layer | road_combined | deletion_auc | randomization_spearman | flagged |")
    assert "| 3 | occlusion | - | 0.200 [" in table and "| - | edges | - | 0.900 [" in table
    assert "| baseline | centre | - | 0.100 [" in table


def test_randomizing_the_top_layer_changes_only_it_and_restores_it():
    torch.manual_seed(0)
    net = CNN(3, 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = list(net.parameters())
    rng = torch.get_rng_state()
    with randomized_top_layers(net, 1, seed=3) as names:
        inside = {k: v.clone() for k, v in net.state_dict().items()}
    with randomized_top_layers(net, 2, seed=3) as two:
        again = net.classifier[4].weight.clone()
    assert names == ["classifier.4"] and two == ["classifier.4", "classifier.1"]
    changed = {k for k in before if not torch.equal(before[k], inside[k])}
    assert changed == {"classifier.4.weight", "classifier.4.bias"}
    assert torch.equal(again, inside["classifier.4.weight"])  # the same seed, the same weights
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p is q for p, q in zip(params, net.parameters())) and torch.equal(rng, torch.get_rng_state())


@pytest.mark.parametrize("norm", [nn.BatchNorm1d(4), nn.SyncBatchNorm(4), nn.InstanceNorm1d(4, affine=True),
                                  nn.GroupNorm(2, 4), nn.LayerNorm(4)], ids=lambda m: type(m).__name__)
def test_randomizing_skips_normalisation_layers(norm):
    """The cascading test re-draws learned transforms; a norm layer on top is passed over, whatever its class."""
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), norm)
    with randomized_top_layers(net, 2, seed=0) as names:
        pass
    assert names == ["1", "0"]


def test_randomizing_layers_seeds_no_global_generator(monkeypatch):
    """``torch.manual_seed`` reseeds every CUDA generator as well; scoring must leave them to training."""
    seeded = []
    monkeypatch.setattr(torch, "manual_seed", lambda seed: seeded.append(("torch", seed)))
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(("cuda", seed)))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: seeded.append(("cuda", seed)))
    net = CNN(3, 10)
    rng = torch.get_rng_state()
    with randomized_top_layers(net, 1, seed=3):
        first = net.classifier[4].weight.clone()
    with randomized_top_layers(net, 1, seed=3):
        again = net.classifier[4].weight.clone()
    assert seeded == [] and torch.equal(rng, torch.get_rng_state())
    # PyTorch's default init of the layer under that seed, as torch.manual_seed(3) gave before.
    expected = torch.nn.Linear(512, 10)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(3)
        expected.reset_parameters()
    assert torch.equal(first, expected.weight) and torch.equal(again, first)


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.fixture(scope="module")
def scored(tiny_data, tmp_path_factory):
    """Two epochs of the CNN on 3 classes, scored every epoch, and the same run without the callback.

    The curves are sampled at 2 steps (ROAD at 1), not the default 8 (4): the same code and tags at a third of the
    forward passes; the recomputation below uses the same steps.
    """
    runs = {}
    scores = FaithfulnessScores(["conv1", "conv3"], every_n_epochs=1, steps=2, road_steps=1)
    for name, callbacks in {"scored": [scores], "plain": []}.items():
        L.seed_everything(0)
        model = CNNClassifier(num_classes=3)
        trainer = tiny_trainer(tmp_path_factory.mktemp(name), callbacks)
        trainer.fit(model, tiny_datamodule(tiny_data))
        runs[name] = (trainer, model)
    return runs


def test_scores_reach_tensorboard_each_epoch_and_match_a_recomputation(scored):
    trainer, model = scored["scored"]
    (callback,) = [c for c in trainer.callbacks if isinstance(c, FaithfulnessScores)]
    scalars = _scalars(Path(trainer.log_dir))
    methods = ["gradcam_conv1", "gradcam_conv3", "guided_backprop", "deconvolution", "guided_gradcam"]
    expected = {f"faithfulness/{metric}/{method}" for metric in METRICS for method in methods}
    expected |= {f"faithfulness/{metric}/{baseline}" for metric in METRICS[:-1] for baseline in ("random", "centre")}
    assert {tag for tag in scalars if tag.startswith("faithfulness/")} == expected
    assert all([step for step, _ in scalars[tag]] == [4, 8] for tag in expected)
    assert [step for step, _ in tensorboard_images(Path(trainer.log_dir))["faithfulness/curves"]] == [4, 8]

    # The images: the first validation image of each class, kept for a resume.
    assert callback.images.shape == (3, 3, 32, 32) and callback.images.dtype == torch.uint8
    resumed = FaithfulnessScores(["conv1", "conv3"])
    resumed.load_state_dict(callback.state_dict())
    assert torch.equal(resumed.images, callback.images)
    # The last logged values are the scores of the final model on those images.
    again = faithfulness_scores(
        model, callback.images.float().div(255), ["conv1", "conv3"], layer_root=model.net, steps=2, road_steps=1
    )
    for tag in expected:
        assert scalars[tag][-1][1] == pytest.approx(again.means()[tag], abs=1e-5, nan_ok=True), tag
    # At the end of fit, the leaderboard of those scores in the text tab, once.
    accumulator = EventAccumulator(trainer.log_dir, size_guidance={"tensors": 0})
    accumulator.Reload()
    (event,) = accumulator.Tensors("faithfulness/leaderboard/text_summary")
    assert event.step == 8
    assert event.tensor_proto.string_val[0].decode() == leaderboard_table(leaderboard_rows(again))


def test_scoring_leaves_training_untouched(scored):
    scored_model, plain_model = scored["scored"][1], scored["plain"][1]
    for (name, a), b in zip(scored_model.state_dict().items(), plain_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert scored_model.training == plain_model.training


def test_integrated_gradients_and_smoothgrad_meet_their_budgets_on_the_trained_cnn(scored):
    """IG_STEPS keeps the completeness gap under 1 %, reported beside the scores; SMOOTHGRAD_SAMPLES keeps two seeds'
    maps correlated at 0.95 or more."""
    trainer, model = scored["scored"]
    (callback,) = [c for c in trainer.callbacks if isinstance(c, FaithfulnessScores)]
    x = callback.images.float().div(255)
    result = faithfulness_scores(model, x, ["conv3"], layer_root=model.net, methods=["integrated_gradients"],
                                 steps=2, road_steps=0, randomize_layers=0)
    gap = result.scores["completeness_gap"]["integrated_gradients"]
    assert gap.max() < 0.01, gap
    # The gap is Captum's convergence delta relative to the logit's change from the black image. At IG_STEPS
    # points for every image some image misses 1 % on this model: the doubling per image is what gets it under.
    with attribution_mode(model), torch.no_grad():
        targets = model(x).argmax(dim=1)
        change = model(x).gather(1, targets[:, None])[:, 0] - model(torch.zeros_like(x)).gather(1, targets[:, None])[:, 0]
    with attribution_mode(model):
        fixed, delta = IntegratedGradients(model).attribute(
            x.clone(), target=targets, n_steps=IG_STEPS, return_convergence_delta=True)
    fixed_gap = completeness_gap(model, x, targets, fixed)
    torch.testing.assert_close(fixed_gap, delta.abs().float() / change.abs(), rtol=1e-4, atol=1e-6)
    assert fixed_gap.max() > 0.01, fixed_gap
    assert set(result.scores["completeness_gap"]) == {"integrated_gradients"}  # the one method that promises it
    table = leaderboard_table(leaderboard_rows(result))
    header = [cell.strip() for cell in table.splitlines()[0].split("|")[1:-1]]
    ig_row = next(line for line in table.splitlines() if "| integrated_gradients |" in line)
    cell = [c.strip() for c in ig_row.split("|")[1:-1]][header.index("completeness_gap")]
    assert cell.startswith(f"{float(gap.mean()):.3f} [")
    assert seed_correlation(model, x, targets, SMOOTHGRAD_SAMPLES).min() >= 0.95


def test_explain_writes_the_faithfulness_table_and_refuses_one_image(scored, tmp_path, capsys):
    trainer = scored["scored"][0]
    ckpt = next(Path(trainer.log_dir).rglob("*.ckpt"))
    images = tmp_path / "images"
    for i, name in enumerate(["bird", "cat", "ship", "bird"]):
        (images / name).mkdir(parents=True, exist_ok=True)
        pixels = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(i)).mul(255).byte().numpy()
        Image.fromarray(pixels).save(images / name / f"{i}.png")
    out = tmp_path / "out"
    written = explain.explain(
        ckpt, out, images, ["conv1", "conv3"], "lightning_modules.CNNClassifier", faithfulness=True,
        methods=["layercam"],
    )
    assert {out / "faithfulness.md", out / "faithfulness.csv", out / "leaderboard.csv",
            out / "faithfulness_curves.png"} <= set(written)
    with (out / "faithfulness.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert list(rows) == [
        "gradcam_conv1", "gradcam_conv3", "layercam_conv1", "layercam_conv3", "random", "centre"
    ]
    with (out / "leaderboard.csv").open() as handle:
        ranked = [(row["method"], row["layer"]) for row in csv.DictReader(handle)]
    assert sorted(ranked) == sorted([("gradcam", "conv1"), ("gradcam", "conv3"), ("layercam", "conv1"),
                                     ("layercam", "conv3"), ("random", ""), ("centre", "")])
    printed = capsys.readouterr().out
    assert printed.startswith("| rank | method | layer | road_combined |")
    assert printed.strip() in (out / "faithfulness.md").read_text()
    # The table holds the scores of these images: the library's, computed here on the files read with PIL
    # (in explain's sorted order), and their bootstrap interval.
    model = CNNClassifier.load_from_checkpoint(ckpt, weights_only=True).eval()
    files = sorted(images.rglob("*.png"))
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1) for f in files])
    result = faithfulness_scores(
        model, pixels.float().div(255), ["conv1", "conv3"], layer_root=model.net, methods=["layercam"]
    )
    for metric in ("deletion_auc", "insertion_auc"):
        values = result.scores[metric]["gradcam_conv3"]
        low, high = bootstrap_interval(values)
        in_table = [float(rows["gradcam_conv3"][f"{metric}{end}"]) for end in ("", "_low", "_high")]
        assert in_table == pytest.approx([float(values.mean()), low, high], rel=1e-5), metric
    assert "| gradcam_conv3 |" in (out / "faithfulness.md").read_text()
    # faithfulness.json, what a published run keeps: the leaderboard in its order, and which images it scored.
    kept = json.loads((out / "faithfulness.json").read_text())
    assert [(row["method"], row["layer"] or "") for row in kept["leaderboard"]] == ranked
    assert kept["images"] == 4 and kept["images_sha256"] == hashlib.sha256(
        "\n".join(f.relative_to(images).as_posix() for f in files).encode()).hexdigest()

    # --per-class 1: the first image (by name) of each class folder; --no-pictures: the scores alone.
    assert explain.main([
        "--ckpt", str(ckpt), "--images", str(images), "--per-class", "1", "--no-pictures", "--out",
        str(tmp_path / "sample"), "--layers", "conv3", "--model-class", "lightning_modules.CNNClassifier",
        "--faithfulness", "--methods", "layercam",
    ]) == 0
    sample = json.loads((tmp_path / "sample" / "faithfulness.json").read_text())
    assert sample["images"] == 3 and sample["images_sha256"] == hashlib.sha256(
        b"bird/0.png\ncat/1.png\nship/2.png").hexdigest()
    assert sorted(path.name for path in (tmp_path / "sample").glob("*.png")) == ["faithfulness_curves.png"]

    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    (images / "cat" / "1.png").rename(one / "cat" / "1.png")
    with pytest.raises(SystemExit) as exit_info:
        explain.main([
            "--ckpt", str(ckpt), "--images", str(one), "--out", str(tmp_path / "out1"), "--layers", "conv3",
            "--model-class", "lightning_modules.CNNClassifier", "--faithfulness",
        ])
    assert exit_info.value.code == 2
    assert "--faithfulness needs at least 2 images" in capsys.readouterr().err
    assert not (tmp_path / "out1").exists()  # a failed start writes nothing
    with pytest.raises(SystemExit) as exit_info:
        explain.main([
            "--ckpt", str(ckpt), "--images", str(images), "--out", str(tmp_path / "out2"), "--layers", "conv3",
            "--model-class", "lightning_modules.CNNClassifier", "--faithfulness", "--methods", "scorecam", "gradcam++",
        ])
    assert exit_info.value.code == 2
    assert "Unknown methods ['gradcam++']" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_the_benchmark_takes_every_class_from_a_split_stored_by_class(tiny_data):
    """The validation split keeps the class folders' order, so its first images are one class."""
    datamodule = tiny_datamodule(tiny_data)
    datamodule.setup("fit")
    val = datamodule.val_set
    assert val.labels[:4].unique().numel() == 1  # what taking the first images would score

    pixels, labels = balanced_images(val, len(datamodule.classes), 7)
    assert labels.bincount(minlength=3).tolist() == [2, 2, 2]
    first_of_each = [int((val.labels == c).nonzero()[0]) for c in range(3)]
    assert torch.equal(pixels[::2], val.images[first_of_each])
    with pytest.raises(UserInputError, match="--images 2 is fewer than the 3 classes"):
        balanced_images(val, 3, 2)
