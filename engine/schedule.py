"""How many samples to draw per input: a fixed n, or input-specific sampling (ISS).

ISS (Chen et al., AAAI 2022): a pilot estimate of pA picks the smallest n whose radius loses at
most delta (absolute) or a fraction delta (relative) against the radius at the maximum size N.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

import numpy as np
from scipy.special import betaincinv, ndtri

from engine.options import Mode


class SampleSchedule(Protocol):
    """A policy giving the estimation sample size from a pilot interval [p_low, p_high] for pA."""

    def sample_size(self, p_low: float, p_high: float) -> int: ...


@dataclass(frozen=True)
class FixedSchedule:
    """Always n samples (Cohen et al. 2019)."""

    n: int

    def sample_size(self, p_low: float = 0.0, p_high: float = 1.0) -> int:
        return self.n


def np_radius_at_rate(p: np.ndarray, n: np.ndarray, sigma: float, alpha: float) -> np.ndarray:
    """sigma Phi^-1(CPlow(round(n p), n, alpha)), clipped at 0 (Chen et al. 2022, Sec. 4: R_n(p)).

    The Gaussian NP radius an empirical rate p would certify with n samples; 0 means abstain.
    """
    k = np.rint(n * p)
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k > 0, betaincinv(np.maximum(k, 1.0), n - k + 1.0, alpha), 0.0)
        radius = sigma * ndtri(low)
    return np.maximum(np.nan_to_num(radius, nan=0.0, neginf=0.0), 0.0)


def iss_rate_grid(n_max: int, points: int) -> np.ndarray:
    """Rates at which n(p) is tabulated: uniform on [0, 1], refined towards 1 where n(p) climbs fastest."""
    tail = 1.0 - np.geomspace(0.1, 0.5 / n_max, 64)
    return np.unique(np.concatenate([np.linspace(0.0, 1.0, points), tail]))


@lru_cache(maxsize=64)
def iss_sample_size_table(
    sigma: float,
    n_max: int,
    alpha: float,
    delta: float,
    mode: Mode = "absolute",
    batch_size: int = 1,
    grid: int = 1001,
) -> tuple[np.ndarray, np.ndarray]:
    """(rates p, sample sizes n(p)) for ISS (Chen et al. AAAI 2022, Sec. 4, Eq. for n(p)).

    n(p) is the smallest multiple of ``batch_size`` (capped at n_max) whose radius at the empirical
    rate p reaches R_N(p) - delta (absolute) or (1 - delta) R_N(p) (relative). Computed once per
    setting; the arrays are read-only.
    """
    if mode not in ("absolute", "relative"):
        raise ValueError(f"mode must be 'absolute' or 'relative', got {mode!r}")
    if not delta >= 0 or (mode == "relative" and delta >= 1):
        raise ValueError(f"delta out of range for {mode} mode: {delta}")
    if batch_size < 1 or n_max < 1:
        raise ValueError("n_max and batch_size must be >= 1")
    rates = iss_rate_grid(n_max, grid)
    sizes = np.arange(batch_size, n_max, batch_size, dtype=np.float64)
    sizes = np.append(sizes, float(n_max))  # n_max always reaches the target
    full = np_radius_at_rate(rates, np.float64(n_max), sigma, alpha)
    target = full - delta if mode == "absolute" else (1.0 - delta) * full
    table = np.zeros(len(rates), dtype=np.int64)
    pending = np.arange(len(rates))
    start, width = 0, 16
    while pending.size:  # scan sizes in growing chunks, dropping rates once their n(p) is found
        cols = sizes[start : start + width]
        radii = np_radius_at_rate(rates[pending, None], cols[None, :], sigma, alpha)
        # tiny slack: the n_max column equals ``full`` up to floating-point noise
        reached = radii >= target[pending, None] - 1e-12
        done = reached.any(axis=1)
        table[pending[done]] = cols[reached[done].argmax(axis=1)].astype(np.int64)
        pending = pending[~done]
        start, width = start + width, width * 2
    rates.setflags(write=False)
    table.setflags(write=False)
    return rates, table


@dataclass(frozen=True)
class ISSSchedule:
    """Input-specific sample size: the maximum of n(p) over the pilot interval [p_low, p_high].

    Taking the maximum over the whole interval (not only its ends, as the reference code does)
    matters because n(p) is not monotone near p = 1/2. The radius formula is the Gaussian one; for
    other noise it is a heuristic that only sets n, never the certificate.
    """

    sigma: float
    n_max: int
    alpha: float
    delta: float = 0.05
    mode: Mode = "absolute"
    batch_size: int = 1
    grid: int = 1001
    _table: tuple[np.ndarray, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        table = iss_sample_size_table(float(self.sigma), int(self.n_max), float(self.alpha), float(self.delta),
                                      self.mode, int(self.batch_size), int(self.grid))
        object.__setattr__(self, "_table", table)

    def sample_size(self, p_low: float, p_high: float) -> int:
        if not 0.0 <= p_low <= p_high <= 1.0:
            raise ValueError(f"need 0 <= p_low <= p_high <= 1, got [{p_low}, {p_high}]")
        rates, sizes = self._table
        # widen to the grid points enclosing the interval so no value of n(p) inside it is missed
        lo = max(int(np.searchsorted(rates, p_low, side="right")) - 1, 0)
        hi = min(int(np.searchsorted(rates, p_high, side="left")), len(rates) - 1)
        return int(sizes[lo : hi + 1].max())


@dataclass(frozen=True)
class SequentialSchedule:
    """Anytime-valid sampling: look at the votes after m_1 < m_2 < ... < m_K = n_max fresh samples and
    stop as soon as more samples cannot raise the radius by more than ``delta``.

    Look j bounds pA by Clopper-Pearson at alpha_j = alpha / K; by the union bound over the K looks,
    P(pA < p_lower at the stopping look) <= sum_j alpha_j = alpha, whatever the stopping rule, so
    stopping on the very samples that are then reported keeps the certificate at level alpha (the
    "alpha-spending" argument of group-sequential tests). The rule: stop when the upper bound is
    below 1/2 (no radius is possible), or when the radius certified now is within ``delta`` of the
    radius n_max samples would certify at the upper bound's rate. It uses the Gaussian formula, so
    for other noise it only decides when to stop, never the certificate.
    """

    sigma: float
    n_max: int
    alpha: float
    delta: float = 0.05
    first: int = 1000
    growth: float = 2.0
    batch_size: int = 1

    def __post_init__(self) -> None:
        if not (self.n_max >= 1 and 1 <= self.first and self.growth > 1 and self.delta >= 0 and 0 < self.alpha < 1):
            raise ValueError(f"invalid sequential schedule: {self}")

    def looks(self) -> list[int]:
        """Cumulative sample sizes at which the votes are read: geometric, batch multiples, ending at n_max."""
        sizes, m = [], float(min(self.first, self.n_max))
        while m < self.n_max:
            size = min(self.n_max, max(self.batch_size, round(m / self.batch_size) * self.batch_size))
            if not sizes or size > sizes[-1]:
                sizes.append(size)
            m *= self.growth
        if not sizes or sizes[-1] != self.n_max:
            sizes.append(self.n_max)
        return sizes

    def look_alpha(self) -> float:
        """The level of every look's bound: alpha split evenly over the looks."""
        return self.alpha / len(self.looks())

    def should_stop(self, p_lower: float, p_upper: float) -> bool:
        """Given one look's bounds (at ``look_alpha``), whether further samples are not worth drawing."""
        if p_upper < 0.5:
            return True
        now = self.sigma * float(ndtri(p_lower)) if p_lower > 0.5 else 0.0
        best = float(np_radius_at_rate(np.float64(p_upper), np.float64(self.n_max), self.sigma, self.look_alpha()))
        return now >= best - self.delta

