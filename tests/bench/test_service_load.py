import pytest

pytest.importorskip("fastapi")
pytest.importorskip("arq")

from bench.service_load import run


def test_a_small_load_run_reports_its_figures_and_no_errors(tmp_path):
    out = tmp_path / "service_load.json"
    result = run(clients=5, seconds=2.0, inputs=200, n=20_000, out=out)
    assert out.exists()
    for key in ("clients", "seconds", "requests", "requests_per_second", "latency", "latency_per_request",
                "error_count", "errors", "job", "machine"):
        assert key in result, key
    assert result["error_count"] == 0, result["errors"]
    assert result["requests"] > 0 and result["requests_per_second"] > 0
    latency = result["latency"]
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert result["job"]["state_before"] in ("running", "done")
