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
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.special import gammainc, gammaincc, gammainccinv, gammaincinv

from engine.radius.np import (
    CERTIFICATE_MARGIN,
    COARSE_PANELS,
    EDGE_SLOPE,
    SEARCH_MARGIN,
    _integrals,
    certifies,
    checked_bound,
    np_edge,
    np_radius,
    radial_setting,
    solve_ell,
)
from engine.radius.radial import RadialSetting
from engine.radius.search import increasing_root, largest_certified_radius, step_down


def dsrs_threshold_heuristic(p_lower: float) -> float:
    """The per-input truncation quantile ``x+`` of Li et al. 2022 (App. E): 0.08 (-ln(1-p) - 5) + 0.6.

    Chosen from P's interval before Q is sampled; 0.5 below p = 0.5; clipped into [0.01, 0.99].
    """
    if p_lower < 0.5:
        return 0.5
    t = 0.08 * (-math.log(max(1.0 - p_lower, 1e-300)) - 5.0) + 0.6
    return min(max(t, 0.01), 0.99)


def intervals_consistent(setting: RadialSetting, p_bounds: tuple[float, float],
                         q_bounds: tuple[float, float], tolerance: float = 1e-9) -> bool:
    """Whether some region A has P(A) in [pL, pU] and Q(A) in [qL, qU]: whether the primal of Li et al.
    2022, Thm. 2 is feasible at all.

    The pairs (P(A), Q(A)) fill the convex region between two Neyman-Pearson curves: the least Q for a
    given P from the sets where q / p is smallest, the most from those where it is largest. q / p falls
    with the radius for both kinds of Q, so those sets are shells and balls, and the rectangle meets the
    region iff Q_min(pL) <= qU and Q_max(pU) >= qL. Otherwise no classifier has both probabilities in
    its intervals: the confidence event has failed, and the dual "bound" (weak duality over an empty
    set) certifies anything. A pair within ``tolerance`` of the edge counts as consistent: exact facts
    about a ball lie on it (the ball is that edge's set), and there the dual is bounded.
    """
    (p_lower, p_upper), (q_lower, q_upper) = p_bounds, q_bounds
    shape = setting.shape
    if setting.q_threshold is not None:
        thr = setting.q_threshold
        q_min = max(0.0, thr - (1.0 - p_lower)) / thr  # Q's mass sits in the ball t <= t_cut, P's share thr
        q_max = min(p_upper, thr) / thr
    else:
        ratio = (setting.sigma / setting.q_sigma) ** 2  # type: ignore[operator]
        q_min = float(gammaincc(shape, gammainccinv(shape, p_lower) * ratio))  # the shell P(t > t*) = pL
        q_max = float(gammainc(shape, gammaincinv(shape, p_upper) * ratio))  # the ball P(t < t') = pU
    return q_min <= q_upper + tolerance and q_max >= q_lower - tolerance


def _dual_bound(setting: RadialSetting, rho: float, ell: float, mu: float, b1: float, b2: float,
                s1: float = 1.0) -> float:
    """The weak-duality lower bound at lambda1 = s1 e^ell, lambda2 = mu e^ell (b1: pL if s1 > 0 else pU)."""
    if not -700.0 < ell < 700.0 or not math.isfinite(mu):
        return -math.inf  # multipliers out of range: no usable bound
    shifted, p, q = _integrals(setting, rho, ell, mu, s1)
    return shifted - math.exp(ell) * (s1 * (p - b1) + mu * (q - b2))


def _newton(setting: RadialSetting, rho: float, ell: float, mu: float, s1: float, b1: float, b2: float,
            mu_ok, iters: int) -> tuple[float, float, tuple[float, float]]:
    """Damped Newton on (P(R) - b1, Q(R) - b2) = 0 over (ell, mu), keeping mu_ok(mu). Returns (ell, mu) and the
    residuals at that point."""

    def residual(ell: float, mu: float) -> tuple[float, float, tuple[float, float, float, float]]:
        p, p_ell, p_mu = setting.p_mass(rho, ell, mu, grad=True, s1=s1)
        q, q_ell, q_mu = setting.q_mass(rho, ell, mu, grad=True, s1=s1)
        return p - b1, q - b2, (p_ell, p_mu, q_ell, q_mu)

    f0, f1, jac = residual(ell, mu)
    for _ in range(iters):
        norm = max(abs(f0), abs(f1))
        if not math.isfinite(norm) or norm < 1e-13:
            break
        a, b, c, d = jac
        det = a * d - b * c
        if det == 0.0 or not math.isfinite(det):
            break
        step = ((b * f1 - d * f0) / det, (c * f0 - a * f1) / det)  # solves jac @ step = -f
        if not (math.isfinite(step[0]) and math.isfinite(step[1])):
            break
        t, improved = 1.0, False
        for _ in range(12):
            new_ell, new_mu = ell + t * step[0], mu + t * step[1]
            if mu_ok(new_mu):
                new_f0, new_f1, new_jac = residual(new_ell, new_mu)
                if max(abs(new_f0), abs(new_f1)) < norm:
                    improved = True
                    break
            t *= 0.5
        if not improved:
            break
        ell, mu, f0, f1, jac = new_ell, new_mu, new_f0, new_f1, new_jac
    return ell, mu, (f0, f1)


