"""Per-class metrics for dashboards and engineers.

Dashboards (read-only keys) polling GET /metrics hundreds of times a second get the answer
computed at most once per reconcile_interval_s per project: never more than the background
reconciler's tick stale (0.5 s by default). Engineer keys — the clients that also write (CLI,
demo, scripts) — always get a fresh answer, so they read their own writes. Labels do not drop
the cache (with 50 annotators posting it would never be reused); class changes and round
starts do.
The answer is kept encoded: serialising the nested dict again is most of a cached request's cost.
The cache (single flight, stale while revalidate) is service.api.cache's, shared with the project page.
"""
from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.api.cache import PolledCache, forget_project
from service.api.deps import CallerDep, Pid, SettingsDep
from service.api.schemas import MetricsOut
from service.core import metrics as metrics_svc
from service.core import projects as projects_svc
from service.rounds import nudge
from service.settings import Settings
from service.store.db import session_scope

router = APIRouter(tags=["metrics"])


def forget_metrics(settings: Settings, pid: int) -> None:
    """Drop the project's polled answers (GET metrics and the page)."""
    forget_project(settings, pid)


def metrics_dict(settings: Settings, pid: int) -> dict:
    """GET metrics's answer as JSON-ready data (the page draws the same)."""
    nudge(settings, pid, force=False)
    with session_scope(settings) as s:
        out = metrics_svc.project_metrics(s, projects_svc.get_project(s, pid), settings)
    return jsonable_encoder(MetricsOut.model_validate(out))


def _body(settings: Settings, pid: int) -> bytes:
    return JSONResponse(metrics_dict(settings, pid)).body


cache = PolledCache("metrics", _body, "application/json")


@router.get("/projects/{pid}/metrics", response_model=MetricsOut)
async def project_metrics(pid: Pid, settings: SettingsDep, c: CallerDep) -> Response:
    # async: a cached answer is served on the event loop; only a miss (database work) goes to
    # the thread pool.
    if c.can_write:
        return Response(await run_in_threadpool(cache.fresh, settings, pid), media_type="application/json")
    # (service.api.cache.FastPolls answers a cached hit before this route is reached)
    return Response(await cache.get(settings, pid), media_type="application/json")
