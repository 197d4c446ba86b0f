"""The service end to end: real HTTP, a real Redis, real worker processes."""

from __future__ import annotations

import io
import json
import os
import pickle
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from sqlalchemy import create_engine, text

from engine.data import load_dataset

DIGITS_META = {"name": "digits-cnn", "format": "torchscript", "input_shape": [1, 8, 8], "num_classes": 10,
               "class_names": [str(i) for i in range(10)]}
FAST_CONFIG = {"method": "np", "sigma": 0.25, "alpha": 0.001, "n0": 20, "n": 200, "batch_size": 100, "seed": 0}


def fit_on_noisy_digits(net: torch.nn.Module, loss_of, steps: int = 150, lr: float = 0.01) -> torch.nn.Module:
    """Full-batch Adam steps on the digits training split under sigma 0.25 noise; loss_of(net, noisy, clean)."""
    train = load_dataset("digits", split="train")
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        noisy = train.x + 0.25 * torch.randn_like(train.x)
        loss = loss_of(net, noisy, train)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net.eval()


def classification_loss(net, noisy, clean):
    return torch.nn.functional.cross_entropy(net(noisy), clean.y)


def tiny_digits_cnn() -> torch.nn.Module:
    """A small CNN trained on the digits training split for a few hundred full-batch steps (about a second)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 64, 10))
    return fit_on_noisy_digits(net, classification_loss)


def upload_model(client, path: Path, meta: dict):
    return client.post("/api/v1/models", files={"file": (path.name, path.read_bytes())},
                       data={"metadata": json.dumps(meta)})


def start_job(client, model_id: int, dataset: str = "digits", subset: dict | None = None, **config):
    return client.post("/api/v1/jobs", json={"model_id": model_id, "dataset": dataset,
                                             "subset": subset or {"count": 6},
                                             "config": {**FAST_CONFIG, **config}})


def wait_for(client, job_id: int, condition, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if condition(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} stuck: {job}"
        time.sleep(0.05)


def all_rows(client, job_id: int) -> list[dict]:
    return client.get(f"/api/v1/jobs/{job_id}/results.json").json()


def test_health_is_open_and_everything_else_needs_a_token(service):
    import httpx

    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok", "database": None, "redis": None}
    assert httpx.get(f"{service.url}/readyz").json()["redis"] is True
    metrics = httpx.get(f"{service.url}/metrics",
                        headers={"Authorization": f"Bearer {service.env['METRICS_TOKEN']}"}).text
    assert "kavach_jobs" in metrics and "kavach_shard_duration_seconds_bucket" in metrics
    for headers in ({}, {"Authorization": "Bearer kv_not-a-token"}):
        response = httpx.get(f"{service.url}/api/v1/models", headers=headers)
        assert response.status_code == 401 and "token" in response.json()["detail"]


def test_register_a_torchscript_model_and_certify_digits(service, model_id):
    with service.client() as client:
        assert client.get(f"/api/v1/models/{model_id}").json()["format"] == "torchscript"
        assert "digits" in [d["id"] for d in client.get("/api/v1/datasets").json()["data"]]
        created = start_job(client, model_id, subset={"start": 0, "stride": 3, "count": 6})
        assert created.status_code == 201, created.text
        job = wait_for(client, created.json()["id"], lambda j: j["state"] in ("done", "failed"))
        assert job["state"] == "done" and job["progress"]["done"] == job["progress"]["total"] == 6
        assert job["progress"]["samples"] == 6 * 220 and job["progress"]["samples_per_second"] > 0

        page = client.get(f"/api/v1/jobs/{job['id']}/results", params={"offset": 2, "limit": 3}).json()
        assert page["count"] == 6 and [r["index"] for r in page["data"]] == [6, 9, 12]
        rows = all_rows(client, job["id"])
        labels = load_dataset("digits").y
        assert [r["index"] for r in rows] == [0, 3, 6, 9, 12, 15]
        for row in rows:
            assert row["label"] == int(labels[row["index"]]) and row["samples"] == 220
            assert row["correct"] == (row["prediction"] == row["label"])
        assert sum(r["correct"] for r in rows) >= 4

        csv_lines = client.get(f"/api/v1/jobs/{job['id']}/results.csv").text.splitlines()
        assert csv_lines[0].startswith("index,label,prediction,radius") and len(csv_lines) == 7

        summary = client.get(f"/api/v1/jobs/{job['id']}/summary").json()
        correct = [r["correct"] for r in rows]
        assert summary["count"] == 6 and summary["clean_accuracy"] == pytest.approx(np.mean(correct))
        assert summary["curve"][0] == {"radius": 0.0, "certified_accuracy": pytest.approx(np.mean(correct))}
        assert summary["acr"] == pytest.approx(np.mean([r["radius"] * r["correct"] for r in rows]))
        assert 0.0 <= summary["abstain_rate"] <= 1.0

        with client.stream("GET", f"/api/v1/jobs/{job['id']}/events") as events:
            data = [json.loads(line[5:]) for line in events.iter_lines() if line.startswith("data:")]
        assert data[-1]["state"] == "done" and data[-1]["progress"]["done"] == 6


def test_abstained_rows_name_the_selection_draws_top_class_and_runner_up(service, model_id, scripted_model):
    # n = 5 certifies nothing at alpha 0.001 (5 of 5 votes bound pA at 0.25): every row abstains, and names the
    # two classes its selection draws split between, as the engine's own certificate does
    with service.client() as client:
        created = start_job(client, model_id, subset={"count": 4}, sigma=0.5, n=5)
        job = wait_for(client, created.json()["id"], lambda j: j["state"] in ("done", "failed"))
        rows = all_rows(client, job["id"])
        csv_header = client.get(f"/api/v1/jobs/{job['id']}/results.csv").text.splitlines()[0]
    assert job["state"] == "done" and all(r["prediction"] == -1 for r in rows)
    assert all(r["top_class"] is not None for r in rows)
    assert result_tuples(rows) == engine_rows(torch.jit.load(str(scripted_model)), 4, sigma=0.5, n=5)
    assert csv_header.endswith(",top_class,runner_up,correct")


def test_cancel_a_running_job(service, model_id):
    with service.client() as client:
        job_id = start_job(client, model_id, subset={"count": 40}, n=20_000, batch_size=1000).json()["id"]
        wait_for(client, job_id, lambda j: j["progress"]["done"] >= 1)
        cancelled = client.post(f"/api/v1/jobs/{job_id}/cancel").json()
        assert cancelled["state"] == "cancelled"
        time.sleep(1.5)  # at most the input in flight is still stored
        done = client.get(f"/api/v1/jobs/{job_id}").json()["progress"]["done"]
        time.sleep(1.0)
        after = client.get(f"/api/v1/jobs/{job_id}").json()
        assert after["state"] == "cancelled" and after["progress"]["done"] == done < 40


def test_a_killed_worker_s_shard_is_retried_and_certifies_every_input_once(service, model_id):
    with service.client() as client:
        # enough samples per input that the kill lands inside the shard even on a loaded machine
        job_id = start_job(client, model_id, subset={"count": 8}, n=30_000, batch_size=1000).json()["id"]
        wait_for(client, job_id, lambda j: 1 <= j["progress"]["done"])
        service.kill_worker()  # SIGKILL mid-shard: nothing gets to clean up
        # count the stored rows in the database itself: the progress figure may lag by an interval
        engine = create_engine(service.database_url)
        with engine.connect() as connection:
            stored_at_kill = connection.execute(text("SELECT count(*) FROM resultrow WHERE job_id = :j"),
                                                {"j": job_id}).scalar()
        engine.dispose()
        assert 1 <= stored_at_kill < 8
        service.start_worker()
        job = wait_for(client, job_id, lambda j: j["state"] in ("done", "failed"), timeout=90)
        assert job["state"] == "done"
        indices = [r["index"] for r in all_rows(client, job_id)]
        assert indices == list(range(8))
    engine = create_engine(service.database_url)
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT count(*) FROM resultrow WHERE job_id = :j"), {"j": job_id}).scalar()
        attempts = connection.execute(text("SELECT max(attempts) FROM shard WHERE job_id = :j"),
                                      {"j": job_id}).scalar()
    engine.dispose()
    assert stored == 8 and attempts >= 2


# a packed job whose groups each take a good fraction of a second on one CPU thread (shards of SHARD_SIZE = 4
# inputs, so each shard is two groups of 2): a kill or a cancel lands between a shard's groups
PACKED_SLOW = {"n": 200_000, "batch_size": 1000, "pack": 2}


class ShardSeen(NamedTuple):
    id: int
    indices: list[int]
    stored: list[int]  # those of its indices with a row, in the shard's order
    state: str
    attempts: int


def shards_of(engine, job_id: int) -> list[ShardSeen]:
    """The job's shards as the database holds them, in order."""
    from sqlmodel import Session, col, select

    from backend.models import ResultRow, Shard

    with Session(engine) as session:
        shards = session.exec(select(Shard).where(Shard.job_id == job_id).order_by(col(Shard.number))).all()
        stored = set(session.exec(select(ResultRow.index).where(ResultRow.job_id == job_id)).all())
    return [ShardSeen(s.id, s.indices, [i for i in s.indices if i in stored], s.state.value, s.attempts)
            for s in shards]


