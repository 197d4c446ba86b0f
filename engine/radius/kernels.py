"""Compiled per-node integrands of the radial integrals (``engine.radius.radial``).

Each radius search evaluates the same few integrals hundreds of times on a few hundred nodes; in
numpy every evaluation was some forty array passes and temporaries, and their overhead, not the
arithmetic, set the cost. Here each integrand is one loop over the nodes (numba, compiled once and
cached on disk). The geometry kernels map each node to the cosine levels x = (1 + c) / 2 whose
Beta(beta, beta) CDF the integral sums. On the exact rule, which certifies, the caller evaluates that
CDF with scipy (``radial.beta_cdf``, Student's t), so a certificate's numbers come from the same law
as before; on a search's table the sums are taken here too (``table_mass``, ``table_interval_mass``).

Notation as in ``radial``: phi(t) = t + k ln t, Psi(t) = phi(t) - ell - ln(s1 + mu m(t)) with
m = q / p: 0 (no Q), exp(a - b t) (Q at a smaller sigma), 1 / T on t <= t_cut (Q truncated).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

Q_NONE, Q_SIGMA, Q_TRUNCATED = 0, 1, 2
INF = math.inf


@njit(cache=True)
def phi(t: float, k: float) -> float:
    """t + k ln t (Li et al. 2022, Def. 1: minus GG's log-density in radial units)."""
    return t + k * math.log(t) if k > 0.0 else t


@njit(cache=True)
def phi_inv(y: float, k: float, u0: float = math.nan, t0: float = math.nan) -> float:
    """phi^-1(y): the t > 0 with t + k ln t = y (for k > 0 a Wright omega function, t = k omega(y/k - ln k)).

    Newton in u = ln t on f(u) = e^u + k u - y, convex with f''/f' = e^u / (e^u + k) <= 1: every step after
    the first approaches the root from above, and a step s leaves an error of about s^2 e^u / (2 (e^u + k)),
    so the loop ends once that is below rounding (1e-17 |u|). Rounding leaves ~2e-16 |ln t| relative, more
    accurate than scipy's ``wrightomega`` (the tests hold the two together). ``u0`` (a nearby ln t, such as
    the node's own when y is phi at the node plus a small offset) and its ``t0 = e^u0`` save the omega
    start and most iterations: near a node one exp instead of four.
    """
    if k == 0.0 or math.isnan(y):
        return y
    if y == INF:
        return INF
    if y == -INF:
        return 0.0
    u, e = u0, t0
    if not math.isnan(u) and math.isnan(e):
        e = math.exp(u)
    if not math.isnan(u) and abs(e + k * u - y) > 0.5 * (e + k):
        u = math.nan  # more than half a unit of ln t away: from the left Newton would overshoot far (f is convex)
    if math.isnan(u):
        # omega starts within 1e-3 of its root on z < -2 (omega ~ e^z) and z > 3 (omega ~ z - ln z)
        z = y / k - math.log(k)
        if z < 1.0:
            v = z - math.exp(z) if z < -1.0 else z
        else:
            v = math.log(z - math.log(z) + math.log(z) / z)
        u = v + math.log(k)
        e = math.exp(u)
    for _ in range(60):
        step = (e + k * u - y) / (e + k)
        u -= step
        if step * step * e <= 2e-17 * max(1.0, abs(u)) * (e + k):
            # e^(u - s) = e (1 - s + s^2/2 - s^3/6) to 1e-17 for the s this leaves
            return e * (1.0 - step * (1.0 - step * (0.5 - step / 6.0))) if abs(step) < 1e-4 else math.exp(u)
        e = math.exp(u)
    return e


@njit(cache=True)
def psi_sigma(t: float, ell: float, mu: float, s1: float, k: float, a: float, b: float) -> float:
    """Psi(t) = phi(t) - ell - ln(s1 + mu m(t)) for the smaller-sigma Q, m(t) = exp(a - b t); +inf where
    lambda1 p + lambda2 q <= 0."""
    g = s1 + mu * math.exp(min(a - b * t, 700.0))
    return phi(t, k) - ell - math.log(g) if g > 0.0 else INF


@njit(cache=True)
def dpsi(t: float, mu: float, s1: float, k: float, a: float, b: float) -> float:
    """Psi'(t) for the smaller-sigma Q: 1 + k / t + mu b m / (s1 + mu m), with m' = -b m."""
    m = math.exp(min(a - b * t, 700.0))
    g = s1 + mu * m
    return 1.0 + k / t + mu * m * b / (g if g > 0.0 else 1e-300)


@njit(cache=True)
def centred_levels(t: np.ndarray, log_t: np.ndarray, m_t: np.ndarray, rho: float, ell: float, mu: float, s1: float,
                   pure: bool, k: float, q_kind: int, a: float, b: float, t_cut: float,
                   threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For R = {phi(t_shifted) > Psi(t)} under a centred law with radial nodes t (ln t and m(t) beside them):
    the cosine levels x_i with mass sum_i w_i F(x_i), and the weights ce_i, cm_i with
    d mass / d ell = sum_i w_i f(x_i) ce_i and d mass / d mu = sum_i w_i f(x_i) cm_i (f = F'). ``pure``: the
    face lambda1 = 0 with gamma = ell, whose d mass / d gamma is the ce sum.

    The point at radial t lies in R when its cosine to delta is below c* = (t - tau + rho^2) / (2 sqrt(t) rho),
    tau = phi^-1(Psi(t)) (Li et al. 2022, App. C); dc*/dPsi = -1 / (phi'(tau) 2 sqrt(t) rho).
    """
    n = t.size
    x, ce, cm = np.empty(n), np.empty(n), np.empty(n)
    with_q = q_kind != Q_NONE and not pure
    for i in range(n):
        ti = t[i]
        level = ti + k * log_t[i]
        if pure:
            if q_kind == Q_TRUNCATED:
                level = level - ell + math.log(threshold) if ti <= t_cut else INF
            else:
                level = level - ell - a + b * ti
        elif with_q:
            g = s1 + mu * m_t[i]
            level = level - ell - math.log(g) if g > 0.0 else INF
        else:
            level -= ell
        tau = phi_inv(level, k, log_t[i], ti)
        if tau == INF:
            x[i], ce[i], cm[i] = -INF, 0.0, 0.0
            continue
        sq = math.sqrt(ti)
        x[i] = 0.5 * (1.0 + ((ti - tau) + rho * rho) / (2.0 * sq * rho))
        base = -0.25 / ((1.0 + (k / tau if k > 0.0 else 0.0)) * sq * rho)  # (1/2) dc*/dPsi
        ce[i] = -base
        cm[i] = base * (-m_t[i] / (s1 + mu * m_t[i])) if with_q else 0.0
    return x, ce, cm


@njit(cache=True)
def _cos_level(tu: float, t: float, sq: float, rho: float) -> float:
    """(1 + c) / 2 for the cosine c at which the shifted point's radial t_u = t + rho^2 + 2 sqrt(t) rho c."""
    if tu == INF:
        return INF
    return 0.5 * (1.0 + (tu - t - rho * rho) / (2.0 * sq * rho))


@njit(cache=True)
def offset_interval_levels(t: np.ndarray, log_t: np.ndarray, rho: float, k: float, lo: np.ndarray,
                           offset: np.ndarray, cap: np.ndarray, div: float) -> tuple[np.ndarray, np.ndarray]:
    """Cosine levels of the intervals t_u in (lo_j, min(phi^-1(phi(t_v) + offset_j) / div, cap_j)) at each
    node t_v of the shifted law: P_delta(R) = sum_i w_i sum_j [F(x_hi) - F(x_lo)]. Empty intervals get
    x_lo = x_hi = -inf, and an interval that starts where the previous one ends joins it (the region's two
    pieces at t_cut), so the CDF is not evaluated twice at the shared end. Every region whose boundary in t_u is a constant offset of phi(t_v) has this form:
    no Q, Q with mu = 0, the truncated Q (inside and outside its ball), and the face lambda1 = 0."""
    n, parts = t.size, lo.size
    x_lo, x_hi = np.empty((parts, n)), np.empty((parts, n))
    for i in range(n):
        tv = t[i]
        level = tv + k * log_t[i]
        sq = math.sqrt(tv)
        row, end = -1, -INF  # the last non-empty interval and its upper end
        for j in range(parts):
            hi = min(phi_inv(level + offset[j], k, log_t[i], tv) / div, cap[j])
            x_lo[j, i] = x_hi[j, i] = -INF
            if not hi > lo[j]:
                continue
            if row >= 0 and end == lo[j]:  # adjoins it (the ball's interval, at t_cut): one interval
                x_hi[row, i] = _cos_level(hi, tv, sq, rho)
            else:
                row = j
                x_lo[j, i] = _cos_level(lo[j], tv, sq, rho)
                x_hi[j, i] = _cos_level(hi, tv, sq, rho)
            end = hi
    return x_lo, x_hi


@njit(cache=True)
def _psi_in_log(u: float, ell: float, mu: float, s1: float, k: float, a: float, b: float) -> tuple[float, float]:
    """Psi and dPsi/du at t = e^u for the smaller-sigma Q (+inf, nan where lambda1 p + lambda2 q <= 0)."""
    t = math.exp(u)
    m = math.exp(min(a - b * t, 700.0))
    g = s1 + mu * m
    if not g > 0.0:
        return INF, math.nan
    return t + k * u - ell - math.log(g), t + k + t * mu * m * b / g


@njit(cache=True)
def _root(level: float, ell: float, mu: float, s1: float, k: float, a: float, b: float, lo: float, hi: float,
          f_lo: float, f_hi: float, start: float, sign: float) -> float:
    """t in [lo, hi] with Psi(t) = level where sign * Psi increases there; the end that the sign of
    sign * (Psi - level) points to when there is no crossing. ``f_lo``, ``f_hi``: sign * (Psi - level) at the
    ends where already known (NaN: evaluate). Newton in u = ln t from ``start`` (a t), bisection in u
    (roots lie anywhere from 1e-8 to 1e4) whenever a step leaves the bracket; ends on a step below
    1e-11 in u, after which the error is below rounding."""
    if math.isnan(f_lo):
        f_lo = sign * (psi_sigma(lo, ell, mu, s1, k, a, b) - level)
    if f_lo > 0.0:
        return lo
    if math.isnan(f_hi):
        f_hi = sign * (psi_sigma(hi, ell, mu, s1, k, a, b) - level)
    if not f_hi > 0.0:
        return hi
    u_lo, u_hi = math.log(lo), math.log(hi)
    u = math.log(start) if lo < start < hi else 0.5 * (u_lo + u_hi)
    for _ in range(200):
        value, slope = _psi_in_log(u, ell, mu, s1, k, a, b)
        v = sign * (value - level)
        if v == 0.0:
            break
        if v > 0.0:
            u_hi = u
        else:
            u_lo = u
        step = v / (sign * slope)
        if u_lo < u - step < u_hi:
            u -= step
            if abs(step) <= 1e-11 * max(1.0, abs(u)):
                break
        else:
            u = 0.5 * (u_lo + u_hi)
        if u_hi - u_lo <= 1e-14 * max(1.0, abs(u)):
            break
    return math.exp(u)


@njit(cache=True)
def sublevel_pieces(ell: float, mu: float, s1: float, k: float, a: float, b: float, t_top: float,
                    grid: int = 4000) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Monotone pieces of Psi for the smaller-sigma Q: (left ends, right ends, increasing?, t0), where
    Psi = +inf below t0 (lambda1 p + lambda2 q <= 0 there). Psi need not be monotone when mu < 0 (an
    increasing and a decreasing term): its turning points are the sign changes of Psi' on a geometric
    grid, each refined by bisection to rounding. With s1 < 0 the one piece is (0, t1), Psi rising from
    -inf to +inf (lambda1 p + lambda2 q > 0 only below t1); mu >= 0, s1 > 0 leaves Psi increasing."""
    if s1 < 0.0:
        if mu <= 0.0 or a + math.log(mu) <= 0.0:
            return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.bool_), 0.0
        return np.array([1e-300]), np.array([(a + math.log(mu)) / b]), np.array([True]), 0.0
    if mu >= 0.0:
        return np.array([1e-12 * t_top]), np.array([INF]), np.array([True]), 0.0
    t0 = (a + math.log(-mu)) / b if a + math.log(-mu) > 0.0 else 0.0
    floor = max(t0 * (1.0 + 1e-12), 1e-300) if t0 > 0.0 else 1e-12 * t_top
    turns = [floor]
    ratio = (t_top / floor) ** (1.0 / (grid - 1))
    prev_t = floor
    prev = dpsi(floor, mu, s1, k, a, b) > 0.0
    for i in range(1, grid):
        ti = floor * ratio**i
        now = dpsi(ti, mu, s1, k, a, b) > 0.0
        if now != prev:
            lo, hi = prev_t, ti
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                if mid <= lo or mid >= hi:
                    break
                if (dpsi(mid, mu, s1, k, a, b) > 0.0) == prev:
                    lo = mid
                else:
                    hi = mid
            turns.append(0.5 * (lo + hi))
        prev, prev_t = now, ti
    count = len(turns)
    left, right, rising = np.empty(count), np.empty(count), np.empty(count, dtype=np.bool_)
    for j in range(count):
        left[j] = turns[j]
        right[j] = turns[j + 1] if j + 1 < count else INF
        probe = left[j] * 1.5 if j + 1 == count else 0.5 * (left[j] + right[j])
        rising[j] = dpsi(probe, mu, s1, k, a, b) > 0.0
    return left, right, rising, t0


@njit(cache=True)
def sublevel_levels(t: np.ndarray, log_t: np.ndarray, rho: float, ell: float, mu: float, s1: float, k: float,
                    a: float, b: float, left: np.ndarray, right: np.ndarray, rising: np.ndarray,
                    t0: float) -> tuple[np.ndarray, np.ndarray]:
    """Cosine levels of {t_u : Psi(t_u) < phi(t_v)} at each node t_v of the shifted law, for the
    smaller-sigma Q: on each monotone piece of Psi the sublevel set is one interval, its end found per
    node by bracketed Newton. Layout as ``offset_interval_levels``."""
    n, parts = t.size, left.size
    x_lo, x_hi = np.empty((parts, n)), np.empty((parts, n))
    first_open = parts > 0 and t0 == 0.0  # the first piece reaches down to t = 0
    for i in range(n):
        tv = t[i]
        level = tv + k * log_t[i]
        sq = math.sqrt(tv)
        for j in range(parts):
            lo_j, hi_j = left[j], right[j]
            inside = False
            if rising[j]:
                opens = j == 0 and first_open  # the piece starts at t = 0, where Psi(0+) = -inf for k > 0
                if opens:
                    psi_left = -INF if k > 0.0 else psi_sigma(0.0, ell, mu, s1, k, a, b)
                else:
                    psi_left = psi_sigma(lo_j, ell, mu, s1, k, a, b)
                f_lo = -INF if (opens and k > 0.0) else math.nan
                f_hi = math.nan
                if hi_j == INF:
                    # Psi >= phi - ell - ln(1 + max(mu, 0) m(left)) beyond left: its phi^-1 passes the level
                    lift = math.log1p(max(mu, 0.0) * math.exp(min(a - b * lo_j, 700.0)))
                    hi_j = max(phi_inv(level + ell + lift, k, log_t[i], tv) * (1.0 + 1e-12), lo_j * 2.0 + 1.0)
                    for _ in range(60):
                        f_hi = psi_sigma(hi_j, ell, mu, s1, k, a, b) - level
                        if f_hi > 0.0:
                            break
                        hi_j *= 2.0
                # start from Psi's root with the Q term frozen at the node's own t: a few Newton steps
                frozen = mu * math.exp(min(a - b * tv, 700.0)) if s1 > 0.0 else 0.0
                guess = phi_inv(level + ell + math.log1p(max(frozen, -1.0 + 1e-16)), k, log_t[i], tv)
                end = _root(level, ell, mu, s1, k, a, b, lo_j, hi_j, f_lo, f_hi, guess, 1.0)
                inside = level > psi_left
                start = 0.0 if opens else lo_j
                tu_lo, tu_hi = start, end
            else:
                end = _root(level, ell, mu, s1, k, a, b, lo_j, hi_j, math.nan, math.nan, -1.0, -1.0)
                inside = level > psi_sigma(hi_j, ell, mu, s1, k, a, b)
                tu_lo, tu_hi = end, hi_j
            if inside and tu_hi > tu_lo:
                x_lo[j, i] = _cos_level(tu_lo, tv, sq, rho)
                x_hi[j, i] = _cos_level(tu_hi, tv, sq, rho)
            else:
                x_lo[j, i] = x_hi[j, i] = -INF
    return x_lo, x_hi


@njit(cache=True)
def _hermite(x: float, knots: np.ndarray, tangent: np.ndarray, u0: float, h: float, scale: float,
             grad: bool) -> tuple[float, float]:
    """The cubic Hermite interpolant of ``tables.CosineCdfTable`` at one x, and (with ``grad``) its
    derivative in x, 0 outside the table; NaN stays NaN."""
    if math.isnan(x):
        return math.nan, 0.0
    u = (2.0 * x - 1.0) * scale
    z = (min(max(u, u0), -u0) - u0) / h
    c = min(int(z), knots.size - 2)
    s = z - c
    f0, f1, d0, d1 = knots[c], knots[c + 1], tangent[c], tangent[c + 1]
    r = 1.0 - s
    value = f0 + s * s * (3.0 - 2.0 * s) * (f1 - f0) + s * r * (r * d0 - s * d1)
    slope = 0.0
    if grad and abs(u) < -u0:
        slope = (6.0 * s * r * (f1 - f0) + d0 * r * (1.0 - 3.0 * s) + d1 * s * (3.0 * s - 2.0)) * (2.0 * scale / h)
    return value, slope


@njit(cache=True)
def table_cdf(x: np.ndarray, knots: np.ndarray, tangent: np.ndarray, u0: float, h: float, scale: float,
              grad: bool) -> tuple[np.ndarray, np.ndarray]:
    """``_hermite`` over the 1-D x: the table's CDF and (with ``grad``; zeros without) its derivative."""
    n = x.size
    out, slope = np.empty(n), np.zeros(n)
    for i in range(n):
        out[i], slope[i] = _hermite(x[i], knots, tangent, u0, h, scale, grad)
    return out, slope


@njit(cache=True)
def table_mass(x: np.ndarray, w: np.ndarray, ce: np.ndarray, cm: np.ndarray, knots: np.ndarray, tangent: np.ndarray,
               u0: float, h: float, scale: float, grad: bool) -> tuple[float, float, float]:
    """sum_i w_i F(x_i) on the table and, with ``grad``, sum_i w_i f(x_i) ce_i and sum_i w_i f(x_i) cm_i: the
    mass of ``centred_levels`` and its derivatives in one pass."""
    mass = d_ell = d_mu = 0.0
    for i in range(x.size):
        value, slope = _hermite(x[i], knots, tangent, u0, h, scale, grad)
        mass += w[i] * value
        if grad:
            d_ell += w[i] * slope * ce[i]
            d_mu += w[i] * slope * cm[i]
    return mass, d_ell, d_mu


@njit(cache=True)
def table_interval_mass(x_lo: np.ndarray, x_hi: np.ndarray, w: np.ndarray, knots: np.ndarray, tangent: np.ndarray,
                        u0: float, h: float, scale: float) -> float:
    """sum_i w_i sum_j max(F(x_hi) - F(x_lo), 0) on the table, F(-inf) = 0 and F(inf) = 1: the shifted mass of
    the interval kernels."""
    total = 0.0
    for j in range(x_lo.shape[0]):
        for i in range(x_lo.shape[1]):
            if x_hi[j, i] > x_lo[j, i]:
                hi = _hermite(x_hi[j, i], knots, tangent, u0, h, scale, False)[0] if x_hi[j, i] < INF else 1.0
                lo = _hermite(x_lo[j, i], knots, tangent, u0, h, scale, False)[0] if x_lo[j, i] > -INF else 0.0
                total += w[i] * max(hi - lo, 0.0)
    return total
