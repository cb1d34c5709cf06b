"""The attention slot: every kind on the CNN and the ResNet18, the registry, the old classes, configs and checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from cli import main
from datamodules import CIFAR10DataModule
from lightning_modules import CNNCBAMClassifier, CNNClassifier, CNNSEClassifier, ResNet18CBAMClassifier, ResNet18Classifier
from lightning_modules.attention import (
    ATTENTION,
    CBAM,
    EfficientChannelAttention,
    GlobalContext,
    SqueezeExcite,
    create_attention,
)
from tests.conftest import REPO
from tests.test_cli import tiny_args
from common.user_input import UserInputError
from visualization.faithfulness import saliency_maps
from visualization.pictures import attention_gates, picture_tags, render_pictures

KINDS = list(ATTENTION)
OLD = Path(__file__).parent / "old_checkpoints"


def tiny(family: str, attention: str | None, **kwargs) -> L.LightningModule:
    """A small CNN (widths 8/16/16) or the real ResNet18, on 16x16 images of 3 classes.

    16x16, not less: GC's softmax over the positions of a 1x1 map (the ResNet's layer4 at 8x8)
    is constant and passes no gradient to the conv that scores them.
    """
    common = {"num_classes": 3, "input_shape": (3, 16, 16), "attention": attention, **kwargs}
    if family == "cnn":
        return CNNClassifier(widths=(8, 16, 16), hidden=16, rd_ratio=2, **common)
    return ResNet18Classifier(**common)


def blocks(model: L.LightningModule) -> list[nn.Module]:
    """The attention block of each CNN block or ResNet stage, low to high."""
    kind = model.net.attention
    if isinstance(model, CNNClassifier):
        return [model.net.get_submodule(f"conv{index}.{kind}") for index in (1, 2, 3)]
    return list(model.net.get_submodule(kind).values())


# Parameters each kind adds to the CNN (widths 32/64/128) and the ResNet18 (64..512), reduction 16, counted by
# hand per block of C channels with bottleneck r = C/16:
#   se 2Cr; cbam 2Cr + 2*7*7; eca k (k = 3, 3, 5 | 3, 5, 5, 5); gc C + (Cr + r) + 2r + (rC + C) (1x1 conv,
#   biased linears, LayerNorm); ge 3 * (9C + 2C) + 2Cr (three depthwise 3x3 convs with BatchNorm, bottleneck);
#   coord with m = max(8, r): 3Cm + 2m (conv in, BatchNorm, row and column convs out).
ADDED = {
    "se": (2688, 43520),
    "cbam": (2982, 43912),
    "eca": (11, 18),
    "gc": (3178, 45620),
    "ge": (10080, 75200),
    "coord": (5424, 66176),
}


@pytest.mark.parametrize("family", ["cnn", "resnet18"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_sits_in_its_place_keeps_the_logits_finite_and_trains_all_its_parameters(kind, family):
    torch.manual_seed(0)
    model = tiny(family, kind)
    logits = model(torch.rand(4, *model.input_shape))
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    found = blocks(model)
    parameters = [(name, p) for block in found for name, p in block.named_parameters()]
    assert parameters
    for name, parameter in parameters:
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    net = model.net
    if family == "cnn":  # after each block's ReLU, before its pooling
        assert [[name for name, _ in net.get_submodule(f"conv{i}").named_children()] for i in (1, 2, 3)] == [
            ["conv", "bn", "relu", kind]] * 3
        return
    # After each stage, never inside a residual block; new to discriminative learning rates; the hand count.
    assert list(net.get_submodule(kind)) == ["layer1", "layer2", "layer3", "layer4"]
    assert all(kind not in name.split(".") for name, _ in net.layer1.named_modules())
    assert net.new_modules() == ["conv1", "fc", kind]
    assert sum(p.numel() for _, p in parameters) == ADDED[kind][1]


def test_parameters_each_kind_adds_to_the_cnn_match_a_hand_count():
    assert set(ADDED) == set(KINDS)

    def count(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    cnn = count(CNNClassifier())
    assert {kind: count(CNNClassifier(attention=kind)) - cnn for kind in KINDS} == {k: v[0] for k, v in ADDED.items()}
    assert count(CNNClassifier(attention="none")) == cnn


def test_an_unknown_kind_names_the_known_ones():
    for build in (lambda: create_attention("bam", 8), lambda: CNNClassifier(attention="bam"),
                  lambda: ResNet18Classifier(attention="bam")):
        with pytest.raises(UserInputError, match="attention='bam'") as error:
            build()
        assert "HINT:" in str(error.value)
        assert all(repr(name) in str(error.value) for name in ["none", *KINDS])


# The gate each kind draws, by its shape on a [2, 16, 8, 8] input: channels, positions or both.
GATE_SHAPES = {
    "se": {"gate": (2, 16, 1, 1)},
    "eca": {"gate": (2, 16, 1, 1)},
    "cbam": {"channel.gate": (2, 16, 1, 1), "spatial.gate": (2, 1, 8, 8)},
    "ge": {"gate": (2, 16, 1, 1)},  # extent 8 gathers 8x8 into one cell
    "coord": {"gate": (2, 16, 8, 8)},
    "gc": {},  # additive: no gate
}


@pytest.mark.parametrize("kind", KINDS)
def test_gates_are_found_by_name_and_start_near_one_half(kind):
    torch.manual_seed(0)
    block = create_attention(kind, 16, 4).eval()
    x = torch.rand(2, 16, 8, 8)
    gates = {name: module for name, module in block.named_modules() if name.rsplit(".", 1)[-1] == "gate"}
    captured = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o)) for name, m in gates.items()]
    y = block(x)
    for hook in hooks:
        hook.remove()
    assert {name: tuple(gate.shape) for name, gate in captured.items()} == GATE_SHAPES[kind]
    for gate in captured.values():
        assert (gate - 0.5).abs().max() < 0.05 if kind != "coord" else (gate - 0.25).abs().max() < 0.05
    if kind == "gc":  # adds a near-zero offset per channel at the start
        assert (y - x).abs().max() < 0.05 and (y - x).abs().max() > 0
    # The pictures find the same gates in a network.
    net = CNNClassifier(attention=kind).net
    expected = {f"conv{index}.{kind}.{name}" for index in (1, 2, 3) for name in GATE_SHAPES[kind]}
    assert set(attention_gates(net)) == expected


def test_ge_gathers_a_coarse_map_and_scales_by_it_upsampled():
    torch.manual_seed(0)
    block = create_attention("ge", 4, 2).eval()
    captured = []
    block.gate.register_forward_hook(lambda m, i, o: captured.append(o))
    x = torch.rand(1, 4, 16, 16)
    y = block(x)
    (gate,) = captured
    assert gate.shape == (1, 4, 2, 2)  # 16 / 8
    torch.testing.assert_close(y, x * gate.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3))


def test_ge_gathers_in_its_weights_precision_under_a_bf16_autocast_and_runs_in_pure_bf16():
    """The depthwise gather stays in fp32 under autocast (its bf16 backward is slow on CPU); bf16 weights run as bf16."""
    torch.manual_seed(0)
    block = create_attention("ge", 8, 2)
    gathered = []
    block.gather.register_forward_hook(lambda m, i, o: gathered.append(o.dtype))
    # bf16 in, as a bf16 conv's output reaches the block in a network under autocast
    x = torch.rand(4, 8, 16, 16, dtype=torch.bfloat16).to(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    assert gathered == [torch.float32] and y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())
    block.to(torch.bfloat16)
    assert block(x.detach()).dtype == torch.bfloat16 and gathered[-1] == torch.bfloat16


def test_ge_trains_when_the_training_set_leaves_one_image_for_the_last_batch(tiny_data_16):
    """GE's gather reaches 1x1 before a BatchNorm, which cannot normalise a batch of one in training."""
    data = CIFAR10DataModule(data_dir=tiny_data_16, val_size=7, batch_size=8)  # 65 = 8 * 8 + 1 training images
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(tiny("cnn", "ge", scheduler=None), data)
    assert trainer.global_step == 8  # the lone 65th image sat the epoch out


