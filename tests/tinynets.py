"""Tiny architectures for fast end-to-end tests, built through `model.arch: "tests.tinynets:tiny_cnn"`."""

from __future__ import annotations

from torch import nn


def tiny_cnn(num_classes: int = 10, width: int = 8) -> nn.Module:
    """conv-BN-ReLU x2, pool, Linear: a few thousand parameters, BatchNorm included."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )
