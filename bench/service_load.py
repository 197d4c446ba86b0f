"""A bounded loopback load test: concurrent clients reading jobs while a job runs.

Starts the backend tests' stack (uvicorn, one arq worker, SQLite and an embedded Redis unless
KAVACH_TEST_DATABASE_URL / KAVACH_TEST_REDIS_URL are set), registers a TorchScript digits CNN, starts a
certification job (LOAD_INPUTS digits inputs at n = LOAD_N) and, once the worker is on it, lets
LOAD_CLIENTS clients (each its own keep-alive connection, all in one asyncio loop) read for LOAD_SECONDS:
mostly GET /api/v1/jobs/{id}, sometimes /jobs, /jobs/{id}/summary and /jobs/{id}/results?limit=100.
Every latency is kept; a non-2xx answer or an exception (timeouts included) is an error. Writes
p50/p90/p99/max, requests per second and the errors to bench/results/service_load.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from tests.backend.conftest import running_service, save_digits_cnn
from tests.backend.test_service import DIGITS_META, start_job, upload_model, wait_for

OUT = Path(__file__).parent / "results" / "service_load.json"
# what each request reads, with its weight: the dashboard polls the job, now and then a list, summary or page
PATHS = (("job", "/api/v1/jobs/{id}", 0.7), ("jobs", "/api/v1/jobs", 0.1),
         ("summary", "/api/v1/jobs/{id}/summary", 0.1), ("results", "/api/v1/jobs/{id}/results?limit=100", 0.1))


def percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return {"count": 0}
    ms = 1000 * np.asarray(seconds)
    return {"count": len(seconds), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


async def load(url: str, token: str, job_id: int, clients: int, seconds: float) -> dict:
    """``clients`` clients reading for ``seconds``: latencies per kind of request, and every error."""
    latencies: dict[str, list[float]] = {name: [] for name, _, _ in PATHS}
    errors: list[dict] = []
    names, weights = [name for name, _, _ in PATHS], [weight for _, _, weight in PATHS]
    paths = {name: path.format(id=job_id) for name, path, _ in PATHS}

    async def client_loop(i: int, start: float) -> None:
        pick = random.Random(i)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30,
                                     limits=httpx.Limits(max_connections=1)) as client:
            while time.perf_counter() < start + seconds:
                name = pick.choices(names, weights)[0]
                t = time.perf_counter()
                try:
                    response = await client.get(paths[name])
                except httpx.HTTPError as error:
                    errors.append({"path": paths[name], "error": f"{type(error).__name__}: {error}"[:300]})
                    continue
                latencies[name].append(time.perf_counter() - t)
                if not response.is_success:
                    errors.append({"path": paths[name], "status": response.status_code, "body": response.text[:300]})

    start = time.perf_counter()
    await asyncio.gather(*(client_loop(i, start) for i in range(clients)))
    elapsed = time.perf_counter() - start
    every = [s for values in latencies.values() for s in values]
    return {"elapsed_seconds": elapsed, "requests": len(every) + sum("error" in e for e in errors),
            "requests_per_second": (len(every) + sum("error" in e for e in errors)) / elapsed,
            "latency": percentiles(every), "latency_per_request": {name: percentiles(values)
                                                                     for name, values in latencies.items()},
            "error_count": len(errors), "errors": errors[:20]}


def run(clients: int = 50, seconds: float = 20.0, inputs: int = 1000, n: int = 20_000,
        out: Path | None = OUT) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        with running_service(root) as svc:
            path = save_digits_cnn(root / "digits_cnn.pt")
            with svc.client() as client:
                model = upload_model(client, path, DIGITS_META)
                assert model.status_code == 201, model.text
                created = start_job(client, model.json()["id"], subset={"count": inputs}, n=n, batch_size=1000)
                assert created.status_code == 201, created.text
                job_id = created.json()["id"]
                before = wait_for(client, job_id, lambda j: j["state"] != "queued", timeout=120)
                figures = asyncio.run(load(svc.url, svc.tokens["alice"], job_id, clients, seconds))
                after = client.get(f"/api/v1/jobs/{job_id}").json()
                client.post(f"/api/v1/jobs/{job_id}/cancel")
    result = {"clients": clients, "seconds": seconds, **figures,
              "job": {"inputs": inputs, "n": n, "state_before": before["state"], "state_after": after["state"],
                      "done_before": before["progress"]["done"], "done_after": after["progress"]["done"],
                      "running_throughout": after["state"] == "running"},
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "python": platform.python_version()},
              "database": svc.database_url.split(":")[0],
              "note": "127.0.0.1 only; one uvicorn process and one worker on the same machine as the clients, "
                      "which share one asyncio loop; each client holds one keep-alive connection"}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> int:
    result = run(clients=int(os.environ.get("LOAD_CLIENTS") or 50),
                 seconds=float(os.environ.get("LOAD_SECONDS") or 20),
                 inputs=int(os.environ.get("LOAD_INPUTS") or 1000), n=int(os.environ.get("LOAD_N") or 20_000))
    print(json.dumps({key: value for key, value in result.items() if key != "errors"}, indent=2))
    latency = result["latency"]
    print(f"load: {result['clients']} clients for {result['seconds']:g} s while job runs "
          f"({result['job']['done_before']} -> {result['job']['done_after']} of {result['job']['inputs']} inputs): "
          f"{result['requests']} requests, {result['requests_per_second']:.0f}/s, p50 {latency.get('p50_ms', 0):.1f} "
          f"ms, p99 {latency.get('p99_ms', 0):.1f} ms, max {latency.get('max_ms', 0):.1f} ms, "
          f"{result['error_count']} errors; {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return 1 if result["error_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
