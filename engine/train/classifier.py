"""Training a base classifier for randomized smoothing (reference Sec. 5).

``train_classifier`` runs one of four objectives: plain cross-entropy (``none``, the
"off-the-shelf" classifier that denoised smoothing starts from), Gaussian augmentation,
consistency regularisation and SmoothMix; each draws its noise from an ``engine.noise.Noise``, so
the generalized Gaussian of DSRS trains exactly as it certifies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.noise import Noise
from engine.train.loop import EpochLog, LoopConfig, StepFn, batched, run_epochs
from engine.train.objectives import consistency_loss, gaussian_augmentation_loss, smoothmix_loss

METHODS = ("none", "gaussian", "consistency", "smoothmix")


@dataclass
class ClassifierTraining(LoopConfig):
    """The objective and its parameters (defaults: the MNIST settings of the papers)."""

    method: str = "gaussian"
    m: int = 2  # noisy copies per image (consistency; SmoothMix uses smoothmix_m)
    lbd: float = 5.0  # consistency weight (5 for MNIST, 20 for CIFAR-10)
    eta: float = 0.5  # consistency: entropy weight
    smoothmix_m: int = 4
    smoothmix_steps: int = 4
    smoothmix_step_size: float = 0.5
    smoothmix_eta: float = 5.0
    mix_step: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown training method {self.method!r}: use one of {', '.join(METHODS)}")


def classifier_step(model: nn.Module, noise: Noise | None, config: ClassifierTraining, num_classes: int) -> StepFn:
    """The loss of one mini-batch under ``config.method``."""
    if config.method == "none":
        return lambda x, y: F.cross_entropy(model(x), y)
    if noise is None:
        raise ValueError(f"method {config.method!r} needs a noise law")
    if config.method == "gaussian":
        return partial(gaussian_augmentation_loss, model, noise=noise)
    if config.method == "consistency":
        return partial(consistency_loss, model, noise=noise, m=config.m, lbd=config.lbd, eta=config.eta)

    adversary = _frozen(model)  # the attack sees the network as certification will: eval mode, weights fixed

    def smoothmix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return smoothmix_loss(model, x, y, noise, num_classes=num_classes, m=config.smoothmix_m,
                              steps=config.smoothmix_steps, step_size=config.smoothmix_step_size,
                              eta=config.smoothmix_eta, mix_step=config.mix_step, adversary=adversary)

    return smoothmix


def _frozen(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model in eval mode with its weights out of the autograd graph, for the attack's gradients only."""

    def run(x: torch.Tensor) -> torch.Tensor:
        was = model.training
        model.eval()
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            return model(x)
        finally:
            for p, flag in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(flag)
            model.train(was)

    return run


def noisy_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: Noise | None, seed: int = 0) -> float:
    """Accuracy of the base classifier on one noisy copy per image (clean when ``noise`` is None)."""
    if noise is not None:
        generator = torch.Generator(device=x.device).manual_seed(seed)
        x = x + noise.sample(len(x), x.shape[1:], device=x.device, dtype=x.dtype, generator=generator)
    predictions = batched(lambda b: model(b).argmax(1), x)
    return float((predictions == y).float().mean())


def train_classifier(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    noise: Noise | None,
    config: ClassifierTraining,
    *,
    num_classes: int,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
    log_path: str | Path | None = None,
) -> list[EpochLog]:
    """Train ``model`` in place; each epoch logs the loss and, on ``test``, clean and noisy accuracy."""
    torch.manual_seed(config.seed)
    x, y = train

    def evaluate() -> dict[str, float]:
        if test is None:
            return {}
        metrics = {"clean_accuracy": noisy_accuracy(model, *test, None)}
        if noise is not None:
            metrics["noisy_accuracy"] = noisy_accuracy(model, *test, noise, seed=config.seed)
        return metrics

    step = classifier_step(model, noise, config, num_classes)
    return run_epochs(model, list(model.parameters()), x, y, step, config, evaluate=evaluate, on_step=on_step,
                      on_epoch=on_epoch, log_path=log_path)


def training_meta(config: ClassifierTraining, noise: Noise | None, dataset: str, history: list[EpochLog]) -> dict:
    """What a checkpoint records of its training: the objective, the noise law, the last epoch's metrics."""
    return {"task": "classifier", "dataset": dataset, "training": asdict(config),
            "noise": noise.config() if noise is not None else None,
            "final": history[-1].to_dict() if history else None}
