"""DSRS certified radius from bounds under two distributions (Li et al., ICML 2022).

Given [pL, pU] for Pr_{e~P}[F(x+e) = cA] and [qL, qU] under Q, radius r is certified when the
minimum of P_delta(A) over every region A consistent with both intervals is >= 1/2 (Li et al.
2022, Thm. 2). We bound that minimum from below by weak duality: for lambda1 >= 0 and any
lambda2, with R = {p_delta < lambda1 p + lambda2 q},

    min P_delta(A) >= P_delta(R) - lambda1 (P(R) - pL) - lambda2 (Q(R) - b2),
    b2 = qL if lambda2 >= 0 else qU.

Any (lambda1, lambda2) gives a valid bound, so the search for them (Newton on the two binding
constraints, as in the paper's Thm. 3) only decides how tight the bound is, never whether it is
sound. Soundness rests on the integrals, which carry an explicit quadrature-error allowance.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from engine.radius.np import (
    SEARCH_MARGIN,
    np_radius,
    quadrature_error,
    radial_setting,
    solve_ell,
)
from engine.radius.radial import RadialSetting
from engine.radius.search import largest_certified_radius


def dsrs_threshold_heuristic(p_lower: float) -> float:
    """The per-input truncation quantile ``x+`` of Li et al. 2022 (App. E): 0.08 (-ln(1-p) - 5) + 0.6.

    Chosen from P's interval before Q is sampled; 0.5 below p = 0.5; clipped into [0.01, 0.99].
    """
    if p_lower < 0.5:
        return 0.5
    t = 0.08 * (-math.log(max(1.0 - p_lower, 1e-300)) - 5.0) + 0.6
    return min(max(t, 0.01), 0.99)


def _dual_bound(setting: RadialSetting, rho: float, ell: float, mu: float, p_lower: float, b2: float) -> float:
    """The weak-duality lower bound at (ln lambda1, lambda2 / lambda1) = (ell, mu)."""
    shifted = float(setting.shifted_mass(rho, ell, mu))
    p = float(setting.p_mass(rho, ell, mu))
    q = float(setting.q_mass(rho, ell, mu)) if mu != 0.0 else 0.0
    return shifted - math.exp(ell) * ((p - p_lower) + mu * (q - b2))


def dsrs_shifted_lower_bound(
    setting: RadialSetting, r: float, p_bounds: tuple[float, float], q_bounds: tuple[float, float],
    newton_iters: int = 30,
) -> tuple[float, float, float]:
    """Lower bound on min P_delta(A) over A consistent with both intervals (Li et al. 2022, Thm. 2-3).

    Returns (bound, ell, mu) with the multipliers used. Starts from the NP region (mu = 0): if its
    Q-probability lies in [qL, qU] the Q fact adds nothing and the NP bound stands; otherwise Newton
    moves (ell, mu) so that P(R) = pL and Q(R) hits the violated end.
    """
    p_lower = p_bounds[0]
    q_lower, q_upper = q_bounds
    rho = r / setting.scale
    ell0 = solve_ell(setting, rho, p_lower)
    q0 = float(setting.q_mass(rho, ell0, 0.0))
    np_bound = _dual_bound(setting, rho, ell0, 0.0, p_lower, 0.0)
    if q_lower <= q0 <= q_upper:
        return np_bound, ell0, 0.0
    sign = 1.0 if q0 < q_lower else -1.0
    b2 = q_lower if sign > 0 else q_upper
    mu_floor = -setting.q_threshold * (1.0 - 1e-9) if setting.q_threshold is not None else -np.inf

    def residual(ell: float, mu: float):
        p, p_ell, p_mu = setting.p_mass(rho, ell, mu, grad=True)
        q, q_ell, q_mu = setting.q_mass(rho, ell, mu, grad=True)
        return np.array([float(p) - p_lower, float(q) - b2]), np.array([[p_ell, p_mu], [q_ell, q_mu]], dtype=float)

    ell, mu = ell0, 0.0
    f, jac = residual(ell, mu)
    for _ in range(newton_iters):
        norm = float(np.abs(f).max())
        if norm < 1e-13:
            break
        try:
            step = np.linalg.solve(jac, -f)
        except np.linalg.LinAlgError:
            break
        if not np.all(np.isfinite(step)):
            break
        t = 1.0
        improved = False
        for _ in range(30):  # damped Newton, mu kept on its side of zero and in its domain
            new_ell, new_mu = ell + t * step[0], mu + t * step[1]
            if sign * new_mu >= 0 and new_mu > mu_floor:
                new_f, new_jac = residual(new_ell, new_mu)
                if float(np.abs(new_f).max()) < norm:
                    improved = True
                    break
            t *= 0.5
        if not improved:
            break
        ell, mu, f, jac = new_ell, new_mu, new_f, new_jac
    bound = _dual_bound(setting, rho, ell, mu, p_lower, b2)
    if not math.isfinite(bound) or bound <= np_bound:
        return np_bound, ell0, 0.0
    return bound, ell, mu


def dsrs_radius(
    p_bounds: tuple[float, float],
    q_bounds: tuple[float, float],
    *,
    d: int,
    k: int,
    sigma: float,
    q_sigma: float | None = None,
    q_threshold: float | None = None,
) -> float:
    """DSRS certified L2 radius (Li et al. 2022, Alg. 1 with Thm. 2-3), in input units like sigma.

    P = GG(d, k, sigma) (k = 0: Gaussian); Q = GG(d, k, q_sigma) or P truncated to its radial
    quantile q_threshold. p_bounds and q_bounds are two-sided confidence intervals for the top
    class's probability under P and Q. Never below the NP radius from the same pL (it falls back to
    it), and rounds down: the search ends on the certified side and the final radius is re-checked
    with a quadrature-error allowance. A numerical failure counts as "not certified".
    """
    p_lower, p_upper = (float(v) for v in p_bounds)
    q_lower, q_upper = (float(v) for v in q_bounds)
    if not (0.0 <= p_lower <= p_upper <= 1.0 and 0.0 <= q_lower <= q_upper <= 1.0):
        raise ValueError(f"bounds must be intervals in [0, 1], got {p_bounds}, {q_bounds}")
    if (q_sigma is None) == (q_threshold is None):
        raise ValueError("give exactly one of q_sigma (smaller-sigma Q) or q_threshold (truncated Q)")
    return _dsrs_radius(p_lower, p_upper, q_lower, q_upper, int(d), int(k), float(sigma),
                        None if q_sigma is None else float(q_sigma),
                        None if q_threshold is None else float(q_threshold))


@lru_cache(maxsize=4096)
def _dsrs_radius(p_lower: float, p_upper: float, q_lower: float, q_upper: float, d: int, k: int,
                 sigma: float, q_sigma: float | None, q_threshold: float | None) -> float:
    r_np = np_radius(p_lower, sigma=sigma, noise="general_gaussian" if k else "gaussian", d=d, k=k)
    if p_lower <= 0.5:
        return 0.0
    setting = radial_setting(d, k, sigma, q_sigma, q_threshold)
    coarse = radial_setting(d, k, sigma, q_sigma, q_threshold, panels=48)
    p_lower = min(p_lower, 1.0 - 1e-15)
    bounds_p, bounds_q = (p_lower, p_upper), (q_lower, q_upper)

    def margin(r: float) -> float:
        try:
            return dsrs_shifted_lower_bound(setting, r, bounds_p, bounds_q)[0] - 0.5 - SEARCH_MARGIN
        except (FloatingPointError, ValueError, ZeroDivisionError):
            return -1.0

    r = largest_certified_radius(margin, r_np, max(0.05 * sigma, 0.1 * r_np), xtol=1e-6)
    # final check with the quadrature error allowance; step down until it holds, never below NP
    for _ in range(40):
        if r <= r_np:
            return r_np
        bound, ell, mu = dsrs_shifted_lower_bound(setting, r, bounds_p, bounds_q)
        if bound - quadrature_error(setting, coarse, r, ell, mu) >= 0.5:
            return float(r)
        r -= max(1e-6, 1e-4 * r)
    return r_np
