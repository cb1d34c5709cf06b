"""One model view: on pixel-permuted data, every picture, score and explain.py output is computed on what the model saw.

The reference here is the datamodule's own batch path (``on_after_batch_transfer``,
which training and validation use), not :class:`visualization.model_view.ModelView`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import explain
from callbacks import FaithfulnessScores, InterpretabilityDumps
from datamodules import CIFAR10DataModule
from lightning_modules.cnn import CNNClassifier
from tests.pictures_helpers import tensorboard_images, tiny_trainer
from visualization.faithfulness import faithfulness_scores
from visualization.pictures import render_pictures
from visualization.ranking import summary_rows

pytestmark = pytest.mark.xdist_group("test_model_view")

LAYERS = ["conv3"]
SCORING = {"steps": 2, "road_steps": 1}


def _permuted_data(data: Path) -> CIFAR10DataModule:
    # No augmentation: the reference batch below then goes through the datamodule's own hook unchanged.
    return CIFAR10DataModule(
        data_dir=str(data), val_size=12, batch_size=16, augment=False, permute_pixels=True, permutation_seed=7
    )


@pytest.fixture(scope="module")
def permuted_run(tiny_data, tmp_path_factory):
    """One epoch of the CNN on pixel-permuted data, with pictures and scores, and its probes as the model saw them."""
    L.seed_everything(0)
    model = CNNClassifier(num_classes=3)
    dumps = InterpretabilityDumps(LAYERS, every_n_epochs=1, methods=["guided_backprop"])
    scores = FaithfulnessScores(LAYERS, every_n_epochs=1, methods=["guided_backprop"], **SCORING)
    datamodule = _permuted_data(tiny_data)
    trainer = tiny_trainer(tmp_path_factory.mktemp("permuted"), [dumps, scores], max_epochs=1)
    trainer.fit(model, datamodule)
    probes = dumps.state_dict()  # what the checkpoint keeps: uint8 images, labels, class names
    seen, _ = datamodule.on_after_batch_transfer((probes["probe_images"].clone(), probes["probe_labels"]), 0)
    assert not torch.equal(seen, probes["probe_images"].float() / 255)  # the permutation does move pixels
    return trainer, model, probes, scores, seen


def test_scores_are_those_of_the_permuted_images(permuted_run):
    trainer, model, _, scores, seen = permuted_run
    assert torch.equal(scores.images, permuted_run[2]["probe_images"])  # one choice of probes for both
    expected = faithfulness_scores(model, seen, LAYERS, layer_root=model.net, methods=["guided_backprop"], **SCORING)
    accumulator = EventAccumulator(trainer.log_dir, size_guidance={"scalars": 0})
    accumulator.Reload()
    for tag, value in expected.means().items():
        assert accumulator.Scalars(tag)[-1].value == pytest.approx(value, abs=1e-5, nan_ok=True), tag


def test_pictures_are_those_of_the_permuted_images(permuted_run):
    trainer, model, probes, _, seen = permuted_run
    expected = render_pictures(model, seen, probes["probe_labels"], probes["classes"], LAYERS, layer_root=model.net,
                               methods=["guided_backprop"])
    logged = tensorboard_images(Path(trainer.log_dir))["gradcam/all_layers"][-1][1]
    assert np.array_equal(logged, expected["gradcam/all_layers"])


@pytest.mark.parametrize("kept", [True, False], ids=["kept view", "checkpoint before the view was kept"])
def test_explain_draws_and_scores_the_permuted_images(permuted_run, tmp_path, kept):
    trainer, model, probes, _, seen = permuted_run
    ckpt = next(Path(trainer.log_dir).rglob("*.ckpt"))
    if not kept:  # an older checkpoint: only Lightning's stored data settings say the pixels were permuted
        checkpoint = torch.load(ckpt, weights_only=True)
        state = checkpoint["callbacks"]["InterpretabilityDumps"]
        assert state.pop("pixel_permutation", None) is not None
        ckpt = tmp_path / "old.ckpt"
        torch.save(checkpoint, ckpt)
    out = tmp_path / "out"
    explain.explain(ckpt, out, None, LAYERS, "lightning_modules.CNNClassifier", faithfulness=True,
                    methods=["guided_backprop"])
    expected = render_pictures(model, seen, probes["probe_labels"], probes["classes"], LAYERS, layer_root=model.net,
                               methods=["guided_backprop"], feature_images=len(seen))
    for tag in ("gradcam/all_layers", "features/conv3"):
        drawn = np.asarray(Image.open(out / f"{tag.replace('/', '_')}.png").convert("RGB"))
        assert np.array_equal(drawn, expected[tag]), tag
    rows = summary_rows(faithfulness_scores(model, seen, LAYERS, layer_root=model.net, methods=["guided_backprop"]))
    with (out / "faithfulness.csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert [row["method"] for row in written] == [row["method"] for row in rows]
    for row, expected_row in zip(written, rows):
        assert float(row["deletion_auc"]) == pytest.approx(expected_row["deletion_auc"], abs=1e-5), row["method"]
