"""Readers for the DSRS authors' published per-input data, vendored in tests/data/dsrs_data."""

from __future__ import annotations

import os
from pathlib import Path

# KAVACH_DSRS_DATA points the tests at another copy of the same files
ROOT = Path(os.environ.get("KAVACH_DSRS_DATA", Path(__file__).resolve().parents[1] / "data" / "dsrs_data"))


def read_sampling(model: str, name: str) -> dict[int, tuple[float, float]]:
    """{index: (pL, pU)} from sampling/MODEL/NAME.txt (lines 'o INDEX pL pU')."""
    out: dict[int, tuple[float, float]] = {}
    for line in (ROOT / "sampling" / model / name).read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "o":
            out[int(parts[1])] = (float(parts[2]), float(parts[3]))
    return out


def read_radius(kind: str, model: str, name: str) -> dict[int, tuple[float, ...]]:
    """{index: (R, ...)} from orig-radius or new-radius files."""
    out: dict[int, tuple[float, ...]] = {}
    for line in (ROOT / kind / model / name).read_text().splitlines():
        parts = line.split()
        if parts:
            out[int(parts[0])] = tuple(float(v) for v in parts[1:])
    return out
