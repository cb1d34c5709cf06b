"""InterpretabilityDumps and explain.py: the pictures arrive, and training never notices them."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import explain
from callbacks import FaithfulnessScores, InterpretabilityDumps, interpretability
from datamodules.image_folder import read_loose_images
from lightning_modules.cnn import CNNSEClassifier
from lightning_modules.resnet import ResNet18CBAMClassifier
from tests.conftest import REPO, pictures_off
from tests.pictures_helpers import assert_picture, grid_cells, tensorboard_images, tiny_datamodule, tiny_trainer
from visualization.attributions import integrated_gradients, resolve_layers
from visualization.cams import gradcam, layer_cams
from visualization.grids import gradcam_grid
from visualization.pictures import attention_gates, picture_tags, render_pictures

# One xdist worker takes the whole module (`--dist loadgroup` in pyproject.toml): its module-scoped fit is
# then trained once per test run, not once on each worker.
pytestmark = pytest.mark.xdist_group("test_interpretability")

LAYERS = ["conv1", "conv2", "conv3"]
TAGS = picture_tags(LAYERS, channel_attention=True)
STEPS_PER_EPOCH = 4
# (rows, cells per row) of each image grid for 3 probes and the defaults: the
# comparison has image + 3 layers + 3 methods per probe, a layer's Grad-CAM
# one overlay per probe, its feature maps the first probe + its 8 top channels.
GRIDS = {
    "gradcam/all_layers": (3, 7),
    **{f"gradcam/{name}": (1, 3) for name in LAYERS},
    **{f"features/{name}": (1, 9) for name in LAYERS},
    "features/top_channels": (3, 4),
}


def _fit(log_dir: Path, data: Path, callbacks: list) -> tuple[L.Trainer, CNNSEClassifier]:
    L.seed_everything(0)
    model = CNNSEClassifier(num_classes=3)
    trainer = tiny_trainer(log_dir, callbacks)
    trainer.fit(model, tiny_datamodule(data))
    return trainer, model


def _rng_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


@pytest.fixture(scope="module")
def fitted(tiny_data, tmp_path_factory):
    """Two epochs of the SE CNN with dumps every epoch, and what training left behind."""
    log_dir = tmp_path_factory.mktemp("dumps")
    dumps = InterpretabilityDumps(LAYERS, every_n_epochs=1)
    trainer, model = _fit(log_dir, tiny_data, [dumps])
    return trainer, model, dumps, _rng_states(), log_dir / "run/version_0"


def test_every_tag_each_epoch_with_readable_pictures(fitted):
    _, _, _, _, run = fitted
    images = tensorboard_images(run)
    assert set(images) == set(TAGS) == {*GRIDS, "attention/channel"}
    for tag in TAGS:
        # one dump per epoch; the end of fit falls on the last epoch's step and is not repeated
        assert [step for step, _ in images[tag]] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH], tag
        for _, pixels in images[tag]:
            assert_picture(pixels)
            if tag in GRIDS:  # every 32x32 image cell is there at 128 px and shows something
                cells = grid_cells(pixels, *GRIDS[tag])
                assert all(cell.std() > 1.0 for row in cells for cell in row), tag


def test_per_layer_gradcam_tags_show_that_layer(fitted):
    """``gradcam/<layer>`` holds the same overlays as that layer's column of the comparison, and layers differ."""
    _, _, _, _, run = fitted
    images = tensorboard_images(run)
    for step in (0, 1):
        compared = grid_cells(images["gradcam/all_layers"][step][1], *GRIDS["gradcam/all_layers"])
        per_layer = {name: grid_cells(images[f"gradcam/{name}"][step][1], 1, 3)[0] for name in LAYERS}
        for column, name in enumerate(LAYERS, start=1):
            for probe in range(3):
                assert np.array_equal(per_layer[name][probe], compared[probe][column]), (name, probe)
        assert not np.array_equal(per_layer["conv1"][0], per_layer["conv3"][0])


def test_probes_are_the_first_image_of_each_class_and_kept_in_the_checkpoint(fitted, tiny_data):
    trainer, _, dumps, _, run = fitted
    datamodule = tiny_datamodule(tiny_data)
    datamodule.setup("fit")
    val = datamodule.val_set
    first = [int((val.labels == c).nonzero()[0]) for c in range(3)]
    assert dumps.probes.labels.tolist() == [0, 1, 2]
    assert torch.equal(dumps.probes.images, val.images[first])
    checkpoint = torch.load(next((run / "checkpoints").glob("*.ckpt")), weights_only=True)
    state = checkpoint["callbacks"]["InterpretabilityDumps"]
    assert torch.equal(state["probe_images"], dumps.probes.images) and state["classes"] == ["bird", "cat", "ship"]
    assert state["pixel_permutation"] is None  # unpermuted data: the model sees the images as stored
    restored = InterpretabilityDumps(LAYERS)
    restored.load_state_dict(state)
    assert torch.equal(restored.probes.images, dumps.probes.images)
    del state["pixel_permutation"]  # a checkpoint from before the view was kept still loads
    restored.load_state_dict(state)
    assert restored.probes.view.permutation is None


