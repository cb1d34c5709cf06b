"""Placeholder; the batched augmentation lands from the fast-data branch."""

import torch
from torch import nn
from torchvision.transforms import v2


class BatchAugment(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.per_image = v2.Compose([
            v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.2, 0.2, 0.2, 0.1), v2.RandomRotation(15),
        ])

    def forward(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        return torch.stack([self.per_image(img) for img in x])