def bound_ends(p_bounds: tuple[float, float], q_bounds: tuple[float, float], mu: float,
               s1: float) -> tuple[float, float]:
    """(b1, b2): the interval ends the multipliers weigh, pU when lambda1 < 0 else pL, qU when lambda2 < 0
    else qL; with those, any multipliers give a valid bound (weak duality)."""
    return (p_bounds[1] if s1 < 0 else p_bounds[0]), (q_bounds[1] if mu < 0 else q_bounds[0])


def _branches(setting: RadialSetting, p_bounds: tuple[float, float], q_bounds: tuple[float, float]) -> dict:
    """Each way two constraints can bind at the dual optimum: name -> (s1, b1, b2, the signs mu may take)."""
    (p_lower, p_upper), (q_lower, q_upper) = p_bounds, q_bounds
    floor = -setting.q_threshold * (1.0 - 1e-9) if setting.q_threshold is not None else -np.inf
    return {
        "interior": (1.0, p_lower, q_lower, lambda m: m >= 0),  # both lower bounds bind
        "upper": (1.0, p_lower, q_upper, lambda m: floor < m <= 0),  # Q's upper bound binds: lambda2 < 0
        "negative": (-1.0, p_upper, q_lower, lambda m: m > 0),  # P's upper bound binds: lambda1 < 0
    }


@dataclass
class WarmStart:
    """Multipliers found at the previous radius of a search: nearby radii have nearby optima, so
    Newton started there needs a few steps instead of dozens. Only speed depends on it."""

    ell0: float | None = None
    gamma: float | None = None
    interior: tuple[float, float] | None = None
    upper: tuple[float, float] | None = None  # lambda2 < 0 (Q's upper bound binds)
    negative: tuple[float, float] | None = None  # lambda1 < 0
    branch: str | None = None  # which of the three held the last optimum, both constraints binding
    trail: list[tuple[float, float, float]] = field(default_factory=list)  # (rho, ell, mu) on that branch

    def predict(self, rho: float, start: tuple[float, float]) -> tuple[float, float]:
        """Multipliers at rho extrapolated linearly from the last two optima on this branch."""
        if len(self.trail) < 2:
            return start
        (r0, e0, m0), (r1, e1, m1) = self.trail[-2:]
        if r1 == r0:
            return start
        t = (rho - r1) / (r1 - r0)
        return e1 + t * (e1 - e0), m1 + t * (m1 - m0)


def _binding_optimum(setting: RadialSetting, rho: float, p_bounds: tuple[float, float],
                     q_bounds: tuple[float, float], warm: WarmStart,
                     newton_iters: int) -> tuple[float, float, float, float] | None:
    """The optimum at this radius when it keeps the previous radius's binding constraints.

    Newton from the previous multipliers on the same two binding constraints; if it converges with
    multipliers of that branch's signs, the point satisfies the KKT conditions of the (concave) dual,
    so it is the dual optimum and the other candidates need not be computed. None otherwise.
    """
    start = getattr(warm, warm.branch) if warm.branch is not None else None
    if start is None:
        return None
    s1, b1, b2, sign_ok = _branches(setting, p_bounds, q_bounds)[warm.branch]
    guess = warm.predict(rho, start)
    ell, mu, f = _newton(setting, rho, *(guess if sign_ok(guess[1]) else start), s1, b1, b2, sign_ok, newton_iters)
    if not (max(abs(f[0]), abs(f[1])) < 1e-10 and sign_ok(mu) and -700.0 < ell < 700.0):
        warm.trail.clear()
        return None
    setattr(warm, warm.branch, (ell, mu))
    warm.trail.append((rho, ell, mu))
    return _residual_bound(setting, rho, ell, mu, s1, f), ell, mu, s1