def test_dumps_change_nothing_about_training(fitted, tiny_data, tmp_path):
    _, with_dumps, _, rng_with, _ = fitted
    _, without = _fit(tmp_path, tiny_data, [])
    rng_without = _rng_states()
    expected = without.state_dict()  # weights and BatchNorm statistics
    for key, value in with_dumps.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert [p.requires_grad for p in with_dumps.parameters()] == [p.requires_grad for p in without.parameters()]
    assert [m.training for m in with_dumps.modules()] == [m.training for m in without.modules()]
    assert torch.equal(rng_with[0], rng_without[0])
    assert np.array_equal(rng_with[1], rng_without[1]) and rng_with[2] == rng_without[2]


def test_predict_draws_under_inference_mode(fitted, tiny_data, tmp_path):
    # validate is covered through the CLI below
    _, model, dumps, _, _ = fitted
    trainer = tiny_trainer(tmp_path, [dumps])
    trainer.predict(model, tiny_datamodule(tiny_data))
    images = tensorboard_images(tmp_path)
    assert all(len(images[tag]) == 1 for tag in TAGS)
    for tag in TAGS:
        assert (tmp_path / f"run/version_0/pictures/predict/{tag.replace('/', '_')}.png").is_file()


def test_pictures_leave_the_thread_count_as_the_caller_set_it(fitted, tiny_data, tmp_path, monkeypatch):
    _, model, dumps, _, _ = fitted
    seen = []
    draw = interpretability.render_pictures

    def counting_threads(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return draw(*args, **kwargs)

    monkeypatch.setattr(interpretability, "render_pictures", counting_threads)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tiny_trainer(tmp_path, [dumps]).predict(model, tiny_datamodule(tiny_data))
        assert seen == [2] and torch.get_num_threads() == 2  # a callback changes no process-wide setting
    finally:
        torch.set_num_threads(threads)


class _SanityWatch(L.Callback):
    """Knows whether the sanity check is running, and counts the batches it ran."""

    def __init__(self) -> None:
        self.checking, self.batches = False, 0

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.checking = True

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.checking = False

    def on_validation_batch_end(self, trainer: L.Trainer, *args) -> None:
        self.batches += trainer.sanity_checking


def _record_drawings(monkeypatch, note) -> list:
    """``note()`` at each call of render_pictures by the callback; the drawing still happens."""
    notes = []
    draw = interpretability.render_pictures
    monkeypatch.setattr(interpretability, "render_pictures", lambda *a, **k: notes.append(note()) or draw(*a, **k))
    return notes


def test_no_dumps_during_the_sanity_check(tiny_data, tmp_path, monkeypatch):
    watch = _SanityWatch()
    drawn_while_checking = _record_drawings(monkeypatch, lambda: watch.checking)
    trainer = tiny_trainer(tmp_path, [watch, InterpretabilityDumps(LAYERS)], max_epochs=1, limit_train_batches=1,
                           num_sanity_val_steps=1)
    trainer.fit(CNNSEClassifier(num_classes=3), tiny_datamodule(tiny_data))
    assert watch.batches == 1  # a real sanity check ran, with a logger to draw to
    assert drawn_while_checking == [False]  # one dump, at the end of the epoch


def test_no_dumps_without_an_output(tiny_data, tmp_path, monkeypatch):
    drawings = _record_drawings(monkeypatch, lambda: True)
    asked = []
    writers = interpretability.image_writers
    monkeypatch.setattr(interpretability, "image_writers", lambda trainer: asked.append(1) or writers(trainer))
    dumps = InterpretabilityDumps(LAYERS)
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", callbacks=[dumps], enable_progress_bar=False,
                        default_root_dir=tmp_path)
    trainer.fit(CNNSEClassifier(num_classes=3), tiny_datamodule(tiny_data))
    assert asked  # the callback got to the point of choosing where to draw ...
    assert not drawings and dumps.last_step is None and not list(tmp_path.rglob("*.png"))  # ... and found nowhere


def test_a_misspelt_layer_fails_before_training_and_names_the_valid_ones(tiny_data, tmp_path):
    trainer = tiny_trainer(tmp_path, [InterpretabilityDumps(["conv9"])])
    with pytest.raises(ValueError, match="conv3"):
        trainer.fit(CNNSEClassifier(num_classes=3), tiny_datamodule(tiny_data))
    assert trainer.global_step == 0


