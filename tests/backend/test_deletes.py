"""Deleting models and datasets: what a job uses is kept (409), and a deletion racing a job's creation
never leaves a job that names a deleted file, nor answers a 500."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tests.backend.test_service import FAST_CONFIG, upload_model
from tests.backend.test_tokens_and_names import multipart, npz_bytes

ROUNDS = 8


def upload_dataset(client) -> int:
    body, headers = multipart({"name": "three"}, b"three.npz", npz_bytes())
    response = client.post("/api/v1/datasets", content=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_a_model_nobody_uses_is_deleted_with_its_file(service, scripted_model):
    with service.client() as client:
        model = upload_model(client, scripted_model, {"name": "unused", "input_shape": [1, 8, 8],
                                                      "num_classes": 10}).json()["id"]
        assert client.delete(f"/api/v1/models/{model}").status_code == 200
        assert client.get(f"/api/v1/models/{model}").status_code == 404
        assert client.delete(f"/api/v1/models/{model}").status_code == 404


def test_two_deletes_of_one_model_at_once_give_one_200_and_one_404(service, scripted_model):
    with service.client() as client:
        model = upload_model(client, scripted_model, {"name": "twice", "input_shape": [1, 8, 8],
                                                      "num_classes": 10}).json()["id"]
    start = threading.Barrier(2)

    def delete(_: int) -> int:
        with service.client() as own:
            start.wait(timeout=30)
            return own.delete(f"/api/v1/models/{model}").status_code

    with ThreadPoolExecutor(2) as pool:
        assert sorted(pool.map(delete, range(2))) == [200, 404]


def test_a_deletion_racing_a_job_s_creation_either_keeps_what_the_job_uses_or_refuses_the_job(
        service, scripted_model):
    """Job, model deletion and dataset deletion sent together, the deletions 0 to 21 ms after the job so that
    they land at each stage of its creation: the job is stored and both deletions get a 409, or the job gets
    a 404 and both are deleted; never a 500 or a 422, never a job without its files."""
    meta = {"name": "raced", "input_shape": [1, 8, 8], "num_classes": 10}
    outcomes = []
    with service.client() as client:
        for round in range(ROUNDS):
            model = upload_model(client, scripted_model, meta).json()["id"]
            dataset = upload_dataset(client)
            start = threading.Barrier(3)

            def send(method: str, url: str, body: dict | None = None, start=start, delay: float = 0.0) -> int:
                with service.client() as own:
                    start.wait(timeout=30)
                    time.sleep(delay)
                    return own.request(method, url, json=body).status_code

            with ThreadPoolExecutor(3) as pool:
                job = pool.submit(send, "POST", "/api/v1/jobs", {"model_id": model, "dataset": str(dataset),
                                                                 "subset": {"count": 1}, "config": FAST_CONFIG})
                delay = round * 0.003
                model_gone = pool.submit(send, "DELETE", f"/api/v1/models/{model}", delay=delay)
                dataset_gone = pool.submit(send, "DELETE", f"/api/v1/datasets/{dataset}", delay=delay)
                codes = (job.result(), model_gone.result(), dataset_gone.result())
            outcomes.append(codes)
            assert codes in ((201, 409, 409), (404, 200, 200)), codes
            kept = 200 if codes[0] == 201 else 404
            assert client.get(f"/api/v1/models/{model}").status_code == kept
            assert client.get(f"/api/v1/datasets/{dataset}").status_code == kept
    print("job, model delete, dataset delete:", outcomes)
