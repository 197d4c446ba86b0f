"""Training a denoiser for denoised smoothing (Salman et al. 2020, Sec. 3; reference Sec. 4).

Objectives, with the classifier f frozen: MSE ||D(x + e) - x||^2 (Eq. 2) and stability
CE(f(D(x + e)), argmax f(x)) (Eq. 3); ``mse+stability`` pretrains with MSE and fine-tunes with
stability ("Stab+MSE"). Each image gets a noise level drawn from the sigmas to be certified, and
the denoiser reads that level from its noise-level map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.noise import Noise
from engine.train.loop import EpochLog, LoopConfig, batched, run_epochs

OBJECTIVES = ("mse", "stability", "mse+stability")


@dataclass
class DenoiserTraining(LoopConfig):
    """``epochs`` of the first objective; for ``mse+stability``, ``stability_epochs`` more of stability."""

    objective: str = "mse"
    stability_epochs: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown denoiser objective {self.objective!r}: use one of {', '.join(OBJECTIVES)}")


def noisy_with_levels(x: torch.Tensor, noise: Noise, sigmas: Sequence[float],
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x + sigma_i * e_i with sigma_i drawn uniformly from ``sigmas`` and e_i from the law at scale 1.

    Every law here scales linearly in sigma (sigma' is proportional to sigma), so one unit draw serves all levels.
    """
    levels = torch.tensor(list(sigmas), dtype=x.dtype, device=x.device)
    pick = torch.randint(len(levels), (len(x),), generator=generator, device="cpu").to(x.device)
    sigma = levels[pick]
    e = noise.scaled(1.0).sample(len(x), x.shape[1:], device=x.device, dtype=x.dtype, generator=generator)
    return x + sigma.view(-1, *([1] * (x.dim() - 1))) * e, sigma


def mse_loss(denoiser: nn.Module, x: torch.Tensor, noise: Noise, sigmas: Sequence[float]) -> torch.Tensor:
    """Mean over images of ||D(x + e, sigma) - x||^2 / d (Salman et al. 2020, Eq. 2)."""
    noisy, sigma = noisy_with_levels(x, noise, sigmas)
    return F.mse_loss(denoiser(noisy, sigma), x)


def stability_loss(denoiser: nn.Module, classifier: nn.Module, x: torch.Tensor, noise: Noise,
                   sigmas: Sequence[float]) -> torch.Tensor:
    """CE(f(D(x + e, sigma)), argmax f(x)) with f frozen (Salman et al. 2020, Eq. 3)."""
    with torch.no_grad():
        target = classifier(x).argmax(1)
    noisy, sigma = noisy_with_levels(x, noise, sigmas)
    return F.cross_entropy(classifier(denoiser(noisy, sigma)), target)


def denoiser_metrics(denoiser: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: Noise, sigmas: Sequence[float],
                     classifier: nn.Module | None = None, seed: int = 0) -> dict[str, float]:
    """Held-out MSE per noise level (and, given a classifier, the accuracy of f(D(x + e)) per level)."""
    out: dict[str, float] = {}
    for sigma in sigmas:
        generator = torch.Generator(device=x.device).manual_seed(seed)
        noisy = x + sigma * noise.scaled(1.0).sample(len(x), x.shape[1:], device=x.device, dtype=x.dtype,
                                                      generator=generator)
        clean = batched(lambda b, s=sigma: denoiser(b, s), noisy)
        out[f"mse@{sigma:g}"] = float(F.mse_loss(clean, x))
        out[f"noisy_mse@{sigma:g}"] = float(F.mse_loss(noisy, x))
        if classifier is not None:
            predictions = batched(lambda b: classifier(b).argmax(1), clean)
            out[f"denoised_accuracy@{sigma:g}"] = float((predictions == y).float().mean())
    return out


def train_denoiser(
    denoiser: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    noise: Noise,
    sigmas: Sequence[float],
    config: DenoiserTraining,
    *,
    classifier: nn.Module | None = None,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
    log_path: str | Path | None = None,
) -> list[EpochLog]:
    """Train ``denoiser`` in place; the classifier (needed for stability) is frozen and in eval mode."""
    if config.objective != "mse" and classifier is None:
        raise ValueError(f"objective {config.objective!r} needs the frozen classifier")
    if classifier is not None:
        classifier.eval()
        for p in classifier.parameters():
            p.requires_grad_(False)
    torch.manual_seed(config.seed)
    x, y = train
    params = list(denoiser.parameters())

    def evaluate() -> dict[str, float]:
        return {} if test is None else denoiser_metrics(denoiser, *test, noise, sigmas, classifier, config.seed)

    phases = {"mse": [("mse", config.epochs)], "stability": [("stability", config.epochs)],
              "mse+stability": [("mse", config.epochs), ("stability", config.stability_epochs)]}[config.objective]
    history: list[EpochLog] = []
    for objective, epochs in phases:
        if epochs <= 0:
            continue
        step = (lambda xb, yb: mse_loss(denoiser, xb, noise, sigmas)) if objective == "mse" else \
            (lambda xb, yb: stability_loss(denoiser, classifier, xb, noise, sigmas))
        fine_tune = config.objective == "mse+stability" and objective == "stability"
        phase = LoopConfig(epochs=epochs, batch_size=config.batch_size, lr=config.lr / 10 if fine_tune else config.lr,
                           weight_decay=config.weight_decay, seed=config.seed + len(history),
                           max_steps_per_epoch=config.max_steps_per_epoch)
        history += run_epochs(denoiser, params, x, y, step, phase, evaluate=evaluate, on_step=on_step,
                              on_epoch=on_epoch, log_path=log_path, first_epoch=len(history) + 1)
    return history


def denoiser_meta(config: DenoiserTraining, noise: Noise, sigmas: Sequence[float], dataset: str,
                  history: list[EpochLog], classifier: str | None = None) -> dict:
    return {"task": "denoiser", "dataset": dataset, "training": asdict(config), "noise": noise.config(),
            "sigmas": [float(s) for s in sigmas], "classifier": classifier,
            "final": history[-1].to_dict() if history else None}