def test_coordinate_attention_gates_rows_times_columns():
    torch.manual_seed(0)
    block = create_attention("coord", 8, 2).eval()
    nn.init.normal_(block.fc_h.weight)  # away from the near-constant start
    nn.init.normal_(block.fc_w.weight)
    captured = []
    block.gate.register_forward_hook(lambda m, i, o: captured.append(o))
    x = torch.rand(1, 8, 6, 5)
    y = block(x)
    (gate,) = captured
    # A product of a per-row and a per-column gate has rank one in each channel.
    ranks = [torch.linalg.matrix_rank(gate[0, c]).item() for c in range(8)]
    assert ranks == [1] * 8
    torch.testing.assert_close(y, x * gate)


def test_gc_pools_context_by_a_softmax_over_positions_and_adds_it_everywhere():
    torch.manual_seed(0)
    block = GlobalContext(8, rd_ratio=2).eval()
    nn.init.normal_(block.fc2.weight)
    x = torch.rand(2, 8, 4, 5)
    weights = torch.softmax(block.conv_attn(x).flatten(1), dim=1)  # [N, HW]
    pooled = torch.einsum("nchw,nhw->nc", x, weights.view(2, 4, 5))
    offset = block.fc2(torch.relu(F.layer_norm(block.fc1(pooled), (4,), block.norm.weight, block.norm.bias)))
    torch.testing.assert_close(block(x), x + offset[:, :, None, None])


