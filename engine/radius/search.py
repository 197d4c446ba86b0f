"""Largest certified radius of a decreasing certificate D(r) >= 1/2, ending on the smaller side."""

from __future__ import annotations

from collections.abc import Callable

from scipy.optimize import brentq


def largest_certified_radius(
    margin_at: Callable[[float], float],
    r_start: float,
    step: float,
    *,
    xtol: float = 1e-6,
    r_max: float = 1e3,
) -> float:
    """Largest r >= r_start with margin_at(r) >= 0, for a margin that decreases in r.

    Doubles the step until the margin turns negative, then Brent's method to ``xtol``; returns the
    certified end of the final bracket (never the uncertified one). Returns r_start when even
    r_start + step fails; the caller has checked r_start itself.
    """
    def margin(r: float) -> float:  # radius 0 is certified whenever pA_lower > 1/2
        return 1.0 if r <= 0 else margin_at(r)

    lo, f_lo = r_start, margin(r_start)
    if f_lo < 0:
        return r_start
    hi = r_start + step
    f_hi = margin(hi)
    while f_hi >= 0:
        lo, f_lo = hi, f_hi
        step *= 2.0
        hi = lo + step
        if hi > r_max:
            return lo
        f_hi = margin(hi)
    if f_lo == 0:
        return lo
    root = brentq(margin, lo, hi, xtol=xtol, rtol=1e-15)
    # brentq's answer is within xtol of the crossing: step down until it is certified
    for candidate in (root, root - xtol, root - 4 * xtol):
        if candidate > lo and margin(candidate) >= 0:
            return candidate
    return lo
