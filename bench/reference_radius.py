"""The DSRS radius as computed before tables and warm starts: the reference that ``make bench`` and the
tests hold the fast path to (same answers to 1e-4 or better, never a weaker certificate).

Every step of the search runs on the exact rule and every Newton solve starts from scratch; the
radius found is then certified exactly as the fast path certifies its own (``checked_bound``).
"""

from __future__ import annotations

from engine.radius import np_radius
from engine.radius.dsrs import bound_ends, dsrs_shifted_lower_bound
from engine.radius.np import (
    CERTIFICATE_MARGIN,
    COARSE_PANELS,
    SEARCH_MARGIN,
    certifies,
    checked_bound,
    radial_setting,
)
from engine.radius.search import largest_certified_radius


def cold_dsrs_radius(p_bounds: tuple[float, float], q_bounds: tuple[float, float], *, d: int, k: int,
                     sigma: float, q_sigma: float | None = None, q_threshold: float | None = None) -> float:
    exact = radial_setting(d, k, sigma, q_sigma, q_threshold)
    coarse = radial_setting(d, k, sigma, q_sigma, q_threshold, panels=COARSE_PANELS)
    r_np = np_radius(p_bounds[0], sigma=sigma, noise="general_gaussian" if k else "gaussian", d=d, k=k)
    if p_bounds[0] <= 0.5:
        return 0.0

    def margin(r: float) -> float:
        return dsrs_shifted_lower_bound(exact, r, p_bounds, q_bounds)[0] - 0.5 - CERTIFICATE_MARGIN - SEARCH_MARGIN

    r = largest_certified_radius(margin, r_np, max(0.05 * sigma, 0.1 * r_np), xtol=1e-6)
    for _ in range(40):
        if r <= r_np:
            break
        _, ell, mu, s1 = dsrs_shifted_lower_bound(exact, r, p_bounds, q_bounds)
        if certifies(checked_bound(exact, coarse, r, ell, mu, s1, *bound_ends(p_bounds, q_bounds, mu, s1))):
            return r
        r -= max(1e-6, 1e-4 * r)
    return r_np
