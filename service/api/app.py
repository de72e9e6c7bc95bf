"""App factory: migrations at start, the reconciler thread, error mapping, the routers.

Error mapping (one place, so every route behaves the same):
  ServiceError subclasses      → their status with {"detail": message}
  database unreachable/busy    → 503 + Retry-After, a fixed message (service.errors.DB_UNAVAILABLE)
  transaction aborted by the database to break a deadlock → 503 + Retry-After: 1 (DB_CONFLICT)
  Redis unreachable            → 503 + Retry-After (service.errors.QUEUE_UNAVAILABLE)
  a request body over settings.max_upload_bytes → 413, before the body is read
  anything else                → 500 {"detail": "internal error", "error_id"}; the traceback goes to
                                 the log under the same id, never into the answer
"""
from __future__ import annotations

import json
import logging
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DataError, SQLAlchemyError

from service.api.auth import authenticate
from service.api.cache import FastPolls
from service.api.deps import caller, writer
from service.api.heap import settle_heap
from service.api.prometheus import StoreCollector, render
from service.api.routers import router
from service.core import mlflow_log
from service.errors import DB_CONFLICT, DB_UNAVAILABLE, QUEUE_UNAVAILABLE, ServiceError, Unavailable
from service.labelstudio.plugin import LabelStudioPlugin
from service.rounds.reconciler import Reconciler
from service.runtime.readiness import Readiness
from service.settings import Settings, get_settings
from service.store.db import is_conflict, is_unavailable
from service.store.migrate import upgrade_head

log = logging.getLogger("camloop.api")


class BodyTooLarge(HTTPException):
    """Raised from inside `receive` when a streamed body passes the limit. An HTTPException, so
    FastAPI's body reader re-raises it as is (it turns other exceptions into a 400)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes (CAMLOOP_MAX_UPLOAD_BYTES)")


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413.

    A declared Content-Length over the limit is refused before any byte is read; a chunked body
    is counted as it streams and cut off at the limit, so an oversized upload never sits in memory."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = None
        for k, v in scope.get("headers") or ():
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    return await _json(send, 400, {"detail": "malformed Content-Length header"})
        if declared is not None and declared > self.limit:
            return await _json(send, 413, {"detail": BodyTooLarge(self.limit).detail})
        seen = 0

        async def counting_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body") or b"")
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return msg

        await self.app(scope, counting_receive, send)


class InternalErrors:
    """ASGI middleware: an unexpected exception becomes a JSON 500 with an error id; the traceback
    goes to the log under that id. Handled here, inside Starlette's ServerErrorMiddleware, so the
    exception is not re-raised to the server: uvicorn would otherwise close the keep-alive
    connection and the client's next request on it would fail with a connection reset."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 — everything unexpected, by definition
            if started:
                raise
            error_id = uuid.uuid4().hex[:12]
            log.error("%s %s → 500 (error id %s)", scope.get("method"), scope.get("path"), error_id, exc_info=exc)
            await _json(send, 500, {"detail": "internal error; the server log has the details", "error_id": error_id})


async def _json(send, status: int, body: dict, headers: dict | None = None) -> None:
    data = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": data})


def _unavailable(detail: str, retry_after: int = Unavailable.retry_after_s) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(retry_after)})


