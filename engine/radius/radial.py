"""Probabilities of likelihood-ratio regions under radial smoothing laws, as 1-D integrals.

Every law here is GG(d, k, sigma) (k = 0: Gaussian), possibly at another scale or truncated.
With t = ||z||^2 / (2 sigma'^2) in P's units, the log-density is -phi(t) + const with
phi(t) = t + k ln t, and t ~ Gamma(d/2 - k). For a shift delta of length r and a point at
radial t, the cosine c to delta satisfies (1 + c) / 2 ~ Beta((d-1)/2, (d-1)/2) (Li et al. 2022,
Sec. 4 and App. C), so the probability of a region {phi(t_shifted) > Psi(t)} is a Gamma-radial
integral of a Beta CDF. The integrands are compiled loops over the nodes (``kernels``); here the
nodes are placed and the cosine law's CDF summed over them.

The region R(lambda) = {p_delta(z) < lambda1 p(z) + lambda2 q(z)}, with q / p = m(t), is written
with ell = ln lambda1 and mu = lambda2 / lambda1: z in R iff phi(t_shifted) > Psi(t) where
Psi(t) = phi(t) - ell - ln(1 + mu m(t)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
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
)
from scipy.stats import gamma as gamma_law

from engine.radius import kernels
from engine.radius.kernels import Q_NONE, Q_SIGMA, Q_TRUNCATED
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
    return logit_panels(edges[:-1], edges[1:], shape, upper_q, order)


def logit_panels(left: np.ndarray, right: np.ndarray, shape: float, upper_q: float = 1.0,
                 order: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``logit_rule`` on the panels [left_i, right_i], which need not be adjacent."""
    g, gw = gauss_legendre(order)
    half = 0.5 * (right - left)
    mid = 0.5 * (right + left)
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
        """CDF of the cosine level (1 + c) / 2 ~ Beta(beta, beta): the table's on a search rule."""
        table = self._table
        return beta_cdf(x, self.beta) if table is None else table(x)

    def pdf(self, x: np.ndarray) -> np.ndarray:
        table = self._table
        return beta_pdf(x, self.beta) if table is None else table.pdf(x)

    def cdf_pdf(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CDF and density at once (one pass over the table)."""
        table = self._table
        if table is None:
            return beta_cdf(x, self.beta), beta_pdf(x, self.beta)
        return table.cdf_pdf(x)

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
        cuts = np.array([xa, xb, *xk])
        touched = ((cuts > lo[:, None]) & (cuts < hi[:, None])).any(axis=1)
        keep = np.repeat(~touched & ((hi <= xa) | (lo >= xb)), self.order)
        ts, ws = [t[keep]], [w[keep]]
        lefts, rights = [], []
        for l, h in zip(lo[touched], hi[touched]):
            for left, right in ((l, min(h, xa)), (max(l, xb), h)):
                if right > left:
                    ends = [max(c, -_LOGIT_SPAN) for c in sorted({left, right, *(x for x in xk if left < x < right)})]
                    lefts += ends[:-1]
                    rights += ends[1:]
        if lefts:
            tc, wc = logit_panels(np.array(lefts), np.array(rights), self.shape, 1.0, self.order)
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
        k = float(self.k)
        level = kernels.phi(self.t_cut, k)
        if math.isinf(mu):
            return (kernels.phi_inv(level - ell + math.log(self.q_threshold), k),)
        out = []
        g_in = s1 + mu / self.q_threshold
        if g_in > 0:
            out.append(kernels.phi_inv(level - ell - math.log(g_in), k))
        if s1 > 0:
            out.append(kernels.phi_inv(level - ell, k))
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

    @cached_property
    def _q_params(self) -> tuple[float, int, float, float, float, float]:
        """(k, Q's kind, A, B, t_cut, T): what the kernels need to know of the setting."""
        if self.q_sigma is not None:
            return float(self.k), Q_SIGMA, *self._log_m_affine, math.inf, 1.0
        if self.q_threshold is not None:
            return float(self.k), Q_TRUNCATED, 0.0, 0.0, self.t_cut, float(self.q_threshold)
        return float(self.k), Q_NONE, 0.0, 0.0, math.inf, 1.0

    def _node_terms(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ln t, m(t)) at radial nodes t: what the kernels read at every node (kept for the fixed rules)."""
        if t is self.p_nodes[0]:
            return self._p_terms
        if t is self._q_t:
            return self._q_terms
        return self._terms_at(t)

    def _terms_at(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, kind, a, b, t_cut, threshold = self._q_params
        if kind == Q_SIGMA:
            m = np.exp(np.minimum(a - b * t, 700.0))
        elif kind == Q_TRUNCATED:
            m = np.where(t <= t_cut, 1.0 / threshold, 0.0)
        else:
            m = np.zeros_like(t)
        return np.log(t), m

    @cached_property
    def _p_terms(self) -> tuple[np.ndarray, np.ndarray]:
        return self._terms_at(self.p_nodes[0])

    @cached_property
    def _q_t(self) -> np.ndarray | None:
        return None if self.q_sigma is None and self.q_threshold is None else self.q_nodes[0]

    @cached_property
    def _q_terms(self) -> tuple[np.ndarray, np.ndarray]:
        return self._terms_at(self.q_nodes[0])

    # -- region probabilities under P and Q (radial variable = ||z||) ----------------------
    def centred_mass(self, t: np.ndarray, w: np.ndarray, rho: float, ell: float, mu: float, grad: bool = False,
                     s1: float = 1.0, pure: bool = False):
        """Mass of R under the law with radial nodes (t, w): sum_i w_i Pr_c[t_shifted > phi^-1(Psi(t_i))].

        rho = r / scale. With grad, also d/d ell and d/d mu of that mass. ``pure``: R = {p_delta < e^ell q},
        the face lambda1 = 0 (mu unused; the gradient is (d/d ell, 0)).
        """
        log_t, m_t = self._node_terms(t)
        x, ce, cm = kernels.centred_levels(t, log_t, m_t, float(rho), float(ell), float(mu), float(s1), pure,
                                           *self._q_params)
        table = self._table
        if table is not None:
            mass, d_ell, d_mu = kernels.table_mass(x, w, ce, cm, table.cdf, table.tangent, table.u0, table.h,
                                                   table.scale, grad)
            return (mass, d_ell, d_mu) if grad else mass
        if not grad:
            return float(w @ self.cdf(x))
        cdf, pdf = self.cdf_pdf(x)
        weighted = w * pdf
        return float(w @ cdf), float(weighted @ ce), float(weighted @ cm)

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
        return self.centred_mass(*self._mass_nodes(False, mu, s1), rho, ell, mu, grad, s1)

    def q_mass(self, rho, ell, mu=0.0, grad: bool = False, s1: float = 1.0):
        return self.centred_mass(*self._mass_nodes(True, mu, s1), rho, ell, mu, grad, s1)

    # -- region probability under the shifted P (radial variable = ||z - delta||) -----------
    def interval_mass(self, w: np.ndarray, levels: tuple[np.ndarray, np.ndarray]) -> float:
        """sum_i w_i sum_j [F(x_hi) - F(x_lo)] over the intervals (rows) of the kernels' cosine levels."""
        x_lo, x_hi = levels
        if x_lo.size == 0:
            return 0.0
        table = self._table
        if table is not None:
            return kernels.table_interval_mass(x_lo, x_hi, w, table.cdf, table.tangent, table.u0, table.h, table.scale)
        both = np.concatenate([x_lo.ravel(), x_hi.ravel()])
        # levels at +-inf (open ends, empty intervals) have CDF 1 and 0: only the others cost a CDF call
        finite = np.isfinite(both)
        cdf = np.where(both > 0.0, 1.0, 0.0)
        cdf[finite] = self.cdf(both[finite])
        half = x_lo.size
        return float(w @ np.maximum(cdf[half:] - cdf[:half], 0.0).reshape(x_lo.shape).sum(axis=0))

    def _offset_intervals(self, t: np.ndarray, w: np.ndarray, rho: float, parts: list[tuple[float, float, float]],
                          div: float = 1.0) -> float:
        """Shifted mass of the intervals (lo, min(phi^-1(phi(t_v) + offset) / div, cap)) in t_u."""
        lo, offset, cap = (np.array(v, dtype=float) for v in zip(*parts)) if parts else (np.zeros(0),) * 3
        return self.interval_mass(w, kernels.offset_interval_levels(t, self._node_terms(t)[0], float(rho),
                                                                    float(self.k), lo, offset, cap, float(div)))

    def shifted_mass(self, rho, ell, mu=0.0, s1: float = 1.0) -> float:
        """P_delta(R) = E_{t_v}[ Pr_c'(Psi(t_u) < phi(t_v)) ], t_u = t_v + rho^2 + 2 sqrt(t_v) rho c'."""
        rho, ell, mu = float(rho), float(ell), float(mu)
        if self.q_threshold is not None:
            t, w = self.shifted_nodes(rho, self.cut_kinks(ell, mu, s1))
            # Psi is phi - ln(kappa1) inside the ball, phi - ln(kappa2) outside: two intervals
            g_in = s1 + mu / self.q_threshold
            parts = [(-math.inf, ell + math.log(g_in), self.t_cut)] if g_in > 0 else []
            if s1 > 0:
                parts.append((self.t_cut, ell, math.inf))
            return self._offset_intervals(t, w, rho, parts)
        t, w = self.p_nodes
        if self.q_sigma is None or (s1 > 0 and mu == 0.0):
            # no Q term (mu = 0 leaves Psi = phi - ell): one interval below phi^-1(phi(t_v) + ell)
            return self._offset_intervals(t, w, rho, [(-math.inf, ell, math.inf)])
        k, _, a, b, _, _ = self._q_params
        t_top = self._t_top
        if mu < 0:
            t_top = max(t_top, (a + math.log(-mu * b * 4.0 + 1.0)) / b + 10.0)
        left, right, rising, t0 = kernels.sublevel_pieces(ell, mu, float(s1), k, a, b, 4.0 * t_top)
        return self.interval_mass(w, kernels.sublevel_levels(t, self._node_terms(t)[0], rho, ell, mu, float(s1), k,
                                                             a, b, left, right, rising, t0))

    @cached_property
    def _t_top(self) -> float:
        """A radial t beyond every node and every level phi(t_v) + 1 of the shifted rule: where the
        turning points of Psi are looked for (times four)."""
        t_max = float(self.p_nodes[0].max())
        return max(t_max, kernels.phi(t_max, float(self.k)) + 1.0)

    # -- the boundary lambda1 = 0: R = {p_delta < lambda2 q}, gamma = ln lambda2 ---------------
    def pure_q_centred_mass(self, rho: float, gamma: float, under_p: bool = False, grad: bool = False):
        """Q(R) (or P(R) with under_p) for R = {p_delta < e^gamma q}; with grad, also d/d gamma."""
        t, w = self.p_nodes if under_p else self.q_nodes
        out = self.centred_mass(t, w, rho, gamma, 0.0, grad, pure=True)
        return out[:2] if grad else out

    def pure_q_masses(self, rho: float, gamma: float) -> tuple[float, float]:
        """(Q(R), P_delta(R)) for R = {p_delta < e^gamma q} (the dual's lambda1 = 0 face)."""
        q_mass = self.pure_q_centred_mass(rho, gamma)
        if self.q_threshold is not None:
            t, w = self.shifted_nodes(rho, self.cut_kinks(gamma, math.inf))
            return q_mass, self._offset_intervals(t, w, rho, [(-math.inf, gamma - math.log(self.q_threshold),
                                                               self.t_cut)])
        a, b = self._log_m_affine
        # (1 + b) t + k ln t = phi(t_v) + gamma + a, solved through phi^-1 in s = (1 + b) t
        t, w = self.p_nodes
        return q_mass, self._offset_intervals(t, w, rho, [(-math.inf, gamma + a + self.k * math.log1p(b), math.inf)],
                                              div=1.0 + b)


@lru_cache(maxsize=256)
def _shifted_nodes(setting: RadialSetting, rho: float, kinks: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    return setting._shifted_nodes(rho, kinks)
