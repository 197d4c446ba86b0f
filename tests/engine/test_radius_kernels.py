"""The compiled integrands (engine.radius.kernels) against closed forms and independent computations."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import wrightomega
from scipy.stats import norm

from engine.radius import kernels
from engine.radius.np import radial_setting
from engine.radius.radial import RadialSetting
from engine.radius.search import largest_certified_radius

SIGMA = 0.5


def exact_phi_inv(y: float, k: float) -> float:
    """t with t + k ln t = y, by bisection on ln t in 60-digit arithmetic."""
    with mpmath.workdps(60):
        f = lambda u: mpmath.exp(u) + k * u - mpmath.mpf(y)
        lo, hi = mpmath.mpf(-2000), mpmath.mpf(60)
        for _ in range(300):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if f(mid) > 0 else (mid, hi)
        return float(mpmath.exp((lo + hi) / 2))


@pytest.mark.parametrize("k", [1.0, 20.0, 380.0, 1530.0, 75260.0])
def test_phi_inv_to_rounding_from_any_start(k: float) -> None:
    # phi^-1 is on every node of every integral: it must be as accurate as scipy's Wright omega, from the
    # omega start and from a node's own t alike, even far from that node (where Newton from the left of a
    # convex function overshoots)
    rng = np.random.default_rng(int(k))
    worst_ours = worst_scipy = 0.0
    for _ in range(150):
        t = float(np.exp(rng.uniform(-8.0, 8.0)))
        y = t + k * math.log(t) + float(rng.choice([rng.normal(0, 0.01), rng.normal(0, 5), rng.normal(0, 300)]))
        truth = exact_phi_inv(y, k)
        for ours in (kernels.phi_inv(y, k), kernels.phi_inv(y, k, math.log(t), t)):
            worst_ours = max(worst_ours, abs(ours - truth) / truth)
        worst_scipy = max(worst_scipy, abs(k * float(np.real(wrightomega(y / k - math.log(k)))) - truth) / truth)
    assert worst_ours < 5e-15
    assert worst_ours <= max(worst_scipy, 2e-15)
    assert kernels.phi_inv(math.inf, k) == math.inf and kernels.phi_inv(-math.inf, k) == 0.0
    assert kernels.phi_inv(3.5, 0.0) == 3.5


@pytest.mark.parametrize("tabulated", [False, True])
@pytest.mark.parametrize("r,ell", [(0.2, 0.1), (0.7, 1.3), (1.4, -0.8)])
def test_gaussian_half_space_masses_have_their_closed_form(tabulated: bool, r: float, ell: float) -> None:
    # k = 0 and no Q: R = {p_delta < e^ell p} is the half-space {<z, e> < (ell sigma^2 + r^2/2) / r}, so
    # P(R) = Phi(ell sigma / r + r / (2 sigma)) and P_delta(R) = Phi(ell sigma / r - r / (2 sigma)) exactly
    setting = radial_setting(3072, 0, SIGMA, tabulated=tabulated)
    rho = r / setting.scale
    p_exact = norm.cdf(ell * SIGMA / r + r / (2 * SIGMA))
    shifted_exact = norm.cdf(ell * SIGMA / r - r / (2 * SIGMA))
    tolerance = 1e-9 if tabulated else 1e-11
    assert setting.p_mass(rho, ell) == pytest.approx(p_exact, abs=tolerance)
    assert setting.shifted_mass(rho, ell) == pytest.approx(shifted_exact, abs=tolerance)
    # the derivative in ell: the half-space's density at its edge times d(edge)/d(ell)
    _, d_ell, d_mu = setting.p_mass(rho, ell, grad=True)
    assert d_ell == pytest.approx(norm.pdf(ell * SIGMA / r + r / (2 * SIGMA)) * SIGMA / r, rel=1e-6)
    assert d_mu == 0.0


def sublevel_by_scanning(setting: RadialSetting, level: float, ell: float, mu: float, s1: float) -> list:
    """{t : Psi(t) < level} for the smaller-sigma Q from a dense scan of Psi and Brent on each crossing:
    independent of the kernels' monotone pieces and Newton."""
    k, _, a, b, _, _ = setting._q_params

    def psi(t: float) -> float:
        g = s1 + mu * math.exp(min(a - b * t, 700.0))
        return t + k * math.log(t) - ell - math.log(g) if g > 0 else math.inf

    grid = np.geomspace(1e-9, 4.0 * setting._t_top, 200_000)
    below = np.array([psi(t) < level for t in grid])
    ends = []
    for i in np.nonzero(below[1:] != below[:-1])[0]:
        ends.append(brentq(lambda t: psi(t) - level if math.isfinite(psi(t)) else 1e300, grid[i], grid[i + 1],
                           xtol=1e-300, rtol=1e-15))
    starts_inside = bool(below[0])
    return ends, starts_inside


