"""The sample oracle: the fewest samples any schedule could spend for an ACR budget."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtri

from bench.sample_oracle import counts_from_lower_bounds, oracle_radius, oracle_reduction
from engine.bounds import clopper_pearson_lower


def test_counts_are_recovered_from_their_lower_bounds() -> None:
    k = np.array([0, 1, 7, 500, 999, 1000])
    assert counts_from_lower_bounds(clopper_pearson_lower(k, 1000, 0.001), 1000, 0.001).tolist() == k.tolist()


def test_the_oracle_radius_at_pa_one_is_the_best_bound_m_successes_allow() -> None:
    m = np.array([100, 10_000, 100_000])
    expected = 0.5 * ndtri(0.001 ** (1.0 / m))  # alpha^(1/m): exact for k = m
    assert oracle_radius(np.ones(3), m, 0.5, 0.001) == pytest.approx(expected, rel=1e-9)


def test_inputs_at_pa_one_leave_no_room_and_middling_ones_do() -> None:
    ones = oracle_reduction(np.ones(30), np.ones(30, bool), 0.5, 100_000, 0.001, 100)
    assert ones["acr_drop"] <= 0.02 and ones["reduction"] < 1.3 and ones["share_pa_one"] == 1.0
    middling = oracle_reduction(np.full(30, 0.9), np.ones(30, bool), 0.5, 100_000, 0.001, 100)
    assert middling["acr_drop"] <= 0.02 and middling["reduction"] > 5.0
    # wrong predictions carry no radius to lose: the oracle spends almost nothing on them
    wrong = oracle_reduction(np.ones(30), np.zeros(30, bool), 0.5, 100_000, 0.001, 100)
    assert wrong["mean_samples"] < 200
