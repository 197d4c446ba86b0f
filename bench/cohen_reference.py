"""A straightforward PyTorch loop of Cohen et al.'s CERTIFY, the baseline for ``engine_bench``.

Written the way the algorithm is usually transcribed: noise drawn per batch with randn_like on a
repeated input, predictions copied to the host after every batch and counted in numpy, fp32.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import beta, norm


def sample_counts(model: torch.nn.Module, x: torch.Tensor, num: int, num_classes: int, batch_size: int,
                  sigma: float) -> np.ndarray:
    counts = np.zeros(num_classes, dtype=np.int64)
    remaining = num
    with torch.no_grad():
        while remaining > 0:
            size = min(batch_size, remaining)
            remaining -= size
            batch = x.unsqueeze(0).repeat(size, 1, 1, 1)
            noisy = batch + torch.randn_like(batch) * sigma
            predictions = model(noisy).argmax(1)
            counts += np.bincount(predictions.cpu().numpy(), minlength=num_classes)
    return counts


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound."""
    return float(beta.ppf(alpha, successes, trials - successes + 1)) if successes > 0 else 0.0


def certify(model: torch.nn.Module, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
            sigma: float, num_classes: int) -> tuple[int, float]:
    """(class, radius), or (-1, 0.0) on abstention (Cohen et al. 2019, Alg. 1)."""
    c_a = int(sample_counts(model, x, n0, num_classes, batch_size, sigma).argmax())
    n_a = int(sample_counts(model, x, n, num_classes, batch_size, sigma)[c_a])
    p_lower = lower_confidence_bound(n_a, n, alpha)
    if p_lower < 0.5:
        return -1, 0.0
    return c_a, float(sigma * norm.ppf(p_lower))
