"""Pieces of the engine bench that carry meaning beyond timing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import ndtri

from bench.engine_bench import (
    HalfSpace,
    choice_lines,
    compare_schedules_on_published_pa,
    picked_below_cohen,
    precision_choice,
    unpicked,
)
from engine.hardware import OVERRIDE_ENV
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


def test_the_bench_records_the_bf16_path_and_picks_no_emulated_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OVERRIDE_ENV, "0")
    choice = precision_choice(torch.device("cpu"))
    assert choice["bf16_native"] is False and choice["bf16_reason"] == f"{OVERRIDE_ENV}=0"
    # neither default is bf16; the dashboard's CPU worker runs NHWC, as kavach certify (NCHW ran 0.95x Cohen's loop)
    assert choice["picked"] == {"kavach certify (defaults)": "ours", "dashboard job (default form)": "ours"}
    assert "refuses --bf16" in choice["bf16_note"]
    monkeypatch.setenv(OVERRIDE_ENV, "1")
    choice = precision_choice(torch.device("cpu"))
    assert choice["bf16_native"] is True and choice["picked"]["kavach certify --bf16"] == "ours_bf16"


def test_the_report_names_each_picked_variant_below_cohen_s_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OVERRIDE_ENV, "0")
    # emulated bf16 at the 0.20x and 0.16x (AVX2-only EPYC) is unpicked, so not a failure
    r = {"precision_choice": precision_choice(torch.device("cpu")), "speedup_vs_cohen": 1.4,
         "speedup_vs_cohen_nchw": 0.95, "speedup_vs_cohen_bf16": 0.20,
         "large_models": [{"model": "cifar_resnet110", "speedup_vs_cohen": 0.93, "speedup_vs_cohen_nchw": 1.24,
                           "speedup_vs_cohen_bf16": 0.16}, {"model": "resnet50", "error": "RuntimeError()"}]}
    r["picked_below_cohen"] = picked_below_cohen(r)
    # NCHW at 0.95x is picked by no default now, so only the (made-up) slow NHWC row is named, once per default
    assert r["picked_below_cohen"] == ["kavach certify (defaults) -> ours: 0.93x on cifar_resnet110",
                                       "dashboard job (default form) -> ours: 0.93x on cifar_resnet110"]
    bf16_line, defaults_line = choice_lines(r)
    assert bf16_line.startswith(f"bf16 on this device: emulated ({OVERRIDE_ENV}=0)")
    assert defaults_line.startswith("Defaults here: kavach certify (defaults) runs ours (1.40x on digits CNN, 0.93x "
                                    "on cifar_resnet110); dashboard job (default form) runs ours (1.40x on digits CNN")
    assert defaults_line.endswith("Below 1.0x Cohen's fp32 loop: kavach certify (defaults) -> ours: 0.93x on "
                                  "cifar_resnet110; dashboard job (default form) -> ours: 0.93x on cifar_resnet110.")
    assert "picked by no default" in unpicked(r, "ours_bf16") and unpicked(r, "ours") == ""
    r["large_models"][0]["speedup_vs_cohen"] = 1.23
    r["picked_below_cohen"] = picked_below_cohen(r)
    assert choice_lines(r)[1].endswith("None of them runs below 1.0x Cohen's fp32 loop.")
