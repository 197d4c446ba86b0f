"""`make results` at a tiny scale: the document, its table, its plot and its JSON are written from real runs."""

import json

import pytest

from bench import results
from engine.data import load_dataset


def test_results_document_from_a_small_run(tmp_path):
    try:
        load_dataset("fashion_mnist")
    except FileNotFoundError as error:
        pytest.skip(str(error))
    out = tmp_path / "results.md"
    results.main(["--count", "4", "--n", "200", "--n0", "20", "--batch-size", "200", "--out", str(out),
                  "--device", "cpu"])
    text = out.read_text()
    table = [line for line in text.splitlines() if line.startswith("| 0.")]
    assert len(table) == 2 * 3 * 2  # sigmas x base classifiers x methods
    assert "Reduced scale" in text and "python -m bench.results --count 4 --n 200" in text
    assert (tmp_path / "results.png").stat().st_size > 10_000
    data = json.loads((tmp_path / "results.json").read_text())
    for row in data["rows"]:
        assert len(row["records"]) == 4 and row["curve"] == sorted(row["curve"], reverse=True)
        assert all(r["samples"] == 220 or r["prediction"] == -1 for r in row["records"])
    assert text.count("denoised smoothing") == 4
    # re-rendering from the JSON certifies nothing and writes the same table
    (tmp_path / "results.png").unlink()
    results.main(["--render", "--out", str(out)])
    assert [line for line in out.read_text().splitlines() if line.startswith("| 0.")] == table
    assert (tmp_path / "results.png").exists()
