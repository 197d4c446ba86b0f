import numpy as np
import pytest

from engine.metrics import (
    abstain_rate,
    average_certified_radius,
    certified_accuracy_curve,
    clean_accuracy,
    radius_grid,
)

# five inputs: two certified correct, one correct at radius 0, one wrong with a radius, one abstained
RADII = [0.6, 0.25, 0.0, 1.2, 0.0]
CORRECT = [True, True, True, False, False]
PREDICTIONS = [3, 1, 4, 2, -1]


def test_certified_accuracy_counts_correct_inputs_at_or_above_each_radius():
    curve = certified_accuracy_curve(RADII, CORRECT, [0.0, 0.25, 0.5, 0.75, 1.5])
    assert curve.tolist() == pytest.approx([0.6, 0.4, 0.2, 0.0, 0.0])


def test_curve_is_non_increasing_and_starts_at_clean_accuracy():
    rng = np.random.default_rng(0)
    radii, correct = rng.exponential(0.5, 200), rng.random(200) < 0.7
    curve = certified_accuracy_curve(radii, correct, radius_grid(radii.max()))
    assert curve[0] == clean_accuracy(correct) and (np.diff(curve) <= 0).all() and curve[-1] == 0.0


def test_acr_counts_wrong_and_abstained_inputs_as_zero():
    assert average_certified_radius(RADII, CORRECT) == pytest.approx((0.6 + 0.25) / 5)


def test_abstain_rate_and_clean_accuracy():
    assert abstain_rate(PREDICTIONS) == pytest.approx(0.2)
    assert clean_accuracy(CORRECT) == pytest.approx(0.6)


def test_radius_grid_covers_the_largest_radius():
    assert radius_grid(0.6).tolist() == [0.0, 0.25, 0.5, 0.75]
    assert radius_grid(0.5).tolist() == [0.0, 0.25, 0.5]
    assert radius_grid(0.0).tolist() == [0.0]


def test_empty_and_mismatched_inputs():
    assert certified_accuracy_curve([], [], [0.0, 0.5]).tolist() == [0.0, 0.0]
    assert average_certified_radius([], []) == 0.0 and abstain_rate([]) == 0.0
    with pytest.raises(ValueError):
        certified_accuracy_curve([0.1, 0.2], [True], [0.0])
    with pytest.raises(ValueError):
        radius_grid(1.0, step=0.0)
