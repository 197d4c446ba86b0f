"""Neyman-Pearson certified radius (Cohen et al. 2019; Li et al. 2022 for the generalized Gaussian)."""

from __future__ import annotations

import math
from functools import lru_cache

from scipy.special import ndtri

from engine.radius.radial import RadialSetting
from engine.radius.search import largest_certified_radius

# Quadrature error allowance on the shifted probability while searching; the final radius is
# re-checked with an explicit error estimate from a coarser rule.
SEARCH_MARGIN = 1e-9


@lru_cache(maxsize=32)
def radial_setting(d: int, k: int, sigma: float, q_sigma: float | None = None,
                   q_threshold: float | None = None, panels: int = 96) -> RadialSetting:
    return RadialSetting(d=d, k=k, sigma=sigma, q_sigma=q_sigma, q_threshold=q_threshold, panels=panels)


def gaussian_np_radius(p_lower: float, sigma: float) -> float:
    """sigma * Phi^-1(pA_lower) (Cohen et al. 2019, Thm. 1); 0 when pA_lower <= 1/2."""
    return float(sigma * ndtri(p_lower)) if p_lower > 0.5 else 0.0


def solve_ell(setting: RadialSetting, rho: float, target: float, mu: float = 0.0,
              via_q: bool = False, iters: int = 60) -> float:
    """ell = ln lambda1 with P(R(ell, mu)) = target (Q(R) with via_q): Newton inside a bisection bracket."""
    mass = setting.q_mass if via_q else setting.p_mass

    def f(ell: float) -> tuple[float, float]:
        m, d_ell, _ = mass(rho, ell, mu, grad=True)
        return float(m) - target, float(d_ell)

    lo, hi = -1.0, 1.0
    while f(lo)[0] > 0:
        lo = lo * 2.0 - 1.0
        if lo < -1e4:
            return lo
    while f(hi)[0] < 0:
        hi = hi * 2.0 + 1.0
        if hi > 1e4:
            return hi
    x = 0.5 * (lo + hi)
    for _ in range(iters):
        val, der = f(x)
        if val > 0:
            hi = x
        else:
            lo = x
        if abs(val) < 1e-15 or hi - lo < 1e-13 * max(1.0, abs(x)):
            break
        step = x - val / der if der > 0 else math.nan
        x = step if lo < step < hi else 0.5 * (lo + hi)
    return x


def np_shifted_lower_bound(setting: RadialSetting, r: float, p_lower: float) -> tuple[float, float]:
    """A lower bound on min P_delta(A) over A with P(A) >= p_lower, ||delta|| = r (Li et al. 2022, Thm. 1).

    Weak duality: for any ell, P_delta(R) - e^ell (P(R) - p_lower) with R = {p_delta < e^ell p} is a
    valid lower bound, so an inexact ell only costs tightness. Returns (bound, ell).
    """
    rho = r / setting.scale
    ell = solve_ell(setting, rho, p_lower)
    bound = float(setting.shifted_mass(rho, ell)) - math.exp(ell) * (float(setting.p_mass(rho, ell)) - p_lower)
    return bound, ell


def quadrature_error(setting: RadialSetting, coarse: RadialSetting, r: float, ell: float, mu: float = 0.0,
                     s1: float = 1.0) -> float:
    """Error allowance of the dual bound: differences between the fine and the coarse rule, summed with
    the weights (1, lambda1, |lambda2|) with which each integral enters the bound."""
    rho = r / setting.scale
    if math.isinf(mu):  # the lambda1 = 0 face: ell is ln lambda2
        (q_f, s_f), (q_c, s_c) = setting.pure_q_masses(rho, ell), coarse.pure_q_masses(rho, ell)
        return abs(s_f - s_c) + math.exp(ell) * abs(q_f - q_c)
    err = abs(float(setting.shifted_mass(rho, ell, mu, s1)) - float(coarse.shifted_mass(rho, ell, mu, s1)))
    err += math.exp(ell) * abs(float(setting.p_mass(rho, ell, mu, s1=s1)) - float(coarse.p_mass(rho, ell, mu, s1=s1)))
    if mu != 0.0:
        err += math.exp(ell) * abs(mu) * abs(float(setting.q_mass(rho, ell, mu, s1=s1))
                                            - float(coarse.q_mass(rho, ell, mu, s1=s1)))
    return err


def np_radius(p_lower: float, *, sigma: float, noise: str = "gaussian", d: int | None = None,
              k: int | None = None) -> float:
    """Neyman-Pearson certified L2 radius from a lower bound on pA (units of the input, like sigma).

    Gaussian: sigma * Phi^-1(p_lower) (Cohen et al. 2019, Thm. 1). Generalized Gaussian GG(d, k, sigma):
    the largest r whose worst-case shifted probability stays >= 1/2 (Li et al. 2022, Thm. 1 and
    App. C), by numerical integration; the search ends on the certified side, so it rounds down.
    Returns 0.0 when p_lower <= 0.5.
    """
    if not 0.0 <= p_lower <= 1.0:
        raise ValueError(f"p_lower must be in [0, 1], got {p_lower}")
    if p_lower <= 0.5:
        return 0.0
    if noise == "gaussian" or not k:
        return gaussian_np_radius(p_lower, sigma)
    if noise not in ("general_gaussian", "general-gaussian") or d is None:
        raise ValueError("noise='general_gaussian' needs d and k")
    return _general_gaussian_np_radius(float(p_lower), int(d), int(k), float(sigma))


@lru_cache(maxsize=4096)
def _general_gaussian_np_radius(p_lower: float, d: int, k: int, sigma: float) -> float:
    setting = radial_setting(d, k, sigma)
    coarse = radial_setting(d, k, sigma, panels=48)
    p_lower = min(p_lower, 1.0 - 1e-15)

    def margin(r: float) -> float:
        return np_shifted_lower_bound(setting, r, p_lower)[0] - 0.5 - SEARCH_MARGIN

    guess = gaussian_np_radius(p_lower, sigma)
    r = largest_certified_radius(margin, 0.0, max(0.25 * guess, 1e-3), xtol=1e-7)
    # final check with the quadrature error allowance; step down until it holds
    for _ in range(60):
        if r <= 0:
            return 0.0
        bound, ell = np_shifted_lower_bound(setting, r, p_lower)
        if bound - quadrature_error(setting, coarse, r, ell) >= 0.5:
            return float(r)
        r -= max(1e-6, 1e-4 * r)
    return 0.0