def test_eca_kernel_grows_with_the_channels_as_the_paper_sets_it():
    # k = the odd number nearest (log2 C + 1) / 2, at least 3.
    assert {c: EfficientChannelAttention(c).conv.kernel_size[0] for c in (16, 32, 64, 128, 256, 512, 1024)} == {
        16: 3, 32: 3, 64: 3, 128: 5, 256: 5, 512: 5, 1024: 5
    }


@pytest.mark.parametrize("kind", ["ge", "coord"])
def test_gates_over_channels_and_positions_are_drawn_and_scored_by_their_channel_mean(kind):
    torch.manual_seed(0)
    model = CNNClassifier(num_classes=3, widths=(8, 16, 16), hidden=16, attention=kind).eval()
    images, layers = torch.rand(2, 3, 32, 32), ["conv1", "conv3"]
    pictures = render_pictures(model, images, [0, 1], ["a", "b", "c"], layers, layer_root=model.net, methods=[])
    # GE's coarse map is 4x4 and 2x2 after conv1 and conv2, one cell (a channel gate) after conv3.
    assert list(pictures) == picture_tags(layers, channel_attention=kind == "ge", spatial_attention=True)
    gates = attention_gates(model.net)
    maps = saliency_maps(model, images, torch.tensor([0, 1]), {"conv3": model.net.conv3}, [], gates)
    captured = []
    model.net.conv1.get_submodule(f"{kind}.gate").register_forward_hook(lambda m, i, o: captured.append(o))
    model(images)
    expected = F.interpolate(captured[0].mean(1, keepdim=True), size=(32, 32), mode="bilinear")[:, 0]
    torch.testing.assert_close(maps[f"attention_conv1.{kind}"], expected)


def test_the_old_classes_are_the_new_one_with_the_attention_fixed():
    torch.manual_seed(0)
    se = CNNSEClassifier(se_ratio=8)
    torch.manual_seed(0)
    slot = CNNClassifier(attention="se", rd_ratio=8)
    assert {k: v.shape for k, v in se.state_dict().items()} == {k: v.shape for k, v in slot.state_dict().items()}
    assert se.hparams.attention == "se" and se.hparams.rd_ratio == 8 and se.hparams.se_ratio == 8
    assert isinstance(CNNCBAMClassifier().net.conv2.cbam, CBAM)
    assert isinstance(ResNet18CBAMClassifier().net.cbam.layer4, CBAM)
    plain = ResNet18Classifier().net
    assert plain.attention is None and not hasattr(plain, "cbam")
    # An alias's saved hyperparameters repeat its attention: handed back they are accepted, a different one is not.
    CNNSEClassifier(**se.hparams)
    with pytest.raises(UserInputError, match="attention='se'"):
        CNNSEClassifier(attention="cbam")
    with pytest.raises(UserInputError, match="rd_ratio=8"):
        CNNSEClassifier(se_ratio=8, rd_ratio=4)


