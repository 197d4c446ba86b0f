"""The samplers against their definitions (Li et al. 2022, Def. 1): radial law and direction."""

import pytest
import torch
from scipy.stats import beta, chi2, gamma, kstest

from engine.noise import Gaussian, GeneralizedGaussian, radial_quantile

N = 4000


def radial_t(noise, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    e = noise.sample(N, (d,), generator=g).double()
    return e.square().sum(1) / (2 * noise.sigma_prime(d) ** 2)


@pytest.mark.parametrize(("d", "k"), [(64, 20), (784, 380), (3072, 1530)])
def test_generalized_gaussian_radial_law_is_gamma(d, k):
    t = radial_t(GeneralizedGaussian(d, k, 0.5), d, seed=d)
    assert kstest(t.numpy(), gamma(d / 2 - k).cdf).pvalue > 1e-3
    # and it is not the Gaussian's law: the test has power
    assert kstest(t.numpy(), gamma(d / 2).cdf).pvalue < 1e-6


@pytest.mark.parametrize("threshold", [0.3, 0.8])
def test_truncated_generalized_gaussian_follows_the_truncated_gamma(threshold):
    d, k = 64, 20
    shape = d / 2 - k
    t = radial_t(GeneralizedGaussian(d, k, 0.5, threshold=threshold), d, seed=11)
    assert float(t.max()) <= radial_quantile(shape, threshold) * (1 + 1e-6)

    def truncated_cdf(v):
        return (gamma(shape).cdf(v) / threshold).clip(max=1.0)

    assert kstest(t.numpy(), truncated_cdf).pvalue > 1e-3
    assert kstest(t.numpy(), gamma(shape).cdf).pvalue < 1e-6


def test_gaussian_norm_is_chi_square_and_scale_is_sigma():
    d, sigma = 48, 0.7
    g = torch.Generator().manual_seed(0)
    e = Gaussian(sigma).sample(N, (3, 4, 4), generator=g).double()
    assert kstest((e.flatten(1).square().sum(1) / sigma**2).numpy(), chi2(d).cdf).pvalue > 1e-3


def test_generalized_gaussian_direction_is_uniform_on_the_sphere():
    # (1 + cos angle to a fixed axis) / 2 ~ Beta((d-1)/2, (d-1)/2) for a uniform direction
    d = 64
    g = torch.Generator().manual_seed(1)
    e = GeneralizedGaussian(d, 20, 0.5).sample(N, (d,), generator=g).double()
    cos = e[:, 0] / e.norm(dim=1)
    assert kstest(((1 + cos) / 2).numpy(), beta((d - 1) / 2, (d - 1) / 2).cdf).pvalue > 1e-3


def test_sample_in_place_fills_the_buffer_and_matches_mean_square():
    d, sigma = 3072, 0.5
    out = torch.empty(500, 3, 32, 32)
    GeneralizedGaussian(d, 1530, sigma).sample_(out, generator=torch.Generator().manual_seed(2))
    # E||e||^2 = d sigma^2 for every k (sigma' is defined for this)
    mean_square = float(out.flatten(1).square().sum(1).mean()) / d
    assert abs(mean_square - sigma**2) < 0.05 * sigma**2
