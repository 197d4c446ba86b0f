"""Small convolutional classifiers for 8x8 digits and 28x28 MNIST-like images."""

from __future__ import annotations

from torch import nn

from engine.models.registry import (
    DIGITS_MEAN,
    DIGITS_STD,
    MNIST_MEAN,
    MNIST_STD,
    register_model,
    with_normalization,
)


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


@register_model(input_size=(1, 8, 8), num_classes=10, mean=DIGITS_MEAN, std=DIGITS_STD)
def digits_cnn(num_classes: int = 10, width: int = 32) -> nn.Module:
    """Two conv blocks, one 2x2 pool and a two-layer head for sklearn's 8x8 digits (about 0.3M params)."""
    net = nn.Sequential(
        conv_block(1, width), conv_block(width, 2 * width), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes),
    )
    return with_normalization(net, DIGITS_MEAN, DIGITS_STD)


@register_model(input_size=(1, 28, 28), num_classes=10, mean=MNIST_MEAN, std=MNIST_STD)
def mnist_cnn(num_classes: int = 10, width: int = 32) -> nn.Module:
    """Three conv stages with pooling (28 -> 14 -> 7) and a linear head, for MNIST and Fashion-MNIST."""
    net = nn.Sequential(
        conv_block(1, width), nn.MaxPool2d(2),
        conv_block(width, 2 * width), nn.MaxPool2d(2),
        conv_block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4 * width, num_classes),
    )
    return with_normalization(net, MNIST_MEAN, MNIST_STD)
