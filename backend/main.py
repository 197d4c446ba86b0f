"""The FastAPI app: /api/v1 resources, health and metrics, one JSON error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import structlog
from fastapi import FastAPI, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.api.errors import validation_error
from backend.api.main import api_router
from backend.api.routes import health
from backend.core.config import DATA_DIR, Settings, get_settings
from backend.migrate import upgrade_database
from backend.models import Message
from backend.queue import open_queue

log = structlog.get_logger("kavach.api")
DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "frontend" / "dist"  # `make frontend` builds it


class UploadLimit:
    """Byte limits on request bodies, enforced as the bytes arrive (a pure ASGI middleware).

    Multipart uploads may carry ``limit`` (MAX_UPLOAD_BYTES) plus ``slack`` for boundaries and form fields;
    every other body (JSON, and anything FastAPI would read into memory) at most ``json_limit``
    (MAX_JSON_BYTES). A declared Content-Length over the limit is answered 413 before the body is read. Without
    one (chunked), ``receive`` is wrapped and counts the body: past the limit it raises BodyTooLarge, so the
    multipart parser stops before spooling more to disk and nothing reaches a route; the answer is a 413
    with {"detail": ...} naming the limit, whatever the app made of the cut-off body, as long as no response
    has started. The rest of the body is never read: the server discards it.
    """

    from starlette.exceptions import HTTPException

    class BodyTooLarge(HTTPException):
        """Raised from the wrapped ``receive`` once a body passes its limit: an HTTPException, so FastAPI's body
        parsing re-raises it instead of calling the body malformed."""

        def __init__(self, detail: str) -> None:
            super().__init__(413, detail)

    def __init__(self, app: ASGIApp, limit: int, json_limit: int, slack: int = 1 << 20) -> None:
        self.app = app
        self.upload = (limit + slack, f"MAX_UPLOAD_BYTES = {limit:,} bytes (plus {slack:,} for the form)")
        self.json = (json_limit, f"MAX_JSON_BYTES = {json_limit:,} bytes (bodies other than file uploads)")

    def _bound(self, scope: Scope) -> tuple[int, str]:
        for key, value in scope["headers"]:
            if key == b"content-type":
                media = value.split(b";", 1)[0].strip().lower()
                return self.upload if media == b"multipart/form-data" else self.json
        return self.json

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, name = self._bound(scope)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            await self._refuse(scope, receive, send, f"request body of {int(length):,} bytes exceeds the limit {name}")
            return
        received, refusal, started = 0, None, False

        async def counted() -> dict:
            nonlocal received, refusal
            if refusal is not None:
                raise UploadLimit.BodyTooLarge(refusal)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refusal = f"request body exceeds the limit {name}: more than {limit:,} bytes arrived"
                    raise UploadLimit.BodyTooLarge(refusal)
            return message

        async def guarded(message: dict) -> None:
            nonlocal started
            if refusal is not None and not started:  # answer the limit, not the app's view of a cut body
                started = True
                await self._refuse(scope, receive, send, refusal)
            if refusal is not None:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except UploadLimit.BodyTooLarge:
            if started:
                raise
        if refusal is not None and not started:
            await self._refuse(scope, receive, send, refusal)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, detail: str) -> None:
        await JSONResponse({"detail": detail}, status_code=status.HTTP_413_CONTENT_TOO_LARGE)(scope, receive, send)


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

    app.add_exception_handler(RequestValidationError, validation_error)
    # every /api/v1 route needs an owner's token: a missing, unknown, expired or revoked one is a 401
    app.include_router(api_router, prefix=settings.API_V1_STR, responses={401: {
        "model": Message, "description": "missing, unknown, expired or revoked API token"}})
    app.include_router(health.router)
    app.add_middleware(UploadLimit, limit=settings.MAX_UPLOAD_BYTES, json_limit=settings.MAX_JSON_BYTES)
    if DASHBOARD_DIR.is_dir():  # the SPA routes by URL hash, so index.html at / is its only entry point
        app.mount("/", StaticFiles(directory=DASHBOARD_DIR, html=True), name="dashboard")
    return app


app = create_app()
