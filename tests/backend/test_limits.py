"""Every number a request carries has a ceiling: a 4xx naming the limit, and nothing stored.

The quota tests run on a service of their own with small limits and no worker, so its jobs stay queued.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.backend.conftest import make_token, running_service
from tests.backend.test_service import DIGITS_META, FAST_CONFIG, upload_model


def count_rows(service, table: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(service.database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


def detail_text(response: httpx.Response) -> str:
    return json.dumps(response.json()["detail"])


@pytest.mark.parametrize(("meta", "limit"), [
    ({"input_shape": [1, 20000, 20000]}, "MAX_INPUT_ELEMENTS"),
    ({"num_classes": 10**9}, "MAX_CLASSES"),
    ({"class_names": ["x"] * 100_001}, "MAX_CLASSES"),
])
def test_a_model_over_a_bound_is_refused_before_its_file_is_read(service, scripted_model, meta, limit):
    stored = {p for p in Path(service.env["STORAGE_DIR"]).rglob("*") if p.is_file()}
    models = count_rows(service, "model")
    with service.client() as client:
        response = upload_model(client, scripted_model, {**DIGITS_META, **meta})
    assert response.status_code == 422, response.text
    assert limit in detail_text(response)
    assert {p for p in Path(service.env["STORAGE_DIR"]).rglob("*") if p.is_file()} == stored
    assert count_rows(service, "model") == models


@pytest.mark.parametrize(("change", "limit"), [
    ({"config": {"n": 10**12}}, "MAX_N"),
    ({"config": {"n0": 10**9}}, "MAX_N0"),
    ({"config": {"batch_size": 10**9}}, "MAX_BATCH_SIZE"),
    ({"config": {"pack": 10**6}}, "MAX_PACK"),
    ({"subset": {"count": 10**12}}, "MAX_JOB_INPUTS"),
    ({"subset": {"indices": list(range(100_001))}}, "MAX_JOB_INPUTS"),
    ({"config": {"seed": 2**64}}, "18446744073709551616"),
    ({"config": {"seed": -1}}, "greater than or equal to 0"),
    ({"config": {"sigma": 1e300}}, "less than or equal to 100"),
    ({"subset": {"start": 2**40}}, "2147483647"),
    ({"model_id": 2**40}, "2147483647"),
])
def test_a_job_over_a_bound_gets_a_422_naming_it_and_no_row(service, model_id, change, limit):
    body = {"model_id": model_id, "dataset": "digits", "subset": {"count": 6}, "config": dict(FAST_CONFIG)}
    for key, value in change.items():
        body[key] = value if not isinstance(value, dict) else {**body[key], **value}
    jobs = count_rows(service, "job")
    with service.client() as client:
        response = client.post("/api/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert limit in detail_text(response)
    assert count_rows(service, "job") == jobs


def test_an_infinite_or_nan_number_is_refused(service, model_id):
    with service.client() as client:
        for bad in ("Infinity", "NaN"):
            raw = json.dumps({"model_id": model_id, "dataset": "digits", "config": {**FAST_CONFIG}})
            raw = raw.replace('"sigma": 0.25', f'"sigma": {bad}')
            response = client.post("/api/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
            assert response.status_code == 422, response.text
            assert "finite" in detail_text(response)


def test_a_seed_whose_sum_with_an_index_passes_2_to_the_64_is_refused(service, model_id):
    with service.client() as client:
        response = client.post("/api/v1/jobs", json={"model_id": model_id, "dataset": "digits",
                                                     "subset": {"indices": [0, 5]},
                                                     "config": {**FAST_CONFIG, "seed": 2**64 - 3}})
    assert response.status_code == 422 and "2^64" in response.json()["detail"], response.text


@pytest.mark.parametrize("path", ["/api/v1/models?limit=1000000", "/api/v1/jobs?limit=0",
                                  "/api/v1/jobs?offset=99999999999", "/api/v1/models/99999999999999999999",
                                  "/api/v1/jobs/4294967296", "/api/v1/jobs/1/results?limit=20000",
                                  "/api/v1/jobs/1/images/99999999999", "/api/v1/datasets/digits/images/-1"])
def test_paths_and_queries_out_of_range_get_a_422_not_a_500(service, path):
    with service.client() as client:
        response = client.get(path)
    assert response.status_code == 422, response.text
    if "limit=1000000" in path:
        assert "MAX_PAGE_SIZE" in detail_text(response)


# -- quotas ------------------------------------------------------------------------------------------

QUOTAS = {"MAX_ACTIVE_JOBS_PER_OWNER": "2", "MAX_SAMPLES_IN_FLIGHT_PER_OWNER": "10000"}


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    with running_service(tmp_path_factory.mktemp("limited"), overrides=QUOTAS) as svc:
        svc.kill_worker()  # nobody certifies: the jobs stay queued and count against the quotas
        yield svc


def test_per_owner_quotas_on_active_jobs_and_samples_in_flight(limited, scripted_model):
    config = {**FAST_CONFIG, "n0": 20, "n": 200}  # 6 inputs x 220 = 1,320 samples
    with limited.client() as alice, limited.client("bob") as bob:
        model = upload_model(alice, scripted_model, DIGITS_META).json()["id"]

        def job(client, model_id, count=6, **extra):
            return client.post("/api/v1/jobs", json={"model_id": model_id, "dataset": "digits",
                                                     "subset": {"count": count}, "config": {**config, **extra}})

        first, second = job(alice, model), job(alice, model)
        assert first.status_code == second.status_code == 201
        third = job(alice, model)
        assert third.status_code == 429 and "MAX_ACTIVE_JOBS_PER_OWNER = 2" in third.json()["detail"], third.text
        # another owner has quotas of its own
        bobs = upload_model(bob, scripted_model, DIGITS_META).json()["id"]
        assert job(bob, bobs).status_code == 201
        # a cancelled job frees its slot and its samples
        assert alice.post(f"/api/v1/jobs/{first.json()['id']}/cancel").status_code == 200
        over = job(alice, model, count=40)  # 1,320 still queued + 40 x 220 = 10,120 > 10,000
        assert over.status_code == 429 and "MAX_SAMPLES_IN_FLIGHT_PER_OWNER = 10,000" in over.json()["detail"]
        alone = job(alice, model, count=6, n=5000)  # 6 x 5,020 alone is over: it could never run
        assert alone.status_code == 422 and "MAX_SAMPLES_IN_FLIGHT_PER_OWNER" in alone.json()["detail"]
        assert job(alice, model, count=30).status_code == 201  # 1,320 + 6,600 fits
        assert [j["state"] for j in alice.get("/api/v1/jobs").json()["data"]] == ["queued", "queued", "cancelled"]


def test_requests_racing_for_the_last_active_job_slot_get_one_slot_each_at_most(limited, scripted_model):
    """Eight requests at once for an owner allowed two active jobs: exactly two are stored, six get a 429
    (without the owner's lock each request counted the jobs before the others' inserts, and all passed)."""
    limited.tokens["carol"] = make_token(limited.env, "carol")
    config = {**FAST_CONFIG, "n0": 20, "n": 200}
    with limited.client("carol") as carol:
        model = upload_model(carol, scripted_model, DIGITS_META).json()["id"]
        body = {"model_id": model, "dataset": "digits", "subset": {"count": 6}, "config": config}

        def post(_: int) -> int:
            with limited.client("carol") as client:
                return client.post("/api/v1/jobs", json=body).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = sorted(pool.map(post, range(8)))
        assert codes == [201] * 2 + [429] * 6, codes
        assert carol.get("/api/v1/jobs").json()["count"] == 2
