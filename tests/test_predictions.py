"""What users act on: predict's CSV, per-class accuracy, the confusion matrix and the gallery of mistakes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import cli
from callbacks import MistakeGallery
from datamodules import CIFAR10DataModule
from lightning_modules import CNNClassifier
from tests.conftest import NO_PICTURES, REPO, pictures_off, write_image_folder
from tests.pictures_helpers import grid_cells, tensorboard_images, tiny_trainer
from tests.test_cli import tiny_args
from visualization.attributions import resolve_layers
from visualization.cams import gradcam
from visualization.grids import heatmap_overlay
from visualization.pictures import most_confident_mistakes

# One xdist worker takes the whole module (`--dist loadgroup` in pyproject.toml): its module-scoped fit is
# then trained once per test run, not once on each worker.
pytestmark = pytest.mark.xdist_group("test_predictions")

CNN = REPO / "configs" / "cnn.yaml"
CNN_FAST = REPO / "configs" / "cnn_fast.yaml"
CLASSES = ["bird", "cat", "ship"]
# One epoch of 4 steps at a high rate: a model that is wrong often enough for a confusion matrix with off-diagonal
# counts and a gallery to choose from.
FP32 = ["--trainer.precision", "32-true"]
SHORT_FIT = ["--trainer.max_epochs", 1, "--data.batch_size", 16, "--model.optimizer.lr", 0.01]


@pytest.fixture(scope="module")
def fitted(tiny_data, tmp_path_factory) -> Path:
    """The last checkpoint of a one-epoch CNN run on the tiny data (its pictures are not read: none drawn)."""
    root = tmp_path_factory.mktemp("fitted")
    fit = cli.main(["fit", *map(str, tiny_args(CNN, tiny_data)), *map(str, SHORT_FIT), *NO_PICTURES,
                    "--trainer.default_root_dir", str(root)])
    return Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def pixels_of(path: Path, size: int = 32) -> torch.Tensor:
    """A PNG/JPEG as the model takes it, read with PIL (apart from the datamodule), resized as the loader does."""
    image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    if image.shape[-2:] != (size, size):
        image = torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode="bilinear",
                                                antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
    return image.float() / 255


def model_probs(ckpt: Path, files: list[Path]) -> torch.Tensor:
    model = CNNClassifier.load_from_checkpoint(ckpt, weights_only=True).eval()
    with torch.no_grad():
        return model(torch.stack([pixels_of(f) for f in files])).softmax(dim=1)


def assert_rows_match(rows: list[dict[str, str]], probs: torch.Tensor, truths: list[str]) -> None:
    assert [int(r["index"]) for r in rows] == list(range(len(probs)))
    for row, p, truth in zip(rows, probs, truths):
        values, ranked = p.topk(3)
        assert row["true"] == truth
        assert [row[f"top{k}"] for k in (1, 2, 3)] == [CLASSES[c] for c in ranked]
        for k in (1, 2, 3):
            assert float(row[f"top{k}_probability"]) == pytest.approx(values[k - 1].item(), abs=2e-6)


def test_predict_writes_the_test_split_to_the_run_folder(fitted, tiny_data, run_cli):
    # In fp32, as the forward pass it is compared with (on a bf16 CPU the automatic bf16-mixed moves a
    # probability by 1e-3; test_precision covers bf16).
    predict = run_cli("predict", *tiny_args(CNN, tiny_data), "--ckpt_path", fitted, *FP32, *NO_PICTURES)
    path = Path(predict.trainer.log_dir) / "predictions.csv"
    rows = read_csv(path)
    files = [tiny_data / "test" / name / f"{i:03d}.png" for name in CLASSES for i in range(6)]
    assert [r["file"] for r in rows] == [f"test/{f.parent.name}/{f.name}" for f in files]
    assert_rows_match(rows, model_probs(fitted, files), [f.parent.name for f in files])
    assert not list(path.parent.glob(".predictions.csv*"))  # the per-rank parts are gone


def test_predict_dir_takes_any_size_names_broken_files_and_predicts_the_rest(fitted, tiny_data, run_cli, tmp_path):
    mine = tmp_path / "my_images"
    (mine / "cat").mkdir(parents=True)
    (mine / "cat" / "a.png").write_bytes((tiny_data / "test/cat/000.png").read_bytes())
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(mine / "big.jpg")
    (mine / "broken.png").write_bytes(b"not an image")
    # cnn_fast.yaml, the recipe of issue 21's report (no predictions.csv): the same CNN, another config.
    # In fp32, as the forward pass it is compared with (bf16-mixed moved a probability by 1e-5).
    with pytest.warns(UserWarning, match=r"(?s)Skipping 1 unreadable.*broken\.png"):
        predict = run_cli("predict", *tiny_args(CNN_FAST, tiny_data), "--ckpt_path", fitted, "--data.predict_dir", mine,
                          *FP32, *NO_PICTURES)
    rows = read_csv(Path(predict.trainer.log_dir) / "predictions.csv")
    assert [r["file"] for r in rows] == ["big.jpg", "cat/a.png"]
    assert_rows_match(rows, model_probs(fitted, [mine / "big.jpg", mine / "cat" / "a.png"]), ["", "cat"])


def test_predict_dir_without_labels_is_predicted_and_explained(fitted, tiny_data, run_cli, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    for name in ("a.png", "b.png"):
        (loose / name).write_bytes((tiny_data / "test/ship/000.png").read_bytes())
    predict = run_cli("predict", *tiny_args(CNN, tiny_data), "--ckpt_path", fitted, "--data.predict_dir", loose)
    run = Path(predict.trainer.log_dir)
    assert [(r["file"], r["true"]) for r in read_csv(run / "predictions.csv")] == [("a.png", ""), ("b.png", "")]
    assert (run / "pictures/predict/gradcam_all_layers.png").is_file()  # probes drawn from unlabelled images


def _other_classes(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "other", classes=("bird", "dog", "ship"), per_class={"train": 2, "test": 1})


BAD_PREDICT = {
    "missing predict_dir": (["--data.predict_dir", "{tmp}/nowhere"], "nowhere"),
    "empty predict_dir": (["--data.predict_dir", "{tmp}/empty"], "No .png or .jpg images"),
    "only unreadable images": (["--data.predict_dir", "{tmp}/broken"], "None of the 1 images"),
    "checkpoint of other classes": (["--data.data_dir", "{other}"], "['bird', 'dog', 'ship']"),
}


@pytest.mark.parametrize("case", BAD_PREDICT, ids=list(BAD_PREDICT))
def test_bad_predict_input_exits_2_with_a_hint(case, fitted, tiny_data, run_cli, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.jpg").write_bytes(b"")
    extra, named = BAD_PREDICT[case]
    extra = [a.format(tmp=tmp_path, other=_other_classes(tmp_path) if "{other}" in a else "") for a in extra]
    with pytest.raises(SystemExit) as exit_info:
        run_cli("predict", *tiny_args(CNN, tiny_data), "--ckpt_path", fitted, *extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "HINT:" in err


def test_confusion_matrix_and_per_class_accuracy_match_a_hand_count(fitted, tiny_data, run_cli):
    test = run_cli("test", *tiny_args(CNN, tiny_data), "--ckpt_path", fitted, *pictures_off(keep=("confusion_matrix",)))
    files = [tiny_data / "test" / name / f"{i:03d}.png" for name in CLASSES for i in range(6)]
    truth = torch.tensor([CLASSES.index(f.parent.name) for f in files])
    preds = model_probs(fitted, files).argmax(dim=1)
    hand = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(truth.tolist(), preds.tolist()):
        hand[t, p] += 1
    assert hand.diagonal().sum() < len(files), "the model is right everywhere: the matrix would prove little"
    assert torch.equal(test.model.confusion_matrices["test"], hand)

    run = Path(test.trainer.log_dir)
    events = EventAccumulator(str(run))
    events.Reload()
    for c, name in enumerate(CLASSES):
        (scalar,) = events.Scalars(f"test/acc_per_class/{name}")
        assert scalar.value == pytest.approx(hand[c, c].item() / hand[c].sum().item(), abs=1e-6)
    assert "confusion_matrix/test" in tensorboard_images(run)
    assert (run / "pictures/test/confusion_matrix_test.png").is_file()


def test_per_class_scalars_every_epoch_and_the_matrix_every_n_epochs(tiny_data, run_cli):
    fit = run_cli("fit", *tiny_args(CNN, tiny_data), "--trainer.max_epochs", 3, "--data.batch_size", 16,
                  "--confusion_matrix.every_n_epochs", 2, "--pictures", "null", "--faithfulness", "null")
    run = Path(fit.trainer.log_dir)
    events = EventAccumulator(str(run))
    events.Reload()
    steps = [s.step for s in events.Scalars("val/acc")]
    assert len(steps) == 3
    for name in CLASSES:
        assert [s.step for s in events.Scalars(f"val/acc_per_class/{name}")] == steps
    # Pictures carry the global step after each epoch: every 2nd epoch's validation is drawn (epoch 1 only).
    per_epoch = fit.trainer.global_step // 3
    drawn = [step for step, _ in tensorboard_images(run)["confusion_matrix/val"]]
    assert drawn == [2 * per_epoch]


def test_most_confident_mistakes_skips_right_and_unlabelled_images():
    confidences = torch.tensor([0.9, 0.8, 0.99, 0.7, 0.95, 0.6])
    preds = torch.tensor([1, 0, 2, 1, 0, 2])
    labels = torch.tensor([1, 1, -1, 0, 2, 0])  # 0 right, 2 unlabelled
    assert most_confident_mistakes(confidences, preds, labels, 2).tolist() == [4, 1]
    assert most_confident_mistakes(confidences, preds, labels, 10).tolist() == [4, 1, 3, 5]


def test_gallery_shows_the_surest_mistakes_with_gradcam_for_both_classes(tiny_data, tmp_path):
    torch.manual_seed(0)
    model = CNNClassifier(num_classes=3)  # untrained: plenty of confident mistakes
    datamodule = CIFAR10DataModule(data_dir=str(tiny_data), val_size=12, batch_size=5)  # 3 batches to merge over
    gallery = MistakeGallery(layer="conv3", count=4)
    tiny_trainer(tmp_path, [gallery]).validate(model, datamodule)

    images = datamodule.val_set.images.float() / 255
    labels = datamodule.val_set.labels
    with torch.no_grad():
        confidence, preds = model.eval()(images).softmax(dim=1).max(dim=1)
    wrong = sorted((i for i in range(len(labels)) if preds[i] != labels[i]), key=lambda i: -confidence[i].item())
    expected = wrong[:4]
    assert len(wrong) > 4  # a real choice was made
    assert torch.equal(gallery.chosen["images"], images[expected])
    assert gallery.chosen["labels"].tolist() == labels[expected].tolist()
    assert torch.allclose(gallery.chosen["confidences"], confidence[expected])

    ((step, picture),) = tensorboard_images(tmp_path)["mistakes/val"]
    cells = grid_cells(picture, rows=4, cols=3)
    named = resolve_layers(model.net, ["conv3"])
    for_true = gradcam(model, images[expected], labels[expected], named)["conv3"]
    for_pred = gradcam(model, images[expected], preds[expected], named)["conv3"]
    for row, i in enumerate(expected):
        shown = (images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8).repeat(4, 0).repeat(4, 1)
        assert np.array_equal(cells[row][0], shown)
        for column, cam in ((1, for_pred), (2, for_true)):
            overlay = (heatmap_overlay(images[i], cam[row]) * 255).round().astype(np.uint8).repeat(4, 0).repeat(4, 1)
            assert np.abs(cells[row][column].astype(int) - overlay).max() <= 1


def test_explain_writes_the_mistakes_of_a_checkpoint(fitted, tiny_data, tmp_path):
    import explain

    written = explain.explain(fitted, tmp_path / "pictures", images=tiny_data / "test", mistakes=3)
    assert tmp_path / "pictures" / "mistakes.png" in written
    picture = np.asarray(Image.open(tmp_path / "pictures" / "mistakes.png").convert("RGB"))
    grid_cells(picture, rows=3, cols=3)


def test_ddp_predict_writes_every_image_once_and_a_failed_merge_stops_every_rank(fitted, tiny_data, tmp_path):
    # 7 images over 2 ranks: shards of 4 and 3, no padding to repeat one. The rows travel through the
    # process group (no shared files), so this holds across machines without a shared filesystem too.
    mine = tmp_path / "mine"
    for i, name in enumerate((CLASSES * 3)[:7]):
        (mine / name).mkdir(parents=True, exist_ok=True)
        (mine / name / f"{i}.png").write_bytes((tiny_data / "test" / name / f"{i % 6:03d}.png").read_bytes())
    command = [sys.executable, str(REPO / "cli.py"), "predict", *map(str, tiny_args(CNN, tiny_data)),
               "--ckpt_path", str(fitted), "--data.predict_dir", str(mine), "--pictures", "null",
               "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu", *FP32]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = (tmp_path / "lightning_logs").rglob("predictions.csv")
    rows = read_csv(path)
    files = sorted(mine.rglob("*.png"))
    assert [r["file"] for r in rows] == [f.relative_to(mine).as_posix() for f in files]
    assert_rows_match(rows, model_probs(fitted, files), [f.parent.name for f in files])
    assert not list(path.parent.glob(".predictions.csv*"))

    # Rank 1's rows lost: rank zero's merge fails, and both ranks stop with its message (none waits at a
    # barrier for the timeout to end it); no predictions.csv is written.
    path.unlink()
    lossy = [*command, "--predictions", "tests.fault_helpers.PredictionWriterLosingARank"]
    result = subprocess.run(lossy, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    failures = sorted(line for line in result.stderr.splitlines() if "RuntimeError: Writing the predictions" in line)
    assert [line.split(":")[0] for line in failures] == ["[rank0]", "[rank1]"], result.stderr[-3000:]
    assert failures[0].removeprefix("[rank0]") == failures[1].removeprefix("[rank1]")
    assert "hold 4 rows for 7 images (missing: [1, 3, 5]" in failures[0]
    assert not list((tmp_path / "lightning_logs").rglob("predictions.csv"))
