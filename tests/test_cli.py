"""Every recipe runs through the CLI; checkpoints, resume and bad input behave."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.nn import functional as F

from cli import STANDARD_CALLBACKS, main
from callbacks import AtomicCheckpointIO
from tests.conftest import CONFIGS, NO_PICTURES, PICTURE_KEYS, REPO
from tests.pictures_helpers import tensorboard_images
from visualization.pictures import attention_gates

FAST = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def tiny_args(config: Path, data: Path) -> list[str]:
    args = ["--config", config, "--data.data_dir", data, "--data.val_size", 12, *FAST]
    if "resnet" in config.stem:
        args += ["--model.pretrained", "false"]
    return args


def hand_evaluation(model: torch.nn.Module, data: Path, classes: list[str], permutation_seed: int | None):
    """(accuracy, mean cross-entropy) on ``data/test``, read with PIL and counted here, apart from the datamodule."""
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((data / "test" / name).glob("*.png")):
            pixels = torch.from_numpy(np.array(Image.open(path))).float() / 255
            images.append(pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1))
            labels.append(label)
    x, y = torch.stack(images), torch.tensor(labels)
    if permutation_seed is not None:  # the permuted-pixel recipes: one fixed, seeded shuffle of positions
        order = torch.randperm(x[0, 0].numel(), generator=torch.Generator().manual_seed(permutation_seed))
        x = x.flatten(2)[:, :, order].view_as(x)
    with torch.no_grad():
        logits = model.eval()(x)
    return (logits.argmax(dim=1) == y).float().mean().item(), F.cross_entropy(logits, y).item()


def standard_callbacks(trainer) -> dict[str, object]:
    """``{class name: callback}`` of the trainer's callbacks that are ``cli.STANDARD_CALLBACKS``."""
    kinds = tuple(STANDARD_CALLBACKS.values())
    return {type(c).__name__: c for c in trainer.callbacks if isinstance(c, kinds)}


STANDARD_NAMES = ("LearningRateMonitor", "PredictionWriter", "ConfusionMatrixPlot", "LossPlots", "MistakeGallery",
                  "InterpretabilityDumps", "FaithfulnessScores", "StopOnNonFiniteLoss")
# FaithfulnessScores samples each curve at 2 steps (ROAD at 1), not 8 (4): the same code paths and
# tags at a third of the forward passes (on ResNet the scoring was two thirds of the test's time).
# It scores Grad-CAM and the baselines only: the guided methods' maps on every network are the pictures'
# (InterpretabilityDumps draws them), and their scores test_faithfulness's; they were a fifth of VGG-16's test.
SHORT_FAITHFULNESS = ["--faithfulness.steps", 2, "--faithfulness.road_steps", 1, "--faithfulness.methods", "[]"]
# The test metrics are compared with an fp32 hand count: on a CPU with bf16 the automatic
# bf16-mixed moved the MLP's test/loss by 8e-4 (relative). test_precision covers bf16.
FP32 = ["--trainer.precision", "32-true"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_gets_every_standard_callback_that_applies(config, request):
    data = request.getfixturevalue("tiny_mnist" if config.stem.startswith("mnist") else "tiny_data")
    built = main([str(a) for a in tiny_args(config, data)], run=False)
    # Named here, not read from cli.STANDARD_CALLBACKS: dropping one there must fail this test.
    expected = {"LearningRateMonitor", "PredictionWriter", "ConfusionMatrixPlot", "LossPlots", "StopOnNonFiniteLoss"}
    if "MLP" in type(built.model).__name__:  # no conv layers: no Grad-CAM callbacks
        assert built.model.explainable_layers == ()
    else:
        assert built.model.explainable_layers
        expected |= {"MistakeGallery", "InterpretabilityDumps", "FaithfulnessScores"}
    found = [type(c).__name__ for c in built.trainer.callbacks]
    assert sorted(name for name in found if name in STANDARD_NAMES) == sorted(expected)  # each exactly once


def test_a_flag_or_config_changes_or_switches_off_a_standard_callback(tiny_data, tmp_path, capsys):
    cnn = tiny_args(REPO / "configs/cnn.yaml", tiny_data)
    built = main([str(a) for a in [*cnn, "--pictures", "null", "--faithfulness.every_n_epochs", 3]], run=False)
    callbacks = standard_callbacks(built.trainer)
    assert "InterpretabilityDumps" not in callbacks and callbacks["FaithfulnessScores"].every_n_epochs == 3

    config = yaml.safe_load((REPO / "configs/cnn.yaml").read_text())
    config["mistakes"] = {"count": 4, "layer": "conv2"}
    config["confusion_matrix"] = None
    (tmp_path / "cnn.yaml").write_text(yaml.safe_dump(config))
    built = main([str(a) for a in tiny_args(tmp_path / "cnn.yaml", tiny_data)], run=False)
    callbacks = standard_callbacks(built.trainer)
    assert "ConfusionMatrixPlot" not in callbacks
    assert (callbacks["MistakeGallery"].count, callbacks["MistakeGallery"].given_layer) == (4, "conv2")

    # Listed in trainer.callbacks as well: two writers of one file. Refused, with the fix.
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in [*cnn, "--trainer.callbacks+=callbacks.PredictionWriter"]], run=False)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "PredictionWriter, which every run already gets as `predictions`" in err and "HINT:" in err


