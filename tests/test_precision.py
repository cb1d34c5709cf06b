"""The automatic precision: bf16 where the device runs it natively, fp32 elsewhere, the user's flag above both.

The hardware is mocked through PyTorch's own probes (``torch.cpu._is_*``,
``torch.cuda.*``), so every branch runs on any CPU; the runs themselves are
real Lightning fits on tiny data, in whatever precision was chosen.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from lightning_modules import CNNClassifier
from common.precision_choice import choose_precision
from tests.conftest import NO_PICTURES
from tests.test_cli import REPO, tiny_args
from visualization.faithfulness import faithfulness_scores
from visualization.pictures import render_pictures

# One xdist worker takes the whole module (`--dist loadgroup` in pyproject.toml): its module-scoped fit is
# then trained once per test run, not once on each worker.
pytestmark = pytest.mark.xdist_group("test_precision")


@pytest.fixture
def cpu_features(monkeypatch):
    """Pretend the CPU has exactly the named bf16 features (``AMX``, ``AVX512_BF16``)."""

    def have(*features: str) -> None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: "AMX" in features)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: "AVX512_BF16" in features)

    return have


@pytest.mark.parametrize(
    ("features", "expected"),
    [(("AVX512_BF16",), "bf16-mixed"), (("AMX", "AVX512_BF16"), "bf16-mixed"), ((), "32-true")],
)
def test_the_cpu_trains_in_bf16_only_with_native_bf16(cpu_features, features, expected):
    cpu_features(*features)
    choice = choose_precision("cpu")
    assert choice.precision == expected
    assert (features[0] if features else "neither") in choice.reason


def test_a_cpu_without_the_probes_keeps_fp32(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert choose_precision("cpu").precision == "32-true"


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
@pytest.mark.parametrize("accelerator", ["auto", "gpu", "cuda"])
def test_a_gpu_trains_in_bf16_only_when_it_runs_bf16_natively(monkeypatch, cpu_features, accelerator, native, expected):
    cpu_features("AVX512_BF16")  # the host CPU must not decide for the GPU
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4" if not native else "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(including_emulation) or native)
    choice = choose_precision(accelerator)
    assert choice.precision == expected
    assert asked == [False], "emulated bf16 must not count as native"
    assert ("T4" if not native else "H200") in choice.reason


def test_the_cpu_accelerator_ignores_a_present_gpu(monkeypatch, cpu_features):
    cpu_features()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert choose_precision("cpu").precision == "32-true"


@pytest.fixture
def info_logs(caplog):
    caplog.set_level("INFO", logger="lightning.pytorch")


def _fit(run_cli, data, *extra):
    """A tiny cnn.yaml fit without the drawing callbacks (test_precision checks the pictures' precision below)."""
    return run_cli("fit", *tiny_args(REPO / "configs/cnn.yaml", data), "--data.batch_size", 16, *NO_PICTURES, *extra)


@pytest.mark.parametrize(("features", "expected"), [(("AVX512_BF16",), "bf16-mixed"), ((), "32-true")])
@pytest.mark.usefixtures("info_logs")
def test_the_cli_picks_the_precision_logs_it_and_records_it(tiny_data, run_cli, cpu_features, caplog, features, expected):
    cpu_features(*features)
    cli = _fit(run_cli, tiny_data, "--trainer.max_epochs", 1)
    assert cli.trainer.precision == expected
    if expected == "bf16-mixed":  # Lightning's own autocast plugin, not a hand-written cast
        assert isinstance(cli.trainer.precision_plugin, MixedPrecision)
        assert cli.trainer.precision_plugin.device == "cpu" and cli.trainer.precision_plugin.precision == "bf16-mixed"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Precision:")]
    assert len(lines) == 1 and expected in lines[0] and "auto" in lines[0]
    record = json.loads((Path(cli.trainer.log_dir) / "run.json").read_text())
    assert record["precision"] == expected and record["precision_reason"].startswith("auto")
    # The saved config names the precision, so running it again trains the same way anywhere.
    assert f"precision: {expected}" in (Path(cli.trainer.log_dir) / "config.yaml").read_text()


def test_the_users_precision_wins_over_the_choice(tiny_data, run_cli, cpu_features):
    cpu_features("AVX512_BF16")
    cli = _fit(run_cli, tiny_data, "--trainer.max_epochs", 1, "--trainer.precision", "32-true")
    assert cli.trainer.precision == "32-true"
    record = json.loads((Path(cli.trainer.log_dir) / "run.json").read_text())
    assert record["precision_reason"] == "given by --trainer.precision or the config"


def test_a_bf16_resume_continues_bit_exactly(tiny_data, run_cli, one_thread):
    bf16 = ("--trainer.precision", "bf16-mixed")
    straight = _fit(run_cli, tiny_data, *bf16, "--trainer.max_epochs", 3, "--trainer.logger.init_args.name", "straight")
    _fit(run_cli, tiny_data, *bf16, "--trainer.max_epochs", 2, "--trainer.logger.init_args.name", "resumed")
    resumed = _fit(run_cli, tiny_data, *bf16, "--trainer.max_epochs", 3, "--trainer.logger.init_args.name", "resumed",
                   "--ckpt_path", "last")
    assert resumed.trainer.global_step == straight.trainer.global_step
    expected = straight.model.state_dict()
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    # bf16 really trained: an fp32 run from the same seed ends elsewhere.
    fp32 = _fit(run_cli, tiny_data, "--trainer.precision", "32-true", "--trainer.max_epochs", 3,
                "--trainer.logger.init_args.name", "fp32")
    assert any(not torch.equal(value, expected[key]) for key, value in fp32.model.state_dict().items())


@pytest.fixture(scope="module")
def trained_cnn(tiny_data):
    torch.manual_seed(0)
    model = CNNClassifier(num_classes=3)
    model.configure_model()
    images = torch.rand(4, 3, 32, 32)
    return model, images


def test_pictures_are_computed_in_fp32_under_a_bf16_autocast(trained_cnn):
    model, images = trained_cnn
    draw = lambda: render_pictures(model, images, [0, 1, 2, 0], ["a", "b", "c"], ["conv1", "conv3"],  # noqa: E731
                                   layer_root=model.net, methods=("guided_backprop",))
    plain = draw()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.nn.functional.linear(images.flatten(1), torch.ones(2, 3072)).dtype == torch.bfloat16  # live
        under_bf16 = draw()
    assert plain.keys() == under_bf16.keys()
    for tag, picture in plain.items():
        assert (picture == under_bf16[tag]).all(), tag


def test_faithfulness_scores_are_computed_in_fp32_under_a_bf16_autocast(trained_cnn):
    model, images = trained_cnn
    score = lambda: faithfulness_scores(model, images, ["conv3"], layer_root=model.net, methods=(),  # noqa: E731
                                        steps=4, road_steps=2)
    plain = score()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_bf16 = score()
    assert plain.scores.keys() == under_bf16.scores.keys()
    for metric, by_method in plain.scores.items():
        for method, values in by_method.items():
            assert torch.equal(values, under_bf16.scores[metric][method]), (metric, method)

