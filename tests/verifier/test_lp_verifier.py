"""Every radius of ours that beats the DSRS authors' published one, checked by the independent LP verifier.

The rows (tests/data/dsrs_verify/rows.csv, see its README) are the published inputs where our radius
exceeds the published one by more than the authors' grid unit, plus the two rows of issue 16. Our radius
is computed here, live; the verifier (tests/verifier/lp_verifier.py, no code shared with engine/radius)
must prove min P_delta(A) > 1/2 at it: at our radius itself, where the engine's dual bound clears 1/2 by
its CERTIFICATE_MARGIN (engine/radius/np.py), 1e-4, which the verifier resolves in a few rounds.
"""

from __future__ import annotations

import ast
import csv
import math
from pathlib import Path

import pytest
from scipy.stats import norm

from engine.radius import dsrs_radius, np_radius
from tests.verifier.lp_verifier import Problem, verify

ROWS_CSV = Path(__file__).resolve().parents[1] / "data" / "dsrs_verify" / "rows.csv"
ROWS = list(csv.DictReader(ROWS_CSV.open()))
def problem(row: dict, r: float) -> Problem:
    q = {"q_sigma": float(row["q_param"])} if row["q_kind"] == "sigma" else (
        {"q_threshold": float(row["q_param"])} if row["q_kind"] == "threshold" else {})
    q_bounds = (float(row["q_lower"]), float(row["q_upper"]))
    return Problem(d=int(row["d"]), k=int(row["k"]), sigma=float(row["sigma"]), r=r,
                   p_bounds=(float(row["p_lower"]), float(row["p_upper"])), q_bounds=q_bounds, **q)


def our_radius(row: dict) -> float:
    d, k, sigma = int(row["d"]), int(row["k"]), float(row["sigma"])
    p_b = (float(row["p_lower"]), float(row["p_upper"]))
    if row["q_kind"] == "none":
        return np_radius(p_b[0], sigma=sigma, noise="general_gaussian", d=d, k=k)
    q_b = (float(row["q_lower"]), float(row["q_upper"]))
    key = "q_sigma" if row["q_kind"] == "sigma" else "q_threshold"
    return dsrs_radius(p_b, q_b, d=d, k=k, sigma=sigma, **{key: float(row["q_param"])})


def row_id(row: dict) -> str:
    return f"{row['dataset']}-{row['source']}-{row['index']}"


# -- the verifier itself, against exact answers ------------------------------------------------
def test_verifier_shares_no_code_with_the_engine() -> None:
    tree = ast.parse((Path(__file__).parent / "lp_verifier.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m.split(".")[0] in ("engine", "kavach", "backend") for m in modules), modules


@pytest.mark.parametrize("d", [3072, 150528])
@pytest.mark.parametrize("r", [0.2, 0.55, 0.7])
def test_gaussian_np_bracket_contains_the_exact_minimum(d: int, r: float) -> None:
    # N(0, sigma^2 I), P(A) >= 0.9: the minimum is the half-space's Phi(Phi^-1(0.9) - r / sigma)
    sigma = 0.5
    exact = norm.cdf(norm.ppf(0.9) - r / sigma)
    v = verify(Problem(d=d, k=0, sigma=sigma, r=r, p_bounds=(0.9, 1.0)), rounds=4, decide=False)
    assert v.lower <= exact <= v.upper
    assert v.upper - v.lower < 2e-3
    if abs(exact - 0.5) > 0.02:
        assert v.certified if exact > 0.5 else v.refuted


@pytest.mark.parametrize("q", [{"q_sigma": 0.4}, {"q_threshold": 0.5}])
def test_dsrs_on_a_half_space_is_bracketed(q: dict) -> None:
    # F = [e_1 . x < m] under N(0, sigma^2 I) in d = 3072: its P and Q probabilities to within 1e-4. The half-space is
    # consistent with them, so the true minimum is at most its shifted mass Phi((m - r) / sigma): the
    # verifier must refute r = m + 0.05 and may not report a bound above that value.
    sigma, m, d = 0.5, 0.6, 3072
    p_a = norm.cdf(m / sigma)
    if "q_sigma" in q:
        q_a = norm.cdf(m / q["q_sigma"])
    else:  # Q = P truncated to a ball: its probability of a half-space needs the ball; use loose facts
        q_a = None
    q_bounds = (q_a - 1e-4, q_a + 1e-4) if q_a is not None else (0.0, 1.0)
    for r, verdict in ((m - 0.05, "certified"), (m + 0.05, "refuted")):
        v = verify(Problem(d=d, k=0, sigma=sigma, r=r, p_bounds=(p_a - 1e-4, p_a + 1e-4), q_bounds=q_bounds, **q), rounds=8)
        assert v.lower <= norm.cdf((m - r) / sigma) + 1e-12
        assert getattr(v, verdict), (r, v)


# -- our radii above the published ones ---------------------------------------------------------
def test_rows_cover_both_datasets_and_the_issue() -> None:
    for dataset in ("imagenet", "cifar"):
        assert sum(row["dataset"] == dataset for row in ROWS) >= 20
    assert {"issue-16-np", "issue-16-dsrs-sigma1.0-q0.8"} <= {row["source"] for row in ROWS}
    # the sample is drawn from every qualifying row (all_rows.csv, which bench/dsrs_verification.py --all runs)
    every = {(row["source"], row["index"]) for row in csv.DictReader((ROWS_CSV.parent / "all_rows.csv").open())}
    assert {(row["source"], row["index"]) for row in ROWS if not row["source"].startswith("issue")} <= every


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_our_radius_above_the_published_one_is_verified(row: dict) -> None:
    ours = our_radius(row)
    if row["published"]:
        # the rows were chosen as those where we beat the authors by more than their grid unit; the
        # certificate margin took ~1.25e-4 sigma of that, so some now beat it by less, none fall below
        assert ours > float(row["published"])
    v = verify(problem(row, ours))
    assert v.certified and v.lower <= v.upper, (ours, v)
    assert math.isfinite(v.upper)