def test_only_the_named_subcommand_is_built_and_a_misspelt_one_lists_all_four(tiny_data, monkeypatch, capsys):
    import cli

    monkeypatch.setattr(cli.ProjectCLI, "_run_subcommand", lambda self, subcommand: None)
    built = main(["test", *map(str, tiny_args(REPO / "configs/cnn.yaml", tiny_data))])
    assert built.subcommand == "test" and list(built._subcommand_parsers) == ["test"]
    assert type(built.datamodule).__name__ == "CIFAR10DataModule" and built.trainer is not None
    with pytest.raises(SystemExit) as exit_info:
        main(["tset", *map(str, tiny_args(REPO / "configs/cnn.yaml", tiny_data))])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tset' (choose from 'fit', 'validate', 'test', 'predict')" in capsys.readouterr().err


def _network(config: Path) -> tuple[str, str | None, str, bool]:
    """What the drawing callbacks see of a config: its model class and attention, its data module, permuted pixels."""
    recipe = yaml.safe_load(config.read_text())
    model, data = recipe["model"], recipe["data"]
    attention = model.get("init_args", {}).get("attention")
    return model["class_path"], attention, data["class_path"], bool(data.get("init_args", {}).get("permute_pixels"))


# The pictures and scores depend on the network, not on the recipe (optimiser, schedule, unfreeze stages): of the
# configs that share one, the last by name draws (the `_fast` one: channels_last, the recipe users run on CPU);
# the others fit and test without the drawing callbacks, which were two thirds of a ResNet config's time here.
# lenet, vgg16, cnn_permuted and the MNIST configs keep the NCHW pictures covered.
DRAWS = {_network(config): config for config in CONFIGS}


