import numpy as np
import pytest

from engine.schedule import FixedSchedule, ISSSchedule, iss_sample_size_table, np_radius_at_rate

# Chen et al. 2022: sigma 0.5, N 100k, batch 200, alpha 0.001, absolute delta 0.05
PUBLISHED = {0.6: 1400, 0.9: 2200, 0.99: 7000, 0.999: 21400, 1.0: 67200}


def published_schedule() -> ISSSchedule:
    return ISSSchedule(sigma=0.5, n_max=100_000, alpha=0.001, delta=0.05, mode="absolute", batch_size=200)


@pytest.mark.parametrize(("p", "n"), PUBLISHED.items())
def test_iss_matches_the_published_schedule(p, n):
    assert published_schedule().sample_size(p, p) == pytest.approx(n, rel=0.05)


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_iss_sizes_are_the_smallest_that_meet_their_radius_target(mode):
    n_max, batch, delta = 10_000, 100, 0.05 if mode == "absolute" else 0.1
    rates, sizes = iss_sample_size_table(0.5, n_max, 0.001, delta, mode, batch, 201)
    full = np_radius_at_rate(rates, float(n_max), 0.5, 0.001)
    target = full - delta if mode == "absolute" else (1 - delta) * full
    candidates = np.arange(batch, n_max + 1, batch, dtype=float)
    radii = np_radius_at_rate(rates[:, None], candidates[None, :], 0.5, 0.001)  # brute force over every size
    smallest = candidates[(radii >= target[:, None] - 1e-12).argmax(axis=1)]
    assert (sizes == smallest).all()
    assert (sizes % batch == 0).all() and sizes.min() >= batch and sizes.max() <= n_max


def test_iss_takes_the_maximum_over_the_whole_interval_not_its_ends():
    schedule = published_schedule()
    rates, sizes = iss_sample_size_table(0.5, 100_000, 0.001, 0.05, "absolute", 200, 1001)
    # n(p) is not monotone near 1 (rounding of N p): find grid points whose interior peaks higher
    lo = int(np.searchsorted(rates, 0.999))
    hi = len(rates) - 2
    while sizes[hi] >= sizes[lo + 1 : hi].max():
        hi -= 1
    interior = int(sizes[lo : hi + 1].max())
    ends = max(schedule.sample_size(rates[lo], rates[lo]), schedule.sample_size(rates[hi], rates[hi]))
    assert ends == max(sizes[lo], sizes[hi]) < interior
    assert schedule.sample_size(rates[lo], rates[hi]) == interior


def test_relative_mode_and_looser_delta_need_fewer_samples():
    tight = ISSSchedule(0.5, 50_000, 0.001, delta=0.01, mode="relative", batch_size=500, grid=201)
    loose = ISSSchedule(0.5, 50_000, 0.001, delta=0.1, mode="relative", batch_size=500, grid=201)
    for p in (0.7, 0.95, 0.995):
        assert loose.sample_size(p, p) < tight.sample_size(p, p) <= 50_000
    # relative target: n reaches (1 - delta) of the radius at N
    n = loose.sample_size(0.95, 0.95)
    assert np_radius_at_rate(0.95, float(n), 0.5, 0.001) >= 0.9 * np_radius_at_rate(0.95, 5e4, 0.5, 0.001)


def test_tables_are_cached_and_read_only():
    a = iss_sample_size_table(0.5, 10_000, 0.001, 0.05, "absolute", 100, 201)
    b = iss_sample_size_table(0.5, 10_000, 0.001, 0.05, "absolute", 100, 201)
    assert a is b
    with pytest.raises(ValueError):
        a[1][0] = 5


def test_bad_arguments():
    with pytest.raises(ValueError):
        iss_sample_size_table(0.5, 1000, 0.001, 0.05, "squared", 10, 11)
    with pytest.raises(ValueError):
        ISSSchedule(0.5, 1000, 0.001, delta=1.5, mode="relative", batch_size=10)
    with pytest.raises(ValueError):
        published_schedule().sample_size(0.9, 0.8)


def test_fixed_schedule_and_radius_at_rate():
    assert FixedSchedule(500).sample_size(0.1, 0.9) == 500
    assert np_radius_at_rate(0.4, 1000.0, 0.5, 0.001) == 0.0
    # every vote for cA at N = 100k: pA_lower = alpha^(1/N), R = 3.81 sigma (Cohen et al.)
    assert np_radius_at_rate(1.0, 1e5, 1.0, 0.001) == pytest.approx(3.81, abs=0.005)
    assert np.isfinite(np_radius_at_rate(np.array([0.0, 1.0]), 10.0, 0.5, 0.001)).all()