@pytest.mark.parametrize("count", ["every_n_epochs", "probes_per_class", "feature_top_k", "feature_images"])
def test_counts_below_one_fail_at_construction(count):
    with pytest.raises(ValueError, match=f"{count}=0 must be at least 1"):
        InterpretabilityDumps(LAYERS, **{count: 0})


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward failed")


class _Explode(nn.Module):
    def forward(self, x):
        return _FailingBackward.apply(x)


def test_hooks_are_removed_and_the_model_restored_when_an_attribution_fails():
    model = CNNSEClassifier(num_classes=3)
    model.net.pool3 = nn.Sequential(model.net.pool3, _Explode())
    model.train()
    flags = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="backward failed"):
        render_pictures(model, torch.rand(2, 3, 32, 32), [0, 1], ["a", "b", "c"], LAYERS, layer_root=model.net)
    for module in model.modules():
        assert not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks), module
        assert not getattr(module, "_backward_pre_hooks", None), module
    assert [m.training for m in model.modules()] == flags
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_zero_gradients_give_blank_finite_pictures():
    model = CNNSEClassifier(num_classes=3)
    last = model.net.classifier[-1]
    nn.init.zeros_(last.weight)  # logits no longer depend on the image: every gradient is 0
    images = torch.rand(3, 3, 32, 32)
    cams = gradcam(model, images, [0, 1, 2], resolve_layers(model.net, LAYERS))
    assert all(torch.equal(cam, torch.zeros_like(cam)) for cam in cams.values())
    pictures = render_pictures(model, images, [0, 1, 2], ["a", "b", "c"], LAYERS, layer_root=model.net)
    assert set(pictures) == set(TAGS)
    # A map without a location overlays nothing (the plain image); a zero attribution is mid-grey.
    rows = grid_cells(pictures["gradcam/all_layers"], *GRIDS["gradcam/all_layers"])
    for image, *cams_and_methods in rows:
        cams, methods = cams_and_methods[: len(LAYERS)], cams_and_methods[len(LAYERS) :]
        assert all(np.array_equal(cam, image) for cam in cams)
        assert all((method == 128).all() for method in methods)
    for name in LAYERS:
        (overlays,) = grid_cells(pictures[f"gradcam/{name}"], *GRIDS[f"gradcam/{name}"])
        assert all(np.array_equal(overlay, row[0]) for overlay, row in zip(overlays, rows))


def test_a_config_adds_cam_variants_per_layer_and_input_methods_as_columns():
    torch.manual_seed(0)
    model = CNNSEClassifier(num_classes=3).eval()
    images, labels = torch.rand(2, 3, 32, 32), [0, 2]
    pictures = render_pictures(model, images, labels, ["a", "b", "c"], LAYERS, layer_root=model.net,
                               methods=["integrated_gradients", "layercam"])
    preds = model(images).argmax(dim=1)
    named = resolve_layers(model.net, LAYERS)
    cams = {**gradcam(model, images, preds, named),
            **{f"layercam {name}": cam for name, cam in layer_cams(model, images, preds, named, "layercam").items()}}
    expected = gradcam_grid(images, cams, torch.tensor(labels), preds, ["a", "b", "c"],
                            {"integrated gradients": integrated_gradients(model, images, preds)})
    assert len(grid_cells(pictures["gradcam/all_layers"], 2, 1 + 2 * len(LAYERS) + 1)[0]) == 8
    assert np.array_equal(pictures["gradcam/all_layers"], expected)
    assert list(pictures) == TAGS  # the other pictures are as before


def test_cbam_models_get_their_spatial_gates_drawn():
    torch.manual_seed(0)
    model = ResNet18CBAMClassifier(num_classes=3)
    layers = ["layer1", "layer4"]
    pictures = render_pictures(model, torch.rand(2, 3, 32, 32), [0, 1], ["a", "b", "c"], layers, layer_root=model.net)
    assert list(pictures) == picture_tags(layers, channel_attention=True, spatial_attention=True)
    blocks = [name for name in attention_gates(model.net) if name.endswith("spatial.gate")]
    assert len(blocks) == 4  # cbam.layer1 .. cbam.layer4: the image, then one overlay each
    for row in grid_cells(pictures["attention/spatial"], 2, 1 + len(blocks)):
        assert all(cell.std() > 1.0 for cell in row)


