"""Smoothing distributions: the isotropic Gaussian and the generalized Gaussian of DSRS.

Each draws noise on any torch device and dtype without leaving it, in place into a buffer when
asked, and has a truncated variant (P restricted to a ball, DSRS's second distribution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import torch
from scipy.stats import gamma as gamma_law


@lru_cache(maxsize=256)
def radial_quantile(shape: float, q: float) -> float:
    """Gamma(shape, 1).ppf(q): the truncation point in t = ||e||^2 / (2 sigma'^2)."""
    return float(gamma_law.ppf(q, shape))


@dataclass(frozen=True)
class Noise:
    """Base of the smoothing distributions: GG(d, k, sigma), optionally truncated.

    Density proportional to ||e||^(-2k) exp(-||e||^2 / (2 sigma'^2)), sigma' = sigma sqrt(d / (d - 2k))
    (Li et al. 2022, Def. 1), so that E||e||^2 = d sigma^2. ``threshold`` T in (0, 1) keeps only
    e with t = ||e||^2 / (2 sigma'^2) <= Gamma(d/2 - k).ppf(T) (Li et al. 2022, Sec. 4.2).
    """

    sigma: float
    k: int = 0
    d: int | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")
        if self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.d is not None:
            self.check_dim(self.d)

    # -- parameters -------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return "gaussian" if self.k == 0 else "general_gaussian"

    def check_dim(self, d: int) -> None:
        if self.d is not None and d != self.d:
            raise ValueError(f"noise was built for d={self.d}, input has d={d}")
        if self.k > 0 and (d % 2 != 0 or self.k > d // 2 - 1):
            raise ValueError(f"generalized Gaussian needs d even and k <= d/2 - 1 (d={d}, k={self.k})")

    def radial_shape(self, d: int) -> float:
        """Shape of the Gamma law of t = ||e||^2 / (2 sigma'^2): d/2 - k."""
        return d / 2.0 - self.k

    def sigma_prime(self, d: int) -> float:
        """sigma' = sigma sqrt(d / (d - 2k)) (Li et al. 2022, Def. 1)."""
        return self.sigma * math.sqrt(d / (d - 2.0 * self.k))

    def truncated(self, threshold: float) -> Noise:
        """The same law restricted to its ``threshold`` radial quantile."""
        return replace(self, threshold=threshold)

    def scaled(self, sigma: float) -> Noise:
        """The same family at another scale (DSRS's smaller-sigma Q)."""
        return replace(self, sigma=sigma)

    def config(self) -> dict[str, Any]:
        return {"noise": self.kind, "sigma": self.sigma, "k": self.k, "d": self.d, "threshold": self.threshold}

    # -- sampling ---------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        shape: tuple[int, ...] | torch.Size,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw n noise tensors of ``shape`` on ``device``."""
        out = torch.empty((n, *shape), device=device, dtype=dtype)
        return self.sample_(out, generator=generator)

    def sample_(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fill ``out`` (n, *shape) with noise in place, on its device; returns ``out``."""
        n = out.shape[0]
        d = out[0].numel()
        self.check_dim(d)
        if self.k == 0 and self.threshold is None:
            return out.normal_(0.0, self.sigma, generator=generator)  # one pass: no separate scaling
        out.normal_(generator=generator)
        # direction uniform on the sphere, norm sigma' sqrt(2t) with t ~ Gamma(d/2 - k)
        acc = torch.promote_types(out.dtype, torch.float32)  # norms of bf16 buffers in fp32
        norms = torch.linalg.vector_norm(out.reshape(n, d), dim=1, dtype=acc)
        sqrt_2t = self._radial_sqrt_2t(n, d, out.device, generator)
        scale = (self.sigma_prime(d) * sqrt_2t / norms).to(out.dtype)
        return out.mul_(scale.view(n, *([1] * (out.dim() - 1))))

    def _radial_sqrt_2t(self, n: int, d: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
        """sqrt(2t) for t ~ Gamma(d/2 - k), truncated if asked: ||chi|| with d - 2k degrees of freedom.

        d - 2k is an even integer, so 2t is exactly a chi-square with d - 2k degrees of freedom.
        """
        dof = d - 2 * self.k
        if self.threshold is None or self.threshold >= 1.0:
            chi = torch.randn((n, dof), device=device, generator=generator, dtype=torch.float64)
            return torch.linalg.vector_norm(chi, dim=1)
        limit = math.sqrt(2.0 * radial_quantile(self.radial_shape(d), self.threshold))
        kept: list[torch.Tensor] = []
        missing = n
        while missing > 0:  # rejection: acceptance rate is the threshold T itself
            draw = int(missing / self.threshold * 1.2) + 16
            chi = torch.randn((draw, dof), device=device, generator=generator, dtype=torch.float64)
            r = torch.linalg.vector_norm(chi, dim=1)
            r = r[r <= limit][:missing]
            kept.append(r)
            missing -= r.numel()
        return torch.cat(kept)


def Gaussian(sigma: float, threshold: float | None = None) -> Noise:
    """Isotropic Gaussian N(0, sigma^2 I) (Cohen et al. 2019)."""
    return Noise(sigma=sigma, k=0, threshold=threshold)


def GeneralizedGaussian(d: int, k: int, sigma: float, threshold: float | None = None) -> Noise:
    """Generalized Gaussian GG(d, k, sigma) of DSRS (Li et al. 2022); k = 0 is the Gaussian."""
    return Noise(sigma=sigma, k=k, d=d, threshold=threshold)


def make_noise(kind: str, sigma: float, *, k: int = 0, d: int | None = None, threshold: float | None = None) -> Noise:
    """Build a noise law from its config name: ``gaussian`` or ``general_gaussian``."""
    if kind == "gaussian":
        return Noise(sigma=sigma, k=0, d=d, threshold=threshold)
    if kind in ("general_gaussian", "general-gaussian"):
        if k <= 0:
            raise ValueError("general_gaussian needs k >= 1")
        return Noise(sigma=sigma, k=k, d=d, threshold=threshold)
    raise ValueError(f"unknown noise {kind!r}: use 'gaussian' or 'general_gaussian'")
