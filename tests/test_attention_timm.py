"""Our attention blocks beside timm's ``create_attn``: where they agree and where they differ.

timm is not a dependency (see ``lightning_modules.attention``); these tests run where it is
installed and are skipped elsewhere. Each copies our weights into timm's block and compares outputs.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from lightning_modules.attention import create_attention

layers = pytest.importorskip("timm.layers")


def _n(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _as_conv(weight: torch.Tensor) -> torch.Tensor:
    return weight[:, :, None, None]


def test_eca_is_timms():
    torch.manual_seed(0)
    for channels in (32, 128, 512):
        ours, theirs = create_attention("eca", channels).eval(), layers.create_attn("eca", channels).eval()
        assert ours.conv.kernel_size == theirs.conv.kernel_size
        theirs.conv.weight.data.copy_(ours.conv.weight)
        x = torch.rand(2, channels, 4, 4)
        torch.testing.assert_close(ours(x), theirs(x))


def test_gc_is_timms_gca_not_its_gc():
    torch.manual_seed(0)
    ours = create_attention("gc", 64, 16).eval()
    nn.init.normal_(ours.fc2.weight)
    theirs = layers.create_attn("gca", 64, rd_ratio=1 / 16).eval()  # the paper's add fusion
    with torch.no_grad():
        theirs.conv_attn.weight.copy_(ours.conv_attn.weight)
        theirs.conv_attn.bias.zero_()
        theirs.mlp_add.fc1.weight.copy_(_as_conv(ours.fc1.weight))
        theirs.mlp_add.fc1.bias.copy_(ours.fc1.bias)
        theirs.mlp_add.norm.weight.copy_(ours.norm.weight)
        theirs.mlp_add.norm.bias.copy_(ours.norm.bias)
        theirs.mlp_add.fc2.weight.copy_(_as_conv(ours.fc2.weight))
        theirs.mlp_add.fc2.bias.copy_(ours.fc2.bias)
    theirs.mlp_add.norm.eps = ours.norm.eps  # 1e-5, GCNet's own code (nn.LayerNorm); timm's LayerNorm2d has 1e-6
    x = torch.rand(2, 64, 6, 6)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
    # timm's "gc" multiplies by a sigmoid gate of the context instead of adding it (the paper's "scale" fusion).
    default = layers.create_attn("gc", 64)
    assert default.mlp_scale is not None and default.mlp_add is None


def test_timms_se_has_biases_and_a_bottleneck_rounded_to_eight():
    # SPEC 3's SE: Linear(C, C/16, no bias) -> ReLU -> Linear(C/16, C, no bias): 2 * 32 * 2 = 128 at 32 channels.
    ours, theirs = create_attention("se", 32), layers.create_attn("se", 32)
    assert _n(ours) == 128
    assert theirs.fc1.out_channels == 8 and theirs.fc1.bias is not None  # 32 / 16 = 2, rounded up to 8
    assert _n(theirs) == 32 * 8 + 8 + 8 * 32 + 32


def test_timms_cbam_has_our_channel_half_and_a_batchnorm_in_its_spatial_half():
    torch.manual_seed(0)
    ours, theirs = create_attention("cbam", 32, 16).eval(), layers.create_attn("cbam", 32).eval()
    with torch.no_grad():
        theirs.channel.fc1.weight.copy_(_as_conv(ours.channel.fc1.weight))
        theirs.channel.fc2.weight.copy_(_as_conv(ours.channel.fc2.weight))
        theirs.spatial.conv.conv.weight.copy_(ours.spatial.conv.weight)
    x = torch.rand(2, 32, 8, 8)
    torch.testing.assert_close(ours.channel(x), theirs.channel(x))
    # SPEC: a 7x7 conv over the two pooled maps, then the sigmoid; timm puts a BatchNorm between.
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ours.spatial.modules())
    assert isinstance(theirs.spatial.conv.bn, nn.BatchNorm2d)
    with torch.no_grad():
        theirs.spatial.conv.bn.running_var.fill_(4.0)  # what training leaves there: the logits are rescaled
    assert not torch.allclose(ours.spatial(x), theirs.spatial(x), atol=1e-3)


def test_timms_ge_is_global_pooling_and_timms_coord_is_narrower_than_the_paper():
    # timm's default "ge" gathers by a global average with no parameters: with its MLP, SE with biases.
    # (Read from its signature: timm 1.0.31's GatherExcite cannot be built, it unpacks its device/dtype
    # dict with * and ConvMlp gets the keys as positional arguments.)
    defaults = inspect.signature(layers.GatherExcite).parameters
    assert defaults["extent"].default == 0 and defaults["extra_params"].default is False
    assert len(create_attention("ge", 64).gather) == 3 * 2 + 2  # ours: GE-theta+, three strided depthwise convs
    # Coordinate attention's bottleneck: the paper max(8, C / 32); timm C / 16 * 2/3 rounded to 8; ours max(8, C / 16).
    assert layers.create_attn("coord", 512).conv1.out_channels == 24
    assert create_attention("coord", 512).fc1.out_features == 32
