"""A registered model file as the smoothed classifier runs it (loaded inside the model process).

Imports the engine only: the model process never loads the service's settings, database or queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import engine.denoise  # noqa: F401  (registers the drunet and drunet_small architectures)
from engine.models import load_model
from engine.models.registry import with_normalization

# formats whose loader is this project's code reading tensors (weights-only); the others carry code of
# their own (TorchScript, torch.export and ONNX graphs), whose failures are never described from within
WEIGHTS_FORMATS = ("state_dict", "safetensors")


def with_input_scaling(net: nn.Module, input_max: float, mean: Sequence[float] | None,
                       std: Sequence[float] | None, channels: int) -> nn.Module:
    """Wrap ``net`` so that it reads [0, 1] pixels: x * input_max, then (x - mean) / std per channel.

    Both steps fold into one normalisation, (x - mean / input_max) / (std / input_max).
    """
    mean = list(mean) if mean is not None else [0.0] * channels
    std = list(std) if std is not None else [1.0] * channels
    if input_max == 1.0 and not any(mean) and all(s == 1.0 for s in std):
        return net
    return with_normalization(net, [m / input_max for m in mean], [s / input_max for s in std])


def load_registered(path: str | Path, *, format: str | None, arch: str | None, num_classes: int | None,
                    input_shape: Sequence[int], input_max: float = 1.0, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The model as the smoothed classifier needs it: eval mode, reading [0, 1] inputs."""
    kwargs: dict[str, Any] = {"num_classes": num_classes} if arch and num_classes else {}
    net = load_model(path, format=format, arch=arch, map_location=device, **kwargs)  # type: ignore[arg-type]
    return with_input_scaling(net, input_max, mean, std, input_shape[0]).to(device).eval()