def create_app(settings: Settings | None = None, *, reconcile: bool = True, migrate: bool = True,
               labelstudio: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if migrate:
            upgrade_head(settings)
        settle_heap()
        rec = Reconciler(settings, settings.reconcile_interval_s) if reconcile else None
        if rec:
            rec.start()
        app.state.reconciler = rec
        try:
            yield
        finally:
            if rec:
                rec.stop()
                rec.join(timeout=5)

    app = FastAPI(title="camloop", version="0.1.0", lifespan=lifespan,
                  description="Human-in-the-loop active learning for images. Bearer API keys; /healthz is open.")
    app.state.settings = settings
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    # A dashboard's cached poll (GET metrics, the page) is answered before routing; inside
    # InternalErrors, so that a fault in it is a 500 with an error id too.
    app.add_middleware(FastPolls, settings=settings)
    app.add_middleware(InternalErrors)  # added last = outermost of ours

    @app.exception_handler(ServiceError)
    async def _service_error(_req: Request, exc: ServiceError):
        if isinstance(exc, Unavailable):
            return _unavailable(str(exc), exc.retry_after_s)
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(SQLAlchemyError)
    async def _db_error(req: Request, exc: SQLAlchemyError):
        if isinstance(exc, DataError):
            # A value the schema let through but the column cannot hold (PostgreSQL: integer out
            # of range, string too long). The schemas bound what they know; this is the net.
            log.warning("%s %s → 422 value does not fit the database: %s", req.method, req.url.path,
                        type(getattr(exc, "orig", exc)).__name__)
            return JSONResponse({"detail": "a value in the request is out of range or too long for the store"},
                                status_code=422)
        if is_conflict(exc):
            log.warning("%s %s → 503 transaction aborted by the database (%s)", req.method, req.url.path,
                        type(getattr(exc, "orig", exc)).__name__)
            return _unavailable(DB_CONFLICT, retry_after=1)
        if is_unavailable(exc):
            # One line, no traceback, no SQL: the driver's message names host/port, never a password.
            orig = getattr(exc, "orig", None) or exc
            first = (str(orig).strip().splitlines() or [""])[0][:300]
            log.warning("%s %s → 503 database unavailable: %s: %s", req.method, req.url.path,
                        type(orig).__name__, first)
            return _unavailable(DB_UNAVAILABLE)
        return _internal(req, exc)

    @app.exception_handler(OverflowError)
    async def _overflow(req: Request, exc: OverflowError):  # SQLite: "Python int too large to convert"
        return JSONResponse({"detail": "a number in the request is out of range"}, status_code=422)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis_error(req: Request, exc: Exception):
        log.warning("%s %s → 503 job queue unavailable: %s", req.method, req.url.path, type(exc).__name__)
        return _unavailable(QUEUE_UNAVAILABLE)

    def _internal(req: Request, exc: BaseException) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        log.error("%s %s → 500 (error id %s)", req.method, req.url.path, error_id, exc_info=exc)
        return JSONResponse({"detail": "internal error; the server log has the details", "error_id": error_id},
                            status_code=500)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict:
        """Liveness: the process answers (no store, no Redis: a probe that restarts on failure
        must not restart the API for an outage elsewhere). Readiness is /readyz."""
        return {"status": "ok"}

    readiness = Readiness(settings)

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "not ready: the problems say why"}})
    def readyz() -> JSONResponse:
        """Readiness: live workers on camloop's queues, jobs waiting, and 503 when no worker has
        been seen for CAMLOOP_WORKER_GRACE_S while jobs wait (or Redis does not answer)."""
        answer = readiness.check()
        return JSONResponse(answer, status_code=200 if answer["status"] == "ready" else 503)

    collector = StoreCollector(settings)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse,
             responses={401: {"description": "CAMLOOP_METRICS_REQUIRE_KEY is set and no valid key was sent"}})
    def prometheus(request: Request) -> PlainTextResponse:
        """Prometheus scrape: counts by stage and by class (class names included). Open unless
        CAMLOOP_METRICS_REQUIRE_KEY=true; then any API key (engineer or dashboard) reads it."""
        if settings.metrics_require_key:
            authenticate(request, settings)  # 401 without a valid key
        return PlainTextResponse(render(collector), media_type="text/plain; version=0.0.4")

    app.include_router(router, prefix="/api/v1")
    mlflow_log.install(app, settings)  # with MLFLOW_TRACKING_URI and the mlflow extra: each round logged
    if labelstudio:
        # The one plug-in: webhook, signed media and heatmap routes always; pushing batches and
        # the reconciliation poller only when CAMLOOP_LABEL_STUDIO_URL and _TOKEN are set.
        LabelStudioPlugin(settings).install(app, reader=caller, writer=writer)
    return app