def test_explain_writes_the_pictures_of_a_checkpoint(fitted, tmp_path):
    _, _, _, _, run = fitted
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    base = ["--ckpt", str(ckpt), "--model-class", "lightning_modules.CNNSEClassifier", "--layers", *LAYERS]
    assert explain.main([*base, "--out", str(tmp_path / "probes")]) == 0  # the stored probe set
    for tag in TAGS:
        assert_picture(np.asarray(Image.open(tmp_path / "probes" / f"{tag.replace('/', '_')}.png").convert("RGB")))
    features = np.asarray(Image.open(tmp_path / "probes/features_conv3.png").convert("RGB"))
    grid_cells(features, 3, 9)  # explain.py shows the feature maps of every image

    own = tmp_path / "own"
    (own / "cat").mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)  # resized to 32x32
    Image.fromarray(pixels).save(own / "cat/a.png")
    Image.fromarray(pixels).save(own / "loose.jpg")
    found = read_loose_images(own, (3, 32, 32), ["bird", "cat", "ship"])
    assert found.images.shape == (2, 3, 32, 32) and found.labels.tolist() == [1, -1]
    assert explain.main([*base, "--images", str(own), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out/gradcam_all_layers.png").is_file()


def _ran(marker: str) -> None:
    Path(marker).write_text("ran")


class _Payload:
    """Unpickling this calls ``_ran``: what a malicious checkpoint does with ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return _ran, (str(self.marker),)


class _Note:
    """A harmless object that ``weights_only`` loading does not know."""


def _checkpoint_with(run: Path, tmp_path: Path, extra: object) -> Path:
    checkpoint = torch.load(next((run / "checkpoints").glob("*.ckpt")), weights_only=True)
    checkpoint["extra"] = extra
    path = tmp_path / "sent.ckpt"
    torch.save(checkpoint, path)
    return path


def test_explain_refuses_a_checkpoint_that_would_run_code(fitted, tmp_path, capsys):
    _, _, _, _, run = fitted
    marker = tmp_path / "ran"
    ckpt = _checkpoint_with(run, tmp_path, _Payload(marker))
    args = ["--ckpt", str(ckpt), "--model-class", "lightning_modules.CNNSEClassifier", "--layers", *LAYERS,
            "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        explain.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{__name__}._ran" in err and "--trust-checkpoint" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_explain_loads_a_checkpoint_with_other_objects_only_when_trusted(fitted, tmp_path, capsys):
    _, _, _, _, run = fitted
    ckpt = _checkpoint_with(run, tmp_path, _Note())
    args = ["--ckpt", str(ckpt), "--model-class", "lightning_modules.CNNSEClassifier", "--layers", *LAYERS,
            "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        explain.main(args)
    assert f"{__name__}._Note" in capsys.readouterr().err
    assert explain.main([*args, "--trust-checkpoint"]) == 0
    assert (tmp_path / "out/gradcam_all_layers.png").is_file()


def test_cli_validate_draws_and_explain_reads_the_run_config(tiny_data, run_cli, tmp_path):
    # Only the Grad-CAM pictures on: the scores and the other drawings are not what this test reads.
    others_off = pictures_off(keep=("pictures",))
    args = ["--config", REPO / "configs/cnn.yaml", "--data.data_dir", tiny_data, "--data.val_size", 12,
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", *others_off]
    fit = run_cli("fit", *args, "--trainer.max_epochs", 1, "--trainer.limit_train_batches", 2)
    run = Path(fit.trainer.log_dir)
    run_cli("validate", *args, "--ckpt_path", "best")
    assert (run / "pictures/validate/gradcam_all_layers.png").is_file()
    assert explain.main(["--ckpt", str(run / "checkpoints/last.ckpt"), "--out", str(tmp_path / "pictures")]) == 0
    assert (tmp_path / "pictures/features_top_channels.png").is_file()


@pytest.mark.parametrize("callback", [InterpretabilityDumps, FaithfulnessScores])
def test_an_unknown_method_is_refused_before_training_with_the_valid_names(callback):
    with pytest.raises(ValueError, match=r"Unknown methods \['gradient'\]\.\nHINT: choose from \['guided_backprop'"):
        callback(layers=["conv1"], methods=["gradient", "deconvolution"])


def test_a_compiled_model_fits_with_picture_dumps(tiny_data, tmp_path, monkeypatch):
    """``--model.compile true``: the dumps hook the eager network, which the compiled one never calls."""
    from functools import partial

    monkeypatch.setattr(torch, "compile", partial(torch.compile, backend="eager"))  # no C++ build, same hooks
    L.seed_everything(0)
    model = CNNSEClassifier(num_classes=3, widths=(4, 8, 8), hidden=16, compile=True)
    trainer = tiny_trainer(tmp_path, [InterpretabilityDumps(LAYERS, every_n_epochs=1)], max_epochs=1,
                           limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, tiny_datamodule(tiny_data))
    assert model._compiled_net is not None
    images = tensorboard_images(tmp_path / "run/version_0")
    assert set(images) == set(TAGS) and all(len(images[tag]) == 1 for tag in TAGS)
