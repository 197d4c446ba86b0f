"""Probabilities of likelihood-ratio regions under radial smoothing laws, as 1-D integrals.

Every law here is GG(d, k, sigma) (k = 0: Gaussian), possibly at another scale or truncated.
With t = ||z||^2 / (2 sigma'^2) in P's units, the log-density is -phi(t) + const with
phi(t) = t + k ln t, and t ~ Gamma(d/2 - k). For a shift delta of length r and a point at
radial t, the cosine c to delta satisfies (1 + c) / 2 ~ Beta((d-1)/2, (d-1)/2) (Li et al. 2022,
Sec. 4 and App. C), so the probability of a region {phi(t_shifted) > Psi(t)} is a Gamma-radial
integral of a Beta CDF. Every function here is vectorised with numpy broadcasting.

The region R(lambda) = {p_delta(z) < lambda1 p(z) + lambda2 q(z)}, with q / p = m(t), is written
with ell = ln lambda1 and mu = lambda2 / lambda1: z in R iff phi(t_shifted) > Psi(t) where
Psi(t) = phi(t) - ell - ln(1 + mu m(t)).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from scipy.optimize import brentq
from scipy.special import (
    betaln,
    expit,
    gammainc,
    gammaincc,
    gammainccinv,
    gammaincinv,
    gammaln,
    roots_legendre,
    stdtr,
    wrightomega,
)
from scipy.stats import gamma as gamma_law

from engine.radius.tables import MIN_BETA, CosineCdfTable, cosine_cdf_table

# Quadrature in the logit of the radial CDF: tails get nodes, the bulk gets most of them.
_LOGIT_SPAN = 37.0  # mass outside is 2 * expit(-37) ~ 2e-16


@lru_cache(maxsize=64)
def radial_nodes(shape: float, upper_q: float = 1.0, panels: int = 96, order: int = 8,
                 break_q: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nodes t_i and weights w_i with sum_i w_i h(t_i) ~ E[h(t)], t ~ Gamma(shape) truncated to its
    ``upper_q`` quantile (weights then sum to upper_q: the mass, not the conditional law).

    Composite Gauss-Legendre in x where the CDF level is upper_q * expit(x), x in [-37, 37];
    ``break_q`` adds a panel edge at that CDF level, where the integrand jumps.
    """
    return logit_rule(logit_edges(panels, break_q), shape, upper_q, order)


def logit_edges(panels: int, break_q: float | None = None) -> np.ndarray:
    """Panel edges in the logit of the radial CDF: ``panels`` even panels on [-37, 37], and an edge at
    the CDF level ``break_q`` when given."""
    edges = np.linspace(-_LOGIT_SPAN, _LOGIT_SPAN, panels + 1)
    if break_q is not None:
        edges = np.unique(np.append(edges, math.log(break_q / (1.0 - break_q))))
    return edges


