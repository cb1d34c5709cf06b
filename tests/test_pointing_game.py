"""Grad-CAM is faithful, not just pretty: it points at the object that decides the class.

Synthetic 32x32 images: grey noise with one small coloured square at a random
place; the square's colour is the class. A CNN trained for a few seconds must
have its last conv layer's Grad-CAM peak inside the square (the pointing game)
on most held-out images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_modules.cnn import CNNClassifier
from visualization.attributions import gradcam, pointing_game, resolve_layers

SIZE = 32
OBJECT = 6  # side of the square in pixels: 1.5 cells of conv3's 8x8 map
COLOURS = torch.tensor([[1.0, 0.15, 0.15], [0.15, 1.0, 0.15], [0.15, 0.15, 1.0]])
LAYERS = ["conv1", "conv2", "conv3"]
STEPS = 50  # batches of 32: a few seconds on two CPU cores


def squares_on_noise(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images in [0, 1], labels, and the boolean object masks [N, H, W]."""
    images = torch.rand(count, 1, SIZE, SIZE, generator=generator).mul(0.6).expand(-1, 3, -1, -1).clone()
    labels = torch.randint(len(COLOURS), (count,), generator=generator)
    masks = torch.zeros(count, SIZE, SIZE, dtype=torch.bool)
    corners = torch.randint(SIZE - OBJECT + 1, (count, 2), generator=generator)
    for i, (top, left) in enumerate(corners.tolist()):
        images[i, :, top : top + OBJECT, left : left + OBJECT] = COLOURS[labels[i]][:, None, None]
        masks[i, top : top + OBJECT, left : left + OBJECT] = True
    return images, labels, masks


def test_gradcam_of_the_last_conv_layer_points_at_the_object():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = CNNClassifier(num_classes=len(COLOURS), mean=(0.5,) * 3, std=(0.25,) * 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(STEPS):
        images, labels, _ = squares_on_noise(32, generator)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    images, labels, masks = squares_on_noise(200, generator)
    model.eval()
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    cams = gradcam(model, images, labels, resolve_layers(model.net, LAYERS))
    scores = {name: pointing_game(cam, masks) for name, cam in cams.items()}
    print(f"accuracy {accuracy:.3f}, pointing game {scores}")  # shown with pytest -s
    assert accuracy > 0.9, f"the CNN did not learn the task (accuracy {accuracy:.3f})"
    assert scores["conv3"] >= 0.8, scores
