"""Confidence bounds on a binomial proportion (Clopper-Pearson), vectorised over arrays."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import beta as beta_law
from scipy.stats import binomtest


def clopper_pearson_lower(successes: ArrayLike, trials: ArrayLike, alpha: float) -> np.ndarray | float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound: Beta.ppf(alpha, k, n - k + 1).

    Cohen et al. 2019, CERTIFY step 3. Returns 0 where k = 0. Never above the exact bound.
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        low = np.where(k > 0, beta_law.ppf(alpha, np.maximum(k, 1e-300), n - k + 1), 0.0)
    return float(low) if low.ndim == 0 else low


def clopper_pearson_upper(successes: ArrayLike, trials: ArrayLike, alpha: float) -> np.ndarray | float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound: Beta.ppf(1 - alpha, k + 1, n - k); 1 where k = n."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        up = np.where(k < n, beta_law.ppf(1.0 - alpha, k + 1, np.maximum(n - k, 1e-300)), 1.0)
    return float(up) if up.ndim == 0 else up


def clopper_pearson(successes: ArrayLike, trials: ArrayLike, alpha: float) -> tuple:
    """Two-sided (1 - alpha) Clopper-Pearson interval: each side at alpha / 2.

    Equals statsmodels' ``proportion_confint(k, n, alpha, method="beta")``.
    """
    return (
        clopper_pearson_lower(successes, trials, alpha / 2.0),
        clopper_pearson_upper(successes, trials, alpha / 2.0),
    )


def split_alpha(alpha: float, parts: int = 2) -> float:
    """Bonferroni split: each of ``parts`` estimates runs at alpha / parts (DSRS: P and Q)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha / parts


def binomial_abstain(top: int, second: int, alpha: float) -> bool:
    """Cohen's PREDICT test: abstain unless the two-sided binomial test of the top two counts
    at p = 1/2 has p-value <= alpha."""
    if top + second == 0:
        return True
    return binomtest(int(top), int(top + second), 0.5).pvalue > alpha