# Saved by commit 7681424's code (before the attention slot): CNNSEClassifier(se_ratio=4) and
# CNNCBAMClassifier(rd_ratio=4), widths (4, 8, 8), hidden 16, 3 classes, 16x16 images, after one
# training step; the logits are what that code gave for the images below.
OLD_LOGITS = {
    "cnn_se": (CNNSEClassifier, "se", [[0.19101, 0.00696, 0.1913], [0.18596, 0.00695, 0.19352]]),
    "cnn_cbam": (CNNCBAMClassifier, "cbam", [[0.27504, 0.15926, -0.10145], [0.27384, 0.15908, -0.10098]]),
}


@pytest.mark.parametrize("name", OLD_LOGITS)
def test_a_checkpoint_of_the_old_classes_loads_and_predicts_as_before(name):
    cls, kind, logits = OLD_LOGITS[name]
    model = cls.load_from_checkpoint(OLD / f"{name}_7681424.ckpt", map_location="cpu", weights_only=False).eval()
    assert model.net.attention == kind and model.hparams.attention == kind and model.hparams.rd_ratio == 4
    assert tuple(model.hparams.widths) == (4, 8, 8)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(images), torch.tensor(logits), atol=1e-5, rtol=0)


def _checkpoint(model: L.LightningModule) -> dict:
    """What ``load_from_checkpoint`` reads of a Lightning checkpoint: the weights and the hyperparameters."""
    return {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": L.__version__}


def test_resnet_cbam_checkpoints_load_with_and_without_the_new_hyperparameters(tmp_path):
    torch.manual_seed(0)
    checkpoint = _checkpoint(ResNet18CBAMClassifier(num_classes=3))
    assert checkpoint["hyper_parameters"]["attention"] == "cbam"
    assert "net.cbam.layer1.channel.fc1.weight" in checkpoint["state_dict"]  # the old key
    torch.save(checkpoint, tmp_path / "new.ckpt")
    # The old class had no attention or rd_ratio arguments, so its checkpoints hold neither.
    for key in ("attention", "rd_ratio"):
        del checkpoint["hyper_parameters"][key]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    for saved in ("new.ckpt", "old.ckpt"):
        model = ResNet18CBAMClassifier.load_from_checkpoint(tmp_path / saved, map_location="cpu", weights_only=False)
        assert model.net.attention == "cbam"
        torch.testing.assert_close(model.state_dict(), checkpoint["state_dict"])


def test_a_fitted_checkpoint_of_any_kind_reloads_with_its_kind(tmp_path):
    model = tiny("cnn", "gc", scheduler=None)
    data = DataLoader(TensorDataset(torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])), batch_size=4)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, data)
    trainer.save_checkpoint(tmp_path / "gc.ckpt")
    loaded = CNNClassifier.load_from_checkpoint(tmp_path / "gc.ckpt", map_location="cpu", weights_only=False)
    assert loaded.net.attention == "gc" and loaded.hparams.rd_ratio == 2
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


@pytest.mark.parametrize(
    ("config", "extra", "cls", "module"),
    [
        ("cnn_fast", ["--model.attention", "eca"], CNNClassifier, "conv1.eca"),
        ("cnn_fast", ["--model.attention", "coord", "--model.rd_ratio", "8"], CNNClassifier, "conv3.coord"),
        ("resnet18_fast", ["--model.attention", "cbam"], ResNet18Classifier, "cbam.layer4"),
        ("cnn_se", [], CNNClassifier, "conv2.se"),
        ("cnn_cbam_fast", ["--model.attention", "ge"], CNNClassifier, "conv3.ge"),
        ("resnet_cbam", [], ResNet18Classifier, "cbam.layer1.channel"),
    ],
)
def test_configs_choose_the_attention_by_name(config, extra, cls, module, tiny_data):
    built = main([str(a) for a in tiny_args(REPO / f"configs/{config}.yaml", tiny_data)] + extra, run=False)
    assert type(built.model) is cls
    built.model.net.get_submodule(module)
    if "--model.rd_ratio" in extra:
        assert built.model.net.conv3.coord.fc1.out_features == 16  # 128 / 8


