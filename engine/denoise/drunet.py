"""DRUNet (Zhang et al. 2021, "Plug-and-Play Image Restoration with Deep Denoiser Prior", Sec. 3.1).

A bias-free U-Net of residual blocks that also reads a noise-level map: one extra input channel
filled with the noise level sigma (on the image's [0, 1] scale). The widths and block count are
parameters so that 8x8 digits or 28x28 Fashion-MNIST get a network of their size; the colour
configuration of the paper, widths (64, 128, 256, 512) and 4 blocks, has about 32.6M parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.registry import register_model


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)


class ResBlock(nn.Module):
    """x + conv3(relu(conv3(x))), no bias (DRUNet's 'CRC' block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv3x3(channels, channels), nn.ReLU(inplace=True), conv3x3(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def down_stage(c_in: int, c_out: int, blocks: int) -> nn.Sequential:
    """``blocks`` residual blocks, then a 2x2 stride-2 convolution that halves the size."""
    return nn.Sequential(*[ResBlock(c_in) for _ in range(blocks)], nn.Conv2d(c_in, c_out, 2, stride=2, bias=False))


def up_stage(c_in: int, c_out: int, blocks: int) -> nn.Sequential:
    """A 2x2 stride-2 transposed convolution that doubles the size, then ``blocks`` residual blocks."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 2, stride=2, bias=False), *[ResBlock(c_out) for _ in range(blocks)])


class DRUNet(nn.Module):
    """Noise-level-conditioned residual U-Net denoiser: (N, C, H, W) noisy images in, (N, C, H, W) out.

    ``forward(x, sigma)`` takes the noise level as a float or a per-image tensor (N,); without it the
    module's ``noise_level`` is used, which ``engine.denoise.denoised_classifier`` fixes so that
    the denoiser can sit in a plain ``nn.Sequential`` in front of a classifier. Scriptable, so that
    ``torch.jit.freeze`` can fold it into one graph with the classifier.
    """

    __constants__ = ("pad_multiple",)
    pad_multiple = 8  # three stride-2 stages

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (64, 128, 256, 512), blocks: int = 4,
                 noise_level: float = 0.0) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"DRUNet has three down stages and a body: give 4 widths, got {list(widths)}")
        w1, w2, w3, w4 = (int(w) for w in widths)
        self.in_channels, self.widths, self.blocks = in_channels, (w1, w2, w3, w4), blocks
        self.noise_level = float(noise_level)
        self.head = conv3x3(in_channels + 1, w1)
        self.down1, self.down2, self.down3 = down_stage(w1, w2, blocks), down_stage(w2, w3, blocks), down_stage(w3, w4, blocks)
        self.body = nn.Sequential(*[ResBlock(w4) for _ in range(blocks)])
        self.up3, self.up2, self.up1 = up_stage(w4, w3, blocks), up_stage(w3, w2, blocks), up_stage(w2, w1, blocks)
        self.tail = conv3x3(w1, in_channels)

    def noise_map(self, x: torch.Tensor, sigma: float | torch.Tensor | None) -> torch.Tensor:
        n, _, h, w = x.shape
        if isinstance(sigma, torch.Tensor):
            if sigma.dim() > 0:
                return sigma.to(x).view(-1, 1, 1, 1).expand(n, 1, h, w)
            return x.new_full((n, 1, h, w), float(sigma))
        return x.new_full((n, 1, h, w), self.noise_level if sigma is None else sigma)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images (N, {self.in_channels}, H, W), got shape {list(x.shape)}")
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.pad_multiple, -w % self.pad_multiple
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
        x1 = self.head(torch.cat([padded, self.noise_map(padded, sigma)], dim=1))
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        y = self.body(x4)
        y = self.up3(y + x4)
        y = self.up2(y + x3)
        y = self.up1(y + x2)
        y = self.tail(y + x1)
        return y[..., :h, :w]


@register_model(input_size=(3, 32, 32), num_classes=0, mean=(0.0,), std=(1.0,))
def drunet(in_channels: int = 3, widths: Sequence[int] = (64, 128, 256, 512), blocks: int = 4,
           noise_level: float = 0.0, num_classes: int | None = None) -> nn.Module:
    """DRUNet with the paper's defaults (colour, about 32.6M parameters); any widths and block count."""
    return DRUNet(in_channels, widths, blocks, noise_level)


@register_model(input_size=(1, 28, 28), num_classes=0, mean=(0.0,), std=(1.0,))
def drunet_small(in_channels: int = 1, widths: Sequence[int] = (16, 32, 64, 64), blocks: int = 1,
                 noise_level: float = 0.0, num_classes: int | None = None) -> nn.Module:
    """A DRUNet for small grey images (digits, Fashion-MNIST): widths (16, 32, 64, 64), one block per stage."""
    return DRUNet(in_channels, widths, blocks, noise_level)
