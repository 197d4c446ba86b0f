import math

import pytest
import torch
from scipy.stats import binom, chi2, norm

from engine.bounds import clopper_pearson
from engine.models import create_model
from engine.noise import Gaussian, GeneralizedGaussian
from engine.radius import np_radius
from engine.schedule import ISSSchedule, SequentialSchedule
from engine.smooth import ABSTAIN, SmoothedClassifier, selection_pair, top_two
from tests.engine.exact_models import CallCounter, Constant, LinearBinary, RadialBinary

SIGMA = 0.5


def linear_case(p_a: float, d: int = 16, seed: int = 0) -> tuple[LinearBinary, torch.Tensor]:
    """A linear classifier and an input (1, 4, 4) at which its smoothed pA is exactly ``p_a``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    x = torch.rand(1, 4, 4, generator=g)
    margin = SIGMA * float(w.norm()) * norm.ppf(p_a)  # pA = Phi(margin / (sigma ||w||))
    b = margin - float(x.flatten() @ w)
    return LinearBinary(w, b), x


def tie_model() -> LinearBinary:
    w = torch.zeros(16)
    w[0] = 1.0
    return LinearBinary(w, 0.0)  # at x = 0 each class has probability exactly 1/2


def test_np_certificates_are_sound_against_the_exact_radius():
    # Cohen et al. Thm. 1 + CP: a certified radius above the true one happens with probability <= alpha
    runs, n, alpha = 1000, 200, 0.1
    model, x = linear_case(0.85)
    true_radius = model.true_radius(x)
    smooth = SmoothedClassifier(model, 2, Gaussian(SIGMA))
    failures = 0
    for seed in range(runs):
        r = smooth.certify(x, 20, n, alpha, 256, seed=seed)
        if r.prediction != ABSTAIN and (r.prediction != 1 or r.radius > true_radius):
            failures += 1
    # a binomial upper quantile: at a true failure rate of alpha this is exceeded with probability 1e-3
    assert failures <= binom.ppf(0.999, runs, alpha)
    assert failures > 0  # the bound is tight enough to fail sometimes: the check has power


def test_np_radius_approaches_the_exact_radius_with_many_samples():
    model, x = linear_case(0.9, seed=3)
    true_radius = model.true_radius(x)
    r = SmoothedClassifier(model, 2, Gaussian(SIGMA)).certify(x, 100, 100_000, 0.001, 20_000, seed=0)
    assert r.prediction == 1
    assert 0.95 * true_radius <= r.radius <= true_radius
    assert r.samples == 100_100 and r.method == "np" and r.q_lower is None
    assert r.p_lower <= 0.9 <= r.p_upper


def test_predict_returns_the_class_or_abstains_on_a_tie():
    smooth = SmoothedClassifier(tie_model(), 2, Gaussian(SIGMA))
    x = torch.zeros(1, 4, 4)
    assert [smooth.predict(x, 1000, 0.001, 500, seed=s) for s in range(5)] == [ABSTAIN] * 5
    x[0, 0, 0] = 0.5  # pA = Phi(1) = 0.84
    assert smooth.predict(x, 1000, 0.001, 500, seed=0) == 1


@pytest.mark.parametrize("method", ["np", "dsrs"])
def test_certify_abstains_on_a_tie(method):
    smooth = SmoothedClassifier(tie_model(), 2, Gaussian(SIGMA))
    for seed in range(3):
        r = smooth.certify(torch.zeros(1, 4, 4), 100, 2000, 0.001, 500, method=method, q_sigma=0.4, seed=seed)
        assert r.prediction == ABSTAIN and r.radius == 0.0 and r.p_lower < 0.5


def test_selection_samples_are_never_reused():
    model = CallCounter(Constant(2, 4))
    r = SmoothedClassifier(model, 4, Gaussian(SIGMA)).certify(torch.zeros(3, 2, 2), 64, 1000, 0.001, 1000)
    assert model.batches == [64, 1000] and r.samples == 1064


def test_all_votes_for_one_class_give_cohens_maximum_radius():
    # pA_lower = alpha^(1/n) = 0.99993 and R = 3.81 sigma at n = 100k, alpha = 0.001
    r = SmoothedClassifier(Constant(1, 3), 3, Gaussian(SIGMA)).certify(torch.zeros(1, 2, 2), 100, 100_000,
                                                                       0.001, 50_000)
    assert r.prediction == 1
    assert r.p_lower == pytest.approx(0.001 ** (1 / 100_000))
    assert r.radius == pytest.approx(3.81 * SIGMA, abs=0.005)


def test_iss_schedule_sets_the_fresh_sample_size_from_the_pilot():
    schedule = ISSSchedule(SIGMA, 20_000, 0.001, delta=0.05, batch_size=200, grid=201)
    model = CallCounter(Constant(0, 2))
    r = SmoothedClassifier(model, 2, Gaussian(SIGMA)).certify(torch.zeros(1, 2, 2), 100, 20_000, 0.001, 200,
                                                              schedule=schedule)
    pilot = clopper_pearson(100, 100, 0.001)
    expected = schedule.sample_size(float(pilot[0]), float(pilot[1]))
    assert r.samples == 100 + expected and sum(model.batches) == r.samples
    assert r.p_lower == pytest.approx(0.001 ** (1 / expected))
    # a clear but uncertain input needs far fewer samples than n_max
    model, x = linear_case(0.75)
    r = SmoothedClassifier(model, 2, Gaussian(SIGMA)).certify(x, 100, 20_000, 0.001, 1000, schedule=schedule, seed=1)
    assert r.prediction == 1 and r.samples < 5000


def test_generalized_gaussian_noise_uses_its_own_np_radius():
    d, k = 16, 4
    model, x = linear_case(0.8)
    smooth = SmoothedClassifier(model, 2, GeneralizedGaussian(d, k, SIGMA))
    r = smooth.certify(x, 50, 4000, 0.001, 4000, seed=0)
    assert r.prediction == 1
    assert r.radius == np_radius(r.p_lower, sigma=SIGMA, noise="general_gaussian", d=d, k=k) > 0


def radial_smooth(c_over_sigma2: float, d: int = 16) -> tuple[SmoothedClassifier, float]:
    return SmoothedClassifier(RadialBinary(c_over_sigma2 * SIGMA**2), 2, Gaussian(SIGMA)), c_over_sigma2


def test_dsrs_samples_q_from_the_requested_distribution():
    # F = [||e||^2 <= c] at x = 0: pA and qA are chi-square CDFs, so both intervals can be checked
    d, c = 16, 20.0
    p_true = chi2.cdf(c, d)
    smooth, _ = radial_smooth(c, d)
    x = torch.zeros(1, 4, 4)
    r = smooth.certify(x, 100, 20_000, 0.001, 5000, method="dsrs", q_sigma=0.4, seed=0)
    assert r.prediction == 1 and r.samples == 20_100
    assert r.p_lower <= p_true <= r.p_upper
    assert r.q_lower <= chi2.cdf(c * (SIGMA / 0.4) ** 2, d) <= r.q_upper
    r = smooth.certify(x, 100, 20_000, 0.001, 5000, method="dsrs", q_threshold=0.9, seed=1)
    assert r.q_lower <= min(1.0, p_true / 0.9) <= r.q_upper


def test_dsrs_with_every_pilot_vote_for_ca_spends_q_budget_on_p():
    # the decision comes from the independent n0 pilot, so NP on all n fresh samples stays at alpha
    r = SmoothedClassifier(Constant(1, 2), 2, Gaussian(SIGMA)).certify(
        torch.zeros(1, 4, 4), 100, 20_000, 0.001, 10_000, method="dsrs", q_threshold="auto")
    assert r.prediction == 1 and r.q_lower is None and r.samples == 20_100
    assert r.p_lower == pytest.approx(0.001 ** (1 / 20_000))
    assert r.radius == pytest.approx(SIGMA * norm.ppf(r.p_lower))


def test_dsrs_certifies_a_linear_classifier_soundly():
    model, x = linear_case(0.8, seed=5)
    smooth = SmoothedClassifier(model, 2, Gaussian(SIGMA))
    r = smooth.certify(x, 100, 20_000, 0.001, 10_000, method="dsrs", q_threshold="auto", seed=0)
    assert r.prediction == 1 and r.method == "dsrs"
    assert 0.8 * model.true_radius(x) < r.radius <= model.true_radius(x)
    assert r.p_lower <= 0.8 <= r.p_upper and math.isfinite(r.seconds)


def test_bad_configurations_are_refused():
    smooth = SmoothedClassifier(Constant(0, 2), 2, Gaussian(SIGMA))
    x = torch.zeros(1, 2, 2)
    with pytest.raises(ValueError):
        smooth.certify(x, 10, 100, 0.001, 100, method="dsrs")
    with pytest.raises(ValueError):
        smooth.certify(x, 10, 100, 0.001, 100, method="dsrs", q_sigma=0.4, q_threshold=0.5)
    with pytest.raises(ValueError):
        smooth.certify(x, 10, 100, 0.001, 100, method="dsrs", q_sigma=0.6)
    with pytest.raises(ValueError):
        smooth.certify(x, 10, 100, 0.001, 100, method="bayes")
    with pytest.raises(ValueError):
        SmoothedClassifier(Constant(0, 2), 2, Gaussian(SIGMA, threshold=0.5))


def test_top_two_breaks_ties_towards_the_lower_class():
    assert top_two(torch.tensor([5, 7, 7, 1])) == (1, 7, 7)
    assert top_two(torch.tensor([0, 0, 9])) == (2, 9, 0)
    assert top_two(torch.tensor([4])) == (0, 4, 0)


def test_selection_pair_is_top_two_s_order_and_names_only_classes_that_drew_votes():
    for counts in ([5, 7, 7, 1], [0, 0, 9], [3, 0, 0, 3], [4]):
        assert selection_pair(torch.tensor(counts))[0] == top_two(torch.tensor(counts))[0]  # cA, the class bounded
    assert selection_pair(torch.tensor([5, 7, 7, 1])) == (1, 2)
    assert selection_pair(torch.tensor([0, 0, 9])) == (2, None)
    assert selection_pair(torch.tensor([3, 0, 0, 3])) == (0, 3)
    assert selection_pair(torch.tensor([4])) == (0, None)
    assert selection_pair(torch.tensor([0, 0])) == (None, None)


class Between(torch.nn.Module):
    """Votes class ``low`` where the first coordinate is negative, else ``high``, of ``num_classes``: at x = 0 a
    tie between them (pA = 1/2), so the smoothed classifier abstains."""

    def __init__(self, low: int, high: int, num_classes: int = 10) -> None:
        super().__init__()
        self.low, self.high, self.num_classes = low, high, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x.flatten(1)[:, 0]
        classes = torch.where(first < 0, self.low, self.high)
        return torch.nn.functional.one_hot(classes, self.num_classes).float()


@pytest.mark.parametrize("how", ["np", "dsrs", "iss", "sequential", "packed"])
def test_an_abstention_names_the_selection_draws_top_class_and_runner_up(how):
    smooth = SmoothedClassifier(Between(7, 3), 10, Gaussian(SIGMA))
    x = torch.zeros(1, 4, 4)
    schedules = {"iss": ISSSchedule(SIGMA, 2000, 0.001, delta=0.05, batch_size=500),
                 "sequential": SequentialSchedule(SIGMA, 2000, 0.001, delta=0.05, first=500, batch_size=500)}
    for seed in range(4):
        if how == "packed":
            results = smooth.certify_many(torch.stack([x, x]), 100, 2000, 0.001, 500, seed=seed)
        else:
            results = [smooth.certify(x, 100, 2000, 0.001, 500, method="dsrs" if how == "dsrs" else "np",
                                      q_sigma=0.4 if how == "dsrs" else None, schedule=schedules.get(how), seed=seed)]
        for r in results:
            assert r.prediction == ABSTAIN and r.radius == 0.0
            assert {r.top_class, r.runner_up} == {3, 7}
        if how != "packed":  # the top class is cA: the first 100 draws of the seed's stream are the selection's
            counts0 = smooth.voter.votes(x.unsqueeze(0), smooth.noise, [100], 500, smooth.voter.generator(seed))[0]
            assert results[0].top_class == top_two(counts0)[0]


def test_a_prediction_names_no_runner_up_and_the_fields_change_no_certificate():
    model, x = linear_case(0.9, seed=3)
    r = SmoothedClassifier(model, 2, Gaussian(SIGMA)).certify(x, 100, 2000, 0.001, 500, seed=0)
    assert r.prediction == 1 and r.top_class is None and r.runner_up is None
    # all selection votes for one class, yet too few fresh samples to certify: a top class and no runner-up
    one = SmoothedClassifier(Constant(2, 4), 4, Gaussian(SIGMA)).certify(torch.zeros(3, 2, 2), 50, 5, 0.001, 64)
    assert (one.prediction, one.top_class, one.runner_up) == (ABSTAIN, 2, None)
    assert one.p_lower == pytest.approx(0.001 ** (1 / 5))  # the same CP bound as ever: 5 of 5 votes


def test_channels_last_certifies_like_the_default_layout():
    # one input channel: NHWC and NCHW hold the noise in the same order, so certificates coincide
    torch.manual_seed(0)
    model = create_model("digits_cnn", width=8)
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = SmoothedClassifier(model, 10, Gaussian(SIGMA)).certify(x, 50, 2000, 0.001, 500, seed=3)
    nhwc = SmoothedClassifier(model, 10, Gaussian(SIGMA), channels_last=True).certify(x, 50, 2000, 0.001, 500, seed=3)
    assert nhwc.prediction == plain.prediction
    assert nhwc.radius == pytest.approx(plain.radius, abs=1e-9)


def test_sequential_certificates_are_sound_against_the_exact_radius():
    # the stopping rule reads the same votes it reports, so only the union bound over looks keeps alpha
    runs, alpha = 600, 0.2
    model, x = linear_case(0.85)
    true_radius = model.true_radius(x)
    smooth = SmoothedClassifier(model, 2, Gaussian(SIGMA))
    schedule = SequentialSchedule(SIGMA, 800, alpha, delta=0.5, first=25, batch_size=25)
    failures, sizes = 0, set()
    for seed in range(runs):
        r = smooth.certify(x, 20, 800, alpha, 256, schedule=schedule, seed=seed)
        sizes.add(r.samples - 20)
        if r.prediction != ABSTAIN and (r.prediction != 1 or r.radius > true_radius):
            failures += 1
    assert failures <= binom.ppf(0.999, runs, alpha)
    assert failures > 0  # the check has power: per-look bounds at alpha / 6 do fail sometimes
    assert len(sizes) > 1 and sizes <= set(schedule.looks())  # it does stop at different looks


def test_sequential_schedule_stops_early_where_more_samples_cannot_help():
    schedule = SequentialSchedule(SIGMA, 100_000, 0.001, delta=0.05, first=1000, batch_size=1000)
    assert schedule.looks() == [1000, 2000, 4000, 8000, 16000, 32000, 64000, 100_000]
    assert schedule.look_alpha() == pytest.approx(0.001 / 8)
    model, x = linear_case(0.75)  # clear but uncertain: the radius saturates long before n_max
    r = SmoothedClassifier(model, 2, Gaussian(SIGMA)).certify(x, 100, 100_000, 0.001, 1000, schedule=schedule, seed=2)
    assert r.prediction == 1 and r.samples <= 100 + 16_000
    assert r.radius <= model.true_radius(x)
    tie = SmoothedClassifier(tie_model(), 2, Gaussian(SIGMA))
    r = tie.certify(torch.zeros(1, 4, 4), 100, 100_000, 0.001, 1000, schedule=schedule, seed=3)
    assert r.prediction == ABSTAIN
    for bad in ({"first": 0}, {"growth": 1.0}, {"delta": -1.0}):
        with pytest.raises(ValueError, match="invalid sequential schedule"):
            SequentialSchedule(SIGMA, 1000, 0.001, **bad)


def test_certify_many_packs_inputs_and_keeps_each_certificate_sound():
    runs, alpha = 300, 0.1
    model, x = linear_case(0.85)
    true_radius = model.true_radius(x)
    counter = CallCounter(model)
    smooth = SmoothedClassifier(counter, 2, Gaussian(SIGMA))
    xs = x.unsqueeze(0).repeat(runs, 1, 1, 1)
    results = smooth.certify_many(xs, 20, 200, alpha, 4096, seed=0)
    assert len(results) == runs and all(r.samples == 220 for r in results)
    assert max(counter.batches) == 4096  # 300 inputs x 200 draws share full batches
    failures = sum(r.prediction != ABSTAIN and (r.prediction != 1 or r.radius > true_radius) for r in results)
    assert 0 < failures <= binom.ppf(0.999, runs, alpha)
    # ISS sizes come from each input's own pilot
    schedule = ISSSchedule(SIGMA, 20_000, 0.001, delta=0.05, batch_size=200, grid=201)
    easy, x_easy = linear_case(0.75, seed=1)
    packed = SmoothedClassifier(easy, 2, Gaussian(SIGMA)).certify_many(torch.stack([x_easy] * 4), 100, 20_000, 0.001,
                                                                        1000, schedule=schedule, seed=1)
    assert all(r.prediction == 1 and (r.samples - 100) % 200 == 0 and r.samples < 5000 for r in packed)


def test_compile_keeps_a_module_compiled_already_and_its_graphs():
    # a worker keeps one torch.compile wrapper across shards: SmoothedClassifier must not wrap it again
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, x = linear_case(0.8, seed=1)
    wrapper = torch.compile(model, dynamic=False)
    eager = SmoothedClassifier(model, 2, Gaussian(SIGMA)).certify(x, 20, 250, 0.001, 100, seed=0)
    for _ in range(2):  # a second smoothed classifier on the same wrapper compiles nothing more
        smooth = SmoothedClassifier(wrapper, 2, Gaussian(SIGMA), compile=True)
        assert smooth.model is wrapper and smooth.voter.static_shapes
        r = smooth.certify(x, 20, 250, 0.001, 100, seed=0)
        assert (r.prediction, r.radius) == (eager.prediction, eager.radius)
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])  # batches of 20 and of 100
