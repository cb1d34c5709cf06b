"""Attribution helpers on a tiny CNN: no Trainer, random data, CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.user_input import UserInputError
from captum.attr import LayerAttribution, LayerGradCam

from visualization.attributions import (
    INPUT_ATTRIBUTIONS,
    attribution_mode,
    deconvolution,
    guided_backprop,
    guided_gradcam,
    normalize_per_image,
    resolve_layers,
)
from visualization.cams import CAMS, capture_activations, gradcam, layer_cams
from visualization.methods import CAM_METHODS, METHODS, check_methods
from visualization.metrics import pointing_game


class Gate(nn.Module):
    """SE-like channel attention with a named Sigmoid gate, as the models use."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.gate(self.fc(x.mean(dim=(2, 3))))
        return x * weights[:, :, None, None]


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        Gate(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(16, 4),
    )


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks
        and not m._forward_pre_hooks
        and not m._backward_hooks
        and not m._backward_pre_hooks
        for m in model.modules()
    )


@pytest.fixture
def model() -> nn.Sequential:
    return tiny_cnn()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_gradcam_shape_range_and_order(model, x):
    layers = resolve_layers(model, ["4", "0"])
    cams = gradcam(model, x, torch.tensor([0, 1, 2]), layers)
    assert list(cams) == ["4", "0"]
    for cam in cams.values():
        assert cam.shape == (3, 16, 16)
        assert torch.isfinite(cam).all()
        assert cam.min() >= 0 and cam.max() <= 1
        # Each non-blank map reaches 1 somewhere: scaled per image.
        peaks = cam.flatten(1).amax(dim=1)
        assert ((peaks == 0) | torch.isclose(peaks, torch.ones(()))).all()
    assert cams["0"].flatten(1).amax(dim=1).gt(0).any()


def test_gradcam_zero_gradient_gives_zeros(model, x):
    # A classifier with zero weights: the score ignores every layer.
    nn.init.zeros_(model[-1].weight)
    cams = gradcam(model, x, 1, resolve_layers(model, ["4"]))
    assert torch.equal(cams["4"], torch.zeros(3, 16, 16))


def test_normalize_per_image_constant_maps_are_zero():
    maps = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 7.0), torch.arange(16.0).view(4, 4)])
    out = normalize_per_image(maps)
    assert torch.isfinite(out).all()
    assert out[:2].abs().sum() == 0
    assert out[2].min() == 0 and out[2].max() == 1


def test_attribution_mode_restores_state(model, x):
    model.train()
    model[0].eval()  # a mixed state must come back exactly, not as all-train
    for p in model[0].parameters():
        p.requires_grad_(False)  # partially frozen, as in progressive unfreezing
    model[4].weight.grad = torch.full_like(model[4].weight, 3.0)
    grad_before = model[4].weight.grad
    flags = [m.training for m in model.modules()]
    requires = [p.requires_grad for p in model.parameters()]
    torch.manual_seed(123)
    expected_next = torch.rand(5)
    torch.manual_seed(123)

    with attribution_mode(model):
        assert not any(m.training for m in model.modules())
        assert torch.is_grad_enabled()
        torch.rand(100)  # consumes RNG inside
        assert model[4].weight.grad is None

    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == requires
    assert model[4].weight.grad is grad_before
    assert torch.equal(grad_before, torch.full_like(model[4].weight, 3.0))
    assert torch.equal(torch.rand(5), expected_next)


def test_attribution_mode_restores_after_exception(model):
    model.train()
    model[4].weight.requires_grad_(False)
    requires = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="inside"):
        with attribution_mode(model):
            raise RuntimeError("inside")
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == requires


def test_all_methods_work_inside_inference_mode(model, x):
    model.train()
    flags = [m.training for m in model.modules()]
    with torch.inference_mode():
        xi = x.clone()  # an inference tensor, like a batch in validation
        yi = torch.tensor([0, 1, 2])
        assert xi.is_inference()
        layers = resolve_layers(model, ["0", "4"])
        cams = gradcam(model, xi, yi, layers)
        gb = guided_backprop(model, xi, yi)
        dc = deconvolution(model, xi, None)
        ggc = guided_gradcam(model, xi, yi, layers["4"])
        assert torch.is_inference_mode_enabled()
    assert cams["4"].shape == (3, 16, 16)
    for attr in (gb, dc, ggc):
        assert attr.shape == x.shape
        assert torch.isfinite(attr).all()
        assert attr.abs().sum() > 0
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert no_hooks(model)


def test_guided_backprop_differs_from_deconvolution(model, x):
    # The two override ReLU gradients differently; equal outputs would mean
    # the overrides were not applied.
    gb = guided_backprop(model, x, 0)
    dc = deconvolution(model, x, 0)
    assert not torch.allclose(gb, dc)


def test_capture_activations_and_gates(model, x):
    layers = resolve_layers(model, ["0", "6.gate"])
    acts = capture_activations(model, x, layers)
    assert acts["0"].shape == (3, 8, 16, 16)
    gate = acts["6.gate"]
    assert gate.shape == (3, 16)
    assert gate.min() >= 0 and gate.max() <= 1
    assert not gate.requires_grad
    assert no_hooks(model)


def test_hooks_removed_when_forward_raises(model, x):
    broken = nn.Sequential(model, Boom())
    layers = resolve_layers(broken, ["0.0", "0.4"])
    broken.train()
    with pytest.raises(RuntimeError, match="boom"):
        capture_activations(broken, x, layers)
    assert no_hooks(broken)
    with pytest.raises(RuntimeError, match="boom"):
        gradcam(broken, x, 0, layers)
    assert no_hooks(broken)
    with pytest.raises(RuntimeError, match="boom"):
        guided_backprop(broken, x, 0)
    assert no_hooks(broken)
    assert all(m.training for m in broken.modules())