# The model sections of the configs before the attention slot (commit 7681424), as users may keep them.
OLD_MODEL_SECTIONS = {
    "cnn_se_fast": ("CNNSEClassifier", {"se_ratio": 8}, "conv1.se", 32 // 8),
    "cnn_cbam": ("CNNCBAMClassifier", {"rd_ratio": 8}, "conv1.cbam.channel", 32 // 8),
    "resnet_cbam_fast": ("ResNet18CBAMClassifier", {}, "cbam.layer1.channel", 64 // 16),
}


@pytest.mark.parametrize("config", OLD_MODEL_SECTIONS)
def test_configs_with_the_old_class_paths_still_parse(config, tiny_data, tmp_path):
    cls, ratio, module, reduced = OLD_MODEL_SECTIONS[config]
    recipe = yaml.safe_load((REPO / f"configs/{config}.yaml").read_text())
    arguments = recipe["model"]["init_args"]
    del arguments["attention"]
    arguments.pop("rd_ratio", None)
    recipe["model"] = {"class_path": f"lightning_modules.{cls}", "init_args": {**arguments, **ratio}}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(recipe))
    built = main([str(a) for a in tiny_args(tmp_path / "old.yaml", tiny_data)], run=False)
    assert type(built.model).__name__ == cls
    assert built.model.net.get_submodule(module).fc1.out_features == reduced


def test_an_unknown_attention_from_the_command_line_exits_2_with_the_fix(tiny_data, run_cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *tiny_args(REPO / "configs/cnn_fast.yaml", tiny_data), "--model.attention", "nonlocal",
                "--trainer.fast_dev_run", "true")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "attention='nonlocal'" in err and "HINT:" in err and "'coord'" in err


def test_the_squeeze_excite_block_is_the_specs():
    # SPEC 3: GAP -> Linear(C, C/16, no bias) -> ReLU -> Linear(C/16, C, no bias) -> sigmoid -> scale.
    block = SqueezeExcite(32)
    assert [(type(m), m.in_features, m.out_features, m.bias) for m in (block.fc1, block.fc2)] == [
        (nn.Linear, 32, 2, None), (nn.Linear, 2, 32, None)]
    x = torch.rand(2, 32, 4, 4)
    expected = x * torch.sigmoid(block.fc2(torch.relu(block.fc1(x.mean(dim=(2, 3))))))[:, :, None, None]
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_fast_descriptors_give_the_plain_ops_numbers(dtype):
    """The blocks' means (a sum and a scale) and CBAM's channel max (over an NHWC view) are only faster.

    The same numbers in the configs' layout and sizes, so runs trained before the change (the
    attention records) and after it share one code path, except that CBAM's spatial half adds its
    three gradient paths in another order: a rounding apart (0.4 % of the elements in bf16 here).
    """
    from lightning_modules.attention import SpatialAttention, _mean

    torch.manual_seed(0)
    for size in (32, 16, 8, 4):
        x = torch.randn(8, 64, size, size, dtype=dtype).to(memory_format=torch.channels_last).requires_grad_()
        for dim, keepdim in (((2, 3), False), (1, True), (2, False), (3, False)):
            fast, plain = _mean(x, dim, keepdim), x.mean(dim=dim, keepdim=keepdim)
            assert torch.equal(fast, plain), (size, dim)
            weights = torch.randn_like(plain)
            assert torch.equal(*(torch.autograd.grad((y * weights).sum(), x)[0] for y in (fast, plain))), (size, dim)
        spatial = SpatialAttention()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):  # as the runs train
            fast = spatial(x)
            channel_max = x.max(dim=1, keepdim=True).values
            plain = x * spatial.gate(spatial.conv(torch.cat([x.mean(dim=1, keepdim=True), channel_max], dim=1)))
        assert torch.equal(fast, plain), size
        weights = torch.randn_like(plain)
        gradients = [torch.autograd.grad((y * weights).sum(), x)[0] for y in (fast, plain)]
        # A sum of three paths in another order: at most one rounding of the largest gradient apart.
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(*gradients, rtol=eps, atol=eps * float(gradients[1].abs().max()))
