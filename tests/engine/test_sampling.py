import math

import pytest
import torch
from scipy.stats import binomtest, chi2, gamma, norm

from engine.noise import Gaussian, GeneralizedGaussian
from engine.sampling import count_votes, count_votes_many, make_generator
from tests.engine.exact_models import CallCounter, Constant, LinearBinary, RadialBinary


def first_coordinate_classifier() -> LinearBinary:
    w = torch.zeros(16)
    w[0] = 1.0
    return LinearBinary(w, 0.0)


def consistent(successes: int, trials: int, p: float) -> bool:
    return binomtest(successes, trials, p).pvalue > 1e-4


def test_counts_sum_to_n_and_respect_the_batch_size():
    model = CallCounter(Constant(3, 5))
    counts = count_votes(model, torch.zeros(1, 4, 4), Gaussian(0.5), 1003, 5, 100)
    assert counts.dtype == torch.int64 and counts.shape == (5,)
    assert counts.tolist() == [0, 0, 0, 1003, 0]
    assert model.batches == [100] * 10 + [3]
    assert all(model.inference)


def test_votes_follow_the_exact_probability():
    model = first_coordinate_classifier()
    x = torch.zeros(1, 4, 4)
    x[0, 0, 0] = 0.3
    counts = count_votes(model, x, Gaussian(0.5), 20_000, 2, 1024, generator=make_generator(0, "cpu"))
    assert consistent(int(counts[1]), 20_000, norm.cdf(0.3 / 0.5))


def test_generator_makes_runs_reproducible():
    model = first_coordinate_classifier()
    x = torch.zeros(1, 4, 4)
    a = count_votes(model, x, Gaussian(1.0), 2000, 2, 300, generator=make_generator(7, "cpu"))
    b = count_votes(model, x, Gaussian(1.0), 2000, 2, 300, generator=make_generator(7, "cpu"))
    c = count_votes(model, x, Gaussian(1.0), 2000, 2, 300, generator=make_generator(8, "cpu"))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_many_inputs_packed_into_batches_keep_their_own_counts():
    model = CallCounter(first_coordinate_classifier())
    shifts = [-0.4, 0.0, 0.25, 1.5]
    xs = torch.zeros(len(shifts), 1, 4, 4)
    for i, s in enumerate(shifts):
        xs[i, 0, 0, 0] = s
    counts = count_votes_many(model, xs, Gaussian(0.5), 5000, 2, 3000, generator=make_generator(1, "cpu"))
    assert counts.shape == (4, 2) and counts.sum(1).tolist() == [5000] * 4
    assert model.batches == [3000] * 6 + [2000]  # batches straddle inputs
    for i, s in enumerate(shifts):
        assert consistent(int(counts[i, 1]), 5000, norm.cdf(s / 0.5))


def test_many_inputs_with_their_own_sample_sizes():
    xs = torch.zeros(3, 1, 4, 4)
    xs[1, 0, 0, 0] = 10.0  # always class 1
    counts = count_votes_many(first_coordinate_classifier(), xs, Gaussian(0.5), [7, 0, 1234], 2, 100)
    assert counts.sum(1).tolist() == [7, 0, 1234]
    assert counts[1].tolist() == [0, 0]
    assert consistent(int(counts[2, 1]), 1234, 0.5)


def test_generalized_gaussian_votes_match_the_gamma_radial_law():
    d, k, sigma = 16, 4, 0.5
    noise = GeneralizedGaussian(d, k, sigma)
    sigma_p = noise.sigma_prime(d)
    t_cut = gamma.ppf(0.3, d / 2 - k)  # inside the ball with probability 0.3
    model = RadialBinary(2 * sigma_p**2 * t_cut)
    counts = count_votes(model, torch.zeros(1, 4, 4), noise, 20_000, 2, 4096, generator=make_generator(2, "cpu"))
    assert consistent(int(counts[1]), 20_000, 0.3)
    truncated = count_votes(model, torch.zeros(1, 4, 4), noise.truncated(0.6), 20_000, 2, 4096,
                            generator=make_generator(3, "cpu"))
    assert consistent(int(truncated[1]), 20_000, 0.3 / 0.6)


def test_gaussian_radial_votes_match_chi_square():
    c = 16 * 0.25  # ||e||^2 <= c with e ~ N(0, 0.25 I): chi2(16) at c / sigma^2
    counts = count_votes(RadialBinary(c), torch.zeros(1, 4, 4), Gaussian(0.5), 10_000, 2, 999,
                         generator=make_generator(4, "cpu"))
    assert consistent(int(counts[1]), 10_000, chi2.cdf(c / 0.25, 16))


def test_reduced_precision_models_get_inputs_in_their_dtype():
    model = first_coordinate_classifier().to(torch.bfloat16)
    counts = count_votes(model, torch.zeros(1, 4, 4), Gaussian(0.5), 4000, 2, 1000, generator=make_generator(5, "cpu"))
    assert counts.sum() == 4000 and consistent(int(counts[1]), 4000, 0.5)


def test_wrong_number_of_logits_is_a_clear_error():
    with pytest.raises(ValueError, match="expected"):
        count_votes(Constant(0, 3), torch.zeros(1, 2, 2), Gaussian(0.5), 10, 5, 10)


def test_zero_samples_and_bad_batch():
    assert count_votes(Constant(0, 3), torch.zeros(1, 2, 2), Gaussian(0.5), 0, 3, 10).tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        count_votes(Constant(0, 3), torch.zeros(1, 2, 2), Gaussian(0.5), 10, 3, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_counts_on_the_gpu_match_the_exact_probability():
    model = first_coordinate_classifier().cuda()
    counts = count_votes(model, torch.zeros(1, 4, 4), Gaussian(0.5), 100_000, 2, 10_000,
                         generator=make_generator(0, "cuda"))
    assert counts.device.type == "cpu" and consistent(int(counts[1]), 100_000, 0.5)
    assert math.isclose(counts.sum().item(), 100_000)


def test_channels_last_batches_give_the_same_votes():
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 16, 4)).eval()
    x = torch.rand(3, 4, 4)
    nchw = count_votes(cnn, x, Gaussian(0.3), 3000, 4, 700, generator=make_generator(0, "cpu"))
    cnn.to(memory_format=torch.channels_last)
    nhwc = count_votes(cnn, x, Gaussian(0.3), 3000, 4, 700, generator=make_generator(0, "cpu"), channels_last=True)
    # the same law: NHWC fills the noise in another order, so compare counts statistically
    for c in range(4):
        p = (int(nchw[c]) + int(nhwc[c]) + 1) / (6000 + 2)
        assert consistent(int(nhwc[c]), 3000, p)
    # and a known probability under an NHWC buffer with 3 channels
    w = torch.zeros(3, 4, 4)
    w[2, 1, 3] = 1.0
    shifted = torch.zeros(3, 4, 4)
    shifted[2, 1, 3] = 0.2
    counts = count_votes(LinearBinary(w, 0.0), shifted, Gaussian(0.5), 20_000, 2, 3000,
                         generator=make_generator(6, "cpu"), channels_last=True)
    assert consistent(int(counts[1]), 20_000, norm.cdf(0.2 / 0.5))
