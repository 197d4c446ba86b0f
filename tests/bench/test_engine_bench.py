"""Pieces of the engine bench that carry meaning beyond timing."""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import ndtri

from bench.engine_bench import HalfSpace, compare_schedules_on_published_pa
from engine.noise import Gaussian
from engine.smooth import SmoothedClassifier


def test_a_half_space_input_has_the_pa_it_was_built_for() -> None:
    smoothed = SmoothedClassifier(HalfSpace(), 2, Gaussian(0.5))
    for p in (0.3, 0.8, 0.99):
        x = torch.full((1, 1, 1), float(-0.5 * ndtri(p)))
        result = smoothed.certify(x, 100, 20_000, 0.001, 10_000, seed=0)
        top = p if p > 0.5 else 1 - p
        assert result.p_lower <= top <= result.p_upper
        assert result.prediction == (0 if p > 0.5 else 1)
        # the radius never exceeds the true one, |x|
        assert result.radius <= abs(float(x)) + 1e-12


def test_schedules_on_the_published_cifar_pa_keep_their_acr() -> None:
    cfg = {"n0": 100, "published_inputs": 20}
    out = compare_schedules_on_published_pa(cfg, torch.device("cpu"))
    assert out is not None
    assert out["inputs"] == 20 and out["n_max"] == 100_000
    for name in ("iss", "sequential"):
        assert out[name]["sample_reduction"] > 1.5
        assert abs(out[name]["acr_drop"]) < 0.1
    assert out["oracle"]["acr_drop"] <= 0.02 + 1e-12
    assert np.isfinite(out["oracle"]["reduction"])
