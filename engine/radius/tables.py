"""Tabulated CDF of the cosine law Beta(beta, beta), for the radius *search* only.

The DSRS and generalized-Gaussian NP searches evaluate the Beta((d-1)/2, (d-1)/2) CDF at
hundreds of thousands of points per radius; scipy's ``betainc`` costs ~0.3 us a point at
d = 3072. A cubic Hermite table (values and exact densities at the knots) costs a tenth of that
with an error below 1e-11. The table only steers the search: every radius is certified
afterwards with ``betainc`` itself (see ``engine.radius.dsrs``), so its error never reaches a
certificate.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.special import betainc, betaln

from engine.radius.kernels import table_cdf

# Knot spacing in standardised units u = (2x - 1) sqrt(2 beta + 1) (Beta(beta, beta) has sd 1
# there); Hermite error is h^4 max|F''''| / 384 ~ 1e-12 at this h for near-normal laws.
KNOTS_PER_UNIT = 256
SPAN = 40.0  # |u| beyond 40: the CDF is 0 or 1 to double precision for every tabulated beta
MIN_BETA = 30.0  # below (d < 61) the law's edges are too sharp for the table; use betainc


class CosineCdfTable:
    """Cubic Hermite interpolant of the Beta(beta, beta) CDF on its standardised scale."""

    def __init__(self, beta: float, knots_per_unit: int = KNOTS_PER_UNIT) -> None:
        if beta < MIN_BETA:
            raise ValueError(f"the table needs beta >= {MIN_BETA}, got {beta}")
        self.beta = beta
        self.scale = math.sqrt(2.0 * beta + 1.0)
        self.span = min(SPAN, self.scale)
        self.h = 1.0 / knots_per_unit
        count = math.ceil(2.0 * self.span / self.h) + 1
        self.u0 = -self.span
        u = self.u0 + self.h * np.arange(count)
        x = np.clip(0.5 * (1.0 + u / self.scale), 0.0, 1.0)
        self.cdf = betainc(beta, beta, x)
        inside = (x > 0.0) & (x < 1.0)
        xs = np.where(inside, x, 0.5)
        log_pdf = (beta - 1.0) * (np.log(xs) + np.log1p(-xs)) - betaln(beta, beta)
        # dF/du = pdf(x) dx/du, times h: the Hermite tangents in knot units
        self.tangent = np.where(inside, np.exp(log_pdf), 0.0) * (0.5 / self.scale) * self.h

    def cdf_pdf(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The interpolant and its derivative in x (0 outside the table) at x; NaN stays NaN."""
        x = np.asarray(x, dtype=float)
        cdf, pdf = table_cdf(x.ravel(), self.cdf, self.tangent, self.u0, self.h, self.scale, True)
        return cdf.reshape(x.shape), pdf.reshape(x.shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """CDF at x (cosine level in [0, 1]; values outside are clipped, like ``betainc``)."""
        x = np.asarray(x, dtype=float)
        return table_cdf(x.ravel(), self.cdf, self.tangent, self.u0, self.h, self.scale, False)[0].reshape(x.shape)

    def pdf(self, x: np.ndarray) -> np.ndarray:
        """Derivative of the interpolant in x (0 outside the table): consistent Newton steps."""
        return self.cdf_pdf(x)[1]


@lru_cache(maxsize=16)
def cosine_cdf_table(beta: float) -> CosineCdfTable:
    """One table per beta = (d - 1) / 2, built on first use (a few ms)."""
    return CosineCdfTable(beta)