def logit_rule(edges: np.ndarray, shape: float, upper_q: float = 1.0, order: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre panels between consecutive ``edges`` in the logit x of the Gamma(shape) CDF level
    (times upper_q); nodes are grouped panel by panel, ``order`` to a panel."""
    g, gw = gauss_legendre(order)
    half = 0.5 * (edges[1:] - edges[:-1])
    mid = 0.5 * (edges[1:] + edges[:-1])
    x = (mid[:, None] + half[:, None] * g[None, :]).ravel()
    wx = (half[:, None] * gw[None, :]).ravel()
    level = expit(x)
    if upper_q >= 1.0:
        # the complement keeps precision in the upper tail, where 1 - level underflows relative to 1
        t = np.where(x < 0, gammaincinv(shape, level), gammainccinv(shape, expit(-x)))
    else:
        t = gammaincinv(shape, upper_q * level)
    w = upper_q * wx * level * expit(-x)  # d/dx expit(x) = expit(x) expit(-x)
    return t, w


@lru_cache(maxsize=8)
def gauss_legendre(order: int) -> tuple[np.ndarray, np.ndarray]:
    return roots_legendre(order)


def _logit_of_cdf(t: float, shape: float) -> float:
    """x with expit(x) = Gamma(shape) CDF at t, accurate in both tails."""
    if t <= 0.0:
        return -math.inf
    return math.log(gammainc(shape, t)) - math.log(gammaincc(shape, t))


def phi(t: np.ndarray, k: float) -> np.ndarray:
    """phi(t) = t + k ln t: minus the log-density of GG in radial units (Li et al. 2022, Def. 1)."""
    return t + k * np.log(t) if k > 0 else t


def phi_inv(y: np.ndarray, k: float) -> np.ndarray:
    """Inverse of phi through the Wright omega function: t = k omega(y/k - ln k) (Lambert W of exp)."""
    if k == 0:
        return y
    with np.errstate(invalid="ignore"):
        return np.where(np.isposinf(y), np.inf, k * np.real(wrightomega(y / k - math.log(k))))


def beta_cdf(x: np.ndarray, beta: float) -> np.ndarray:
    """CDF of Beta(beta, beta), clipped to [0, 1] outside its support.

    Through Student's t with 2 beta degrees of freedom, T = (2x - 1) sqrt(2 beta) / (2 sqrt(x (1 - x))),
    an identity of the symmetric Beta law: scipy's ``stdtr`` agrees with ``betainc`` to 1e-14 and is
    four times faster at beta ~ 1500.
    """
    x = np.clip(x, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (2.0 * x - 1.0) * math.sqrt(2.0 * beta) / (2.0 * np.sqrt(x * (1.0 - x)))
    return stdtr(2.0 * beta, np.where(x <= 0.0, -np.inf, np.where(x >= 1.0, np.inf, t)))


def beta_pdf(x: np.ndarray, beta: float) -> np.ndarray:
    """Density of Beta(beta, beta), zero outside (0, 1)."""
    inside = (x > 0.0) & (x < 1.0)
    xs = np.where(inside, x, 0.5)
    with np.errstate(divide="ignore"):
        logp = (beta - 1.0) * (np.log(xs) + np.log1p(-xs)) - betaln(beta, beta)
    return np.where(inside, np.exp(logp), 0.0)


@dataclass(frozen=True)
class RadialSetting:
    """P = GG(d, k, sigma) and an optional Q: P at scale q_sigma, or P truncated at quantile q_threshold.

    Everything that depends only on (d, k, sigma, Q) is computed once here.
    """

    d: int
    k: int
    sigma: float
    q_sigma: float | None = None
    q_threshold: float | None = None
    panels: int = 96
    order: int = 8
    tabulated: bool = False  # Beta CDF from a Hermite table: for searches, never for a certificate

    def __post_init__(self) -> None:
        if self.k > 0 and (self.d % 2 or self.k > self.d // 2 - 1):
            raise ValueError(f"generalized Gaussian needs d even and k <= d/2 - 1 (d={self.d}, k={self.k})")
        if self.q_sigma is not None and self.q_threshold is not None:
            raise ValueError("give q_sigma or q_threshold, not both")
        if self.q_sigma is not None and not 0 < self.q_sigma < self.sigma:
            raise ValueError(f"q_sigma must be in (0, sigma), got {self.q_sigma}")
        if self.q_threshold is not None and not 0 < self.q_threshold < 1:
            raise ValueError(f"q_threshold must be in (0, 1), got {self.q_threshold}")

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """CDF of the cosine level (1 + c) / 2 ~ Beta(beta, beta)."""
        table = self._table
        return beta_cdf(x, self.beta) if table is None else table(x)

    def pdf(self, x: np.ndarray) -> np.ndarray:
        table = self._table
        return beta_pdf(x, self.beta) if table is None else table.pdf(x)

    @cached_property
    def _table(self) -> CosineCdfTable | None:
        return cosine_cdf_table(self.beta) if self.tabulated and self.beta >= MIN_BETA else None

    @property
    def shape(self) -> float:
        return self.d / 2.0 - self.k

    @property
    def beta(self) -> float:
        return (self.d - 1) / 2.0

    @property
    def scale(self) -> float:
        """sqrt(2) sigma': lengths are divided by it so that t = ||z||^2 in these units."""
        return self.sigma * math.sqrt(2.0 * self.d / (self.d - 2.0 * self.k))

    @cached_property
    def p_nodes(self) -> tuple[np.ndarray, np.ndarray]:
        return radial_nodes(self.shape, 1.0, self.panels, self.order, self.q_threshold)

    def shifted_nodes(self, rho: float, kinks: tuple[float, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
        return _shifted_nodes(self, rho, tuple(sorted(k for k in kinks if math.isfinite(k) and k > 0.0)))

    def _shifted_nodes(self, rho: float, kinks: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
        """P's radial nodes (in t_v) for integrals under the shifted P.

        With a truncated Q the region jumps at t_u = t_cut, and t_u = t_v + rho^2 + 2 sqrt(t_v) rho c with
        the cosine c within 40/sqrt(d) of 0 (40 sd): over that band of t_v the integrand falls steeply
        (a width of ~rho/sqrt(d)), which panels placed by P's CDF alone step over, fine and coarse rule
        alike. The band gets its own dense Gauss-Legendre panels; P's rule covers the rest. ``kinks``
        (t_v where an interval's end switches between its own curve and t_cut) become panel edges.
        """
        if self.q_threshold is None:
            return self.p_nodes
        reach = rho * min(1.0, 40.0 / math.sqrt(self.d))
        inner = self.t_cut - rho**2 + reach**2
        if inner <= 0.0:
            return self.p_nodes
        a, b = max(0.0, math.sqrt(inner) - reach) ** 2, (math.sqrt(inner) + reach) ** 2
        # P's panels (edges in the CDF's logit) that miss the band and every kink stay; the band's go;
        # the rest keep their parts outside the band, split at the kinks, as new panels
        edges, (t, w) = self._p_edges, self.p_nodes
        xa, xb = _logit_of_cdf(a, self.shape), _logit_of_cdf(b, self.shape)
        xk = [_logit_of_cdf(k, self.shape) for k in kinks if not a < k < b]
        lo, hi = edges[:-1], edges[1:]
        touched = np.array([any(l < x < h for x in (xa, xb, *xk)) for l, h in zip(lo, hi)], dtype=bool)
        keep = np.repeat(~touched & ((hi <= xa) | (lo >= xb)), self.order)
        ts, ws = [t[keep]], [w[keep]]
        for l, h in zip(lo[touched], hi[touched]):
            for left, right in ((l, min(h, xa)), (max(l, xb), h)):
                if right > left:
                    cuts = sorted({left, right, *(x for x in xk if left < x < right)})
                    tc, wc = logit_rule(np.array([max(c, -_LOGIT_SPAN) for c in cuts]), self.shape, 1.0, self.order)
                    ts.append(tc), ws.append(wc)
        g, gw = gauss_legendre(self.order)
        band = np.unique(np.concatenate([np.linspace(a, b, self.panels + 1), [k for k in kinks if a < k < b]]))
        half, mid = 0.5 * np.diff(band), 0.5 * (band[1:] + band[:-1])
        tb = (mid[:, None] + half[:, None] * g[None, :]).ravel()
        density = np.exp((self.shape - 1.0) * np.log(tb) - tb - gammaln(self.shape))
        ts.append(tb), ws.append((half[:, None] * gw[None, :]).ravel() * density)
        return np.concatenate(ts), np.concatenate(ws)

    def cut_kinks(self, ell: float, mu: float, s1: float = 1.0) -> tuple[float, ...]:
        """t_v where the shifted region's interval ends meet t_cut: phi(t_v) + ell + ln(s1 + mu / T) = phi(t_cut)
        for the ball's interval, phi(t_v) + ell = phi(t_cut) for the outer one (mu = inf: the face, ell = gamma)."""
        level = float(phi(np.asarray(self.t_cut), self.k))
        if math.isinf(mu):
            return (float(phi_inv(np.asarray(level - ell + math.log(self.q_threshold)), self.k)),)
        out = []
        g_in = s1 + mu / self.q_threshold
        if g_in > 0:
            out.append(float(phi_inv(np.asarray(level - ell - math.log(g_in)), self.k)))
        if s1 > 0:
            out.append(float(phi_inv(np.asarray(level - ell), self.k)))
        return tuple(out)

    @cached_property
    def _p_edges(self) -> np.ndarray:
        """Panel edges of ``p_nodes`` in the logit of P's radial CDF."""
        return logit_edges(self.panels, self.q_threshold)

    @cached_property
    def q_nodes(self) -> tuple[np.ndarray, np.ndarray]:
        """Q's radial nodes in P's t units, weights summing to 1."""
        if self.q_sigma is not None:
            t, w = radial_nodes(self.shape, 1.0, self.panels, self.order)
            return t * (self.q_sigma / self.sigma) ** 2, w
        if self.q_threshold is not None:
            t, w = radial_nodes(self.shape, self.q_threshold, self.panels, self.order)
            return t, w / self.q_threshold
        raise ValueError("no Q in this setting")

    @cached_property
    def t_cut(self) -> float:
        """Truncation point of Q in t (inf when Q is not truncated)."""
        if self.q_threshold is None:
            return math.inf
        return float(gamma_law.ppf(self.q_threshold, self.shape))

    # -- the ratio m(t) = q / p ------------------------------------------------------------
    @cached_property
    def _log_m_affine(self) -> tuple[float, float]:
        """ln m(t) = A - B t for the smaller-sigma Q (same k): normalisers and exponents."""
        ratio = self.sigma / self.q_sigma  # type: ignore[operator]
        return (self.d - 2.0 * self.k) * math.log(ratio), ratio**2 - 1.0

    def m(self, t: np.ndarray) -> np.ndarray:
        """q(z) / p(z) as a function of P's radial t."""
        if self.q_threshold is not None:
            return np.where(t <= self.t_cut, 1.0 / self.q_threshold, 0.0)
        a, b = self._log_m_affine
        return np.exp(np.minimum(a - b * t, 700.0))

    def psi(self, t: np.ndarray, ell: np.ndarray, mu: np.ndarray, s1: float = 1.0) -> np.ndarray:
        """Psi(t) = phi(t) - ell - ln(s1 + mu m(t)); +inf where lambda1 p + lambda2 q <= 0.

        lambda1 = s1 e^ell (s1 = -1 when P's upper bound binds), lambda2 = mu e^ell.
        """
        if self.q_sigma is None and self.q_threshold is None:
            return phi(t, self.k) - ell
        g = s1 + mu * self.m(t)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(g > 0, phi(t, self.k) - ell - np.log(np.where(g > 0, g, 1.0)), np.inf)

    # -- region probabilities under P and Q (radial variable = ||z||) ----------------------
    def centred_mass(
        self, t: np.ndarray, w: np.ndarray, rho: np.ndarray, ell: np.ndarray, mu: np.ndarray, grad: bool = False,
        s1: float = 1.0,
    ):
        """Mass of R under the law with radial nodes (t, w): sum_i w_i Pr_c[t_shifted > phi^-1(Psi(t_i))].

        rho = r / scale. With grad, also d/d ell and d/d mu of that mass.
        """
        psi = self.psi(t, ell, mu, s1)
        tau = phi_inv(psi, self.k)
        sq = np.sqrt(t)
        with np.errstate(invalid="ignore"):
            cstar = np.where(np.isinf(tau), -np.inf, ((t - tau) + rho**2) / (2.0 * sq * rho))
        x = 0.5 * (1.0 + cstar)
        mass = np.sum(w * self.cdf(x), axis=-1)
        if not grad:
            return mass
        # dc*/dPsi = -1 / (phi'(tau) 2 sqrt(t) rho); dPsi/d ell = -1, dPsi/d mu = -m / (1 + mu m)
        dens = np.where(np.isinf(tau), 0.0, self.pdf(x))
        with np.errstate(invalid="ignore", divide="ignore"):
            dc_dpsi = np.where(np.isinf(tau), 0.0, -1.0 / ((1.0 + self.k / tau) * 2.0 * sq * rho))
        base = 0.5 * dens * dc_dpsi
        d_ell = np.sum(w * base * -1.0, axis=-1)
        if self.q_sigma is None and self.q_threshold is None:
            return mass, d_ell, np.zeros_like(d_ell)
        m = self.m(t)
        with np.errstate(invalid="ignore", divide="ignore"):
            dpsi_dmu = np.where(np.isinf(tau), 0.0, -m / (s1 + mu * m))
        d_mu = np.sum(w * base * dpsi_dmu, axis=-1)
        return mass, d_ell, d_mu

    def _nodes_below(self, under_q: bool, t_limit: float) -> tuple[np.ndarray, np.ndarray]:
        """Radial nodes of P (or of the smaller-sigma Q) restricted to t < t_limit in P's units.

        With lambda1 < 0, R lies inside the ball t < t1 and the integrand falls to 0 steeply at t1:
        nodes that end there keep the quadrature accurate.
        """
        ratio = (self.sigma / self.q_sigma) ** 2 if under_q else 1.0  # type: ignore[operator]
        mass = float(gammainc(self.shape, t_limit * ratio))
        if mass <= 0.0:
            return np.array([1.0]), np.array([0.0])
        t, w = radial_nodes(self.shape, min(mass, 1.0), self.panels, self.order)
        return t / ratio, w

    def _mass_nodes(self, under_q: bool, mu, s1: float) -> tuple[np.ndarray, np.ndarray]:
        if s1 < 0 and self.q_sigma is not None:
            a, b = self._log_m_affine
            mu_f = float(np.ravel(mu)[0])
            t1 = (a + math.log(mu_f)) / b if mu_f > 0 else 0.0
            return self._nodes_below(under_q, max(t1, 0.0))
        return self.q_nodes if under_q else self.p_nodes

    def p_mass(self, rho, ell, mu=0.0, grad: bool = False, s1: float = 1.0):
        t, w = self._mass_nodes(False, mu, s1)
        return self.centred_mass(t, w, np.asarray(rho)[..., None], np.asarray(ell)[..., None],
                                 np.asarray(mu)[..., None], grad, s1)

    def q_mass(self, rho, ell, mu=0.0, grad: bool = False, s1: float = 1.0):
        t, w = self._mass_nodes(True, mu, s1)
        return self.centred_mass(t, w, np.asarray(rho)[..., None], np.asarray(ell)[..., None],
                                 np.asarray(mu)[..., None], grad, s1)

    # -- region probability under the shifted P (radial variable = ||z - delta||) -----------
    def shifted_mass(self, rho, ell, mu=0.0, s1: float = 1.0) -> np.ndarray:
        """P_delta(R) = E_{t_v}[ Pr_c'(Psi(t_u) < phi(t_v)) ], t_u = t_v + rho^2 + 2 sqrt(t_v) rho c'."""
        if self.q_threshold is not None:
            t, w = self.shifted_nodes(float(np.ravel(rho)[0]),
                                      self.cut_kinks(float(np.ravel(ell)[0]), float(np.ravel(mu)[0]), s1))
        else:
            t, w = self.p_nodes
        rho = np.asarray(rho, dtype=float)[..., None]
        ell = np.asarray(ell, dtype=float)[..., None]
        mu = np.asarray(mu, dtype=float)[..., None]
        level = phi(t, self.k)
        sq = np.sqrt(t)

        def cos_of(tu: np.ndarray) -> np.ndarray:
            with np.errstate(invalid="ignore"):
                return np.where(np.isposinf(tu), np.inf, (tu - t - rho**2) / (2.0 * sq * rho))

        def interval(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
            c_lo, c_hi = cos_of(lo), cos_of(hi)
            pr = self.cdf(0.5 * (1.0 + c_hi)) - self.cdf(0.5 * (1.0 + c_lo))
            return np.where(hi > lo, np.maximum(pr, 0.0), 0.0)

        zeros = np.zeros(np.broadcast_shapes(level.shape, ell.shape, mu.shape, rho.shape))
        if (self.q_sigma is None and self.q_threshold is None) or (self.q_sigma is not None and s1 > 0
                                                                   and not np.any(mu)):
            # no Q term (mu = 0 leaves Psi = phi - ell): one interval below phi^-1(level + ell)
            hi = phi_inv(level + ell, self.k) + zeros
            return np.sum(w * interval(zeros - np.inf, hi), axis=-1)
        if self.q_threshold is not None:
            # Psi is phi - ln(kappa1) inside the ball, phi - ln(kappa2) outside: two intervals
            g_in = s1 + mu / self.q_threshold + zeros
            with np.errstate(divide="ignore", invalid="ignore"):
                hi_in = np.where(g_in > 0, phi_inv(level + ell + np.log(np.where(g_in > 0, g_in, 1.0)), self.k), -np.inf)
            hi_out = phi_inv(level + ell, self.k) + zeros if s1 > 0 else zeros - np.inf
            inner = interval(zeros - np.inf, np.minimum(hi_in, self.t_cut))
            outer = interval(zeros + self.t_cut, hi_out)
            return np.sum(w * (inner + outer), axis=-1)
        total = np.zeros(zeros.shape)
        for lo, hi in self._sublevel_smaller_sigma(level + zeros, float(np.ravel(ell)[0]), float(np.ravel(mu)[0]), s1):
            total = total + interval(lo, hi)
        return np.sum(w * total, axis=-1)

    def _dpsi(self, t: np.ndarray, mu: float, s1: float = 1.0) -> np.ndarray:
        """Psi'(t) for the smaller-sigma Q: 1 + k / t + mu b m / (s1 + mu m), with m' = -b m."""
        b = self._log_m_affine[1]
        m = self.m(t)
        g = s1 + mu * m
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1.0 + self.k / t + mu * m * b / np.where(g > 0, g, 1e-300)

    def _sublevel_smaller_sigma(self, level: np.ndarray, ell: float, mu: float, s1: float = 1.0,
                                grid: int = 4000):
        """{t : Psi(t) < level} for the smaller-sigma Q, as disjoint intervals [(lo, hi), ...].

        Psi need not be monotone (mu < 0 mixes an increasing and a decreasing term), so its monotone
        pieces are found from the sign of Psi' on a dense grid, each turning point refined by Brent;
        on each piece the sublevel set is one interval, its end found per level by bracketed Newton.
        """
        a, b = self._log_m_affine
        t0 = 0.0
        if s1 < 0:  # kappa > 0 only where mu m(t) > 1: below t1; Psi rises from -inf (k > 0) to +inf
            if mu <= 0 or a + math.log(mu) <= 0:
                return [(np.zeros_like(level), np.zeros_like(level))]
            t1 = (a + math.log(mu)) / b
            x = _solve_increasing(lambda t: self.psi(t, ell, mu, s1) - level, lambda t: self._dpsi(t, mu, s1),
                                  np.zeros_like(level) + 1e-300, np.zeros_like(level) + t1)
            return [(np.zeros_like(level), x)]
        if mu < 0 and a + math.log(-mu) > 0:
            t0 = (a + math.log(-mu)) / b  # kappa <= 0 below t0: no point of R there
        t_top = max(float(self.p_nodes[0].max()), float(level.max()) + 1.0)
        if mu < 0:
            t_top = max(t_top, (a + math.log(-mu * b * 4.0 + 1.0)) / b + 10.0)
        t_top *= 4.0
        floor = max(t0 * (1.0 + 1e-12), 1e-300) if t0 > 0 else 1e-12 * t_top
        ts = np.geomspace(floor, t_top, grid)

        def dpsi(t):
            return self._dpsi(t, mu)

        sign = dpsi(ts) > 0
        turns = [floor]
        for i in np.nonzero(sign[1:] != sign[:-1])[0]:
            turns.append(brentq(lambda t: float(dpsi(np.asarray(t))), ts[i], ts[i + 1], xtol=1e-300, rtol=1e-15))
        turns.append(math.inf)

        def psi_up(t):
            return self.psi(t, ell, mu) - level

        pieces = []
        for left, right in itertools.pairwise(turns):
            probe = left * 1.5 if math.isinf(right) else 0.5 * (left + right)
            increasing = bool(dpsi(np.asarray(probe)) > 0)
            psi_left = float(self.psi(np.asarray(left), ell, mu))
            if left == floor and t0 == 0.0:
                psi_left = -np.inf if self.k > 0 else float(self.psi(np.asarray(0.0), ell, mu))
            if math.isinf(right):
                # psi >= phi - ell - ln(1 + max(mu, 0) m(left)) on [left, inf): phi^-1 of that passes the level
                lift = math.log1p(max(mu, 0.0) * float(self.m(np.asarray(left))))
                right_end = np.maximum(phi_inv(level + ell + lift, self.k) * (1.0 + 1e-12), left * 2.0 + 1.0)
                right_end = _grow_until(psi_up, np.asarray(left), right_end)
            else:
                right_end = np.full_like(level, right)
            if increasing:
                # start from Psi's root with the Q term frozen at phi^-1(level + ell): Newton then needs a few steps
                guess = phi_inv(level + ell, self.k)
                with np.errstate(invalid="ignore", over="ignore"):
                    guess = phi_inv(level + ell + np.log1p(np.maximum(mu * self.m(guess), -1.0 + 1e-16)), self.k)
                x = _solve_increasing(psi_up, dpsi, np.full_like(level, left), right_end, start=guess)
                inside = level > psi_left
                start = 0.0 if left == floor and t0 == 0.0 else left
                pieces.append((np.where(inside, start, 0.0), np.where(inside, x, 0.0)))
            else:
                x = _solve_increasing(lambda t: -psi_up(t), lambda t: -dpsi(t), np.full_like(level, left), right_end)
                psi_right = self.psi(right_end, ell, mu)
                inside = level > psi_right
                pieces.append((np.where(inside, x, 0.0), np.where(inside, right_end, 0.0)))
        return pieces


    # -- the boundary lambda1 = 0: R = {p_delta < lambda2 q}, gamma = ln lambda2 ---------------
    def pure_q_psi(self, t: np.ndarray, gamma: np.ndarray) -> np.ndarray:
        """Psi for R = {p_delta < e^gamma q}: phi(t) - gamma - ln m(t) (+inf where q = 0)."""
        if self.q_threshold is not None:
            return np.where(t <= self.t_cut, phi(t, self.k) - gamma + math.log(self.q_threshold), np.inf)
        a, b = self._log_m_affine
        return phi(t, self.k) - gamma - a + b * t

    def pure_q_centred_mass(self, rho: float, gamma: float, under_p: bool = False, grad: bool = False):
        """Q(R) (or P(R) with under_p) for R = {p_delta < e^gamma q}; with grad, also d/d gamma."""
        t, w = self.p_nodes if under_p else self.q_nodes
        tau = phi_inv(self.pure_q_psi(t, gamma), self.k)
        sq = np.sqrt(t)
        with np.errstate(invalid="ignore"):
            cstar = np.where(np.isinf(tau), -np.inf, ((t - tau) + rho**2) / (2.0 * sq * rho))
        x = 0.5 * (1.0 + cstar)
        mass = float(np.sum(w * self.cdf(x)))
        if not grad:
            return mass
        # dPsi/d gamma = -1, so d/d gamma is minus the d/dPsi of centred_mass
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(np.isinf(tau), 0.0, self.pdf(x) / ((1.0 + self.k / tau) * 4.0 * sq * rho))
        return mass, float(np.sum(w * slope))

    def pure_q_masses(self, rho: float, gamma: float) -> tuple[float, float]:
        """(Q(R), P_delta(R)) for R = {p_delta < e^gamma q} (the dual's lambda1 = 0 face)."""
        q_mass = self.pure_q_centred_mass(rho, gamma)
        tv, wv = self.shifted_nodes(rho, self.cut_kinks(gamma, math.inf) if self.q_threshold is not None else ())
        level = phi(tv, self.k)
        if self.q_threshold is not None:
            hi = np.minimum(self.t_cut, phi_inv(level + gamma - math.log(self.q_threshold), self.k))
        else:
            a, b = self._log_m_affine
            # (1 + b) t + k ln t = level + gamma + a, solved through phi^-1 in s = (1 + b) t
            hi = phi_inv(level + gamma + a + self.k * math.log1p(b), self.k) / (1.0 + b)
        c_hi = (hi - tv - rho**2) / (2.0 * np.sqrt(tv) * rho)
        shifted = float(np.sum(wv * self.cdf(0.5 * (1.0 + c_hi))))
        return q_mass, shifted


@lru_cache(maxsize=256)
def _shifted_nodes(setting: RadialSetting, rho: float, kinks: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    return setting._shifted_nodes(rho, kinks)


def _solve_increasing(f, df, lo: np.ndarray, hi: np.ndarray, iters: int = 200,
                      start: np.ndarray | None = None) -> np.ndarray:
    """Element-wise root of an increasing f in [lo, hi] (f(lo) <= 0 <= f(hi); otherwise the end that f's
    sign points to): Newton steps from ``start`` (where inside the bracket), a bisection whenever a step
    leaves the bracket, to full precision."""
    lo, hi = (np.array(v, dtype=float) for v in np.broadcast_arrays(lo, hi))

    def middle(lo, hi):  # geometric on t > 0: roots sit anywhere from 1e-8 to 1e4
        with np.errstate(invalid="ignore"):
            return np.where(lo > 0, np.sqrt(lo * hi), 0.5 * (lo + hi))

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        below, above = f(lo) > 0, ~(f(hi) > 0)  # no sign change: the root is that end

    x = middle(lo, hi)
    if start is not None:
        x = np.where((start > lo) & (start < hi), start, x)
    x = np.where(below, lo, np.where(above, hi, x))
    settled = below | above
    for _ in range(iters):
        if settled.all():
            break
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            v = f(x)
            up = v > 0
            hi = np.where(up, x, hi)
            lo = np.where(up, lo, x)
            step = x - v / df(x)
        # psi carries rounding of ~1e-16 |k ln t|, so a Newton step below 1e-14 relative is the root
        done = settled | (v == 0) | (np.abs(step - x) <= 1e-14 * np.abs(x)) | (hi - lo <= 1e-14 * np.abs(hi))
        x_new = np.where(done, x, np.where((step > lo) & (step < hi), step, middle(lo, hi)))
        settled = done
        x = x_new
    return x


def _grow_until(f, start: np.ndarray, guess: np.ndarray) -> np.ndarray:
    """An upper point where the increasing f is positive, doubling from ``guess``."""
    hi = np.maximum(guess, start + 1.0)
    for _ in range(60):
        with np.errstate(invalid="ignore"):
            bad = ~(f(hi) > 0)
        if not np.any(bad):
            break
        hi = np.where(bad, hi * 2.0, hi)
    return hi