def stored_rows(engine, job_id: int) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM resultrow WHERE job_id = :j"), {"j": job_id}).scalar()


def wait_for_shards(engine, job_id: int, condition, timeout: float = 60.0) -> list[ShardSeen]:
    """Poll the database itself (often, unlike the progress figure) until condition(shards) holds."""
    deadline = time.monotonic() + timeout
    while not condition(shards := shards_of(engine, job_id)):
        assert time.monotonic() < deadline, f"job {job_id} stuck: {shards}"
        time.sleep(0.01)
    return shards


def assert_whole_groups(shards: list[ShardSeen], pack: int) -> None:
    """The packed worker's invariant: a shard's pending inputs go in groups of ``pack`` (the last one may be
    shorter), in order, each group stored in one transaction, so the rows a shard has stored are always a
    prefix of its indices made of whole groups: a multiple of ``pack`` long, or the whole shard."""
    for shard in shards:
        assert shard.stored == shard.indices[:len(shard.stored)], shard
        assert len(shard.stored) % pack == 0 or shard.stored == shard.indices, shard


def test_a_killed_worker_s_packed_shard_resumes_at_a_group_boundary_with_the_same_certificates(service, model_id):
    from tests.backend.conftest import SHARD_SIZE

    pack, count = PACKED_SLOW["pack"], 8
    assert SHARD_SIZE % pack == 0  # every group is whole, so whole groups are a multiple of pack in all
    engine = create_engine(service.database_url)
    try:
        with service.client() as client:
            job_id = start_job(client, model_id, subset={"count": count}, **PACKED_SLOW).json()["id"]
            # kill as soon as a shard has stored its first group: (short of a stall of a whole group's time) the
            # kill lands inside the shard's second group, which the resumed shard must regroup exactly as before
            wait_for_shards(engine, job_id, lambda shards: any(
                shard.state == "running" and 0 < len(shard.stored) < len(shard.indices) for shard in shards))
            service.kill_worker()  # SIGKILL mid-shard: nothing gets to clean up
            at_kill = shards_of(engine, job_id)
            assert_whole_groups(at_kill, pack)
            stored_at_kill = sum(len(shard.stored) for shard in at_kill)
            assert pack <= stored_at_kill < count and stored_at_kill % pack == 0, at_kill
            in_flight = [n for n, shard in enumerate(at_kill) if shard.state == "running"]
            assert len(in_flight) == 1, at_kill  # one shard at a time (WORKER_MAX_JOBS = 1)

            service.start_worker()
            job = wait_for(client, job_id, lambda j: j["state"] in ("done", "failed"), timeout=120)
            assert job["state"] == "done", job
            rows = all_rows(client, job_id)
            assert [r["index"] for r in rows] == list(range(count))
            assert stored_rows(engine, job_id) == count  # each input once: no duplicate row after the resume
            after = shards_of(engine, job_id)
            assert all(shard.state == "done" and shard.stored == shard.indices for shard in after), after
            assert after[in_flight[0]].attempts >= 2, after  # the shard the kill interrupted ran again

            # seeds are per group (seed + the group's first index) and a resumed shard's pending inputs start at a
            # group boundary, so the resumed job's certificates are an uninterrupted run's, bit for bit
            fresh_id = start_job(client, model_id, subset={"count": count}, **PACKED_SLOW).json()["id"]
            fresh = wait_for(client, fresh_id, lambda j: j["state"] in ("done", "failed"), timeout=120)
            assert fresh["state"] == "done", fresh
            assert all(shard.attempts == 1 for shard in shards_of(engine, fresh_id))
            assert result_tuples(rows) == result_tuples(all_rows(client, fresh_id))
    finally:
        engine.dispose()


def test_cancel_a_running_packed_job_between_groups(service, model_id):
    import redis
    from arq.constants import result_key_prefix

    from backend.keys import SHARD_JOB_PREFIX
    from tests.backend.conftest import SHARD_SIZE

    pack, count = PACKED_SLOW["pack"], 16
    assert SHARD_SIZE % pack == 0 and SHARD_SIZE // pack >= 2  # shards of two or more whole groups
    engine = create_engine(service.database_url)
    queue = redis.Redis.from_url(service.env["REDIS_URL"])
    try:
        with service.client() as client:
            job_id = start_job(client, model_id, subset={"count": count}, **PACKED_SLOW).json()["id"]
            # cancel once a group is stored and the next shard has begun: the worker is then in (or about to start)
            # that shard's first group, so its second group is still to come and cancel must be read between them
            wait_for_shards(engine, job_id, lambda shards: sum(len(shard.stored) for shard in shards) >= pack
                            and any(shard.state == "running" and not shard.stored for shard in shards))
            cancelled = client.post(f"/api/v1/jobs/{job_id}/cancel").json()
            assert cancelled["state"] == "cancelled"
            stored_at_cancel = stored_rows(engine, job_id)
            # wait until every shard's task has returned (arq keeps each result): the one in flight once its group
            # is stored, the queued ones at once; from then on nothing can store a row
            results = [f"{result_key_prefix}{SHARD_JOB_PREFIX}{shard.id}:0" for shard in shards_of(engine, job_id)]
            deadline = time.monotonic() + 60
            while not all(queue.exists(key) for key in results):
                assert time.monotonic() < deadline, f"the shards of job {job_id} did not stop"
                time.sleep(0.05)
            done = client.get(f"/api/v1/jobs/{job_id}").json()["progress"]["done"]
            time.sleep(1.0)
            after = client.get(f"/api/v1/jobs/{job_id}").json()
        assert after["state"] == "cancelled" and after["progress"]["done"] == done < count
        # cancel is read between groups: at most the group in flight at the cancel is stored after it, and whole
        assert stored_at_cancel <= done <= stored_at_cancel + pack and done % pack == 0, (stored_at_cancel, done)
        shards = shards_of(engine, job_id)
        assert_whole_groups(shards, pack)
        assert all(shard.state in ("done", "cancelled") for shard in shards), shards
        assert all(shard.stored == shard.indices for shard in shards if shard.state == "done"), shards
        assert sum(1 for shard in shards if shard.state == "cancelled" and shard.stored) <= 1, shards
    finally:
        queue.close()
        engine.dispose()


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_and_nothing_in_it_runs(service, tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps({"weight": Payload(marker)}))
    zipped = tmp_path / "evil.pt"
    torch.save({"state_dict": {"weight": Payload(marker)}}, str(zipped))
    with service.client() as client:
        for path in (raw, zipped):
            meta = {**DIGITS_META, "format": "state_dict", "arch": "digits_cnn"}
            response = upload_model(client, path, meta)
            assert response.status_code == 422, response.text
            detail = response.json()["detail"]
            assert "refus" in detail and path.name in detail and str(service.env["STORAGE_DIR"]) not in detail
    assert not marker.exists()


def test_another_owner_cannot_see_a_job(service, model_id):
    with service.client("alice") as alice, service.client("bob") as bob:
        job_id = start_job(alice, model_id, subset={"count": 1}).json()["id"]
        for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/results", f"/jobs/{job_id}/summary",
                     f"/jobs/{job_id}/results.csv", f"/models/{model_id}"):
            response = bob.get(f"/api/v1{path}")
            assert response.status_code == 404 and "not found" in response.json()["detail"]
        assert bob.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 404
        assert bob.get("/api/v1/jobs").json()["count"] == 0
        assert start_job(bob, model_id).status_code == 404
        assert alice.get(f"/api/v1/jobs/{job_id}").status_code == 200


def test_uploads_over_the_limit_get_413(service, tmp_path):
    from tests.backend.conftest import MAX_UPLOAD_BYTES

    with service.client() as client:
        for size in (MAX_UPLOAD_BYTES + 1000, 3 * MAX_UPLOAD_BYTES):  # caught while storing; refused up front
            big = tmp_path / f"big{size}.pt"
            big.write_bytes(b"\0" * size)
            response = upload_model(client, big, DIGITS_META)
            assert response.status_code == 413 and "limit" in response.json()["detail"]
    assert not any((tmp_path / "storage").glob("**/*.pt"))


def test_shape_and_label_mismatches_get_422(service, model_id, scripted_model, tmp_path):
    with service.client() as client:
        wrong_shape = upload_model(client, scripted_model, {**DIGITS_META, "input_shape": [1, 28, 28]})
        assert wrong_shape.status_code == 422 and "forward pass" in wrong_shape.json()["detail"]
        missing = upload_model(client, scripted_model, {**DIGITS_META, "num_classes": None, "class_names": None})
        assert missing.status_code == 422 and isinstance(missing.json()["detail"], list)

        def upload_npz(name: str, x: np.ndarray, y: np.ndarray):
            buffer = io.BytesIO()
            np.savez(buffer, x=x, y=y)
            return client.post("/api/v1/datasets", files={"file": (f"{name}.npz", buffer.getvalue())},
                               data={"name": name})

        big_images = upload_npz("ten", np.zeros((5, 10, 10), np.uint8), np.arange(5))
        assert big_images.status_code == 201 and big_images.json()["input_shape"] == [1, 10, 10]
        response = start_job(client, model_id, dataset=big_images.json()["id"])
        assert response.status_code == 422 and "[1, 8, 8]" in response.json()["detail"]

        many_labels = upload_npz("twelve", np.zeros((13, 8, 8), np.uint8), np.arange(13))
        response = start_job(client, model_id, dataset=many_labels.json()["id"], subset={"count": 13})
        assert response.status_code == 422 and "label 12" in response.json()["detail"]

        assert start_job(client, model_id, subset={"indices": [5000]}).status_code == 422
        assert upload_npz("bad", np.zeros((2, 8), np.uint8), np.arange(2)).status_code == 422


SEQUENTIAL = {"n": 4000, "batch_size": 500, "sequential_delta": 0.1}


def test_a_sequential_job_stops_each_input_at_one_of_the_schedule_s_looks(service, model_id, scripted_model):
    from engine.schedule import SequentialSchedule

    with service.client() as client:
        created = start_job(client, model_id, **SEQUENTIAL)
        assert created.status_code == 201, created.text
        job = wait_for(client, created.json()["id"], lambda j: j["state"] in ("done", "failed"))
        assert job["state"] == "done" and job["config"]["sequential_delta"] == 0.1, job
        rows = all_rows(client, job["id"])
    # as kavach certify builds it: the first look is one batch
    schedule = SequentialSchedule(0.25, 4000, 0.001, delta=0.1, first=500, batch_size=500)
    assert schedule.looks() == [500, 1000, 2000, 4000]
    n0 = FAST_CONFIG["n0"]
    assert all(r["samples"] - n0 in schedule.looks() for r in rows)
    assert min(r["samples"] for r in rows) < n0 + 4000 and job["progress"]["samples"] == sum(r["samples"] for r in rows)
    expected = engine_rows(torch.jit.load(str(scripted_model)), len(rows), schedule, **SEQUENTIAL)
    assert result_tuples(rows) == expected


def test_a_sample_schedule_needs_method_np_and_only_one_of_them(service, model_id):
    dsrs = {"method": "dsrs", "q_sigma": 0.2}
    with service.client() as client:
        for config, problem in (({**dsrs, "sequential_delta": 0.1}, "sequential_delta (sequential sampling) works"),
                                ({**dsrs, "iss_delta": 0.1}, "iss_delta (input-specific sampling) works"),
                                ({"iss_delta": 0.1, "sequential_delta": 0.1}, "choose one of iss_delta and"),
                                ({"sequential_delta": 0}, "greater than 0")):
            response = start_job(client, model_id, **config)
            assert response.status_code == 422, (config, response.text)
            assert problem in response.json()["detail"][0]["msg"], response.text


def test_a_zip_of_class_folders_is_a_dataset(service, model_id):
    from PIL import Image

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label in ("one", "zero"):
            for i in range(3):
                image = io.BytesIO()
                Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(image, format="PNG")
                archive.writestr(f"set/{label}/{i}.png", image.getvalue())
    with service.client() as client:
        response = client.post("/api/v1/datasets", files={"file": ("set.zip", buffer.getvalue())},
                               data={"name": "folders"})
        assert response.status_code == 201, response.text
        dataset = response.json()
        assert dataset["size"] == 6 and dataset["input_shape"] == [1, 8, 8]
        assert dataset["class_names"] == ["one", "zero"] and dataset["num_classes"] == 2
        assert start_job(client, model_id, dataset=dataset["id"]).status_code == 201


def centroid_onnx(path: Path, batch: int | str = "batch") -> Path:
    """Nearest class mean on digits as an ONNX graph (Flatten, Gemm), built with onnx.helper: no exporter needed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    train = load_dataset("digits", split="train")
    flat = train.x.flatten(1).numpy()
    means = np.stack([flat[train.y.numpy() == c].mean(0) for c in range(10)]).astype(np.float32)
    bias = (-0.5 * (means ** 2).sum(1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("Gemm", ["flat", "w", "b"], ["y"], transB=1)],
        "centroid", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
        [numpy_helper.from_array(means, "w"), numpy_helper.from_array(bias, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_an_onnx_model_registers_and_certifies(service, tmp_path):
    pytest.importorskip("onnxruntime")
    meta = {**DIGITS_META, "name": "centroid-onnx", "format": None}
    with service.client() as client:
        fixed = upload_model(client, centroid_onnx(tmp_path / "fixed.onnx", batch=1), meta)
        assert fixed.status_code == 422 and "batch dimension" in fixed.json()["detail"]
        created = upload_model(client, centroid_onnx(tmp_path / "centroid.onnx"), meta)
        assert created.status_code == 201 and created.json()["format"] == "onnx", created.text
        frozen = start_job(client, created.json()["id"], freeze=True)
        assert frozen.status_code == 422 and "is onnx, which TorchScript cannot script" in frozen.json()["detail"]
        job_id = start_job(client, created.json()["id"], subset={"count": 4}).json()["id"]
        job = wait_for(client, job_id, lambda j: j["state"] in ("done", "failed"))
        assert job["state"] == "done" and sum(r["correct"] for r in all_rows(client, job_id)) >= 3


def test_inputs_come_back_as_png_thumbnails_for_their_owner_only(service, model_id):
    from PIL import Image

    with service.client("alice") as alice, service.client("bob") as bob:
        job_id = start_job(alice, model_id, subset={"count": 1}).json()["id"]
        digits = load_dataset("digits", split="test")
        for path in (f"/jobs/{job_id}/images/3", "/datasets/digits/images/3"):
            response = alice.get(f"/api/v1{path}")
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
            with Image.open(io.BytesIO(response.content)) as image:
                assert image.size == (64, 64) and image.mode == "L"  # 8x8 grey, scaled up 8x
                expected = np.round(digits.x[3, 0].numpy() * 255).astype(np.uint8)
                assert (np.asarray(image)[::8, ::8] == expected).all()
        for path in (f"/jobs/{job_id}/images/{len(digits.x)}", "/datasets/digits/images/100000",
                     "/datasets/nope/images/0"):
            assert alice.get(f"/api/v1{path}").status_code == 404, path
        assert alice.get(f"/api/v1/jobs/{job_id}/images/-1").status_code == 422  # indices start at 0
        assert bob.get(f"/api/v1/jobs/{job_id}/images/0").status_code == 404

        buffer = io.BytesIO()
        np.savez(buffer, x=np.random.default_rng(0).integers(0, 256, (3, 20, 10, 3), np.uint8), y=np.arange(3))
        dataset = alice.post("/api/v1/datasets", files={"file": ("rgb.npz", buffer.getvalue())},
                             data={"name": "rgb"}).json()
        response = alice.get(f"/api/v1/datasets/{dataset['id']}/images/2")
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.size == (30, 60) and image.mode == "RGB"  # (H, W) 20x10 scaled up 3x
        assert alice.get(f"/api/v1/datasets/{dataset['id']}/images/3").status_code == 404
        assert bob.get(f"/api/v1/datasets/{dataset['id']}/images/0").status_code == 404


DRUNET_KWARGS = {"in_channels": 1, "widths": [8, 16, 16, 16], "blocks": 1}


@pytest.fixture(scope="module")
def denoised_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A digits_cnn (width 4) and a small DRUNet, both trained briefly at sigma 0.25, as weights-only checkpoints."""
    from engine.denoise import DRUNet
    from engine.models import create_model
    from engine.train.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("denoised")
    torch.manual_seed(1)
    classifier = fit_on_noisy_digits(create_model("digits_cnn", width=4), classification_loss, steps=100)
    denoiser = fit_on_noisy_digits(DRUNet(**DRUNET_KWARGS), lambda net, noisy, clean: torch.nn.functional.mse_loss(
        net(noisy, 0.25), clean.x), steps=80, lr=0.003)
    return (save_checkpoint(folder / "digits_cnn.pt", classifier, "digits_cnn", {"num_classes": 10, "width": 4}),
            save_checkpoint(folder / "drunet.pt", denoiser, "drunet_small", DRUNET_KWARGS, {"sigmas": [0.25]}))


def engine_rows(net: torch.nn.Module, count: int, schedule=None, groups: list[list[int]] | None = None,
                compile: bool = False, freeze: bool = False, **config) -> list[tuple]:
    """The engine alone on digits 0..count-1 at FAST_CONFIG updated by ``config``, seed + index; with
    ``groups``, certify_many on each group (of those inputs, in order) with seed + the group's first index;
    ``compile`` runs ``net`` through torch.compile (compiled under one thread, as in the worker), ``freeze``
    freezes it into one TorchScript graph. ``net`` is converted in place."""
    from engine.noise import Gaussian
    from engine.smooth import SmoothedClassifier

    c = {**FAST_CONFIG, **config}
    # in the worker's layout: NHWC but for a TorchScript archive (backend.worker.channels_last_for)
    nhwc = not isinstance(net, torch.jit.ScriptModule)
    smoothed = SmoothedClassifier(net, 10, Gaussian(c["sigma"]), channels_last=nhwc, compile=compile, freeze=freeze)
    x = load_dataset("digits").x
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker (OMP_NUM_THREADS=1): the same kernels, the same floats
    try:
        if groups is None:
            results = [smoothed.certify(x[i], c["n0"], c["n"], c["alpha"], c["batch_size"], seed=c["seed"] + i,
                                        schedule=schedule) for i in range(count)]
        else:
            results = [r for g in groups for r in smoothed.certify_many(
                x[g], c["n0"], c["n"], c["alpha"], c["batch_size"], schedule=schedule, seed=c["seed"] + g[0])]
    finally:
        torch.set_num_threads(threads)
    return [(r.prediction, r.radius, r.p_lower, r.p_upper, r.samples, r.top_class, r.runner_up) for r in results]


def reference_rows(classifier: torch.nn.Module, denoiser: torch.nn.Module, level: float, count: int) -> list[tuple]:
    """The engine alone on classifier(denoiser(x)) with the denoiser told ``level``: FAST_CONFIG, seed + index."""
    from engine.denoise import denoised_classifier

    return engine_rows(denoised_classifier(classifier, denoiser, level), count)


def result_tuples(rows: list[dict]) -> list[tuple]:
    return [(r["prediction"], r["radius"], r["p_lower"], r["p_upper"], r["samples"], r["top_class"], r["runner_up"])
            for r in rows]


def test_a_job_with_a_denoiser_certifies_the_classifier_of_the_denoised_input_at_the_job_s_sigma(
        service, denoised_pair):
    from engine.models import load_model

    classifier_path, denoiser_path = denoised_pair
    with service.client() as client:
        # arch named by the uploader: the checkpoint's width 4 must still be used (default 32 would not load)
        classifier = upload_model(client, classifier_path, {"name": "digits-cnn-w4", "arch": "digits_cnn",
                                                            "input_shape": [1, 8, 8], "num_classes": 10})
        assert classifier.status_code == 201, classifier.text
        denoiser = upload_model(client, denoiser_path, {"name": "drunet-digits", "kind": "denoiser",
                                                        "input_shape": [1, 8, 8]})
        assert denoiser.status_code == 201, denoiser.text
        assert denoiser.json()["format"] == "state_dict" and denoiser.json()["num_classes"] is None
        created = start_job(client, classifier.json()["id"], denoiser_id=denoiser.json()["id"])
        assert created.status_code == 201, created.text
        job = wait_for(client, created.json()["id"], lambda j: j["state"] in ("done", "failed"))
        assert job["state"] == "done" and job["config"]["denoiser_id"] == denoiser.json()["id"], job
        rows = all_rows(client, job["id"])
    assert [r["index"] for r in rows] == list(range(6))
    labels = load_dataset("digits").y
    assert all(r["label"] == int(labels[r["index"]]) and r["samples"] == 220 for r in rows)

    net, drunet = load_model(classifier_path), load_model(denoiser_path)
    expected = reference_rows(net, drunet, FAST_CONFIG["sigma"], len(rows))
    # the check tells noise levels apart: the DRUNet's default level 0 gives other counts
    assert reference_rows(net, drunet, 0.0, len(rows)) != expected
    assert result_tuples(rows) == expected
    assert sum(r["correct"] for r in rows) >= 4
    # the job's classifier and its denoiser are kept for it
    with service.client() as client:
        for model in (classifier.json()["id"], denoiser.json()["id"]):
            refused = client.delete(f"/api/v1/models/{model}")
            assert refused.status_code == 409 and "their denoiser" in refused.json()["detail"], refused.text
            assert client.get(f"/api/v1/models/{model}").status_code == 200


def test_a_job_s_denoiser_must_be_a_denoiser_for_the_model_s_inputs(service, model_id, scripted_model,
                                                                    denoised_pair):
    _, denoiser_path = denoised_pair
    denoiser_meta = {"name": "drunet", "kind": "denoiser", "input_shape": [1, 8, 8]}
    with service.client() as client:
        response = start_job(client, model_id, denoiser_id=model_id)
        assert response.status_code == 422 and "is a classifier, not a denoiser" in response.json()["detail"]
        assert start_job(client, model_id, denoiser_id=10**6).status_code == 404

        wide = upload_model(client, denoiser_path, {**denoiser_meta, "input_shape": [1, 16, 16]})
        assert wide.status_code == 201, wide.text  # a DRUNet denoises any size
        response = start_job(client, model_id, denoiser_id=wide.json()["id"])
        assert response.status_code == 422 and "[1, 16, 16]" in response.json()["detail"]
        denoiser_id = upload_model(client, denoiser_path, denoiser_meta).json()["id"]
        response = start_job(client, denoiser_id)
        assert response.status_code == 422 and "is a denoiser, not a classifier" in response.json()["detail"]

        not_an_image = upload_model(client, scripted_model, {**denoiser_meta, "format": "torchscript"})
        assert not_an_image.status_code == 422 and "an image of the input's shape" in not_an_image.json()["detail"]
        for extra in ({"num_classes": 10}, {"input_max": 255.0}):
            response = upload_model(client, denoiser_path, {**denoiser_meta, **extra})
            assert response.status_code == 422 and next(iter(extra)) in response.json()["detail"][0]["msg"]


PACKED = {"n": 500, "batch_size": 4096, "seed": 7, "pack": 3}


def test_a_packed_job_certifies_each_shard_s_inputs_in_groups_as_certify_many_does(service, model_id,
                                                                                  scripted_model):
    from tests.backend.conftest import SHARD_SIZE

    with service.client() as client:
        created = start_job(client, model_id, subset={"count": 12}, **PACKED)
        assert created.status_code == 201, created.text
        job = wait_for(client, created.json()["id"], lambda j: j["state"] in ("done", "failed"))
        assert job["state"] == "done" and job["config"]["pack"] == 3, job
        rows = all_rows(client, job["id"])
    assert [r["index"] for r in rows] == list(range(12))
    assert job["progress"]["done"] == 12 and job["progress"]["samples"] == 12 * (FAST_CONFIG["n0"] + 500)
    # each shard's inputs in groups of 3 (shards of 4: [0, 1, 2], [3], [4, 5, 6], [7], ...)
    shards = [list(range(s, min(s + SHARD_SIZE, 12))) for s in range(0, 12, SHARD_SIZE)]
    groups = [shard[g:g + 3] for shard in shards for g in range(0, len(shard), 3)]
    net = torch.jit.load(str(scripted_model))
    expected = engine_rows(net, 12, groups=groups, **PACKED)
    # the check tells groupings apart: groups of 3 across the shard boundaries give other counts
    assert engine_rows(net, 12, groups=[list(range(g, g + 3)) for g in range(0, 12, 3)], **PACKED) != expected
    assert result_tuples(rows) == expected


def test_pack_needs_method_np_without_the_sequential_schedule(service, model_id):
    with service.client() as client:
        for config, problem in (({"pack": 2, "method": "dsrs", "q_sigma": 0.2}, "works with method np"),
                                ({"pack": 2, "sequential_delta": 0.1}, "not sequential_delta"),
                                ({"pack": 0}, "greater than or equal to 1"),
                                ({"pack": 1025}, "less than or equal to 1024")):
            response = start_job(client, model_id, **config)
            assert response.status_code == 422, (config, response.text)
            assert problem in response.json()["detail"][0]["msg"], response.text
        # pack 1 is the default, so these settings stay as they were
        assert start_job(client, model_id, subset={"count": 1}, pack=1, method="dsrs", q_sigma=0.2).status_code == 201
        assert start_job(client, model_id, subset={"count": 1}, pack=4, iss_delta=0.05).status_code == 201


