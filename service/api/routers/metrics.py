"""Per-class metrics for dashboards and engineers.

Dashboards (read-only keys) polling GET /metrics hundreds of times a second get the answer
computed at most once per reconcile_interval_s per project: never more than the background
reconciler's tick stale (0.5 s by default). Engineer keys — the clients that also write (CLI,
demo, scripts) — always get a fresh answer, so they read their own writes. Labels do not drop
the cache (with 50 annotators posting it would never be reused); class changes and round
starts do.
The answer is kept encoded: serialising the nested dict again is most of a cached request's cost.
Single flight, stale while revalidate: when an entry expires, exactly one recompute runs while
the other dashboard requests keep getting the previous bytes; without it, every request that
arrived during a recompute missed too and ran its own (measured at 200 req/s: 4–10 concurrent
recomputes slowing each other until the server never caught up). Only a first request, or one
after a write dropped the entry, waits for the recompute.
Keyed by database too: several apps (tests) in one process must not share project ids.
"""
from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import CallerDep, Pid, SettingsDep
from service.api.schemas import MetricsOut
from service.core import metrics as metrics_svc
from service.core import projects as projects_svc
from service.rounds import nudge
from service.settings import Settings
from service.store.db import session_scope

router = APIRouter(tags=["metrics"])

_cache: dict[tuple[str, int], tuple[float, bytes]] = {}
_refresh: dict[tuple[str, int], asyncio.Future] = {}
_generation: dict[tuple[str, int], int] = {}


def _key(settings: Settings, pid: int) -> tuple[str, int]:
    return settings.database_url_effective, pid


def forget_metrics(settings: Settings, pid: int) -> None:
    key = _key(settings, pid)
    _cache.pop(key, None)
    # A recompute that started before the write must not store what it read, nor answer a read
    # that comes after the write: the next read starts a recompute of its own.
    _generation[key] = _generation.get(key, 0) + 1
    _refresh.pop(key, None)


def _body(settings: Settings, pid: int, store: bool = True) -> bytes:
    key = _key(settings, pid)
    t0, generation = time.monotonic(), _generation.get(key, 0)
    nudge(settings, pid, force=False)
    with session_scope(settings) as s:
        out = metrics_svc.project_metrics(s, projects_svc.get_project(s, pid))
    body = JSONResponse(jsonable_encoder(MetricsOut.model_validate(out))).body
    if store and _generation.get(key, 0) == generation:
        _cache[key] = (t0, body)
    return body


def _refresh_once(settings: Settings, pid: int) -> asyncio.Future:
    """The one recompute in flight for this project (started if there is none)."""
    key = _key(settings, pid)
    fut = _refresh.get(key)
    if fut is None:
        fut = asyncio.ensure_future(run_in_threadpool(_body, settings, pid))
        _refresh[key] = fut
        fut.add_done_callback(lambda f, k=key: _refresh.pop(k, None) if _refresh.get(k) is f else None)
    return fut


@router.get("/projects/{pid}/metrics", response_model=MetricsOut)
async def project_metrics(pid: Pid, settings: SettingsDep, c: CallerDep) -> Response:
    # async: a cached answer is served on the event loop; only a miss (database work) goes to
    # the thread pool.
    if c.can_write:
        return Response(await run_in_threadpool(_body, settings, pid), media_type="application/json")
    hit = _cache.get(_key(settings, pid))
    if hit is not None:
        if time.monotonic() - hit[0] >= settings.reconcile_interval_s:
            _refresh_once(settings, pid)  # in the background; this request gets the previous answer
        return Response(hit[1], media_type="application/json")
    # shield: a client that gives up must not cancel the recompute the others are waiting for
    return Response(await asyncio.shield(_refresh_once(settings, pid)), media_type="application/json")
