"""Summary statistics of a certification run (pure functions over per-input arrays).

Conventions of Cohen et al. 2019 and Zhai et al. 2020: an input counts as certified at radius r
when the smoothed prediction is correct and its certified radius is at least r; abstentions are
never correct.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _arrays(radii: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(radii, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    if r.shape != c.shape or r.ndim != 1:
        raise ValueError(f"radii and correct must be 1-D of the same length, got {r.shape} and {c.shape}")
    return r, c


def certified_accuracy_curve(radii: ArrayLike, correct: ArrayLike, grid: ArrayLike) -> np.ndarray:
    """Certified accuracy at each radius of ``grid``: mean of [correct and radius >= r] (Cohen et al. 2019, Fig. 2).

    Empty input gives zeros.
    """
    r, c = _arrays(radii, correct)
    levels = np.asarray(grid, dtype=np.float64)
    if r.size == 0:
        return np.zeros_like(levels)
    return ((r[None, :] >= levels[:, None]) & c[None, :]).mean(axis=1)


def average_certified_radius(radii: ArrayLike, correct: ArrayLike) -> float:
    """ACR = (1/N) sum_i R_i [g(x_i) = y_i] (Zhai et al. 2020, Eq. 1): wrong or abstained inputs count as 0."""
    r, c = _arrays(radii, correct)
    return float(np.where(c, r, 0.0).mean()) if r.size else 0.0


def clean_accuracy(correct: ArrayLike) -> float:
    """Fraction of inputs whose smoothed prediction is correct (certified accuracy at radius 0)."""
    c = np.asarray(correct, dtype=bool)
    return float(c.mean()) if c.size else 0.0


def abstain_rate(predictions: ArrayLike, abstain_label: int = -1) -> float:
    """Fraction of inputs on which the smoothed classifier abstained."""
    p = np.asarray(predictions)
    return float((p == abstain_label).mean()) if p.size else 0.0


def radius_grid(max_radius: float, step: float = 0.25) -> np.ndarray:
    """0, step, 2 step, ... up to the first multiple of ``step`` at or above ``max_radius``."""
    if step <= 0:
        raise ValueError(f"step must be positive, got {step}")
    top = max(float(np.ceil(max_radius / step - 1e-9)), 0.0)
    return step * np.arange(top + 1)