def test_the_configs_that_draw_cover_every_network():
    drawn = set(DRAWS.values())
    assert {c.stem for c in drawn} >= {"cnn_fast", "cnn_se_fast", "cnn_cbam_fast", "resnet18_fast", "resnet_cbam_fast",
                                       "lenet", "vgg16", "cnn_permuted", "mnist_cnn"}
    assert {c.stem for c in CONFIGS if c not in drawn} >= {"cnn", "resnet_cbam", "resnet_cbam_discriminative"}
    assert {_network(c) for c in CONFIGS} == {_network(c) for c in drawn}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_fits_tests_and_draws(config, request, run_cli, tmp_path):
    # MNIST configs need grayscale 28x28 images, the others RGB; the ResNets take 16x16 (their
    # adaptive pooling takes any size; a quarter of the work), VGG-16's five poolings need 32x32. One
    # short epoch (one training batch), not fast_dev_run: that turns off the loggers, and the pictures.
    data_fixture = "tiny_mnist" if config.stem.startswith("mnist") else "tiny_data_16" if "resnet" in config.stem else "tiny_data"
    tiny_data = request.getfixturevalue(data_fixture)
    draws = DRAWS[_network(config)] == config
    fit = run_cli("fit", *tiny_args(config, tiny_data), "--trainer.max_epochs", 1, *FP32,
                  *(SHORT_FAITHFULNESS if draws else NO_PICTURES))
    assert fit.datamodule.classes == ["bird", "cat", "ship"]
    assert fit.model.num_classes == 3
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(fit.trainer.callback_metrics)
    run = Path(fit.trainer.log_dir)
    ckpt = run / "checkpoints/last.ckpt"
    drawn = tensorboard_images(run)  # the fit's pictures, before testing adds its own

    # Tested by the fit's own trainer, not a second CLI run: `cli.py test` is the same code for every config
    # (test_test_with_best_finds_the_fitted_run runs it), and its parse and set-up were a fifth of this test.
    # The scores are checked on the fit's logs; scoring again at test's end (the same code, a third of a
    # ResNet config's time here) is left out.
    test = fit
    test.trainer.callbacks = [c for c in fit.trainer.callbacks if type(c).__name__ != "FaithfulnessScores"]
    test.trainer.test(fit.model, datamodule=fit.datamodule, ckpt_path=str(ckpt))
    model = type(fit.model).load_from_checkpoint(ckpt, weights_only=True)
    permutation_seed = fit.datamodule.permutation_seed if fit.datamodule.permute_pixels else None
    accuracy, loss = hand_evaluation(model, tiny_data, fit.datamodule.classes, permutation_seed)
    assert float(test.trainer.callback_metrics["test/acc"]) == pytest.approx(accuracy, abs=1e-6)
    assert {f"test/acc_per_class/{name}" for name in fit.datamodule.classes} <= set(test.trainer.callback_metrics)
    assert float(test.trainer.callback_metrics["test/loss"]) == pytest.approx(loss, rel=1e-4)

    pictures = standard_callbacks(fit.trainer)
    if not draws:  # drawn by DRAWS[...]'s run of the same network
        assert not drawn and not {STANDARD_CALLBACKS[key].__name__ for key in PICTURE_KEYS} & set(pictures)
        return
    if "LossPlots" in pictures:
        assert {"loss/iterations", "loss/epochs"} <= set(drawn)
        assert (run / "plots/loss_iterations.png").is_file() and (run / "plots/loss_epochs.png").is_file()
    if "InterpretabilityDumps" in pictures:
        layers = pictures["InterpretabilityDumps"].layers
        assert layers == list(fit.model.explainable_layers)
        tags = ["gradcam/all_layers", *(f"gradcam/{layer}" for layer in layers)]
        assert all([step for step, _ in drawn[tag]] == [fit.trainer.global_step] for tag in tags)
        written = Path(test.trainer.log_dir) / "pictures/test"
        assert all((written / f"{tag.replace('/', '_')}.png").is_file() for tag in tags)
    if "FaithfulnessScores" in pictures:
        scores = EventAccumulator(str(run), size_guidance={"scalars": 0})
        scores.Reload()
        last_layer = pictures["FaithfulnessScores"].layers[-1]
        for tag in (f"faithfulness/deletion_auc/gradcam_{last_layer}", "faithfulness/insertion_auc/random",
                    f"faithfulness/randomization_spearman/gradcam_{last_layer}"):
            assert [event.step for event in scores.Scalars(tag)] == [fit.trainer.global_step], tag
        if "cbam" in config.stem:  # the CBAM spatial gates are scored too (cbam.layer4.spatial, conv3.cbam.spatial)
            spatial = [name.removesuffix(".gate") for name in attention_gates(fit.model.net) if ".spatial." in name]
            assert len(spatial) == (4 if "resnet" in config.stem else 3)
            assert f"faithfulness/deletion_auc/attention_{spatial[-1]}" in scores.Tags()["scalars"]
    if "ConfusionMatrixPlot" in pictures:
        assert [step for step, _ in drawn["confusion_matrix/val"]] == [fit.trainer.global_step]
        assert (Path(test.trainer.log_dir) / "pictures/test/confusion_matrix_test.png").is_file()
    if "MistakeGallery" in pictures and accuracy < 1:
        assert (Path(test.trainer.log_dir) / "pictures/test/mistakes_test.png").is_file()
    if "InterpretabilityDumps" not in pictures:  # the MLPs: no Grad-CAM anywhere
        assert not any(tag.startswith(("gradcam/", "mistakes/")) for tag in drawn)


