"""The per-row table of docs/dsrs-verification.md: our radius, the published one, and the LP verifier.

Run: python3 -m bench.dsrs_verification [--bracket-rounds N] [--all] > bench/results/dsrs_verification.md
For each row of tests/data/dsrs_verify/rows.csv (the tests' sample; --all: all_rows.csv, every published
row where we beat the published radius by more than the grid unit): our radius (live), the published
radius, the verifier's lower bound on min P_delta(A) at our radius itself when it first clears 1/2 (what
the tests require), and the bracket [lower, upper] at our radius after N rounds, with the multipliers
(lam1, lam2) of the optimum found there. A last line counts the rows certified and refuted.
"""

from __future__ import annotations

import argparse
import csv
import time

from tests.verifier.lp_verifier import verify
from tests.verifier.test_lp_verifier import ROWS, ROWS_CSV, our_radius, problem


def setting(row: dict) -> str:
    q = {"sigma": f"Q sigma {row['q_param']}", "threshold": f"Q trunc {row['q_param']}", "none": "NP"}[row["q_kind"]]
    return f"GG({row['d']}, {row['k']}, {row['sigma']}), {q}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bracket-rounds", type=int, default=10)
    parser.add_argument("--all", action="store_true", help="every qualifying row, not the tests' sample")
    args = parser.parse_args()
    rows = list(csv.DictReader((ROWS_CSV.parent / "all_rows.csv").open())) if args.all else ROWS
    print("| dataset | source, index | setting | [pL, pU] | [qL, qU] | ours | published | "
          "verifier min at ours | verifier bracket at ours | (lam1, lam2) at ours | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    certified = refuted = 0
    for row in rows:
        start = time.perf_counter()
        ours = our_radius(row)
        decided = verify(problem(row, ours))
        at = verify(problem(row, ours), rounds=args.bracket_rounds, decide=False)
        certified += decided.certified
        refuted += decided.refuted
        q = "-" if row["q_kind"] == "none" else f"[{float(row['q_lower']):.5f}, {float(row['q_upper']):.5f}]"
        published = f"{float(row['published']):.5f}" if row["published"] else "n/a"
        minimum = f"{decided.lower:.7f}" if decided.certified else f"**not certified** ({decided.lower:.7f})"
        print(f"| {row['dataset']} | {row['source']} {row['index']} | {setting(row)} | "
              f"[{float(row['p_lower']):.5f}, {float(row['p_upper']):.5f}] | {q} | {ours:.5f} | {published} | "
              f"{minimum} | [{at.lower:.7f}, {at.upper:.7f}] | ({at.lam[0]:.3g}, {at.lam[1]:.3g}) | "
              f"{time.perf_counter() - start:.1f} |", flush=True)
    print(f"\n{certified} of {len(rows)} rows certified at our radius, {refuted} refuted.")


if __name__ == "__main__":
    main()
