"""App factory: migrations at start, the reconciler thread, error mapping, the routers."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from service.errors import ServiceError
from service.settings import Settings, get_settings

log = logging.getLogger("camloop.api")


def create_app(settings: Settings | None = None, *, reconcile: bool = True, migrate: bool = True,
               labelstudio: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from service.rounds import Reconciler

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if migrate:
            from service.migrate import upgrade_head
            upgrade_head(settings)
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

    @app.exception_handler(ServiceError)
    async def _service_error(_req: Request, exc: ServiceError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict:
        return {"status": "ok"}

    from service.observability import StoreCollector, render
    collector = StoreCollector(settings)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(render(collector), media_type="text/plain; version=0.0.4")

    from service.api.routes import router
    app.include_router(router, prefix="/api/v1")
    if labelstudio:
        # Webhook, signed media and heatmap routes always; the push hook and the reconciliation
        # poller act only when CAMLOOP_LABEL_STUDIO_URL and _TOKEN are set.
        from service.labelstudio.orchestrate import install
        install(app, settings, poll=settings.label_studio_poll_interval_s > 0)
    return app
