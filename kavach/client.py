"""A Python client for a Kavach service, typed by the API's own models (``backend.models``).

    from kavach.client import Client
    with Client("http://127.0.0.1:8000", token) as kv:
        model = kv.register_model("net.pt", name="resnet", input_shape=[3, 32, 32], num_classes=10)
        job = kv.wait(kv.create_job(model.id, "cifar10", config={"sigma": 0.25}).id)
        print(kv.summary(job.id).acr)

Every failure is a ``KavachError`` whose message says what to do: a refused token, a server that does
not answer, or a request the server refused (with its status and the server's own words).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from backend.models import (
    DatasetsPublic,
    JobCreate,
    JobPublic,
    JobSummary,
    ModelCreate,
    ModelPublic,
    ResultRowPublic,
)

T = TypeVar("T", bound=BaseModel)

API_PREFIX = "/api/v1"
PAGE = 10_000  # the results endpoint's largest page


class KavachError(Exception):
    """The request could not be made or was refused; the message names the cause."""


class Unreachable(KavachError):
    """No answer from the server (wrong URL, server down, network)."""


class Unauthorized(KavachError):
    """The server refused the token (missing, wrong, expired or revoked)."""


class Refused(KavachError):
    """The server answered with a 4xx or 5xx."""

    def __init__(self, status: int, detail: str, what: str) -> None:
        super().__init__(f"{what}: the server answered {status}: {detail}")
        self.status, self.detail = status, detail


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI's validation errors: where, and what
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {e.get('msg')}" for e in detail[:5])
    return str(detail)[:1000]


class Client:
    """One service at ``url`` (default KAVACH_URL) with ``token`` (default KAVACH_TOKEN)."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        url = url or os.environ.get("KAVACH_URL")
        token = token or os.environ.get("KAVACH_TOKEN")
        if not url:
            raise KavachError("no server URL: pass --url or set KAVACH_URL (e.g. http://127.0.0.1:8000)")
        if not token:
            raise KavachError("no API token: pass --token or set KAVACH_TOKEN (make one with `kavach token create NAME`)")
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url + API_PREFIX, headers={"Authorization": f"Bearer {token}"},
                                 timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise Unreachable(f"{what}: {self.url} did not answer in time") from None
        except httpx.TransportError as error:
            raise Unreachable(f"{what}: cannot reach {self.url} ({type(error).__name__}: {error}); is the "
                              "service running, and is the URL right?") from None
        if response.status_code == 401:
            raise Unauthorized(f"{what}: the server refused the token ({_detail(response)}); check KAVACH_TOKEN "
                               "or --token")
        if response.status_code >= 400:
            raise Refused(response.status_code, _detail(response), what)
        return response

    def _typed(self, model: type[T], response: httpx.Response, what: str) -> T:
        try:
            return model.model_validate(response.json())
        except (ValueError, ValidationError) as error:
            raise KavachError(f"{what}: the server's answer is not a {model.__name__} ({error}); is {self.url} a "
                              "Kavach service of this version?") from None

    # -- models and datasets -------------------------------------------------------------------
    def register_model(self, file: str | Path, **fields: Any) -> ModelPublic:
        """Upload ``file`` with the ``ModelCreate`` fields (name, input_shape, num_classes, arch, sigma...)."""
        path = Path(file)
        fields.setdefault("name", path.name)
        try:
            meta = ModelCreate.model_validate(fields)
        except ValidationError as error:
            raise KavachError(f"model fields: {error}") from None
        what = f"registering {path.name}"
        try:
            handle = path.open("rb")
        except OSError as error:
            raise KavachError(f"{what}: cannot read {path} ({error.strerror})") from None
        with handle:
            response = self._request("POST", "/models", what, files={"file": (path.name, handle)},
                                     data={"metadata": meta.model_dump_json(exclude_unset=True)})
        return self._typed(ModelPublic, response, what)

    def model(self, model_id: int) -> ModelPublic:
        return self._typed(ModelPublic, self._request("GET", f"/models/{model_id}", f"model {model_id}"), "model")

    def datasets(self) -> DatasetsPublic:
        return self._typed(DatasetsPublic, self._request("GET", "/datasets", "listing datasets"), "datasets")

    # -- jobs ----------------------------------------------------------------------------------
    def create_job(self, model_id: int, dataset: str, *, split: str = "test",
                   subset: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None) -> JobPublic:
        """Start certifying ``dataset`` with the model; ``config`` is the job's CertifyConfig fields."""
        try:
            body = JobCreate.model_validate({"model_id": model_id, "dataset": dataset, "split": split,
                                             "subset": dict(subset or {}), "config": dict(config or {})})
        except ValidationError as error:
            raise KavachError(f"job settings: {error}") from None
        what = "starting the job"
        payload = json.loads(body.model_dump_json(exclude_unset=True))
        return self._typed(JobPublic, self._request("POST", "/jobs", what, json=payload), "job")

    def job(self, job_id: int) -> JobPublic:
        return self._typed(JobPublic, self._request("GET", f"/jobs/{job_id}", f"reading job {job_id}"), "job")

    def cancel(self, job_id: int) -> JobPublic:
        return self._typed(JobPublic, self._request("POST", f"/jobs/{job_id}/cancel", f"cancelling job {job_id}"),
                           "job")

    def wait(self, job_id: int, *, poll_seconds: float = 1.0, timeout: float | None = None,
             on_progress: Callable[[JobPublic], None] | None = None) -> JobPublic:
        """Poll until the job is finished (done, failed or cancelled); ``on_progress`` sees each reading."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.state.finished:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise KavachError(f"job {job_id} is still {job.state.value} after {timeout:g} s")
            time.sleep(poll_seconds)

    def wait_with_progress(self, job_id: int, *, timeout: float | None = None, poll_seconds: float = 1.0) -> JobPublic:
        """``wait`` with a progress bar on stderr (inputs certified, rate, ETA)."""
        from rich.console import Console

        from engine.progress import progress_bar  # the engine's bar, as the CLI's certify shows it

        with progress_bar(console=Console(stderr=True)) as progress:  # stdout stays the result's
            task = progress.add_task(f"job {job_id}", total=None, status="queued")

            def show(job: JobPublic) -> None:
                rate = job.progress.samples_per_second
                status = job.state.value if rate is None else f"{job.state.value}, {rate:,.0f} samples/s"
                progress.update(task, total=job.progress.total, completed=job.progress.done, status=status)

            return self.wait(job_id, poll_seconds=poll_seconds, timeout=timeout, on_progress=show)

    def summary(self, job_id: int) -> JobSummary:
        what = f"job {job_id}'s summary"
        return self._typed(JobSummary, self._request("GET", f"/jobs/{job_id}/summary", what), "summary")

    def rows(self, job_id: int) -> list[ResultRowPublic]:
        """Every certificate of the job, in dataset order."""
        rows: list[ResultRowPublic] = []
        while True:
            response = self._request("GET", f"/jobs/{job_id}/results", f"job {job_id}'s results",
                                     params={"offset": len(rows), "limit": PAGE})
            page = response.json()
            try:
                rows += [ResultRowPublic.model_validate(r) for r in page["data"]]
            except (KeyError, TypeError, ValidationError) as error:
                raise KavachError(f"job {job_id}'s results: unexpected answer ({error})") from None
            if not page["data"] or len(rows) >= page["count"]:
                return rows

    def download_smoothed_model(self, job_id: int, dest: str | Path) -> Path:
        """The job's certified smoothed classifier (``engine.export``) saved at ``dest``; a folder gets the
        server's file name (``kavach-job<ID>-smoothed.pt2`` or ``.pt``)."""
        what = f"downloading job {job_id}'s smoothed model"
        response = self._request("GET", f"/jobs/{job_id}/smoothed-model", what)
        dest = Path(dest)
        if dest.is_dir():
            name = response.headers.get("content-disposition", "").rpartition("filename=")[2].strip('"')
            dest = dest / (Path(name).name or f"kavach-job{job_id}-smoothed.pt")
        dest.write_bytes(response.content)
        return dest
