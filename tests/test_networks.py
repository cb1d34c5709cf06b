"""Shapes, sizes, layer names and attention gates of every network."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from lightning_modules import (
    CNNCBAMClassifier,
    CNNClassifier,
    CNNSEClassifier,
    LeNetClassifier,
    MLPClassifier,
    ResNet18CBAMClassifier,
    ResNet18Classifier,
    VGGClassifier,
)
from lightning_modules.attention import CBAM, SqueezeExcite
from lightning_modules.vgg import VGG_CONFIGS

ALL = [
    MLPClassifier,
    LeNetClassifier,
    CNNClassifier,
    CNNSEClassifier,
    CNNCBAMClassifier,
    ResNet18Classifier,
    ResNet18CBAMClassifier,
    VGGClassifier,
]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
@pytest.mark.parametrize("num_classes", [10, 7])
def test_logits_shape_and_finite(cls, num_classes):
    model = cls(num_classes=num_classes).eval()
    logits = model(torch.rand(4, 3, 32, 32))
    assert logits.shape == (4, num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("cls", [MLPClassifier, LeNetClassifier, CNNClassifier, CNNSEClassifier, CNNCBAMClassifier])
def test_small_networks_take_grayscale_28px(cls):
    model = cls(num_classes=10, input_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,)).eval()
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_mlp_has_about_1_7_million_parameters():
    assert 1.65e6 < n_params(MLPClassifier()) < 1.75e6


def test_se_adds_under_two_percent_to_the_cnn():
    cnn, cnn_se = n_params(CNNClassifier()), n_params(CNNSEClassifier())
    assert cnn < cnn_se < 1.02 * cnn


def test_cbam_adds_under_two_percent_to_the_cnn_and_more_than_se():
    cnn, cnn_se, cnn_cbam = n_params(CNNClassifier()), n_params(CNNSEClassifier()), n_params(CNNCBAMClassifier())
    # The same channel bottleneck as SE plus a 7x7 conv over two maps per block (98 weights).
    assert cnn_cbam - cnn_se == 3 * 2 * 7 * 7
    assert cnn_cbam < 1.02 * cnn


def test_cnn_blocks_are_named_conv1_to_conv3_with_the_attention_inside():
    se_net, cbam_net = CNNSEClassifier().net, CNNCBAMClassifier().net
    for index, width in zip((1, 2, 3), (32, 64, 128)):
        block = se_net.get_submodule(f"conv{index}")
        assert block.conv.out_channels == width
        assert isinstance(block.se, SqueezeExcite)
        assert isinstance(cbam_net.get_submodule(f"conv{index}.cbam"), CBAM)
    assert not hasattr(CNNClassifier().net.conv1, "se")
    assert not hasattr(CNNClassifier().net.conv1, "cbam")


def test_the_cnn_refuses_an_attention_block_it_does_not_have():
    from lightning_modules.cnn import CNN
    from common.user_input import UserInputError

    with pytest.raises(UserInputError, match=r"(?s)attention='bam'.*\['none', 'se', 'cbam', 'eca'"):
        CNN(3, 10, attention="bam")


def test_resnet_stage_shapes_and_cbam_placement():
    net = ResNet18CBAMClassifier().net.eval()
    shapes = {}
    hooks = [
        net.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape[1:]))
        for name in ("layer1", "layer2", "layer3", "layer4")
    ]
    net(torch.rand(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert shapes == {
        "layer1": (64, 32, 32),
        "layer2": (128, 16, 16),
        "layer3": (256, 8, 8),
        "layer4": (512, 4, 4),
    }
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert set(net.cbam.keys()) == {"layer1", "layer2", "layer3", "layer4"}
    # CBAM sits between stages, never inside a residual block.
    assert not any(isinstance(m, CBAM) for name in ("layer1", "layer4") for m in net.get_submodule(name).modules())
    assert ResNet18Classifier().net.attention is None and not hasattr(ResNet18Classifier().net, "cbam")
    assert not hasattr(net, "maxpool")


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
def test_vgg_depth_selects_the_real_table(depth):
    net = VGGClassifier(depth=depth).net
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == depth - 3  # VGG-N counts 3 fully connected layers of the ImageNet head
    assert len(convs) == sum(1 for item in VGG_CONFIGS[depth] if item != "M")


def test_vgg_rejects_unknown_depth():
    with pytest.raises(ValueError, match="depth=12"):
        VGGClassifier(depth=12)


def _gates(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    gates: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda m, i, o, name=name: gates.__setitem__(name, o))
        for name, module in model.named_modules()
        if name.endswith("gate")
    ]
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return gates


# SE per CNN block; CBAM: channel + spatial per CNN block or ResNet stage.
@pytest.mark.parametrize(("cls", "expected"), [(CNNSEClassifier, 3), (CNNCBAMClassifier, 6), (ResNet18CBAMClassifier, 8)])
def test_attention_gates_start_near_one_half(cls, expected):
    torch.manual_seed(0)
    model = cls().eval()
    gates = _gates(model, torch.rand(8, 3, 32, 32))
    assert len(gates) == expected
    for name, gate in gates.items():
        assert (gate - 0.5).abs().max() < 0.1, name


def test_attention_only_rescales_its_input():
    x = torch.rand(2, 16, 8, 8)
    for block in (SqueezeExcite(16), CBAM(16)):
        y = block(x)
        assert y.shape == x.shape
        assert (y <= x + 1e-6).all() and (y >= 0).all()  # gates in (0, 1) scale non-negative input down


def test_model_normalises_with_linked_statistics():
    model = CNNClassifier(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()
    images = torch.rand(2, 3, 32, 32)
    expected = model.net((images - 0.5) / 0.25)
    torch.testing.assert_close(model(images), expected)


def test_channels_last_and_compile_keep_outputs_and_checkpoint_keys(monkeypatch):
    # aot_eager: dynamo's tracing and AOTAutograd's graphs, without Inductor's C++ build (a minute on
    # 2 cores, most of this test's time); benchmarks/gpu_check.py compiles with Inductor for real.
    monkeypatch.setattr(torch, "compile", partial(torch.compile, backend="aot_eager"))
    torch.manual_seed(0)
    plain = CNNClassifier().eval()
    fast = CNNClassifier(channels_last=True, compile=True).eval()
    fast.load_state_dict(plain.state_dict())
    fast.configure_model()
    assert fast.net.conv2.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert set(fast.state_dict()) == set(plain.state_dict())  # no "_orig_mod." prefixes
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(fast(images), plain(images), rtol=1e-4, atol=1e-4)


def test_the_compile_option_leaves_module_compile_a_method():
    model = CNNClassifier(compile=True)
    assert model.compile_net and model.hparams.compile  # the config key stays `compile`
    assert model.compile.__func__ is nn.Module.compile


def test_cbam_pools_by_max_index_with_the_gradients_of_amax():
    # CBAM as the paper writes it, with amax; the module takes the max by index (a cheaper backward).
    torch.manual_seed(0)
    block = CBAM(16, rd_ratio=4)
    x = torch.randn(3, 16, 6, 5).to(memory_format=torch.channels_last).requires_grad_(True)
    reference_x = x.detach().clone().requires_grad_(True)

    def reference(inputs: torch.Tensor) -> torch.Tensor:
        channel = block.channel
        logits = channel.mlp(inputs.mean(dim=(2, 3))) + channel.mlp(inputs.amax(dim=(2, 3)))
        scaled = inputs * channel.gate(logits[:, :, None, None])
        pooled = torch.cat([scaled.mean(dim=1, keepdim=True), scaled.amax(dim=1, keepdim=True)], dim=1)
        return scaled * block.spatial.gate(block.spatial.conv(pooled))

    weights = torch.randn(3, 16, 6, 5)
    (block(x) * weights).sum().backward()
    expected = reference(reference_x)
    (expected * weights).sum().backward()
    torch.testing.assert_close(block(x), expected)
    torch.testing.assert_close(x.grad, reference_x.grad)
