from __future__ import annotations

import csv
import io

from fastapi import APIRouter, Query
from fastapi.responses import Response

from backend import jobs
from backend.api.deps import CurrentOwner, Offset, ResourceId, SessionDep
from backend.api.routes.jobs import owned_job
from backend.models import JobSummary, Message, ResultRowPublic, ResultRowsPublic

router = APIRouter(prefix="/jobs", tags=["results"])
NOT_FOUND = {404: {"model": Message}}


@router.get("/{id}/results", response_model=ResultRowsPublic, responses=NOT_FOUND)
def read_results(session: SessionDep, owner: CurrentOwner, id: ResourceId, offset: Offset = 0,
                 limit: int = Query(100, ge=1, le=10_000)) -> ResultRowsPublic:
    """Per-input certificates in dataset order, one page at a time."""
    job = owned_job(session, owner, id)
    rows = jobs.job_rows(session=session, job=job, offset=offset, limit=limit)
    return ResultRowsPublic(data=[jobs.row_public(r) for r in rows], count=jobs.count_rows(session=session, job=job))


@router.get("/{id}/results.json", response_model=list[ResultRowPublic], responses=NOT_FOUND)
def export_json(session: SessionDep, owner: CurrentOwner, id: ResourceId) -> list[ResultRowPublic]:
    return [jobs.row_public(r) for r in jobs.job_rows(session=session, job=owned_job(session, owner, id))]


@router.get("/{id}/results.csv", response_class=Response,
            responses={200: {"content": {"text/csv": {}}, "description": "one line per input"}, **NOT_FOUND})
def export_csv(session: SessionDep, owner: CurrentOwner, id: ResourceId) -> Response:
    rows = [jobs.row_public(r) for r in jobs.job_rows(session=session, job=owned_job(session, owner, id))]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(ResultRowPublic.model_fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(row.model_dump() for row in rows)
    return Response(buffer.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="job-{id}-results.csv"'})


@router.get("/{id}/summary", response_model=JobSummary, responses=NOT_FOUND)
def read_summary(session: SessionDep, owner: CurrentOwner, id: ResourceId) -> JobSummary:
    """Certified accuracy at each radius, ACR, abstain rate and clean smoothed accuracy of the rows so far."""
    return jobs.job_summary(session=session, job=owned_job(session, owner, id))
