"""Score-CAM's weights: a softmax over channels of the score gains, so no empty map where the output responds."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visualization.attributions import normalize_per_image
from visualization.cams import layer_cams


class DarkerIsLikelier(nn.Module):
    """Class 0's logit falls as the image brightens: every channel's mask lowers it below the black image's.

    The identity 1x1 conv and its ReLU are the explained layer (activations = the image's channels).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None])
        self.scale = torch.tensor([1.0, 2.0, 4.0])  # channels count differently: their weights differ

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        darkness = -(self.relu(self.conv(x)).mean(dim=(2, 3)) * self.scale).sum(dim=1)
        return torch.stack([darkness, torch.zeros_like(darkness)], dim=1)


def test_every_gain_negative_still_gives_the_softmax_weighted_map():
    model = DarkerIsLikelier()
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cams = layer_cams(model, images, 0, {"conv": model.relu}, "scorecam")["conv"]
    # By hand: each channel, scaled to [0, 1], masks the image; the gain is the class-0 logit over the black image's
    # (0); the weights are the softmax of the gains over the channels.
    low = images.amin(dim=(2, 3), keepdim=True)
    masks = (images - low) / (images.amax(dim=(2, 3), keepdim=True) - low)
    gains = torch.stack([model(images * masks[:, c : c + 1])[:, 0] for c in range(3)], dim=1)
    assert (gains < 0).all()  # the old weights (the raw gains) were negative for every channel: an empty map
    weights = F.softmax(gains, dim=1)
    expected = normalize_per_image((weights[:, :, None, None] * images).sum(dim=1))
    assert (cams.flatten(1).amax(dim=1) == 1).all()  # no empty map
    torch.testing.assert_close(cams, expected, rtol=0, atol=1e-6)


def test_a_model_whose_output_ignores_the_image_gets_an_empty_map():
    model = DarkerIsLikelier()
    model.scale = torch.zeros(3)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cams = layer_cams(model, images, 0, {"conv": model.relu}, "scorecam")["conv"]
    assert (cams == 0).all()
