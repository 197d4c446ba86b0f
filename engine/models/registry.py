"""Architecture registry: a name turns into a freshly initialised model (timm's ``_registry`` pattern).

Every model takes images in [0, 1] shaped (N, C, H, W): normalisation lives inside it, as the
first module of an ``nn.Sequential(InputNormalize, net)``. That layout is the one of Cohen et
al.'s released checkpoints (keys ``1.conv1.weight``), so they load without renaming. Names not
registered here fall through to torchvision (random initialisation only: nothing is downloaded).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

ModelFactory = Callable[..., nn.Module]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3760,)


@dataclass(frozen=True)
class ModelConfig:
    """What a registered architecture expects: input (C, H, W), classes and the normalisation it applies."""

    name: str
    input_size: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_factories: dict[str, ModelFactory] = {}
_configs: dict[str, ModelConfig] = {}


class InputNormalize(nn.Module):
    """(x - mean) / std per channel; the constants are buffers outside the state dict."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # broadcasting would silently turn a 1-channel image into 3 channels
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"expected images (N, {self.mean.shape[1]}, H, W), got shape {list(x.shape)}")
        return (x - self.mean) / self.std


def with_normalization(net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Sequential:
    return nn.Sequential(InputNormalize(mean, std), net)


def register_model(
    *, input_size: tuple[int, int, int], num_classes: int, mean: Sequence[float], std: Sequence[float],
    name: str | None = None,
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register ``fn(**kwargs) -> nn.Module`` under its function name (or ``name``)."""

    def wrap(fn: ModelFactory) -> ModelFactory:
        key = name or fn.__name__
        if key in _factories:
            raise ValueError(f"model {key!r} is already registered")
        _factories[key] = fn
        _configs[key] = ModelConfig(key, tuple(input_size), num_classes, tuple(mean), tuple(std))
        return fn

    return wrap


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models())


def list_models(pattern: str = "*", *, include_torchvision: bool = False) -> list[str]:
    """Registered names matching a shell-style ``pattern``; torchvision's too if asked."""
    names = set(_factories)
    if include_torchvision:
        names |= set(_torchvision_names())
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def model_config(name: str) -> ModelConfig | None:
    """The config of a registered architecture; None for torchvision passthrough names."""
    return _configs.get(name)


def create_model(name: str, *, normalize: bool = True, **kwargs) -> nn.Module:
    """A new model with random weights, in eval mode.

    Registered names take their own keyword arguments (``num_classes`` at least). Torchvision
    names get ``weights=None`` and, unless ``normalize=False``, ImageNet normalisation in front.
    """
    if name in _factories:
        model = _factories[name](**kwargs)
    elif name in _torchvision_names():
        import torchvision

        if kwargs.get("weights") is not None:
            raise ValueError("pretrained torchvision weights cannot be downloaded here; load a checkpoint instead")
        kwargs["weights"] = None
        net = torchvision.models.get_model(name, **kwargs)
        model = with_normalization(net, IMAGENET_MEAN, IMAGENET_STD) if normalize else net
    else:
        raise ValueError(f"unknown architecture {name!r}; registered: {', '.join(list_models())} "
                         "(and torchvision names such as resnet50)")
    return model.eval()