def _train(run_cli, data, *extra, pictures: bool = False):
    """A tiny cnn.yaml fit; the drawing callbacks only where the test is about them (half a tiny fit's time)."""
    return run_cli("fit", *tiny_args(REPO / "configs/cnn.yaml", data), "--data.batch_size", 16,
                   *([] if pictures else NO_PICTURES), *extra)


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_last_checkpoint_is_the_latest_epoch_even_without_improvement(tiny_data, run_cli, tmp_path):
    # lr 0: val/acc never improves after epoch 0, so Lightning's save_last would stay at epoch 0.
    cli = _train(run_cli, tiny_data, "--trainer.max_epochs", 3, "--model.optimizer.lr", 0.0)
    ckpt_dir = Path(cli.trainer.log_dir) / "checkpoints"
    last = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    assert last["epoch"] == 2
    best = list(ckpt_dir.glob("best-*.ckpt"))
    assert len(best) == 1 and torch.load(best[0], weights_only=False)["epoch"] == 0


def test_resume_from_last_continues_the_run_bit_exactly(tiny_data, run_cli, tmp_path, monkeypatch):
    # With the pictures: their epoch-end drawings and saved state must not move the resumed bits.
    # Two epochs against one plus one: the resumed epoch starts from the first epoch's saved picture state.
    straight = _train(run_cli, tiny_data, "--trainer.max_epochs", 2, "--trainer.logger.init_args.name", "straight",
                      *SHORT_FAITHFULNESS, pictures=True)
    expected = _weights(straight.model)

    _train(run_cli, tiny_data, "--trainer.max_epochs", 1, "--trainer.logger.init_args.name", "resumed",
           *SHORT_FAITHFULNESS, pictures=True)
    resumed = _train(
        run_cli, tiny_data, "--trainer.max_epochs", 2, "--trainer.logger.init_args.name", "resumed",
        "--ckpt_path", "last", *SHORT_FAITHFULNESS, pictures=True,
    )
    assert resumed.trainer.current_epoch == 2
    assert resumed.trainer.global_step == straight.trainer.global_step
    # The resumed run logs into the run it continues.
    assert Path(resumed.trainer.log_dir).name == "version_0"
    for key, value in _weights(resumed.model).items():
        assert torch.equal(value, expected[key]), key


def test_test_with_best_finds_the_fitted_run(tiny_data, run_cli):
    fit = _train(run_cli, tiny_data, "--trainer.max_epochs", 2)
    best = fit.trainer.checkpoint_callback.best_model_path
    cli = run_cli("test", *tiny_args(REPO / "configs/cnn.yaml", tiny_data), *NO_PICTURES, "--ckpt_path", "best")
    assert cli.trainer.ckpt_path == best
    assert Path(cli.trainer.log_dir) == Path(fit.trainer.log_dir)


