"""An independent check of certified radii: the certification problem as a linear program on a grid.

Shares no code with ``engine/radius``. For P = GG(d, k, sigma) (k = 0: Gaussian), a second radial
distribution Q (the same family at a smaller scale, or P truncated to a radial quantile) and a shift
delta with ||delta|| = r, radius r is certified when

    m(r) = min { P_delta(A) : P(A) in [pL, pU], Q(A) in [qL, qU] } > 1/2.

Everything depends on x only through (rho, c) = (||x||, cos(x, delta)): under P and Q the norm and
the direction are independent, rho^2 / (2 s'^2) ~ Gamma(d/2 - k) and (1 + c) / 2 ~
Beta((d-1)/2, (d-1)/2), and the likelihood ratio p_delta / p = e^h with
h = -k ln(s^2 / rho^2) - (s^2 - rho^2) / (2 sigma'^2), s^2 = rho^2 - 2 rho r c + r^2.

The (rho, c) box holding all but ~1e-13 of P and Q is cut into rectangles ("cells"; later unions
of them). For each cell i we know P_i and Q_i exactly (incomplete gamma and beta functions), a lower
bound on its shifted mass S_i (tensor Gauss-Legendre, minus the gap between two orders, never below
the rigorous e^{h_min} P_i) and interval bounds on e^h, on q / p and on
phi = e^h - lam1 - lam2 q / p for a guess (lam1, lam2). Any set A meets cell i in a part with masses
(x_i, y_i, z_i) under (P, Q, P_delta); pointwise bounds on the densities give linear inequalities
that every such part satisfies (see ``cell_rows``). Minimising sum z_i under them and the two
interval constraints is therefore a relaxation: its value is a lower bound on m(r). A second LP
restricted to uniform fractions of cells is a set that exists (Lyapunov), so its value, with upper
estimates of S_i, is an upper bound: the gap is the verifier's resolution. Cells that straddle the
LP's boundary phi = 0 are split until the gap falls below the margin to 1/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.special import betainc, betaincinv, gammainc, gammaincc, gammainccinv, gammaincinv, roots_legendre

TAIL = 1e-14  # probability left outside the box at each end of each axis
# HiGHS's feasibility tolerances (1e-7 by default) would let the LP bend constraints by more than the
# margins checked here
HIGHS = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
SLOP = 1e-12  # the relaxation's interval constraints are widened by this much (see ``_coupling``)


@dataclass(frozen=True)
class Problem:
    """One certification question: GG(d, k, sigma) as P, Q by q_sigma or q_threshold (None: NP only)."""

    d: int
    k: int
    sigma: float
    r: float
    p_bounds: tuple[float, float]
    q_bounds: tuple[float, float] = (0.0, 1.0)
    q_sigma: float | None = None
    q_threshold: float | None = None

    @property
    def shape(self) -> float:
        """Gamma shape of rho^2 / (2 sigma'^2): d/2 - k."""
        return self.d / 2.0 - self.k

    def scale(self, sigma: float) -> float:
        """sigma' = sigma sqrt(d / (d - 2k)), so that E||x||^2 = d sigma^2."""
        return sigma * math.sqrt(self.d / (self.d - 2.0 * self.k))

    @property
    def beta(self) -> float:
        """Both parameters of the Beta law of (1 + c) / 2."""
        return (self.d - 1) / 2.0

    @property
    def has_q(self) -> bool:
        return self.q_sigma is not None or self.q_threshold is not None

    @property
    def rho_cut(self) -> float | None:
        """The truncated Q's ball edge in rho."""
        if self.q_threshold is None:
            return None
        return self.scale(self.sigma) * math.sqrt(2.0 * gammaincinv(self.shape, self.q_threshold))


def gamma_mass(a: float, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """Gamma(a)((t1, t2]) without cancellation: lower-tail differences below the median, upper above."""
    lower = gammainc(a, t2) - gammainc(a, t1)
    upper = gammaincc(a, t1) - gammaincc(a, t2)
    return np.where(t1 > a, upper, lower)


def beta_mass(b: float, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Beta(b, b)-mass of (1 + c) / 2 in ((1 + c1) / 2, (1 + c2) / 2], from the nearer tail."""
    u1, u2 = (1.0 + c1) / 2.0, (1.0 + c2) / 2.0
    lower = betainc(b, b, u2) - betainc(b, b, u1)
    upper = betainc(b, b, 1.0 - u1) - betainc(b, b, 1.0 - u2)  # symmetric law: upper tail by reflection
    return np.where(c1 > 0.0, upper, lower)


def log_ratio_bounds(pr: Problem, rho1: np.ndarray, rho2: np.ndarray, c1: np.ndarray,
                     c2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rigorous [min, max] of h = ln(p_delta / p) over each rectangle, term by term.

    h = -k ln(1 + y) - (r^2 - 2 rho r c) / (2 sigma'^2) with y = r^2 w^2 - 2 r c w, w = 1 / rho.
    y is convex in w and linear in c: its maximum sits at a corner, its minimum at c = c2 and
    w = clamp(c2 / r). The second term is bilinear: corners. The sum of the two ranges contains h's.
    """
    r, sp = pr.r, pr.scale(pr.sigma)
    w1, w2 = 1.0 / rho2, 1.0 / rho1
    corners_y = [r * r * w * w - 2.0 * r * c * w for w in (w1, w2) for c in (c1, c2)]
    y_max = np.max(corners_y, axis=0)
    w_star = np.clip(c2 / r, w1, w2)
    y_min = r * r * w_star * w_star - 2.0 * r * c2 * w_star
    corners_lin = [(r * r - 2.0 * rho * r * c) / (2.0 * sp * sp) for rho in (rho1, rho2) for c in (c1, c2)]
    lin_min, lin_max = np.min(corners_lin, axis=0), np.max(corners_lin, axis=0)
    lo = -pr.k * np.log1p(y_max) - lin_max
    hi = -pr.k * np.log1p(y_min) - lin_min
    return lo, hi


def log_h(pr: Problem, rho: np.ndarray, c: np.ndarray) -> np.ndarray:
    """h(rho, c) = ln p_delta(x) - ln p(x) at points."""
    r, sp = pr.r, pr.scale(pr.sigma)
    return -pr.k * np.log1p(r * r / (rho * rho) - 2.0 * r * c / rho) - (r * r - 2.0 * rho * r * c) / (2.0 * sp * sp)


def q_over_p(pr: Problem, rho1: np.ndarray, rho2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[min, max] of q / p over rho in [rho1, rho2] (radial, so c plays no part).

    Smaller scale: q / p = (sigma_P' / sigma_Q')^(d - 2k) exp(-rho^2 (1/sigma_Q'^2 - 1/sigma_P'^2) / 2),
    decreasing in rho. Truncation: 1 / T inside the ball, 0 outside (rectangles never cross its edge).
    """
    if pr.q_threshold is not None:
        inside = rho2 <= pr.rho_cut * (1.0 + 1e-12)
        v = np.where(inside, 1.0 / pr.q_threshold, 0.0)
        return v, v
    if pr.q_sigma is None:
        return np.zeros_like(rho1), np.zeros_like(rho1)
    sp, sq = pr.scale(pr.sigma), pr.scale(pr.q_sigma)
    log_norm = (pr.d - 2.0 * pr.k) * math.log(sp / sq)
    coef = 0.5 * (1.0 / sq**2 - 1.0 / sp**2)
    return np.exp(log_norm - coef * rho2 * rho2), np.exp(log_norm - coef * rho1 * rho1)


@dataclass
class Cells:
    """Rectangles [rho1, rho2] x [c1, c2] with their masses and bounds (arrays of equal length)."""

    rho1: np.ndarray
    rho2: np.ndarray
    c1: np.ndarray
    c2: np.ndarray
    p: np.ndarray
    q: np.ndarray
    s_lo: np.ndarray
    s_hi: np.ndarray
    h_lo: np.ndarray
    h_hi: np.ndarray
    qp_lo: np.ndarray
    qp_hi: np.ndarray

    def take(self, mask: np.ndarray) -> Cells:
        return Cells(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))

    @staticmethod
    def join(parts: list[Cells]) -> Cells:
        return Cells(*(np.concatenate([getattr(c, f) for c in parts]) for f in Cells.__dataclass_fields__))


def _gauss_shifted(pr: Problem, rho1, rho2, c1, c2, order: int) -> np.ndarray:
    """E_P[e^h | cell] by a tensor Gauss-Legendre rule of the given order, weighted by P's density."""
    x, w = roots_legendre(order)
    sp = pr.scale(pr.sigma)
    rho = 0.5 * (rho1 + rho2)[:, None] + 0.5 * (rho2 - rho1)[:, None] * x[None, :]
    c = 0.5 * (c1 + c2)[:, None] + 0.5 * (c2 - c1)[:, None] * x[None, :]
    lf = (2.0 * pr.shape - 1.0) * np.log(rho) - rho * rho / (2.0 * sp * sp)  # radial density, log
    lb = (pr.beta - 1.0) * np.log1p(-c * c)  # cosine density, log
    lf -= lf.max(axis=1, keepdims=True)
    lb -= lb.max(axis=1, keepdims=True)
    wf, wb = w[None, :] * np.exp(lf), w[None, :] * np.exp(lb)
    h = log_h(pr, rho[:, :, None], c[:, None, :])
    num = np.einsum("ni,nj,nij->n", wf, wb, np.exp(h))
    return num / (wf.sum(axis=1) * wb.sum(axis=1))


def make_cells(pr: Problem, rho1, rho2, c1, c2) -> Cells:
    """Masses and bounds of rectangles (see the module docstring)."""
    sp = pr.scale(pr.sigma)
    a = pr.shape
    p_rad = gamma_mass(a, rho1**2 / (2 * sp * sp), rho2**2 / (2 * sp * sp))
    p_cos = beta_mass(pr.beta, c1, c2)
    p = p_rad * p_cos
    if pr.q_sigma is not None:
        sq = pr.scale(pr.q_sigma)
        q = gamma_mass(a, rho1**2 / (2 * sq * sq), rho2**2 / (2 * sq * sq)) * p_cos
    elif pr.q_threshold is not None:
        q = np.where(rho2 <= pr.rho_cut * (1.0 + 1e-12), p / pr.q_threshold, 0.0)
    else:
        q = np.zeros_like(p)
    h_lo, h_hi = log_ratio_bounds(pr, rho1, rho2, c1, c2)
    fine, rough = _gauss_shifted(pr, rho1, rho2, c1, c2, 12), _gauss_shifted(pr, rho1, rho2, c1, c2, 8)
    # the order-12 rule minus twice its gap to order 8 (plus a relative floor), inside the rigorous
    # bracket [e^h_lo, e^h_hi] P
    err = 2.0 * np.abs(fine - rough) + 1e-13 * fine
    s_lo = np.maximum(np.exp(h_lo) * p, np.minimum((fine - err) * p, np.exp(h_hi) * p))
    s_hi = np.minimum(np.exp(h_hi) * p, np.maximum((fine + err) * p, np.exp(h_lo) * p))
    qp_lo, qp_hi = q_over_p(pr, rho1, rho2)
    return Cells(rho1, rho2, c1, c2, p, q, s_lo, s_hi, h_lo, h_hi, qp_lo, qp_hi)


def _logit_quantiles(n: int, lo: float, hi: float) -> np.ndarray:
    """n + 1 probabilities from lo to hi, evenly spaced in logit: fine in both tails."""
    z = np.linspace(math.log(lo / (1 - lo)), math.log(hi / (1 - hi)), n + 1)
    return 1.0 / (1.0 + np.exp(-z))


def initial_grid(pr: Problem, n_rho: int = 48, n_c: int = 48) -> tuple[Cells, float, float]:
    """The starting rectangles on quantiles of P's and Q's radial laws and of the cosine law, with the
    P- and Q-mass left outside the box."""
    a, sp = pr.shape, pr.scale(pr.sigma)
    probs = _logit_quantiles(n_rho, TAIL, 1 - TAIL)
    t = np.where(probs < 0.5, gammaincinv(a, probs), gammainccinv(a, 1 - probs))
    rho_edges = [sp * np.sqrt(2 * t)]
    if pr.q_sigma is not None:
        rho_edges.append(pr.scale(pr.q_sigma) * np.sqrt(2 * t[::2]))
    if pr.rho_cut is not None:
        rho_edges.append(np.array([pr.rho_cut]))
    rho_edges = np.unique(np.concatenate(rho_edges))
    u = _logit_quantiles(n_c, TAIL, 1 - TAIL)
    c_edges = 2.0 * np.where(u < 0.5, betaincinv(pr.beta, pr.beta, u), 1.0 - betaincinv(pr.beta, pr.beta, 1 - u)) - 1
    c_edges = np.unique(c_edges)
    R1, C1 = np.meshgrid(rho_edges[:-1], c_edges[:-1], indexing="ij")
    R2, C2 = np.meshgrid(rho_edges[1:], c_edges[1:], indexing="ij")
    cells = make_cells(pr, R1.ravel(), R2.ravel(), C1.ravel(), C2.ravel())
    covered_c = float(beta_mass(pr.beta, np.array([c_edges[0]]), np.array([c_edges[-1]]))[0])
    t_lo, t_hi = rho_edges[0] ** 2 / (2 * sp * sp), rho_edges[-1] ** 2 / (2 * sp * sp)
    p_out = 1.0 - float(gamma_mass(a, np.array([t_lo]), np.array([t_hi]))[0]) * covered_c
    if pr.q_sigma is not None:
        sq = pr.scale(pr.q_sigma)
        tq = np.array([rho_edges[0] ** 2 / (2 * sq * sq)]), np.array([rho_edges[-1] ** 2 / (2 * sq * sq)])
        q_out = 1.0 - float(gamma_mass(a, *tq)[0]) * covered_c
    elif pr.q_threshold is not None:
        q_out = min(1.0, p_out / pr.q_threshold)
    else:
        q_out = 0.0
    return cells, max(p_out, 0.0) + 1e-15, max(q_out, 0.0) + 1e-15


def split(pr: Problem, cells: Cells) -> Cells:
    """Each rectangle into four at its midpoints."""
    rm, cm = 0.5 * (cells.rho1 + cells.rho2), 0.5 * (cells.c1 + cells.c2)
    r1 = np.concatenate([cells.rho1, cells.rho1, rm, rm])
    r2 = np.concatenate([rm, rm, cells.rho2, cells.rho2])
    c1 = np.concatenate([cells.c1, cm, cells.c1, cm])
    c2 = np.concatenate([cm, cells.c2, cm, cells.c2])
    return make_cells(pr, r1, r2, c1, c2)


def phi_bounds(cells: Cells, lam: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """[min, max] of phi = e^h - lam1 - lam2 q / p over each cell."""
    l1, l2 = lam
    q_lo, q_hi = (cells.qp_lo, cells.qp_hi) if l2 >= 0 else (cells.qp_hi, cells.qp_lo)
    return np.exp(cells.h_lo) - l1 - l2 * q_hi, np.exp(cells.h_hi) - l1 - l2 * q_lo


@dataclass(frozen=True)
class Group:
    """A union of cells, as the LP sees it: exact P, Q; S bracket; pointwise bounds on its densities."""

    p: float
    q: float
    s_lo: float
    s_hi: float
    ratio_lo: float  # min e^h
    ratio_hi: float
    qp_lo: float
    qp_hi: float
    phi_lo: float  # min e^h - lam1 - lam2 q/p, at the guess lam
    phi_hi: float


def group_cells(cells: Cells, lam: tuple[float, float], bins: int = 24) -> list[Group]:
    """Cells pooled by the sign pattern of phi and by |phi| on a log scale: a few dozen LP cells.

    Pooling loses nothing on a group where phi keeps one sign (the guess's cut is exact there); the
    loss sits in groups that straddle phi = 0, bounded by (phi_hi - phi_lo) P.
    """
    lo, hi = phi_bounds(cells, lam)
    kind = np.where(hi <= 0, 0, np.where(lo >= 0, 1, 2))
    level = np.where(kind == 0, -hi, np.where(kind == 1, lo, hi - lo))
    key = np.clip(np.floor(np.log10(np.maximum(level, 1e-300)) * 2), -2 * bins, 2 * bins).astype(int)
    groups = []
    for kd in (0, 1, 2):
        for kk in np.unique(key[kind == kd]):
            m = (kind == kd) & (key == kk)
            if not m.any():
                continue
            groups.append(Group(
                p=float(cells.p[m].sum()), q=float(cells.q[m].sum()),
                s_lo=float(cells.s_lo[m].sum()), s_hi=float(cells.s_hi[m].sum()),
                ratio_lo=float(np.exp(cells.h_lo[m].min())), ratio_hi=float(np.exp(cells.h_hi[m].max())),
                qp_lo=float(cells.qp_lo[m].min()), qp_hi=float(cells.qp_hi[m].max()),
                phi_lo=float(lo[m].min()), phi_hi=float(hi[m].max())))
    return groups


def cell_rows(g: Group, lam: tuple[float, float]) -> list[tuple[float, float, float, float]]:
    """Valid inequalities a x + b y + c z <= e for the masses (x, y, z) = (P, Q, P_delta)(A n cell) of
    ANY subset A of the cell. Each integrates a pointwise bound on the cell over the part and over
    its complement (masses P - x, Q - y, S - z, with S >= s_lo):

        part:       z >= L x,                 complement:  S - z <= U (P - x)
        part:       l x <= y <= u x,          complement:  l (P - x) <= Q - y <= u (P - x)
        part:       z >= (lam1 + phi_lo) x + lam2 y
        complement: S - z <= (lam1 + phi_hi)(P - x) + lam2 (Q - y)
    """
    l1, l2 = lam
    a_lo, a_hi = l1 + g.phi_lo, l1 + g.phi_hi
    rows = [
        (g.ratio_lo, 0.0, -1.0, 0.0),
        (g.ratio_hi, 0.0, -1.0, g.ratio_hi * g.p - g.s_lo),
        (g.qp_lo, -1.0, 0.0, 0.0),
        (-g.qp_hi, 1.0, 0.0, 0.0),
        (-g.qp_lo, 1.0, 0.0, g.q - g.qp_lo * g.p),
        (g.qp_hi, -1.0, 0.0, g.qp_hi * g.p - g.q),
        (a_lo, l2, -1.0, 0.0),
        (a_hi, l2, -1.0, a_hi * g.p + l2 * g.q - g.s_lo),
    ]
    # a row with a huge coefficient (a far tail's ratio) is dropped: dropping only relaxes
    return [row for row in rows if all(math.isfinite(v) and abs(v) < 1e9 for v in row)]


def _coupling(pr: Problem, n: int, xs: list[int], ys: list[int]) -> tuple[list[np.ndarray], list[float]]:
    """-sum x <= -pL, sum x <= pU, and the same for y when Q is used, each widened by SLOP: the
    relaxation only grows (its minimum only falls), and exact point facts survive round-off."""
    rows, rhs = [], []
    vx = np.zeros(n)
    vx[xs] = 1.0
    rows += [-vx, vx]
    rhs += [-pr.p_bounds[0] + SLOP, pr.p_bounds[1] + SLOP]
    if pr.has_q:
        vy = np.zeros(n)
        vy[ys] = 1.0
        rows += [-vy, vy]
        rhs += [-pr.q_bounds[0] + SLOP, pr.q_bounds[1] + SLOP]
    return rows, rhs


def lower_lp(pr: Problem, groups: list[Group], lam: tuple[float, float], p_out: float,
             q_out: float) -> tuple[float, tuple[float, float]]:
    """The relaxation's minimum (a lower bound on m(r)) and its multipliers (lam1, lam2).

    Variables (x_i, y_i, z_i) per group and (x_o, y_o) for the outside of the box, where the shifted
    mass is counted as 0 (the worst case) and P, Q masses are free within the outside's totals.
    """
    n = 3 * len(groups) + 2
    a_rows, b = [], []
    bounds = []
    for i, g in enumerate(groups):
        bounds += [(0.0, g.p), (0.0, g.q), (0.0, None)]
        for ax, ay, az, e in cell_rows(g, lam):
            row = np.zeros(n)
            row[3 * i: 3 * i + 3] = (ax, ay, az)
            a_rows.append(row)
            b.append(e)
    bounds += [(0.0, p_out), (0.0, q_out)]
    xs = [3 * i for i in range(len(groups))] + [n - 2]
    ys = [3 * i + 1 for i in range(len(groups))] + [n - 1]
    rows, rhs = _coupling(pr, n, xs, ys)
    n_cells = len(a_rows)
    a_rows += rows
    b += rhs
    cost = np.zeros(n)
    cost[2: 3 * len(groups): 3] = 1.0
    res = linprog(cost, A_ub=np.array(a_rows), b_ub=np.array(b), bounds=bounds, method="highs", options=HIGHS)
    if res.status != 0:  # infeasible only through round-off here: no information, never "certified"
        return -math.inf, lam
    m = res.ineqlin.marginals[n_cells:]
    lam1 = -m[0] + m[1]
    lam2 = (-m[2] + m[3]) if pr.has_q else 0.0
    # HiGHS reports the objective in floating point: take a relative hair off for the round-off
    return float(res.fun) * (1 - 1e-12) - 1e-15, (float(lam1), float(lam2))


def upper_lp(pr: Problem, cells: Cells) -> tuple[float, tuple[float, float]]:
    """min sum a_i s_hi_i over fractions a_i in [0, 1] of the cells meeting both intervals, and its
    multipliers.

    A fraction a_i of a cell is a set that exists (Lyapunov's theorem on the non-atomic vector measure
    (P, Q, P_delta) restricted to the cell), so the value is the shifted mass of a feasible classifier
    region: an upper bound on m(r). Its multipliers maximise the cells' discrete dual
    sum_i min(0, S_i - lam1 P_i - lam2 Q_i) + lam1 b1 + lam2 b2, which places the relaxation's cuts.
    """
    a_rows = [-cells.p, cells.p] + ([-cells.q, cells.q] if pr.has_q else [])
    rhs = [-pr.p_bounds[0], pr.p_bounds[1]] + ([-pr.q_bounds[0], pr.q_bounds[1]] if pr.has_q else [])
    res = linprog(cells.s_hi, A_ub=np.array(a_rows), b_ub=np.array(rhs), bounds=(0.0, 1.0), method="highs", options=HIGHS)
    if res.status != 0:
        return math.inf, (1.0, 0.0)
    m = res.ineqlin.marginals
    lam = (float(-m[0] + m[1]), float(-m[2] + m[3]) if pr.has_q else 0.0)
    return float(res.fun) * (1 + 1e-12) + 1e-15, lam


@dataclass(frozen=True)
class Verdict:
    """The verifier's answer at one radius: lower <= m(r) <= upper; certified iff lower > 1/2."""

    lower: float
    upper: float
    cells: int
    rounds: int
    lam: tuple[float, float] = (math.nan, math.nan)  # the multipliers of the last round's restricted LP

    @property
    def certified(self) -> bool:
        return self.lower > 0.5

    @property
    def refuted(self) -> bool:
        return self.upper < 0.5


def verify(pr: Problem, rounds: int = 40, max_cells: int = 400_000, gap: float = 1e-12,
           n_rho: int = 48, n_c: int = 48, decide: bool = True) -> Verdict:
    """Bracket m(r) and refine until 1/2 lies outside the bracket (when ``decide``), the bracket is
    below ``gap`` wide, or the budget ends. Each round: the restricted LP on all cells gives the upper bound and the
    multipliers; the relaxation on cells pooled at those multipliers gives the lower bound; then the
    cells carrying most of the relaxation's loss are split in four: those straddling phi = 0, and
    those whose shifted-mass bracket is wide.
    """
    cells, p_out, q_out = initial_grid(pr, n_rho, n_c)
    lower, upper = -math.inf, math.inf
    for rnd in range(1, rounds + 1):
        upper, lam = upper_lp(pr, cells)
        lower = max(lower, lower_lp(pr, group_cells(cells, lam), lam, p_out, q_out)[0])
        if (decide and (lower > 0.5 or upper < 0.5)) or upper - lower < gap or len(cells.p) >= max_cells:
            break
        lo, hi = phi_bounds(cells, lam)
        loss = np.where((lo < 0) & (hi > 0), (hi - lo) * cells.p, 0.0) + (cells.s_hi - cells.s_lo)
        order = np.argsort(loss)[::-1]
        share = np.cumsum(loss[order]) / max(loss.sum(), 1e-300)
        n_split = max(int(np.searchsorted(share, 0.9)) + 1, min(2000, len(order) // 8))
        n_split = min(n_split, max(1, (max_cells - len(cells.p)) // 3))
        chosen = np.zeros(len(cells.p), dtype=bool)
        chosen[order[:n_split]] = True
        cells = Cells.join([cells.take(~chosen), split(pr, cells.take(chosen))])
    return Verdict(lower=lower, upper=upper, cells=len(cells.p), rounds=rnd, lam=lam)
