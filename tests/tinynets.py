"""Tiny architectures for fast end-to-end tests, built through `model.arch: "tests.tinynets:tiny_cnn"`."""

from __future__ import annotations

import torch
from torch import nn


def tiny_cnn(num_classes: int = 10, width: int = 8) -> nn.Module:
    """conv-BN-ReLU x2, pool, Linear: a few thousand parameters, BatchNorm included."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )


class _ChannelGain(nn.Module):
    """Multiplies channel 0 by ``gain``: one channel's range dwarfs the others', so a per-tensor int8 scale
    (static quantization of activations) leaves the other channels a level or two: a deliberately coarse int8."""

    def __init__(self, channels: int, gain: float) -> None:
        super().__init__()
        scale = torch.ones(1, channels, 1, 1)
        scale[0, 0] = gain
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def outlier_cnn(num_classes: int = 10, width: int = 8, gain: float = 1000.0) -> nn.Module:
    """tiny_cnn with :class:`_ChannelGain` after the first block: trains as well, quantizes badly."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), _ChannelGain(width, gain),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )
