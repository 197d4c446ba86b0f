"""The FastAPI app: /api/v1 resources, health and metrics, one JSON error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import structlog
from fastapi import FastAPI, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.api.main import api_router
from backend.api.routes import health
from backend.core.config import DATA_DIR, Settings, get_settings
from backend.migrate import upgrade_database
from backend.queue import open_queue

log = structlog.get_logger("kavach.api")
DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "frontend" / "dist"  # `make frontend` builds it


class UploadLimit:
    """Refuse a request whose declared body exceeds the upload limit before reading it (a clear 413).

    Bodies without a Content-Length are still capped while they are written to storage.
    """

    def __init__(self, app: ASGIApp, limit: int, slack: int = 1 << 20) -> None:
        self.app, self.limit = app, limit + slack  # slack: multipart boundaries and metadata fields

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.limit:
                response = JSONResponse({"detail": f"request body of {int(length)} bytes exceeds the upload "
                                                   f"limit of {self.limit} bytes"},
                                        status_code=status.HTTP_413_CONTENT_TOO_LARGE)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await run_in_threadpool(upgrade_database, settings.DATABASE_URL)
            url = settings.REDIS_URL
            if url is None:  # a lone `uvicorn backend.main:app`: bring a private Redis along
                from backend.embedded import EmbeddedRedis

                url = stack.enter_context(EmbeddedRedis(DATA_DIR / "redis")).url
            app.state.queue = await open_queue(url)
            stack.push_async_callback(app.state.queue.aclose)
            log.info("api started", database=settings.DATABASE_URL.split("@")[-1], redis=url.split("@")[-1])
            yield

    app = FastAPI(title=settings.PROJECT_NAME, version="0.1.0", lifespan=lifespan,
                  openapi_url=f"{settings.API_V1_STR}/openapi.json",
                  description="Certified robustness of image classifiers by randomized smoothing.")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", path=request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)

    app.include_router(api_router, prefix=settings.API_V1_STR)
    app.include_router(health.router)
    app.add_middleware(UploadLimit, limit=settings.MAX_UPLOAD_BYTES)
    if DASHBOARD_DIR.is_dir():  # the SPA routes by URL hash, so index.html at / is its only entry point
        app.mount("/", StaticFiles(directory=DASHBOARD_DIR, html=True), name="dashboard")
    return app


app = create_app()
