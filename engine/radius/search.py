"""Largest certified radius of a decreasing certificate D(r) >= 1/2, ending on the smaller side."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

Witness = TypeVar("Witness")


def largest_certified_radius(
    margin_at: Callable[[float], float],
    r_start: float,
    step: float,
    *,
    xtol: float = 1e-6,
    r_max: float = 1e3,
    slope: float | None = None,
) -> float:
    """Largest r >= r_start with margin_at(r) >= 0, for a smooth margin that decreases in r.

    Steps up (doubling) until the margin turns negative, then regula falsi with the Illinois rule on
    that bracket. Ends on the certified side: at a point whose margin is >= 0 and either within xtol
    of the bracket's other end or, by the bracket's secant slope, within xtol of the crossing. Each
    margin is evaluated once. ``slope`` (a guess of -margin'(r)) aims the first step a quarter past the
    crossing it predicts instead of taking ``step``. Returns r_start when even the first step fails;
    the caller has checked r_start itself.
    """
    seen: dict[float, float] = {}

    def margin(r: float) -> float:  # radius 0 is certified whenever pA_lower > 1/2
        if r not in seen:
            seen[r] = 1.0 if r <= 0 else margin_at(r)
        return seen[r]

    lo, f_lo = r_start, margin(r_start)
    if f_lo < 0:
        return r_start
    if slope and 0 < f_lo < 1:
        step = 1.25 * f_lo / slope + xtol
    hi = r_start + step
    f_hi = margin(hi)
    while f_hi >= 0:
        lo, f_lo = hi, f_hi
        step *= 2.0
        hi = lo + step
        if hi > r_max:
            return lo
        f_hi = margin(hi)
    a, b = f_lo, f_hi  # the interpolation's values, halved by the Illinois rule on a one-sided run
    kept = 0
    while hi - lo > xtol:
        r = min(max(lo + a * (hi - lo) / (a - b), lo + 0.25 * xtol), hi - 0.25 * xtol)
        f = margin(r)
        if not math.isfinite(f):
            f = -1.0
        secant = (f_lo - f_hi) / (hi - lo)
        if f >= 0:
            lo, f_lo, a = r, f, f
            if f <= xtol * secant:
                return lo
            b = b * 0.5 if kept > 0 else b
            kept = 1
        else:
            hi, f_hi, b = r, f, f
            a = a * 0.5 if kept < 0 else a
            kept = -1
    return lo


def increasing_root(
    f: Callable[[float], tuple[float, float]],
    guess: float,
    lo_limit: float,
    hi_limit: float,
    *,
    rtol: float = 1e-13,
    ftol: float = 1e-15,
    step: float = 1.0,
    iters: int = 100,
) -> float:
    """Root of an increasing f (returning value and derivative) in [lo_limit, hi_limit].

    Safeguarded Newton from ``guess``: while one side of the bracket is unknown, steps are capped
    at ``step``, doubling each time; once both are known, a step outside them is a bisection. Ends
    when |f| <= ftol, or the bracket or the Newton step is below rtol * max(1, |x|). Without a root in the limits it
    returns the limit that f's sign points to. A warm ``guess`` costs a few evaluations.
    """
    lo, hi = lo_limit, hi_limit
    known_lo = known_hi = False
    x = min(max(guess, lo_limit), hi_limit)
    span = step
    for _ in range(iters):
        val, der = f(x)
        if abs(val) <= ftol:
            return x
        if val > 0:
            if x <= lo_limit:
                return lo_limit
            hi, known_hi = x, True
        else:
            if x >= hi_limit:
                return hi_limit
            lo, known_lo = x, True
        if known_lo and known_hi and hi - lo <= rtol * max(1.0, abs(x)):
            return x
        newton = x - val / der if der > 0 and math.isfinite(der) else math.nan
        if abs(newton - x) <= rtol * max(1.0, abs(x)):  # f carries rounding: a step this small is the root
            return newton if lo <= newton <= hi else x
        if known_lo and known_hi:
            x = newton if lo < newton < hi else 0.5 * (lo + hi)
            continue
        direction = 1.0 if val < 0 else -1.0
        if math.isfinite(newton) and 0.0 < (newton - x) * direction < span:
            x = newton
        else:
            x = x + direction * span
            span *= 2.0
        x = min(max(x, lo_limit), hi_limit)
    return x


def step_down(certify: Callable[[float], Witness | None], r: float, floor: float,
              tries: int) -> tuple[float, Witness] | None:
    """The first radius from r down that ``certify`` accepts (it returns what certified it, else None),
    stepping by 1e-6 r and doubling each time; None once the radius reaches ``floor`` or after ``tries``."""
    step = 1e-6 * max(r, 1e-3)
    for _ in range(tries):
        if r <= floor:
            return None
        witness = certify(r)
        if witness is not None:
            return r, witness
        r, step = r - step, 2.0 * step
    return None
