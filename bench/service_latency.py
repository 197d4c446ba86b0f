"""Service figures on this machine: POST /jobs to the first stored result row, and GET /jobs/{id} throughput.

Starts the same loopback stack as the backend tests (SQLite and an embedded Redis unless
KAVACH_TEST_DATABASE_URL / KAVACH_TEST_REDIS_URL are set), writes bench/results/service.json.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.backend.conftest import running_service, save_digits_cnn
from tests.backend.test_service import DIGITS_META, start_job, upload_model

LOAD_SECONDS = 5.0


def first_row_seconds(client: httpx.Client, model_id: int) -> float:
    start = time.perf_counter()
    job_id = start_job(client, model_id, subset={"count": 4}).json()["id"]
    while client.get(f"/api/v1/jobs/{job_id}/results", params={"limit": 1}).json()["count"] == 0:
        time.sleep(0.005)
    return time.perf_counter() - start


async def concurrent_rps(url: str, headers: dict, path: str, connections: int = 8) -> float:
    """Requests per second with ``connections`` keep-alive clients hammering ``path`` for LOAD_SECONDS."""
    done = 0

    async def hammer(client: httpx.AsyncClient, deadline: float) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            assert (await client.get(path)).status_code == 200
            done += 1

    async with httpx.AsyncClient(base_url=url, headers=headers,
                                 limits=httpx.Limits(max_connections=connections)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(hammer(client, start + LOAD_SECONDS) for _ in range(connections)))
        return done / (time.perf_counter() - start)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        with running_service(root) as svc:
            path = save_digits_cnn(root / "digits_cnn.pt")
            with svc.client() as client:
                model_id = upload_model(client, path, DIGITS_META).json()["id"]
                first = [first_row_seconds(client, model_id) for _ in range(5)]
                job_id = client.get("/api/v1/jobs").json()["data"][0]["id"]
                latencies, deadline = [], time.perf_counter() + LOAD_SECONDS
                while time.perf_counter() < deadline:
                    t = time.perf_counter()
                    assert client.get(f"/api/v1/jobs/{job_id}").status_code == 200
                    latencies.append(time.perf_counter() - t)
                rps8 = asyncio.run(concurrent_rps(svc.url, dict(client.headers), f"/api/v1/jobs/{job_id}"))
    result = {"database": svc.database_url.split(":")[0], "first_row_seconds": first,
              "first_row_median_seconds": statistics.median(first),
              "get_job_requests_per_second_1_client": len(latencies) / sum(latencies),
              "get_job_requests_per_second_8_connections": rps8,
              "get_job_p50_ms": 1000 * statistics.median(latencies),
              "get_job_p99_ms": 1000 * sorted(latencies)[int(0.99 * len(latencies))],
              "note": "127.0.0.1 only; one uvicorn process; the first job also loads the model in the worker"}
    out = Path(__file__).parent / "results" / "service.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
