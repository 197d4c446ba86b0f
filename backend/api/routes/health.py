from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text

from backend.api.deps import SettingsDep
from backend.core.config import Settings
from backend.db import get_engine
from backend.metrics import ServiceCollector
from backend.models import Health, Message

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


metrics_bearer = HTTPBearer(auto_error=False, scheme_name="MetricsToken",
                            description="the METRICS_TOKEN setting (/metrics only)")
METRICS_OFF = "metrics are off: set METRICS_TOKEN (or METRICS_PUBLIC=true)"


def metrics_allowed(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> None:
    """/metrics counts every owner's jobs: open only when METRICS_PUBLIC, else behind METRICS_TOKEN, else off."""
    if settings.METRICS_PUBLIC:
        return
    if not settings.METRICS_TOKEN:
        raise HTTPException(status.HTTP_404_NOT_FOUND, METRICS_OFF)
    given = credentials.credentials if credentials else ""
    # digests of equal length: the comparison takes the same time whatever was sent
    if not hmac.compare_digest(hashlib.sha256(given.encode()).digest(),
                               hashlib.sha256(settings.METRICS_TOKEN.encode()).digest()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong metrics token: send "
                            "Authorization: Bearer <METRICS_TOKEN>", headers={"WWW-Authenticate": "Bearer"})


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition"},
                       401: {"model": Message, "description": "METRICS_TOKEN is set and was not sent"},
                       404: {"model": Message, "description": "neither METRICS_TOKEN nor METRICS_PUBLIC is set"}})
async def metrics(settings: SettingsDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(metrics_bearer)]) -> Response:
    """Prometheus metrics over every owner: needs `Authorization: Bearer <METRICS_TOKEN>` unless METRICS_PUBLIC."""
    metrics_allowed(settings, credentials)
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
