from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text

from backend.db import get_engine
from backend.metrics import ServiceCollector
from backend.models import Health

router = APIRouter(tags=["health"])
registry = CollectorRegistry()
registry.register(ServiceCollector())


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (no token needed)."""
    return Health(status="ok")


def database_answers() -> bool:
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001  (a probe reports, it does not raise)
        return False


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> JSONResponse:
    """Database and Redis both answer."""
    database = await run_in_threadpool(database_answers)
    try:
        redis = bool(await asyncio.wait_for(request.app.state.queue.ping(), timeout=2))
    except Exception:  # noqa: BLE001
        redis = False
    health = Health(status="ok" if database and redis else "unavailable", database=database, redis=redis)
    code = status.HTTP_200_OK if database and redis else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(health.model_dump(), status_code=code)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition"}})
async def metrics() -> Response:
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