def test_unknown_layer_lists_valid_names(model):
    with pytest.raises(ValueError) as info:
        resolve_layers(model, ["4", "conv9"])
    message = str(info.value)
    assert "'conv9'" in message
    assert "6.gate" in message  # gates are offered as layers too
    assert "4" in message and "HINT:" in message


def test_wrong_number_of_targets(model, x):
    with pytest.raises(ValueError, match="2 targets for a batch of 3"):
        gradcam(model, x, [0, 1], resolve_layers(model, ["4"]))


def test_pointing_game():
    cams = torch.zeros(4, 8, 8)
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    cams[0, 3, 3] = 1.0  # inside
    cams[1, 7, 7] = 1.0  # outside
    cams[2, 2, 4] = 0.5  # inside
    # cams[3] is all zero: points nowhere, a miss even though (0, 0) ...
    masks[3, 0, 0] = True  # ... would be inside the mask.
    assert pointing_game(cams, masks) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same shape"):
        pointing_game(cams, masks[:, :4])


def test_a_compiled_network_gives_the_uncompiled_maps_and_activations(monkeypatch):
    """Hooks added after ``torch.compile`` are not called by compiled code: attributions run eagerly."""
    from functools import partial

    from lightning_modules.cnn import CNNSEClassifier

    monkeypatch.setattr(torch, "compile", partial(torch.compile, backend="eager"))  # no C++ build, same hooks
    torch.manual_seed(0)
    classifier = CNNSEClassifier(num_classes=3, widths=(4, 8, 8), hidden=16, compile=True)
    classifier.configure_model()
    compiled = classifier._compiled_net
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    classifier(x).sum().backward()  # compiled in training mode, as during fit
    classifier.zero_grad()
    layers = resolve_layers(classifier.net, ["conv1", "conv3.conv", "conv3.se.gate"])

    def pictures() -> list[torch.Tensor]:
        maps = gradcam(classifier, x, None, layers)
        acts = capture_activations(classifier, x, layers)
        return [*maps.values(), *acts.values(), guided_backprop(classifier, x, 1)]

    with_compile = pictures()
    object.__setattr__(classifier, "_compiled_net", None)
    for got, expected in zip(with_compile, pictures(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert compiled is not None and no_hooks(classifier)


def test_our_gradcam_is_captums_layer_gradcam(model, x):
    """The one Grad-CAM (the CAM base with the mean-gradient weights) equals Captum's LayerGradCam, layer by layer."""
    layers = resolve_layers(model, ["0", "4"])
    targets = torch.tensor([0, 1, 2])
    ours = gradcam(model, x, targets, layers)
    assert list(ours) == ["0", "4"] and all(ours[name].abs().sum() > 0 for name in ours)
    with attribution_mode(model):
        for name, layer in layers.items():
            raw = LayerGradCam(model, layer).attribute(x.clone(), target=targets, relu_attributions=True)
            up = LayerAttribution.interpolate(raw, tuple(x.shape[-2:]), "bilinear")
            torch.testing.assert_close(ours[name], normalize_per_image(up[:, 0].clamp_min(0)), rtol=0, atol=1e-6)
    assert layer_cams(model, x, targets, layers, "gradcam").keys() == ours.keys()


def test_only_score_cam_goes_without_gradients_and_no_method_is_special_cased_by_name():
    assert [name for name, cam in CAMS.items() if not cam.uses_gradients] == ["scorecam"]
    assert set(CAM_METHODS) == set(CAMS) - {"gradcam"} and set(METHODS) == {*INPUT_ATTRIBUTIONS, *CAM_METHODS}


@pytest.mark.parametrize("method", CAM_METHODS)
def test_cam_variants_leave_the_model_as_found_and_refuse_a_layer_without_a_feature_map(model, x, method):
    model.train()
    flags = [m.training for m in model.modules()]
    with torch.inference_mode():
        cams = layer_cams(model, x.clone(), None, resolve_layers(model, ["4"]), method)
    assert cams["4"].shape == (3, 16, 16) and cams["4"].amax() == 1 and cams["4"].amin() == 0
    # The gate's output is [N, C] channel weights, the classifier's [N, classes]: no map to weight.
    for layer in ("6.gate", "10"):
        wanted = rf"{method} needs a layer whose output is a feature map.*'{layer}'"
        with pytest.raises(UserInputError, match=wanted) as info:
            layer_cams(model, x, 0, resolve_layers(model, ["0", layer]), method)
        hint = f"HINT: for this layer use a method on the input instead, one of {list(INPUT_ATTRIBUTIONS)}"
        assert hint in str(info.value)
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None and p.requires_grad for p in model.parameters()) and no_hooks(model)


def test_a_method_that_does_not_apply_is_refused_with_those_that_do():
    with pytest.raises(UserInputError, match=r"Unknown methods \['gradcam\+\+'\]\.\nHINT: choose from \['guided_b"):
        check_methods(["gradcam++"])
    without_relu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    check_methods(["integrated_gradients", "layercam"], without_relu)  # these need no ReLU module
    with pytest.raises(UserInputError) as info:
        check_methods(["layercam", "guided_backprop", "deconvolution"], without_relu)
    applies = [m for m in METHODS if m not in ("guided_backprop", "deconvolution", "guided_gradcam")]
    assert str(info.value).startswith("Methods ['guided_backprop', 'deconvolution'] guide the gradient")
    assert str(info.value).endswith(f"HINT: choose from those that apply to it: {applies}.")
