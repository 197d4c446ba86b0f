"""Certified radii against exact answers and the DSRS authors' published per-input data."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from scipy.special import ndtri

from bench.reference_radius import cold_dsrs_radius
from engine.radius import dsrs_radius, dsrs_threshold_heuristic, np_radius
from engine.radius.dsrs import _dsrs_certificate, bound_ends, dsrs_shifted_lower_bound, intervals_consistent
from engine.radius.np import (
    CERTIFICATE_MARGIN,
    COARSE_PANELS,
    EDGE_SLOPE,
    _general_gaussian_np_radius,
    checked_bound,
    np_shifted_lower_bound,
    radial_setting,
)
from engine.radius.radial import RadialSetting
from tests.engine.dsrs_data import read_radius, read_sampling

SIGMA = 0.5
# the radius a numerically found certificate gives up to clear 1/2 by CERTIFICATE_MARGIN (engine/radius/np.py)
MARGIN_RADIUS = 1.2 * CERTIFICATE_MARGIN * SIGMA / EDGE_SLOPE
# Every row by default; a stride > 1 gives a quick local run (CI uses every row).
ROW_STRIDE = int(os.environ.get("KAVACH_ROW_STRIDE", "1"))
NP_FILES = [
    ("cohen-mnist-380-0.50.pth", "general-gaussian-380-0.5", 784, 380),
    ("cohen-cifar-1530-0.50.pth", "general-gaussian-1530-0.5", 3072, 1530),
    ("cohen-cifar-0.50.pth", "gaussian-None-0.5", 3072, 0),
    ("cohen-imagenet-75260-0.50.pth", "general-gaussian-75260-0.5", 150528, 75260),
]
# (model, P file stem, Q file stem, radius file, d, k, Q kwargs, the authors' grid step u)
DSRS_FILES = [
    ("cohen-mnist-380-0.50.pth", "general-gaussian-380-0.5", "general-gaussian-380-0.4",
     "new-rad-general-gaussian-380-0.5-0.4", 784, 380, {"q_sigma": 0.4}, 0.05),
    ("cohen-cifar-1530-0.50.pth", "general-gaussian-1530-0.5", "general-gaussian-1530-0.45",
     "new-rad-general-gaussian-1530-0.5-0.45", 3072, 1530, {"q_sigma": 0.45}, 0.05),
    ("cohen-cifar-1530-0.50.pth", "general-gaussian-1530-0.5", "general-gaussian-1530-0.5-50000-0.0005-0.2",
     "new-rad-general-gaussian-th-1530-0.5-0.2", 3072, 1530, {"q_threshold": 0.2}, 0.01),
    ("cohen-imagenet-75260-0.50.pth", "general-gaussian-75260-0.5", "general-gaussian-75260-0.45",
     "new-rad-general-gaussian-75260-0.5-0.45", 150528, 75260, {"q_sigma": 0.45}, 0.05),
    ("cohen-imagenet-75260-0.50.pth", "general-gaussian-75260-0.5", "general-gaussian-75260-0.5-50000-0.0005-0.5",
     "new-rad-general-gaussian-th-75260-0.5-0.5", 150528, 75260, {"q_threshold": 0.5}, 0.05),
]


def _sampling(model: str, stem: str) -> dict[int, tuple[float, float]]:
    name = stem if stem.endswith(("-0.2", "-0.5")) and "50000" in stem else f"{stem}-50000-0.0005"
    return read_sampling(model, name + ".txt")


def np_refuted(d: int, k: int, p_lower: float, r: float) -> bool:
    """True when radius r is provably not NP-certifiable from p_lower: the worst-case region
    {p_delta < K p} with P-mass p_lower (a classifier consistent with the bound) has P_delta < 1/2."""
    setting = radial_setting(d, k, SIGMA)
    rho = r / setting.scale
    _, ell = np_shifted_lower_bound(setting, r, p_lower)
    feasible = abs(float(setting.p_mass(rho, ell)) - p_lower) < 1e-9
    return feasible and float(setting.shifted_mass(rho, ell)) < 0.5 - 1e-6


def dsrs_refuted(setting: RadialSetting, r: float, p_b: tuple, q_b: tuple) -> bool:
    """True when radius r is provably not certifiable from both intervals: the optimal region meets
    P(R) = pL and Q(R) in [qL, qU] (to 1e-9), or on the face lambda1 = 0 has Q(R) = qL and P(R) in
    [pL, pU], so it is a classifier consistent with both facts, and its shifted probability is
    below 1/2."""
    _, ell, mu, s1 = dsrs_shifted_lower_bound(setting, r, p_b, q_b)
    rho = r / setting.scale
    if math.isinf(mu):  # the optimum on the face lambda1 = 0: R = {p_delta < lambda2 q}
        q, shifted = setting.pure_q_masses(rho, ell)
        p = setting.pure_q_centred_mass(rho, ell, under_p=True)
        feasible = p_b[0] <= p <= p_b[1] and abs(q - q_b[0]) < 1e-9
        return feasible and shifted < 0.5 - 1e-6
    p = float(setting.p_mass(rho, ell, mu, s1=s1))
    q = float(setting.q_mass(rho, ell, mu, s1=s1))
    p_target = p_b[0] if s1 > 0 else p_b[1]  # lambda1 < 0: P's upper bound is the binding one
    feasible = abs(p - p_target) < 1e-9 and q_b[0] - 1e-9 <= q <= q_b[1] + 1e-9
    return feasible and float(setting.shifted_mass(rho, ell, mu, s1)) < 0.5 - 1e-6


def certificate_holds_finer(d: int, k: int, p_b: tuple, q_b: tuple, q_kwargs: dict) -> bool:
    """Re-check our radius with an independent, much finer quadrature (400 panels of 16 nodes, with the
    allowance against 200 panels): the dual bound at the very multipliers that certified it, or
    NP's bound where NP's radius stood."""
    r, multipliers = _dsrs_certificate(*p_b, *q_b, d, k, SIGMA, q_kwargs.get("q_sigma"), q_kwargs.get("q_threshold"))
    if multipliers is None:
        fine = RadialSetting(d=d, k=k, sigma=SIGMA, panels=400, order=16)
        return r == 0.0 or np_shifted_lower_bound(fine, r, p_b[0])[0] >= 0.5
    ell, mu, s1 = multipliers
    fine = RadialSetting(d=d, k=k, sigma=SIGMA, panels=400, order=16, **q_kwargs)
    rough = RadialSetting(d=d, k=k, sigma=SIGMA, panels=200, order=16, **q_kwargs)
    return checked_bound(fine, rough, r, ell, mu, s1, *bound_ends(p_b, q_b, mu, s1)) >= 0.5


# -- exact answers ---------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.51, 0.6, 0.9, 0.99, 0.999, 0.99993])
def test_gaussian_np_radius_closed_form(p: float) -> None:
    assert np_radius(p, sigma=0.25) == pytest.approx(0.25 * ndtri(p), abs=1e-15)


@pytest.mark.parametrize("p", [0.55, 0.9, 0.9999])
def test_radial_integrals_reproduce_gaussian_and_round_down(p: float) -> None:
    # k = 0 through the generalized-Gaussian machinery must give sigma Phi^-1(p), never above it, and
    # below it by no more than the certificate margin's share
    exact = SIGMA * ndtri(p)
    ours = _general_gaussian_np_radius(p, 3072, 0, SIGMA)
    assert exact - MARGIN_RADIUS - 1e-6 < ours <= exact - 0.8 * CERTIFICATE_MARGIN * SIGMA / EDGE_SLOPE


def test_radius_zero_at_or_below_half() -> None:
    assert np_radius(0.5, sigma=1.0) == 0.0
    assert np_radius(0.3, sigma=1.0, noise="general_gaussian", d=784, k=380) == 0.0
    assert dsrs_radius((0.4, 0.45), (0.5, 0.6), d=784, k=380, sigma=0.5, q_sigma=0.4) == 0.0


def test_radial_weights_are_probability_measures() -> None:
    s = RadialSetting(d=3072, k=1530, sigma=0.5, q_threshold=0.3)
    assert s.p_nodes[1].sum() == pytest.approx(1.0, abs=1e-13)
    assert s.q_nodes[1].sum() == pytest.approx(1.0, abs=1e-13)
    assert np.all(s.q_nodes[0] <= s.t_cut * (1 + 1e-12))


def test_threshold_heuristic() -> None:
    assert dsrs_threshold_heuristic(0.3) == 0.5
    p = 0.999
    assert dsrs_threshold_heuristic(p) == pytest.approx(0.08 * (-math.log(1 - p) - 5) + 0.6)


def test_dsrs_rejects_ambiguous_q() -> None:
    with pytest.raises(ValueError):
        dsrs_radius((0.9, 0.95), (0.9, 0.95), d=784, k=380, sigma=0.5)
    with pytest.raises(ValueError):
        dsrs_radius((0.9, 0.95), (0.9, 0.95), d=784, k=380, sigma=0.5, q_sigma=0.4, q_threshold=0.5)


# -- the published per-input data ------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("model,stem,d,k", NP_FILES, ids=[f[0] for f in NP_FILES])
def test_np_radius_reproduces_published(model: str, stem: str, d: int, k: int) -> None:
    p = _sampling(model, stem)
    published = read_radius("orig-radius", model, f"orig-rad-{stem}-50000-0.0005.txt")
    published = dict(list(published.items())[::ROW_STRIDE])
    noise = "general_gaussian" if k else "gaussian"
    above = []
    for idx, (r_pub, *_) in published.items():
        p_lower = p[idx][0]
        ours = np_radius(p_lower, sigma=SIGMA, noise=noise, d=d, k=k)
        if r_pub > ours + MARGIN_RADIUS + 1e-4:
            # a larger published radius (beyond the radius our margin gives up) must be refuted by a
            # worst-case classifier
            assert np_refuted(d, k, p_lower, r_pub), (idx, ours, r_pub)
        elif ours > r_pub + 1e-4:
            # a larger radius of ours must hold under an independent, much finer quadrature
            fine = RadialSetting(d=d, k=k, sigma=SIGMA, panels=400, order=16)
            assert np_shifted_lower_bound(fine, ours, p_lower)[0] >= 0.5, (idx, ours, r_pub)
            above.append((idx, ours, r_pub))
    # The authors' ImageNet values (Gamma(4) radial law) scatter: two rows with the same pL carry
    # radii 0.02 apart. Elsewhere their bisection leaves at most a stray row low near pL = 1/2.
    assert len(above) <= (0.05 if k > 75000 else 0.01) * len(published) + 1, above[:5]


CHUNKS = 4  # rows of each file split so that test workers share the slow files


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize("case", DSRS_FILES, ids=[f[3] for f in DSRS_FILES])
def test_dsrs_radius_against_published(case, chunk: int) -> None:
    model, p_stem, q_stem, r_stem, d, k, q_kwargs, u = case
    p, q = _sampling(model, p_stem), _sampling(model, q_stem)
    published = read_radius("new-radius", model, f"{r_stem}-50000-0.0005.txt")
    published = dict(list(published.items())[chunk::CHUNKS][::ROW_STRIDE])
    setting = radial_setting(d, k, SIGMA, q_kwargs.get("q_sigma"), q_kwargs.get("q_threshold"))
    refuted, above, unexplained = [], [], []
    for position, (idx, (r_pub, *_)) in enumerate(published.items()):
        ours = dsrs_radius(p[idx], q[idx], d=d, k=k, sigma=SIGMA, **q_kwargs)
        if position % 10 == 0:  # a sample of every file: our certificate under an independent, finer rule
            assert certificate_holds_finer(d, k, p[idx], q[idx], q_kwargs), (idx, ours, r_pub)
        noise = "general_gaussian" if k else "gaussian"
        assert ours >= np_radius(p[idx][0], sigma=SIGMA, noise=noise, d=d, k=k)  # never below NP
        if ours < r_pub - 1e-3:
            # below the published value: where that value is provably not certifiable
            if dsrs_refuted(setting, r_pub, p[idx], q[idx]):
                refuted.append(idx)
            else:
                unexplained.append((idx, ours, r_pub))
        if ours >= r_pub + u + 1e-3:
            # above the authors' grid: the certificate must hold under an independent finer rule
            assert certificate_holds_finer(d, k, p[idx], q[idx], q_kwargs), (idx, ours, r_pub)
            above.append(idx)
    print(f"{r_stem}[{chunk}]: {len(published)} rows, {len(refuted)} published radii refuted, "
          f"{len(above)} above the grid, {len(unexplained)} below and unrefuted: {unexplained}")
    # Our search may stop short where the dual optimum is hard to reach (a sound, smaller radius);
    # that must stay rare: at most 1% of rows.
    assert len(unexplained) <= max(1, len(published) // 100), unexplained


# -- DSRS against classifiers whose true robust radius is known exactly -----------------------
@pytest.mark.parametrize("margin", [0.2, 0.6, 1.2])
@pytest.mark.parametrize("q_sigma", [0.4, 0.45])
def test_dsrs_on_a_half_space_equals_the_exact_radius(margin: float, q_sigma: float) -> None:
    # F = [w.x + b > 0] under N(0, sigma^2 I): pA = Phi(m/sigma), qA = Phi(m/q_sigma) exactly, and
    # the smoothed classifier's robust radius is m. Exact facts must not certify beyond it.
    from scipy.stats import norm

    p_a, q_a = norm.cdf(margin / SIGMA), norm.cdf(margin / q_sigma)
    r = dsrs_radius((p_a, p_a), (q_a, q_a), d=64, k=0, sigma=SIGMA, q_sigma=q_sigma)
    assert margin - 1e-4 <= r <= margin + 1e-7


@pytest.mark.parametrize("c", [2.3, 2.6])
@pytest.mark.parametrize("q", [{"q_sigma": 0.4}, {"q_threshold": 0.9}])
def test_dsrs_on_a_ball_never_exceeds_the_exact_radius(c: float, q: dict) -> None:
    # F = [||x|| <= c] at x = 0 in d = 16 under N(0, sigma^2 I): pA, qA are chi-square CDFs and the
    # shifted probability is a noncentral chi-square CDF, so the true robust radius is known. DSRS
    # with the exact probabilities must stay below it, and beat NP since Q sees the ball's shape.
    from scipy.optimize import brentq
    from scipy.stats import chi2, ncx2

    d = 16
    p_a = chi2.cdf(c**2 / SIGMA**2, d)
    if "q_sigma" in q:
        q_a = chi2.cdf(c**2 / q["q_sigma"] ** 2, d)
    else:
        t_cut = chi2.ppf(q["q_threshold"], d) / 2.0  # t = ||e||^2 / (2 sigma^2) ~ Gamma(d/2)
        q_a = min(p_a, q["q_threshold"]) / q["q_threshold"] if c**2 / (2 * SIGMA**2) <= t_cut else 1.0
    true_radius = brentq(lambda r: ncx2.cdf(c**2 / SIGMA**2, d, r**2 / SIGMA**2) - 0.5, 1e-9, c, xtol=1e-14)
    ours = dsrs_radius((p_a, p_a), (q_a, q_a), d=d, k=0, sigma=SIGMA, **q)
    assert np_radius(p_a, sigma=SIGMA) + 0.1 < ours <= true_radius
    if c == 2.3 and "q_sigma" in q:
        assert ours > true_radius - 1e-3  # here both facts pin the ball down: DSRS is exact


# -- the fast paths: tables and warm starts only steer; the exact rule certifies ----------------
@pytest.mark.parametrize("d", [3, 16, 784, 3072, 150528])
def test_beta_cdf_through_student_t_equals_betainc(d: int) -> None:
    from scipy.special import betainc

    from engine.radius.radial import beta_cdf

    beta = (d - 1) / 2
    rng = np.random.default_rng(d)
    spread = rng.normal(0.0, 1.0, 5000) * rng.uniform(0.0, 30.0, 5000) / (2.0 * math.sqrt(2 * beta + 1))
    x = np.concatenate([rng.uniform(0.0, 1.0, 5000), 0.5 + spread, [-1.0, 0.0, 0.5, 1.0, 2.0]])
    assert np.abs(beta_cdf(x, beta) - betainc(beta, beta, np.clip(x, 0.0, 1.0))).max() < 1e-13


@pytest.mark.parametrize("d", [61, 784, 3072, 150528])
def test_cosine_table_is_within_1e_11_of_the_cdf(d: int) -> None:
    from scipy.special import betainc

    from engine.radius.radial import beta_pdf
    from engine.radius.tables import CosineCdfTable

    beta = (d - 1) / 2
    table = CosineCdfTable(beta)
    scale = math.sqrt(2 * beta + 1)
    x = 0.5 * (1.0 + np.random.default_rng(d).uniform(-min(45.0, scale), min(45.0, scale), 20000) / scale)
    assert np.abs(table(x) - betainc(beta, beta, np.clip(x, 0.0, 1.0))).max() < 1e-11
    peak = float(beta_pdf(np.array([0.5]), beta)[0])
    assert np.abs(table.pdf(x) - beta_pdf(x, beta)).max() < 1e-8 * peak
    assert np.isnan(table(np.array([np.nan])))[0]
    with pytest.raises(ValueError, match="beta"):
        CosineCdfTable(5.0)  # small d: the law's edges are too sharp, betainc is used instead


def test_a_certificate_is_never_checked_on_a_table() -> None:
    table = radial_setting(784, 380, SIGMA, tabulated=True)
    with pytest.raises(ValueError, match="exact rule"):
        checked_bound(table, radial_setting(784, 380, SIGMA, panels=48), 0.3, 0.0, b1=0.9)


def test_increasing_root_from_a_guess_and_without_a_root() -> None:
    from engine.radius.search import increasing_root

    calls = []

    def f(x: float) -> tuple[float, float]:
        calls.append(x)
        return math.tanh(x - 3.0), 1.0 - math.tanh(x - 3.0) ** 2

    assert increasing_root(f, 2.9, -10.0, 10.0) == pytest.approx(3.0, abs=1e-12)
    assert len(calls) <= 5  # a warm guess costs a few evaluations
    assert increasing_root(lambda x: (x + 20.0, 1.0), 0.0, -10.0, 10.0) == -10.0  # f > 0 throughout
    assert increasing_root(lambda x: (x - 20.0, 1.0), 0.0, -10.0, 10.0) == 10.0


@pytest.mark.parametrize("d,k", [(784, 380), (3072, 1530)])
def test_tabulated_np_edge_equals_the_search(d: int, k: int) -> None:
    from engine.radius.np import _searched_np_radius, np_curve

    exact, coarse = radial_setting(d, k, SIGMA), radial_setting(d, k, SIGMA, panels=COARSE_PANELS)
    search = radial_setting(d, k, SIGMA, tabulated=True)
    assert np_curve(d, k, SIGMA).at(0.9) is not None
    fine = RadialSetting(d=d, k=k, sigma=SIGMA, panels=400, order=16)
    for p in (0.52, 0.7, 0.9, 0.999, 0.99993):
        ours = _general_gaussian_np_radius(p, d, k, SIGMA)
        assert abs(ours - _searched_np_radius(p, exact, coarse, search)) < 1e-4
        assert np_shifted_lower_bound(fine, ours, p)[0] >= 0.5  # certified under a much finer rule


@pytest.mark.parametrize("q", [{"q_sigma": 0.45}, {"q_threshold": 0.7}, {"q_threshold": 0.2}])
def test_fast_dsrs_equals_a_cold_untabulated_search(q: dict) -> None:
    # Ours must come within 1e-4 of the cold search or above it (warm-started Newton reaches dual
    # optima that a cold start can miss, and any multipliers give a valid bound), and must hold
    # under a much finer rule at the multipliers that certified it.
    d, k = 3072, 1530
    setting = radial_setting(d, k, SIGMA, q.get("q_sigma"), q.get("q_threshold"))
    for p_b, q_b in [((0.8, 0.81), (0.85, 0.86)), ((0.95, 0.96), (0.95, 0.96)), ((0.7, 0.72), (0.65, 0.7))]:
        assert intervals_consistent(setting, p_b, q_b)
        ours = dsrs_radius(p_b, q_b, d=d, k=k, sigma=SIGMA, **q)
        cold = cold_dsrs_radius(p_b, q_b, d=d, k=k, sigma=SIGMA, **q)
        assert ours >= cold - 1e-4, (p_b, q_b, ours, cold)
        assert certificate_holds_finer(d, k, p_b, q_b, q), (p_b, q_b, ours, cold)


@pytest.mark.parametrize("bounds,threshold", [
    ((0.8, 0.81, 0.85, 0.86), 0.7),
    ((0.9378238073827565, 0.9451470767360632, 0.9904533334436405, 0.9932595318152856), 0.2),  # CIFAR row 200
])
def test_truncated_q_shifted_integral_resolves_the_cut(bounds: tuple, threshold: float) -> None:
    # With a truncated Q the shifted integrand falls steeply across a band of width ~rho/sqrt(d) near
    # t_cut, and kinks where an interval's end meets t_cut. Rules that place panels by P's CDF alone
    # disagreed there by up to 5e-5, fine and coarse alike (and so did this engine, before the band got
    # its own panels and the kinks became panel edges). Now every rule agrees to 1e-12.
    r, (ell, mu, s1) = _dsrs_certificate(*bounds, 3072, 1530, SIGMA, None, threshold)
    values = []
    for panels, order in [(61, 8), (96, 8), (96, 16), (200, 16), (400, 16), (800, 4)]:
        rule = RadialSetting(d=3072, k=1530, sigma=SIGMA, q_threshold=threshold, panels=panels, order=order)
        values.append(float(rule.shifted_mass(r / rule.scale, ell, mu, s1)))
    assert max(values) - min(values) < 1e-12, values
    t, w = RadialSetting(d=3072, k=1530, sigma=SIGMA, q_threshold=threshold).shifted_nodes(0.1, (3.9, 4.0, 20.0))
    assert w.sum() == pytest.approx(1.0, abs=1e-14) and (w * t).sum() == pytest.approx(6.0, abs=1e-12)


@pytest.mark.parametrize("q,p_b,q_b", [
    ({"q_sigma": 0.45}, (0.9, 0.91), (0.5, 0.52)),  # P's shell of mass 0.9 already holds more than 0.52 of Q
    ({"q_threshold": 0.7}, (0.95, 0.96), (0.9, 0.92)),  # A misses <= 0.05 of P, so Q(A) >= 0.65 / 0.7
])
def test_inconsistent_intervals_certify_only_the_np_radius(q: dict, p_b: tuple, q_b: tuple) -> None:
    # No region has both probabilities in these intervals, so the confidence event has failed and weak
    # duality bounds an empty set: the search alone "certified" radii up to 985 here. Only P's
    # interval, valid on its own, may certify: NP's radius.
    d, k = 3072, 1530
    assert not intervals_consistent(radial_setting(d, k, SIGMA, q.get("q_sigma"), q.get("q_threshold")), p_b, q_b)
    r_np = np_radius(p_b[0], sigma=SIGMA, noise="general_gaussian", d=d, k=k)
    assert dsrs_radius(p_b, q_b, d=d, k=k, sigma=SIGMA, **q) == r_np
    assert cold_dsrs_radius(p_b, q_b, d=d, k=k, sigma=SIGMA, **q) > r_np + 0.05  # what the bare search claims


def test_feasibility_edges_match_sampled_noise() -> None:
    # Q_max(p) is Q's mass on P's ball of mass p (Q_min: on P's shell of mass p). Draw both laws with the
    # engine's own samplers and measure those masses directly.
    import torch

    from engine.noise import make_noise

    d, k, count = 64, 20, 200_000
    setting = radial_setting(d, k, SIGMA, 0.4)
    generator = torch.Generator().manual_seed(0)
    p_draws = make_noise("general_gaussian", SIGMA, k=k, d=d).sample(count, (d,), generator=generator)
    q_draws = make_noise("general_gaussian", 0.4, k=k, d=d).sample(count, (d,), generator=generator)
    p_sq, q_sq = (p_draws**2).sum(1).double().numpy(), (q_draws**2).sum(1).double().numpy()
    for p in (0.3, 0.8):
        edge = float(np.quantile(p_sq, p))  # P's ball of mass p, in ||e||^2
        q_ball = float(np.mean(q_sq < edge))
        assert intervals_consistent(setting, (0.0, p), (q_ball - 0.01, 1.0))
        assert not intervals_consistent(setting, (0.0, p), (q_ball + 0.01, 1.0))
        q_shell = float(np.mean(q_sq > float(np.quantile(p_sq, 1.0 - p))))
        assert intervals_consistent(setting, (p, 1.0), (0.0, q_shell + 0.01))
        assert not intervals_consistent(setting, (p, 1.0), (0.0, q_shell - 0.01))