def _residual_bound(setting: RadialSetting, rho: float, ell: float, mu: float, s1: float,
                    residuals: tuple[float, float]) -> float:
    """The dual bound of ``_dual_bound`` with P(R) - b1 and Q(R) - b2 taken from Newton's last residuals
    rather than integrated again."""
    if not -700.0 < ell < 700.0 or not math.isfinite(mu):
        return -math.inf
    shifted = float(setting.shifted_mass(rho, ell, mu, s1))
    return shifted - math.exp(ell) * (s1 * residuals[0] + mu * residuals[1])


def dsrs_shifted_lower_bound(
    setting: RadialSetting, r: float, p_bounds: tuple[float, float], q_bounds: tuple[float, float],
    newton_iters: int = 60, warm: WarmStart | None = None,
) -> tuple[float, float, float, float]:
    """Lower bound on min P_delta(A) over A consistent with both intervals (Li et al. 2022, Thm. 2-3).

    Returns (bound, ell, mu, s1): the multipliers lambda1 = s1 e^ell, lambda2 = mu e^ell used (mu = inf
    marks the face lambda1 = 0 with ell = ln lambda2). Starts from the NP region (mu = 0): if its
    Q-probability lies in [qL, qU] the Q fact adds nothing and the NP bound stands. Otherwise Newton
    moves the multipliers so that Q(R) meets the violated end and P(R) meets pL; when that drifts
    to lambda1 -> 0, the face lambda1 = 0 and then P's upper bound (lambda1 < 0) are tried. Every
    candidate is a valid bound; the largest is returned. ``warm`` carries starting points between
    the radii of one search and is updated in place.
    """
    warm = warm if warm is not None else WarmStart()
    p_lower, p_upper = p_bounds
    q_lower, q_upper = q_bounds
    rho = r / setting.scale
    best = _binding_optimum(setting, rho, p_bounds, q_bounds, warm, newton_iters)
    if best is not None and math.isfinite(best[0]):
        return best
    warm.branch = None
    warm.trail.clear()
    branches = _branches(setting, p_bounds, q_bounds)

    def solve_branch(name: str, start: tuple[float, float]) -> float:
        """Newton on the branch's two binding constraints; its bound joins the candidates."""
        s1, b1, b2, sign_ok = branches[name]
        ell, mu, f = _newton(setting, rho, *start, s1, b1, b2, sign_ok, newton_iters)
        res = max(abs(f[0]), abs(f[1]))
        candidates.append((_residual_bound(setting, rho, ell, mu, s1, f), ell, mu, s1))
        if res < 1e-9 or name != "negative":  # a failed start near the face is not worth retrying
            setattr(warm, name, (ell, mu))
            warm.branch = name if res < 1e-10 else None
        return res

    ell0 = warm.ell0 = solve_ell(setting, rho, p_lower, guess=warm.ell0)
    q0 = float(setting.q_mass(rho, ell0, 0.0))

    def np_candidate() -> tuple[float, float, float, float]:
        return _dual_bound(setting, rho, ell0, 0.0, p_lower, 0.0), ell0, 0.0, 1.0

    if q_lower <= q0 <= q_upper:
        return np_candidate()
    candidates: list[tuple[float, float, float, float]] = []
    if q0 > q_upper:  # lambda2 < 0: Q(R) must come down to qU
        solve_branch("upper", warm.upper or (ell0, 0.0))
    else:  # lambda2 > 0: Q(R) must rise to qL; which face binds is read off the lambda1 = 0 region
        face = pure_q_bound(setting, rho, q_lower, guess=warm.gamma)
        candidates.append(face)
        p_face = -1.0
        if math.isfinite(face[0]):
            warm.gamma = face[1]
            p_face = setting.pure_q_centred_mass(rho, face[1], under_p=True)
        if p_face < p_lower:  # interior optimum: P's lower bound binds, lambda1 > 0
            solve_branch("interior", warm.interior or (ell0, 0.0))
        elif p_face > p_upper:  # P's upper bound binds: lambda1 < 0; Newton from points near the face
            starts = [warm.negative] if warm.negative else []
            starts += [(face[1] - math.log(big), big) for big in (3.0, 30.0, 1e3)]
            for start in starts:
                if solve_branch("negative", start) < 1e-9:
                    break
        # else: the face region itself meets both intervals, so its bound is the optimum
    if warm.branch is None:  # a branch that converged is a KKT point, so the dual optimum: NP's cannot beat it
        candidates.append(np_candidate())
    best = max((c for c in candidates if math.isfinite(c[0])), key=lambda c: c[0])
    if warm.branch is not None:
        warm.trail.append((rho, *getattr(warm, warm.branch)))
    return best


