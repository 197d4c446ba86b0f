"""How few samples per input *any* valid NP certifier could spend for a given ACR budget (issue 6, target 4).

An oracle that knows each input's pA in advance and sees exactly its expected count k = pA m at every
sample size m still certifies only sigma Phi^-1(CP_lower(k, m, alpha)): for an input with pA = 1 that
is sigma Phi^-1(alpha^(1/m)), the best (1 - alpha) lower bound any method can draw from m successes
in m trials. Spending m_i per input, the oracle minimises sum_i m_i subject to the ACR falling by at
most ``budget`` from fixed n_max, by a Lagrange multiplier over a grid of m. Its reduction bounds from
above what ISS, a sequential schedule or any other schedule can reach on the same inputs.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

from engine.bounds import clopper_pearson_lower


def counts_from_lower_bounds(p_lower: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """The vote counts k behind one-sided Clopper-Pearson lower bounds at n trials (bisection on k)."""
    lo, hi = np.zeros(len(p_lower), dtype=np.int64), np.full(len(p_lower), n, dtype=np.int64)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        below = clopper_pearson_lower(mid, n, alpha) < np.asarray(p_lower) - 1e-12
        lo, hi = np.where(below & (lo < hi), mid + 1, lo), np.where(~below & (lo < hi), mid, hi)
    return lo


def oracle_radius(p_a: np.ndarray, m: np.ndarray, sigma: float, alpha: float) -> np.ndarray:
    """sigma Phi^-1 of the Clopper-Pearson lower bound at the expected count round(pA m) (0 below 1/2)."""
    k = np.round(p_a * m)
    low = clopper_pearson_lower(k, m, alpha)
    return np.where(low > 0.5, sigma * ndtri(np.clip(low, 0.5, 1.0)), 0.0)


def oracle_reduction(p_a: np.ndarray, correct: np.ndarray, sigma: float, n_max: int, alpha: float,
                     n0: int, budget: float = 0.02, grid: int = 400) -> dict:
    """Fewest mean samples (n0 + m_i) over inputs with ACR at most ``budget`` below fixed n_max."""
    p_a, correct = np.asarray(p_a, dtype=float), np.asarray(correct, dtype=bool)
    sizes = np.unique(np.geomspace(10, n_max, grid).round().astype(np.int64))
    full = oracle_radius(p_a, np.full(len(p_a), n_max), sigma, alpha) * correct
    radii = np.stack([oracle_radius(p_a, np.full(len(p_a), m), sigma, alpha) for m in sizes], axis=1)
    drop = np.maximum(full[:, None] - radii * correct[:, None], 0.0)  # (inputs, sizes)

    def allocate(lam: float) -> np.ndarray:
        return np.argmin(sizes[None, :] + lam * drop, axis=1)

    lo, hi = 0.0, 1e12  # multiplier on the radius lost, in samples per unit radius
    for _ in range(200):
        mid = np.sqrt(lo * hi) if lo > 0 else hi / 1e12
        if drop[np.arange(len(p_a)), allocate(mid)].mean() > budget:
            lo = mid
        else:
            hi = mid
    pick = allocate(hi)
    spent = n0 + sizes[pick]
    return {"mean_samples": float(spent.mean()), "reduction": float((n0 + n_max) / spent.mean()),
            "acr_drop": float(drop[np.arange(len(p_a)), pick].mean()), "budget": budget,
            "acr_fixed": float(full.mean()), "share_pa_one": float(np.mean(p_a >= 1.0))}