def test_a_bf16_job_certifies_the_bf16_model_and_is_refused_for_fixed_precision_files(service, model_id,
                                                                                      denoised_pair):
    from engine.models import load_model

    classifier_path, _ = denoised_pair
    with service.client() as client:
        response = start_job(client, model_id, bf16=True)
        assert response.status_code == 422 and "is torchscript, whose precision is fixed" in response.json()["detail"]
        classifier = upload_model(client, classifier_path, {"name": "digits-cnn-bf16", "arch": "digits_cnn",
                                                            "input_shape": [1, 8, 8], "num_classes": 10})
        assert classifier.status_code == 201, classifier.text
        jobs = {}
        for bf16 in (True, False):  # the fp32 job after the bf16 one: cached copies must not leak precision
            created = start_job(client, classifier.json()["id"], bf16=bf16)
            assert created.status_code == 201, created.text
            job = wait_for(client, created.json()["id"], lambda j: j["state"] in ("done", "failed"))
            assert job["state"] == "done" and job["config"]["bf16"] is bf16, job
            jobs[bf16] = result_tuples(all_rows(client, job["id"]))
    assert jobs[False] == engine_rows(load_model(classifier_path), 6)
    assert jobs[True] == engine_rows(load_model(classifier_path).to(torch.bfloat16), 6)


def compiles_logged(service) -> int:
    """How many model processes for compiled jobs the service's workers started (each logs its key once)."""
    return sum(line.count("'compile')") for p in service.logs.glob("worker-*.log")
               for line in p.read_text(errors="replace").splitlines() if "model process started" in line)


def test_a_compiled_job_certifies_through_torch_compile_and_never_shares_its_model_with_eager_jobs(
        service, model_id, denoised_pair):
    from engine.models import load_model

    classifier_path, _ = denoised_pair
    with service.client() as client:
        response = start_job(client, model_id, compile=True)
        assert response.status_code == 422, response.text
        assert "is torchscript, a compiled graph already" in response.json()["detail"]
        classifier = upload_model(client, classifier_path, {"name": "digits-cnn-compiled", "arch": "digits_cnn",
                                                            "input_shape": [1, 8, 8], "num_classes": 10})
        assert classifier.status_code == 201, classifier.text
        made = compiles_logged(service)
        jobs = []
        # compiled, then eager on the same model (it must not run the compiled copy), then compiled again;
        # six inputs are two shards (SHARD_SIZE 4), so each compiled job runs its wrapper in two shards
        for compiled in (True, False, True):
            created = start_job(client, classifier.json()["id"], compile=compiled)
            assert created.status_code == 201, created.text
            # the first batch of each size (n0's 20, n's 100) waits for its compile: tens of seconds on a CPU
            job = wait_for(client, created.json()["id"], lambda j: j["state"] in ("done", "failed"), timeout=240)
            assert job["state"] == "done" and job["config"]["compile"] is compiled, job
            jobs.append(result_tuples(all_rows(client, job["id"])))
    # one wrapper served both compiled jobs' four shards: its graphs were compiled once
    assert compiles_logged(service) - made == 1
    # Compared with the engine compiled the same way (as the bf16 test compares with the engine's bf16 model):
    # inductor's kernels may round differently from eager ones, so the compiled function is the reference. Both
    # compile under one thread (inductor's CPU code depends on the thread count) and inductor's graph cache may
    # even hand the engine the worker's kernels.
    compiled_rows = engine_rows(load_model(classifier_path), 6, compile=True)
    assert jobs[0] == jobs[2] == compiled_rows
    assert jobs[1] == engine_rows(load_model(classifier_path), 6)


def test_a_frozen_job_certifies_the_frozen_graph_of_a_weights_file_or_a_torchscript_archive(
        service, model_id, scripted_model, denoised_pair):
    from engine.models import load_model

    classifier_path, _ = denoised_pair
    with service.client() as client:
        both = start_job(client, model_id, freeze=True, compile=True)
        assert both.status_code == 422 and "choose one" in both.json()["detail"][0]["msg"], both.text
        classifier = upload_model(client, classifier_path, {"name": "digits-cnn-frozen", "arch": "digits_cnn",
                                                            "input_shape": [1, 8, 8], "num_classes": 10})
        assert classifier.status_code == 201, classifier.text
        jobs = {}
        # a weights file and a TorchScript archive; six inputs are two shards (SHARD_SIZE 4) on one frozen graph
        for target in (classifier.json()["id"], model_id):
            created = start_job(client, target, freeze=True)
            assert created.status_code == 201, created.text
            job = wait_for(client, created.json()["id"], lambda j: j["state"] in ("done", "failed"))
            assert job["state"] == "done" and job["config"]["freeze"] is True, job
            jobs[target] = result_tuples(all_rows(client, job["id"]))
    assert jobs[classifier.json()["id"]] == engine_rows(load_model(classifier_path), 6, freeze=True)
    assert jobs[model_id] == engine_rows(load_model(scripted_model), 6, freeze=True)