def pure_q_bound(setting: RadialSetting, rho: float, q_lower: float,
                 guess: float | None = None) -> tuple[float, float, float, float]:
    """The dual bound on the face lambda1 = 0: P_delta(R) - lambda2 (Q(R) - qL), R = {p_delta < lambda2 q},
    with ln lambda2 = gamma such that Q(R) = qL (safeguarded Newton). Returned as (bound, gamma, inf, 0)."""
    def excess(gamma: float) -> tuple[float, float]:
        mass, slope = setting.pure_q_centred_mass(rho, gamma, grad=True)
        return mass - q_lower, slope

    lo, hi = -60.0, 60.0
    gamma = increasing_root(excess, 0.0 if guess is None else guess, lo, hi, rtol=1e-13,
                            step=1.0 if guess is None else 0.25)
    if gamma <= lo or gamma >= hi:
        return -math.inf, 0.0, math.inf, 0.0
    q, shifted = setting.pure_q_masses(rho, gamma)
    return shifted - math.exp(gamma) * (q - q_lower), gamma, math.inf, 0.0


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
    return _dsrs_certificate(p_lower, p_upper, q_lower, q_upper, int(d), int(k), float(sigma),
                             None if q_sigma is None else float(q_sigma),
                             None if q_threshold is None else float(q_threshold))[0]


@lru_cache(maxsize=4096)
def _dsrs_certificate(p_lower: float, p_upper: float, q_lower: float, q_upper: float, d: int, k: int,
                      sigma: float, q_sigma: float | None,
                      q_threshold: float | None) -> tuple[float, tuple[float, float, float] | None]:
    """(radius, (ell, mu, s1)): the multipliers whose dual bound certified it; None where NP's radius stands."""
    if p_lower <= 0.5:
        return 0.0, None

    def np_certified() -> float:
        return np_radius(p_lower, sigma=sigma, noise="general_gaussian" if k else "gaussian", d=d, k=k)

    exact = radial_setting(d, k, sigma, q_sigma, q_threshold)
    if not intervals_consistent(exact, (p_lower, p_upper), (q_lower, q_upper)):
        return np_certified(), None  # no classifier meets both intervals: P's alone still certifies NP's radius
    # the search starts from NP's edge; NP's own certificate is only needed when DSRS does not clear it
    bounds_p, bounds_q = (min(p_lower, 1.0 - 1e-15), p_upper), (q_lower, q_upper)
    edge = np_edge(bounds_p[0], d, k, sigma)
    r_np = np_certified() if edge is None else edge[0]
    coarse = radial_setting(d, k, sigma, q_sigma, q_threshold, panels=COARSE_PANELS)
    search = radial_setting(d, k, sigma, q_sigma, q_threshold, panels=48, tabulated=True)
    warm = WarmStart(ell0=None if edge is None else edge[1])  # NP's multiplier where the search starts
    found: dict[float, tuple[float, float, float, float]] = {}

    def solve(r: float) -> tuple[float, float, float, float]:
        found[r] = dsrs_shifted_lower_bound(search, r, bounds_p, bounds_q, warm=warm)
        return found[r]

    def margin(r: float) -> float:
        try:
            return solve(r)[0] - 0.5 - CERTIFICATE_MARGIN - SEARCH_MARGIN
        except (FloatingPointError, OverflowError, ValueError, ZeroDivisionError, np.linalg.LinAlgError):
            return -1.0

    # near the edge D(r) = 1/2 the bound falls at about phi(0) / sigma = 0.4 / sigma per unit of radius
    r = largest_certified_radius(margin, r_np, max(0.05 * sigma, 0.1 * r_np), xtol=1e-6, slope=EDGE_SLOPE / sigma)

    def certified(r: float) -> tuple[float, float, float] | None:
        """The multipliers the search found at r, if their dual bound holds on the exact rule with the
        quadrature error allowance."""
        try:
            _, ell, mu, s1 = found[r] if r in found else solve(r)
            if certifies(checked_bound(exact, coarse, r, ell, mu, s1, *bound_ends(bounds_p, bounds_q, mu, s1))):
                return ell, mu, s1
        except (FloatingPointError, OverflowError, ValueError, ZeroDivisionError, np.linalg.LinAlgError):
            pass
        return None

    # never below NP: that radius stands from P's interval alone. A certificate 1e-6 above NP's edge (which
    # lies within 2e-9 of NP's certified radius) clears it without computing it.
    certificate = step_down(certified, r, r_np, 40)
    if certificate is not None and (edge is None or not k or certificate[0] > r_np + 1e-6 * max(sigma, r_np)):
        return float(certificate[0]), certificate[1]
    r_np = np_certified()
    if certificate is not None and certificate[0] >= r_np:
        return float(certificate[0]), certificate[1]
    return r_np, None