def test_test_with_best_and_no_run_names_the_fix(tiny_data, run_cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("test", *tiny_args(REPO / "configs/cnn.yaml", tiny_data), "--ckpt_path", "best")
    assert exit_info.value.code == 2
    assert "run `fit` with this config first" in capsys.readouterr().err


def test_resuming_with_max_epochs_below_the_checkpoints_exits_2_and_keeps_the_run(tiny_data, run_cli, tmp_path, capsys):
    fit = _train(run_cli, tiny_data, "--trainer.max_epochs", 2)
    run = Path(fit.trainer.log_dir)
    with pytest.raises(SystemExit) as exit_info:
        _train(run_cli, tiny_data, "--trainer.max_epochs", 1, "--ckpt_path", "last")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "trained 2 epochs, more than --trainer.max_epochs 1" in err and "HINT: resume with --trainer.max_epochs 2" in err
    assert (run / "checkpoints/last.ckpt").is_file()  # a refused resume removes nothing of the run it resumes
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]


def test_a_failed_start_leaves_no_run_folder(tiny_data, run_cli, tmp_path, capsys):
    # 4 steps at pct_start 0.25: OneCycleLR's warm-up is empty, refused in configure_optimizers (after setup
    # wrote config.yaml into a new version_0).
    args = ["--config", REPO / "configs/cnn_fast.yaml", "--data.data_dir", tiny_data, "--data.val_size", 12, *FAST]
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *args, "--trainer.max_epochs", 1, "--data.batch_size", 16, *NO_PICTURES)
    assert exit_info.value.code == 2 and "HINT:" in capsys.readouterr().err
    assert not list((tmp_path / "lightning_logs/cnn_fast").glob("version_*"))


def test_a_users_plugins_keep_the_atomic_checkpoint_writer(tiny_data):
    args = [*tiny_args(REPO / "configs/cnn.yaml", tiny_data), "--trainer.plugins",
            "lightning.fabric.plugins.environments.LightningEnvironment"]
    built = main([str(a) for a in args], run=False)
    assert isinstance(built.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def _empty_class(tmp_path: Path, tiny_data: Path) -> Path:
    root = tmp_path / "empty_class"
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "dog").mkdir(parents=True)
    (root / "train" / "cat" / "0.png").write_bytes((tiny_data / "train/cat/000.png").read_bytes())
    return root


BAD_INPUT = {
    "missing data_dir": (["--data.data_dir", "{tmp}/nowhere", "--data.download", "false"], "nowhere"),
    "empty data_dir": (["--data.data_dir", "{tmp}/empty", "--data.download", "false"], "empty"),
    "class folder without images": (["--data.data_dir", "{empty_class}"], "dog"),
    "unknown key": (["--model.init_args.colour", "red"], "colour"),
    "wrong type": (["--data.batch_size", "many"], "many"),
    "negative learning rate": (["--model.optimizer.lr", "-0.1"], "-0.1"),
    "batch size 0": (["--data.batch_size", "0"], "batch_size=0"),
    "val_size too large": (["--data.val_size", "1000"], "val_size=1000"),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_exits_2_naming_value_and_fix(case, tiny_data, run_cli, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    extra, named = BAD_INPUT[case]
    fill = {"tmp": tmp_path, "empty_class": _empty_class(tmp_path, tiny_data)}
    extra = [arg.format(**fill) for arg in extra]
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *tiny_args(REPO / "configs/cnn.yaml", tiny_data), *extra, "--trainer.fast_dev_run", "true")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert named in err
    if case not in ("unknown key", "wrong type"):  # jsonargparse's own messages name the key instead
        assert "HINT:" in err


def test_pretrained_offline_fails_fast_with_the_weights_path(tiny_data, tmp_path):
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "torch_home"),
        # A closed port on loopback: the download fails at once, as on an offline machine.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    # The timeout fails a download that retries or hangs. No wall-clock bound besides it: the process
    # start alone took up to 62 s on 2 loaded cores under coverage, and tests are not timed.
    result = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "fit", "--config", str(REPO / "configs/resnet_cbam.yaml"),
         "--data.data_dir", str(tiny_data)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in result.stderr
    assert "--model.pretrained false" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "torch_home").rglob("*.pth"))
