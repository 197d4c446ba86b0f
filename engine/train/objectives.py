"""Training objectives for noise-robust classifiers (reference Sec. 5), as pure functions of logits.

Every function takes a model and clean images in [0, 1] and the smoothing law, so the
generalized Gaussian of DSRS trains the same way as the Gaussian (Li et al. 2022, Sec. 5).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine.noise import Noise

Model = Callable[[torch.Tensor], torch.Tensor]


def noisy_copies(x: torch.Tensor, noise: Noise, m: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """m noisy copies of each image stacked copy-major: (m * N, C, H, W), row j * N + i is x_i + e_ij."""
    e = noise.sample(m * x.shape[0], x.shape[1:], device=x.device, dtype=x.dtype, generator=generator)
    return x.repeat(m, *([1] * (x.dim() - 1))) + e


def gaussian_augmentation_loss(model: Model, x: torch.Tensor, y: torch.Tensor, noise: Noise) -> torch.Tensor:
    """Cross-entropy on x + e, e from the smoothing law (Cohen et al. 2019, Sec. 3.3)."""
    return F.cross_entropy(model(noisy_copies(x, noise, 1)), y)


def consistency_loss(model: Model, x: torch.Tensor, y: torch.Tensor, noise: Noise, *, m: int = 2,
                     lbd: float = 5.0, eta: float = 0.5) -> torch.Tensor:
    """Jeong and Shin 2020, Eq. (5)-(7): mean CE over m copies + lbd * mean KL(mean softmax || softmax_j)
    + eta * entropy of the mean softmax."""
    n = x.shape[0]
    logits = model(noisy_copies(x, noise, m))
    ce = F.cross_entropy(logits, y.repeat(m))
    log_p = F.log_softmax(logits, dim=1).view(m, n, -1)
    mean_p = log_p.exp().mean(0)
    log_mean = mean_p.clamp_min(1e-12).log()
    kl = (mean_p * (log_mean - log_p)).sum(-1).mean()  # KL(mean || p_j), averaged over j and the batch
    entropy = -(mean_p * log_mean).sum(-1).mean()
    return ce + lbd * kl + eta * entropy


def smoothed_softmax(model: Model, x: torch.Tensor, noises: torch.Tensor) -> torch.Tensor:
    """The soft smoothed classifier estimated with fixed noises (m, N, ...): mean over j of softmax(f(x + e_j))."""
    m = noises.shape[0]
    logits = model((x.unsqueeze(0) + noises).flatten(0, 1))
    return F.softmax(logits, dim=1).view(m, x.shape[0], -1).mean(0)


def smoothmix_points(model: Model, x: torch.Tensor, y: torch.Tensor, noises: torch.Tensor, *, steps: int,
                     step_size: float, mix_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """SmoothMix's adversary (Jeong et al. 2021, Alg. 1): ``steps`` normalised L2 ascent steps of
    -log F_y on the soft smoothed classifier, clamped to [0, 1]. Returns (clean side, adversarial point):
    the clean side is x itself, or the point after ``mix_step`` steps (the one-step adversary)."""
    adv, start = x.detach(), x.detach()
    for step in range(steps):
        if step == mix_step and step > 0:
            start = adv
        adv = adv.clone().requires_grad_(True)
        log_soft = smoothed_softmax(model, adv, noises).clamp_min(1e-20).log()
        grad, = torch.autograd.grad(F.nll_loss(log_soft, y, reduction="sum"), adv)
        norm = grad.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
        adv = (adv + step_size * grad / (norm + 1e-12)).clamp(0.0, 1.0).detach()
    if mix_step >= steps > 0:
        start = adv
    return start, adv


def smoothmix_loss(model: Model, x: torch.Tensor, y: torch.Tensor, noise: Noise, *, num_classes: int, m: int = 4,
                   steps: int = 4, step_size: float = 0.5, eta: float = 5.0, mix_step: int = 0,
                   adversary: Model | None = None) -> torch.Tensor:
    """SmoothMix (Jeong et al. 2021, Eq. (9)): mean CE over m noisy copies + eta * KL between the
    smoothed prediction at x_mix = (1 - l) x + l x_adv, l ~ U[0, 1/2], and the target
    (1 - l) F(x) + l * uniform, counted only where the smoothed classifier is right at x.

    ``adversary`` runs the attack (the model in eval mode, typically); defaults to ``model``.
    """
    n = x.shape[0]
    noises = noise.sample(m * n, x.shape[1:], device=x.device, dtype=x.dtype).view(m, *x.shape)
    start, adv = smoothmix_points(adversary or model, x, y, noises, steps=steps, step_size=step_size,
                                  mix_step=mix_step)
    logits = model((start.unsqueeze(0) + noises).flatten(0, 1))
    ce = F.cross_entropy(logits, y.repeat(m))
    clean_soft = F.softmax(logits, dim=1).view(m, n, -1).mean(0).detach()
    lam = torch.rand(n, device=x.device, dtype=x.dtype) / 2
    shape = (-1, *([1] * (x.dim() - 1)))
    mixed = (1 - lam).view(shape) * start + lam.view(shape) * adv
    target = (1 - lam).view(-1, 1) * clean_soft + lam.view(-1, 1) / num_classes
    log_mix = F.log_softmax(model((mixed.unsqueeze(0) + noises).flatten(0, 1)), dim=1)
    kl = F.kl_div(log_mix, target.repeat(m, 1), reduction="none").sum(1)
    right = (clean_soft.argmax(1) == y).to(x.dtype).repeat(m)
    return ce + eta * (right * kl).mean()
