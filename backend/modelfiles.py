"""Registered model files: checked on upload, loaded for certification. The loading itself is the engine's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

import engine.denoise  # noqa: F401  (registers the drunet and drunet_small architectures)
from backend import storage
from backend.models import ModelCreate, ModelKind
from engine.models import UnsafeModelError, detect_format, load_model
from engine.models.registry import with_normalization


class ModelRejected(ValueError):
    """The file cannot serve as the declared model; the message says why."""


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


def check_model_file(path: Path, *, format: str | None, arch: str | None, num_classes: int | None,
                     input_shape: Sequence[int], input_max: float = 1.0, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, denoiser: bool = False, shown_as: str | None = None) -> str:
    """Load the file and run one forward pass on a zero input of the declared shape; return its format.

    Raises ModelRejected naming the problem (the file called ``shown_as``, not by its storage path).
    Pickles that need code are refused by the engine's loader before anything in them runs.
    """
    try:
        return _check(path, format, arch, num_classes, input_shape, input_max, mean, std, denoiser)
    except ModelRejected as error:
        raise ModelRejected(str(error).replace(str(path), shown_as or path.name)) from None


def store_checked(stream: BinaryIO, path: Path, meta: ModelCreate, max_bytes: int, shown_as: str | None) -> tuple[int, str]:
    """Copy ``stream`` to ``path`` and check it as ``meta`` declares; return (size, format).

    Raises storage.TooLarge or ModelRejected, and then leaves nothing at ``path``.
    """
    size = storage.save_stream(stream, path, max_bytes)
    try:
        fmt = check_model_file(path, format=meta.format.value if meta.format else None, arch=meta.arch,
                               num_classes=meta.num_classes, input_shape=meta.input_shape, input_max=meta.input_max,
                               mean=meta.mean, std=meta.std, denoiser=meta.kind is ModelKind.denoiser,
                               shown_as=shown_as)
    except ModelRejected:
        storage.remove(path)
        raise
    return size, fmt


def _check(path: Path, format: str | None, arch: str | None, num_classes: int | None, input_shape: Sequence[int],
           input_max: float, mean: Sequence[float] | None, std: Sequence[float] | None, denoiser: bool) -> str:
    fmt = format or detect_format(path)
    try:
        net = load_registered(path, format=fmt, arch=arch, num_classes=num_classes, input_shape=input_shape,
                              input_max=input_max, mean=mean, std=std)
    except UnsafeModelError as error:
        raise ModelRejected(f"refused: {error}") from None
    except Exception as error:  # noqa: BLE001  any failure to load is the file's problem, reported to the uploader
        raise ModelRejected(f"cannot load the file as {fmt}: {error}") from None
    shape = (1, *input_shape)
    try:
        with torch.inference_mode():
            out = net(torch.zeros(shape))
    except Exception as error:  # noqa: BLE001  whatever the model raises is the uploader's to see
        raise ModelRejected(f"the forward pass on a zero input of shape {list(shape)} failed: {error}") from None
    want = shape if denoiser else (1, num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(want):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        what = "an image of the input's shape" if denoiser else f"{num_classes} class scores"
        raise ModelRejected(f"the model returned {got} for an input of shape {list(shape)}; expected {what} "
                            f"{list(want)}")
    return fmt