@pytest.mark.parametrize("mu,s1", [(2.0, 1.0), (-0.3, 1.0), (-0.9, 1.0), (5.0, -1.0)])
def test_sublevel_sets_match_a_dense_scan(mu: float, s1: float) -> None:
    # Psi is monotone for mu >= 0 but not for mu < 0 (its turning points come from a grid of Psi'); with
    # s1 < 0 the region lives below t1. The kernels' interval ends must be the scan's crossings.
    setting = radial_setting(64, 20, SIGMA, 0.4)
    k, _, a, b, _, _ = setting._q_params
    ell = 0.3
    left, right, rising, t0 = kernels.sublevel_pieces(ell, mu, s1, k, a, b, 4.0 * setting._t_top)
    t_v = np.array([2.0, 8.0, 12.0, 30.0])
    rho = 0.05
    x_lo, x_hi = kernels.sublevel_levels(t_v, np.log(t_v), rho, ell, mu, s1, k, a, b, left, right, rising, t0)
    for i, tv in enumerate(t_v):
        level = tv + k * math.log(tv)
        crossings, starts_inside = sublevel_by_scanning(setting, level, ell, mu, s1)
        # the kernels' intervals in t_u, read back from the cosine levels x = (1 + c) / 2
        ours = []
        for j in range(x_lo.shape[0]):
            if x_hi[j, i] > x_lo[j, i]:
                lo, hi = (2.0 * np.array([x_lo[j, i], x_hi[j, i]]) - 1.0) * 2.0 * math.sqrt(tv) * rho + tv + rho**2
                ours += [lo, hi]
        if starts_inside:
            crossings = [0.0, *crossings]
        if len(crossings) % 2:
            crossings.append(math.inf)
        for m in range(len(ours) - 2, 0, -2):  # pieces of Psi split one interval at a turning point: join them
            if ours[m] == ours[m - 1]:
                del ours[m - 1:m + 1]
        ours = [v for v in ours if v > 1e-8]  # an interval from t = 0 starts at 0
        expected = [v for v in crossings if v > 1e-8]
        assert len(ours) == len(expected), (tv, ours, expected)
        assert np.allclose(ours, expected, rtol=1e-9), (tv, ours, expected)


def test_truncated_regions_join_at_the_cut() -> None:
    # the ball's interval and the outer one meet at t_cut when kappa_in > kappa_out: the kernel joins them,
    # and the mass equals the sum over both intervals computed apart
    setting = radial_setting(3072, 1530, SIGMA, None, 0.7)
    ell, mu, rho = 0.2, 0.4, 0.05
    t, w = setting.shifted_nodes(rho, setting.cut_kinks(ell, mu))
    log_t = np.log(t)
    g_in = 1.0 + mu / 0.7
    lo = np.array([-math.inf, setting.t_cut])
    offset = np.array([ell + math.log(g_in), ell])
    cap = np.array([setting.t_cut, math.inf])
    joined = setting.interval_mass(w, kernels.offset_interval_levels(t, log_t, rho, 1530.0, lo, offset, cap, 1.0))
    apart = sum(setting.interval_mass(w, kernels.offset_interval_levels(t, log_t, rho, 1530.0, lo[j:j + 1],
                                                                       offset[j:j + 1], cap[j:j + 1], 1.0))
                for j in range(2))
    assert joined == pytest.approx(apart, abs=1e-14)
    assert joined == pytest.approx(setting.shifted_mass(rho, ell, mu, 1.0), abs=1e-14)


def test_table_sums_equal_the_table_at_the_levels() -> None:
    setting = radial_setting(3072, 1530, SIGMA, 0.45, tabulated=True)
    t, w = setting.p_nodes
    log_t, m_t = setting._node_terms(t)
    x, ce, cm = kernels.centred_levels(t, log_t, m_t, 0.08, 0.3, 1.5, 1.0, False, *setting._q_params)
    cdf, pdf = setting.cdf_pdf(x)
    mass, d_ell, d_mu = setting.centred_mass(t, w, 0.08, 0.3, 1.5, grad=True)
    assert mass == pytest.approx(float(w @ cdf), abs=1e-14)
    assert d_ell == pytest.approx(float((w * pdf) @ ce), rel=1e-12)
    assert d_mu == pytest.approx(float((w * pdf) @ cm), rel=1e-12)


def test_largest_certified_radius_stops_within_xtol_of_the_crossing() -> None:
    calls = []

    def margin(r: float) -> float:
        calls.append(r)
        return 0.4 * (0.7321 - r) - 0.05 * (0.7321 - r) ** 2

    r = largest_certified_radius(margin, 0.5, 0.05, xtol=1e-6, slope=0.4)
    assert len(calls) == len(set(calls)) <= 6  # no margin evaluated twice; a few secant steps
    assert 0.7321 - 1e-6 <= r <= 0.7321 and margin(r) >= 0
    assert largest_certified_radius(lambda r: -1.0, 0.5, 0.05) == 0.5
