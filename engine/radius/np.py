"""Neyman-Pearson certified radius (Cohen et al. 2019; Li et al. 2022 for the generalized Gaussian)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.optimize import brentq
from scipy.special import ndtri

from engine.radius.radial import RadialSetting
from engine.radius.search import increasing_root, largest_certified_radius, step_down

# Quadrature error allowance on the shifted probability while searching; the final radius is
# re-checked with an explicit error estimate from a coarser rule.
SEARCH_MARGIN = 1e-9
# A numerically found certificate (generalized Gaussian NP, DSRS) must clear 1/2 by this much, not only
# reach it: the quadrature allowance is an estimate, and the margin covers error it could miss. It is also
# what lets the independent LP verifier (tests/verifier) prove our radius itself in seconds. It costs
# about CERTIFICATE_MARGIN * sigma / 0.4 of radius (the bound falls at about 0.4 / sigma per unit near
# 1/2); the Gaussian's closed-form NP radius needs none.
CERTIFICATE_MARGIN = 1e-4
# near the edge the NP bound falls at about phi(0) / sigma per unit of radius
EDGE_SLOPE = 0.4
# The coarse rule of the quadrature allowance. 61 panels do not nest in the fine rule's 96: nested rules
# share their panel edges and can step over the same narrow feature alike, agreeing while both are wrong.
COARSE_PANELS = 61


@lru_cache(maxsize=32)
def radial_setting(d: int, k: int, sigma: float, q_sigma: float | None = None,
                   q_threshold: float | None = None, panels: int = 96, tabulated: bool = False) -> RadialSetting:
    """The setting for (d, k, sigma, Q), built once: quadrature nodes and, when ``tabulated``, the
    cosine-law table that the radius searches run on (certificates are checked without it)."""
    return RadialSetting(d=d, k=k, sigma=sigma, q_sigma=q_sigma, q_threshold=q_threshold, panels=panels,
                         tabulated=tabulated)


def gaussian_np_radius(p_lower: float, sigma: float) -> float:
    """sigma * Phi^-1(pA_lower) (Cohen et al. 2019, Thm. 1); 0 when pA_lower <= 1/2."""
    return float(sigma * ndtri(p_lower)) if p_lower > 0.5 else 0.0


def solve_ell(setting: RadialSetting, rho: float, target: float, mu: float = 0.0,
              guess: float | None = None) -> float:
    """ell = ln lambda1 with P(R(ell, mu)) = target: safeguarded Newton, from ``guess`` when one is known."""

    def f(ell: float) -> tuple[float, float]:
        m, d_ell, _ = setting.p_mass(rho, ell, mu, grad=True)
        return float(m) - target, float(d_ell)

    return increasing_root(f, 0.0 if guess is None else guess, -1e4, 1e4, step=1.0 if guess is None else 0.25)


def np_shifted_lower_bound(setting: RadialSetting, r: float, p_lower: float,
                           guess: float | None = None) -> tuple[float, float]:
    """A lower bound on min P_delta(A) over A with P(A) >= p_lower, ||delta|| = r (Li et al. 2022, Thm. 1).

    Weak duality: for any ell, P_delta(R) - e^ell (P(R) - p_lower) with R = {p_delta < e^ell p} is a
    valid lower bound, so an inexact ell only costs tightness. Returns (bound, ell).
    """
    rho = r / setting.scale
    ell = solve_ell(setting, rho, p_lower, guess=guess)
    bound = float(setting.shifted_mass(rho, ell)) - math.exp(ell) * (float(setting.p_mass(rho, ell)) - p_lower)
    return bound, ell


def _integrals(setting: RadialSetting, rho: float, ell: float, mu: float, s1: float) -> tuple[float, float, float]:
    """(P_delta(R), P(R), Q(R)) for the region of the multipliers (mu = inf: the face lambda1 = 0)."""
    if math.isinf(mu):
        q, shifted = setting.pure_q_masses(rho, ell)
        return shifted, 0.0, q
    shifted = float(setting.shifted_mass(rho, ell, mu, s1))
    p = float(setting.p_mass(rho, ell, mu, s1=s1))
    q = float(setting.q_mass(rho, ell, mu, s1=s1)) if mu != 0.0 else 0.0
    return shifted, p, q


def checked_bound(setting: RadialSetting, coarse: RadialSetting, r: float, ell: float, mu: float = 0.0,
                  s1: float = 1.0, b1: float = 0.0, b2: float = 0.0) -> float:
    """The weak-duality bound P_delta(R) - lambda1 (P(R) - b1) - lambda2 (Q(R) - b2) on the exact rule,
    minus its quadrature allowance: the fine-coarse differences weighted by (1, |lambda1|, |lambda2|).

    lambda1 = s1 e^ell, lambda2 = mu e^ell (mu = inf: lambda1 = 0, lambda2 = e^ell). This is what
    certifies a radius; ``setting`` and ``coarse`` must not be tabulated.
    """
    if setting.tabulated or coarse.tabulated:
        raise ValueError("a certificate is checked on the exact rule, not on a table")
    if not -700.0 < ell < 700.0 or (math.isnan(mu)) or (math.isinf(mu) and mu < 0):
        return -math.inf
    rho = r / setting.scale
    lam1, lam2 = (0.0, math.exp(ell)) if math.isinf(mu) else (s1 * math.exp(ell), mu * math.exp(ell))
    fine, rough = _integrals(setting, rho, ell, mu, s1), _integrals(coarse, rho, ell, mu, s1)
    value = fine[0] - lam1 * (fine[1] - b1) - lam2 * (fine[2] - b2)
    error = abs(fine[0] - rough[0]) + abs(lam1) * abs(fine[1] - rough[1]) + abs(lam2) * abs(fine[2] - rough[2])
    return value - error


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


@dataclass(frozen=True)
class NpCurve:
    """The NP certificate's edge for GG(d, k, sigma) (Li et al. 2022, Thm. 1): at radii r on a grid, the
    worst-case region R = {p_delta < e^ell p} with P_delta(R) = 1/2, and z = Phi^-1(P(R)), the
    smallest pA_lower that certifies r. Interpolated, it gives a query's radius and multiplier
    at once; the radius is then certified on the exact rule like any other."""

    z: np.ndarray
    r: np.ndarray
    ell: np.ndarray

    @cached_property
    def _interpolants(self) -> tuple[PchipInterpolator, PchipInterpolator]:
        return PchipInterpolator(self.z, self.r), PchipInterpolator(self.z, self.ell)

    def at(self, p_lower: float) -> tuple[float, float] | None:
        """(r, ell) for pA_lower by interpolation; None outside the tabulated range."""
        z = float(ndtri(p_lower))
        if not self.z[0] < z < self.z[-1]:
            return None
        r_of, ell_of = self._interpolants
        return float(r_of(z)), float(ell_of(z))


@lru_cache(maxsize=16)
def np_curve(d: int, k: int, sigma: float, step: float = 0.02, z_max: float = 6.5) -> NpCurve:
    """Tabulate the NP edge from r = step sigma until pA_lower* passes Phi(z_max) (about 330 radii, < 1 s).

    Beyond z = 6.5 (pA_lower > 1 - 4e-11) P(R) loses digits to 1 - P(R) and the table would too: such
    inputs, far beyond what n = 10^7 samples can show, take the search.
    """
    search = radial_setting(d, k, sigma, tabulated=True)
    zs, rs, ells = [], [], []
    ell = 0.0
    for i in range(1, 10_000):
        r = i * step * sigma
        rho = r / search.scale

        def half(e: float, rho: float = rho) -> float:
            return float(search.shifted_mass(rho, e)) - 0.5

        lo, hi = ell - 0.5, ell + 0.5
        while half(lo) > 0:
            lo -= 2.0 * (hi - lo)
        while half(hi) < 0:
            hi += 2.0 * (hi - lo)
        ell = brentq(half, lo, hi, xtol=1e-13, rtol=1e-15)
        z = float(ndtri(float(search.p_mass(rho, ell))))
        if not math.isfinite(z) or (zs and z <= zs[-1]):
            break
        zs.append(z), rs.append(r), ells.append(ell)
        if z > z_max:
            break
    return NpCurve(np.array(zs), np.array(rs), np.array(ells))


def certifies(bound: float) -> bool:
    """A checked dual bound certifies when it clears 1/2 by CERTIFICATE_MARGIN."""
    return bound >= 0.5 + CERTIFICATE_MARGIN


def np_edge(p_lower: float, d: int, k: int, sigma: float) -> tuple[float, float] | None:
    """NP's radius for p_lower > 1/2 and its multiplier ell there, without a certificate: a starting point
    for searches that certify their own. The Gaussian's are exact: r = sigma Phi^-1(p_lower) and, R being
    the half-space {<z, e> < sigma Phi^-1(p_lower)} with ln(p_delta / p) = (r <z, e> - r^2 / 2) / sigma^2
    there, ell = r^2 / (2 sigma^2). GG(d, k, sigma)'s come from the tabulated edge (radii within 2e-9 of
    the searched ones where tested; None outside the table)."""
    if not k:
        r = gaussian_np_radius(p_lower, sigma)
        return r, r * r / (2.0 * sigma * sigma)
    return np_curve(d, k, sigma).at(min(p_lower, 1.0 - 1e-15))


@lru_cache(maxsize=4096)
def _general_gaussian_np_radius(p_lower: float, d: int, k: int, sigma: float) -> float:
    exact = radial_setting(d, k, sigma)
    coarse = radial_setting(d, k, sigma, panels=COARSE_PANELS)
    p_lower = min(p_lower, 1.0 - 1e-15)
    # inside the tabulated edge by the margin's share of radius (and 10% more), certified on the exact rule:
    # one check instead of a search
    found = np_curve(d, k, sigma).at(p_lower)
    if found is not None:
        r, ell = found
        r -= 1.1 * CERTIFICATE_MARGIN * sigma / EDGE_SLOPE + 1e-7 * max(sigma, r)
        if r > 0 and certifies(checked_bound(exact, coarse, r, ell, b1=p_lower)):
            return float(r)
    return _searched_np_radius(p_lower, exact, coarse, radial_setting(d, k, sigma, tabulated=True))


def _searched_np_radius(p_lower: float, exact: RadialSetting, coarse: RadialSetting,
                        search: RadialSetting) -> float:
    """The largest certified r by a search over r on the tabulated rule, then certified on the exact one."""
    sigma = exact.sigma
    ells: dict[float, float] = {}  # multiplier found at each radius tried; the last one warm-starts the next

    def solve(r: float) -> tuple[float, float]:
        bound, ell = np_shifted_lower_bound(search, r, p_lower, guess=next(reversed(ells.values()), None))
        ells[r] = ell
        return bound, ell

    def margin(r: float) -> float:
        return solve(r)[0] - 0.5 - CERTIFICATE_MARGIN - SEARCH_MARGIN

    guess = gaussian_np_radius(p_lower, sigma)
    r = largest_certified_radius(margin, 0.0, max(0.25 * guess, 1e-3), xtol=1e-7)
    def certified(r: float) -> float | None:
        """The search's ell at r, if its bound holds on the exact rule with the quadrature allowance."""
        ell = ells[r] if r in ells else solve(r)[1]
        return ell if certifies(checked_bound(exact, coarse, r, ell, b1=p_lower)) else None

    certificate = step_down(certified, r, 0.0, 60)
    return 0.0 if certificate is None else float(certificate[0])
