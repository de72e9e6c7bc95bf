"""/api/v1 routes. Each: authenticate, open a transaction, call one service function, shape the answer."""
from __future__ import annotations

import asyncio

import logging
import threading
import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from service.core import items as items_svc
from service.core import labels as labels_svc
from service.core import metrics as metrics_svc
from service.core import projects as projects_svc
from service import rounds as rounds_svc
from service.api.auth import Caller, authenticate, require_write
from service.api.schemas import MAX_ID, ClassChangeIn, ItemsIn, LabelsIn, ProjectIn
from service.store.db import is_conflict, session_scope
from service.errors import NotFound
from service.settings import Settings
from service.store import Item, Job, QueueEntry, Round

router = APIRouter()
log = logging.getLogger("camloop.api")

# Ids are bounded in the contract (the store's INTEGER columns): a larger number is a 422 from
# validation, not an overflow inside the database driver (found by tests/test_fuzz_openapi.py).
Pid = Annotated[int, Path(ge=1, le=MAX_ID, description="project id")]
Iid = Annotated[int, Path(ge=1, le=MAX_ID, description="item id")]
RoundNo = Annotated[int, Path(ge=1, le=MAX_ID, description="round number")]


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


# async: a key check is a hash and a constant-time compare, microseconds; a sync dependency
# would cost every request a hop to the thread pool and back.
async def caller(request: Request) -> Caller:
    return authenticate(request, settings_of(request))


async def writer(c: Caller = Depends(caller)) -> Caller:
    return require_write(c)


_nudged: dict[int, float] = {}   # project → monotonic time its last nudge from a request started
_nudge_lock = threading.Lock()


def _advance(settings: Settings, pid: int, number: int | None = None, *, force: bool = True) -> None:
    """Advance the project's rounds (or round `number`) now.

    Requests that start work (a round start or retry, registering images, a Label Studio sync)
    call it with force, so their answer shows the jobs they caused. Reads and labels only nudge
    (force=False): at most once per reconcile_interval_s per project — a dashboard polling at
    200 req/s, or 50 annotators, would otherwise run the state machine hundreds of times a
    second, one at a time under rounds' lock; the background reconciler ticks anyway.
    Redis down is no reason to fail a request whose work is committed: the store is the
    truth, and the reconciler enqueues (again) what is missing once Redis answers."""
    if not force:
        now = time.monotonic()
        with _nudge_lock:
            if now - _nudged.get(pid, float("-inf")) < settings.reconcile_interval_s:
                return
            _nudged[pid] = now
    try:
        if number is None:
            rounds_svc.advance_project(settings, pid)
        else:
            rounds_svc.advance(settings, pid, number)
    except RedisError as e:
        log.warning("project %s: jobs not enqueued now, job queue unavailable (%s); the reconciler will",
                    pid, type(e).__name__)


# ------------------------------------------------------------------- projects

@router.post("/projects", status_code=201, tags=["projects"])
def create_project(body: ProjectIn, request: Request, c: Caller = Depends(writer)) -> dict:
    settings = settings_of(request)
    with session_scope(settings) as s:
        pid = projects_svc.create_project(s, body.name, body.classes, body.config).id
    problems = projects_svc.run_created_hooks(settings, pid)
    with session_scope(settings) as s:
        view = projects_svc.project_view(projects_svc.get_project(s, pid), projects_svc.class_statuses(s, pid))
    return {**view, "warnings": problems} if problems else view


@router.get("/projects/{pid}", tags=["projects"])
def get_project(pid: Pid, request: Request, c: Caller = Depends(caller)) -> dict:
    with session_scope(settings_of(request)) as s:
        p = projects_svc.get_project(s, pid)
        return projects_svc.project_view(p, projects_svc.class_statuses(s, pid))


# ------------------------------------------------------------------- items

@router.post("/projects/{pid}/items", status_code=202, tags=["items"])
def register_items(pid: Pid, body: ItemsIn, request: Request, c: Caller = Depends(writer)) -> dict:
    settings = settings_of(request)
    entries = items_svc.expand_request(settings, body.folder, [e.model_dump() for e in body.items or []],
                                       body.split, body.recursive)
    with session_scope(settings) as s:
        out = items_svc.register(s, settings, projects_svc.get_project(s, pid), entries, c.who)
    _advance(settings, pid)  # enqueue the ingest jobs now, not at the reconciler's next tick
    return out


@router.get("/projects/{pid}/items", tags=["items"])
def list_items(pid: Pid, request: Request, split: str | None = None, status: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
               offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0, c: Caller = Depends(caller)) -> dict:
    with session_scope(settings_of(request)) as s:
        projects_svc.get_project(s, pid)
        q = select(Item).where(Item.project_id == pid).order_by(Item.id)
        if split:
            q = q.where(Item.split == split)
        if status:
            q = q.where(Item.status == status)
        rows = s.scalars(q.limit(limit).offset(offset))
        return {"items": [{"id": it.id, "uri": it.uri, "split": it.split, "status": it.status, "label": it.label,
                           "reason": it.reason} for it in rows]}


@router.get("/projects/{pid}/items/{iid}/heatmap.png", tags=["items"], response_class=Response)
def heatmap(pid: Pid, iid: Iid, request: Request, c: Caller = Depends(caller)) -> Response:
    from service.core.heatmap_view import heatmap_png

    _advance(settings_of(request), pid, force=False)
    with session_scope(settings_of(request)) as s:
        png = heatmap_png(s, settings_of(request), items_svc.get_item(s, pid, iid))
    return Response(png, media_type="image/png")


# ------------------------------------------------------------------- rounds

def _round_view(s, rnd: Round) -> dict:
    jobs = s.scalars(select(Job).where(Job.round_id == rnd.id).order_by(Job.id))
    return {"project_id": rnd.project_id, "number": rnd.number, "state": rnd.state, "stage": rnd.state,
            "error": rnd.error, "progress": rnd.progress, "attempt": rnd.attempt,
            "model_version_id": rnd.model_version_id,
            "started_at": rnd.started_at.isoformat() if rnd.started_at else None,
            "finished_at": rnd.finished_at.isoformat() if rnd.finished_at else None,
            "jobs": [{"id": j.rq_id, "kind": j.kind, "shard": j.shard, "state": j.state, "attempts": j.attempts,
                      "error": j.error, "duration_s": j.duration_s} for j in jobs]}


@router.post("/projects/{pid}/rounds", status_code=202, tags=["rounds"])
def start_round(pid: Pid, request: Request, c: Caller = Depends(writer)) -> dict:
    settings = settings_of(request)
    with session_scope(settings) as s:
        rnd = rounds_svc.start_round(s, settings, projects_svc.get_project(s, pid))
        number = rnd.number
    _forget_metrics(settings, pid)
    _advance(settings, pid, number)  # enqueue the first jobs before answering
    with session_scope(settings) as s:
        return _round_view(s, rounds_svc.get_round(s, pid, number))


@router.get("/projects/{pid}/rounds", tags=["rounds"])
def list_rounds(pid: Pid, request: Request, c: Caller = Depends(caller)) -> dict:
    with session_scope(settings_of(request)) as s:
        projects_svc.get_project(s, pid)
        rows = s.scalars(select(Round).where(Round.project_id == pid).order_by(Round.number))
        return {"rounds": [_round_view(s, r) for r in rows]}


@router.get("/projects/{pid}/rounds/{n}", tags=["rounds"])
def get_round(pid: Pid, n: RoundNo, request: Request, c: Caller = Depends(caller)) -> dict:
    settings = settings_of(request)
    _advance(settings, pid, force=False)
    with session_scope(settings) as s:
        return _round_view(s, rounds_svc.get_round(s, pid, n))


@router.post("/projects/{pid}/rounds/{n}/retry", status_code=202, tags=["rounds"])
def retry_round(pid: Pid, n: RoundNo, request: Request, c: Caller = Depends(writer)) -> dict:
    settings = settings_of(request)
    with session_scope(settings) as s:
        rounds_svc.retry_round(s, projects_svc.get_project(s, pid), n)
    _advance(settings, pid, n)
    with session_scope(settings) as s:
        return _round_view(s, rounds_svc.get_round(s, pid, n))


# ------------------------------------------------------------------- queue, metrics, labels

@router.get("/projects/{pid}/queue", tags=["queue"])
def queue(pid: Pid, request: Request, round: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
          include_labeled: bool = False,
          c: Caller = Depends(caller)) -> dict:
    settings = settings_of(request)
    _advance(settings, pid, force=False)
    with session_scope(settings) as s:
        projects_svc.get_project(s, pid)
        q = select(Round).where(Round.project_id == pid)
        q = q.where(Round.number == round) if round is not None else q.where(Round.state == "labeling")
        rnd = s.scalar(q.order_by(Round.number.desc()).limit(1))
        if rnd is None:
            if round is not None:
                raise NotFound(f"round {round} not found")
            return {"round": None, "items": []}
        rows = s.execute(select(QueueEntry, Item).join(Item, Item.id == QueueEntry.item_id)
                         .where(QueueEntry.round_id == rnd.id).order_by(QueueEntry.rank)).all()
        return {"round": rnd.number, "state": rnd.state, "items": [
            {"rank": e.rank, "item_id": it.id, "uri": it.uri, "status": it.status, "predicted": e.pred,
             "scores": e.scores, "label": it.label}
            for e, it in rows if include_labeled or it.status == "queued"]}


# Dashboards (read-only keys) polling GET /metrics hundreds of times a second get the answer
# computed at most once per reconcile_interval_s per project: never more than the background
# reconciler's tick stale (0.5 s by default). Engineer keys — the clients that also write (CLI,
# demo, scripts) — always get a fresh answer, so they read their own writes. Labels do not drop
# the cache (with 50 annotators posting it would never be reused); class changes and round
# starts do.
# The answer is kept encoded: serialising the nested dict again is most of a cached request's cost.
# Single flight, stale while revalidate: when an entry expires, exactly one recompute runs while
# the other dashboard requests keep getting the previous bytes; without it, every request that
# arrived during a recompute missed too and ran its own (measured at 200 req/s: 4–10 concurrent
# recomputes slowing each other until the server never caught up). Only a first request, or one
# after a write dropped the entry, waits for the recompute.
# Keyed by database too: several apps (tests) in one process must not share project ids.
_metrics_cache: dict[tuple[str, int], tuple[float, bytes]] = {}
_metrics_refresh: dict[tuple[str, int], asyncio.Future] = {}
_metrics_generation: dict[tuple[str, int], int] = {}


def _metrics_key(settings: Settings, pid: int) -> tuple[str, int]:
    return settings.database_url_effective, pid


def _forget_metrics(settings: Settings, pid: int) -> None:
    key = _metrics_key(settings, pid)
    _metrics_cache.pop(key, None)
    # A recompute that started before the write must not store what it read.
    _metrics_generation[key] = _metrics_generation.get(key, 0) + 1


def _metrics_body(settings: Settings, pid: int, store: bool = True) -> bytes:
    key = _metrics_key(settings, pid)
    t0, generation = time.monotonic(), _metrics_generation.get(key, 0)
    _advance(settings, pid, force=False)
    with session_scope(settings) as s:
        out = metrics_svc.project_metrics(s, projects_svc.get_project(s, pid))
    body = JSONResponse(jsonable_encoder(out)).body
    if store and _metrics_generation.get(key, 0) == generation:
        _metrics_cache[key] = (t0, body)
    return body


def _refresh_metrics(settings: Settings, pid: int) -> asyncio.Future:
    """The one recompute in flight for this project (started if there is none)."""
    key = _metrics_key(settings, pid)
    fut = _metrics_refresh.get(key)
    if fut is None:
        fut = asyncio.ensure_future(run_in_threadpool(_metrics_body, settings, pid))
        _metrics_refresh[key] = fut
        fut.add_done_callback(lambda f, k=key: _metrics_refresh.pop(k, None) if _metrics_refresh.get(k) is f else None)
    return fut


@router.get("/projects/{pid}/metrics", tags=["metrics"])
async def project_metrics(pid: Pid, request: Request, c: Caller = Depends(caller)) -> dict:
    # async: a cached answer is served on the event loop; only a miss (database work) goes to
    # the thread pool.
    settings = settings_of(request)
    if c.can_write:
        return Response(await run_in_threadpool(_metrics_body, settings, pid), media_type="application/json")
    hit = _metrics_cache.get(_metrics_key(settings, pid))
    if hit is not None:
        if time.monotonic() - hit[0] >= settings.reconcile_interval_s:
            _refresh_metrics(settings, pid)  # in the background; this request gets the previous answer
        return Response(hit[1], media_type="application/json")
    # shield: a client that gives up must not cancel the recompute the others are waiting for
    return Response(await asyncio.shield(_refresh_metrics(settings, pid)), media_type="application/json")


@router.post("/projects/{pid}/labels", tags=["labels"])
def post_labels(pid: Pid, body: LabelsIn, request: Request, response: Response, c: Caller = Depends(writer)) -> dict:
    settings = settings_of(request)
    # Rows are written in item order, so two requests labeling the same items lock them in the
    # same order (no deadlock between them); the answer keeps the request's order. A transaction
    # the database aborted to break a deadlock with some other writer is run again (it rolled
    # back entirely, and client ids make a repeat count nothing twice).
    # One batch (labels.record_labels: a handful of statements, not ~7 per label; 0.5 ms instead of
    # 3.6 ms a label on PostgreSQL in bench/orchestration_bench.py), same outcome as one by one.
    order = sorted(range(len(body.labels)), key=lambda k: body.labels[k].item_id)
    for attempt in range(3):
        out: list[dict | None] = [None] * len(body.labels)
        try:
            with session_scope(settings) as s:
                p = projects_svc.get_project(s, pid)
                rows = labels_svc.record_labels(s, p, [
                    (body.labels[k].item_id, body.labels[k].class_name, body.labels[k].who or c.who,
                     body.labels[k].client_id) for k in order], "api")
                for k, (row, created) in zip(order, rows):
                    out[k] = labels_svc.label_view(row, created)
            break
        except SQLAlchemyError as e:
            if attempt == 2 or not is_conflict(e):
                raise
            log.warning("POST labels of project %s: %s, running it again", pid, type(e.orig).__name__)
    response.status_code = 201 if any(o["created"] for o in out) else 200
    _advance(settings, pid, force=False)
    return {"labels": out}


@router.post("/projects/{pid}/classes/{name}/exclude", tags=["classes"])
def exclude_class(pid: Pid, name: str, body: ClassChangeIn, request: Request, c: Caller = Depends(writer)) -> dict:
    settings = settings_of(request)
    with session_scope(settings) as s:
        projects_svc.set_class_status(s, pid, name, True, c.who, body.reason or "excluded by an engineer")
        view = projects_svc.project_view(projects_svc.get_project(s, pid), projects_svc.class_statuses(s, pid))
    _forget_metrics(settings, pid)  # after the commit: a read racing it cannot cache the old state
    return view


@router.post("/projects/{pid}/classes/{name}/include", tags=["classes"])
def include_class(pid: Pid, name: str, body: ClassChangeIn, request: Request, c: Caller = Depends(writer)) -> dict:
    settings = settings_of(request)
    with session_scope(settings) as s:
        projects_svc.set_class_status(s, pid, name, False, c.who, body.reason or "included by an engineer")
        view = projects_svc.project_view(projects_svc.get_project(s, pid), projects_svc.class_statuses(s, pid))
    _forget_metrics(settings, pid)  # after the commit: a read racing it cannot cache the old state
    return view


# ------------------------------------------------------------------- Label Studio

@router.get("/projects/{pid}/review", tags=["label-studio"])
def review(pid: Pid, request: Request, c: Caller = Depends(caller)) -> dict:
    """Items that need a person's decision (ties, disagreements, unusable answers) and the
    annotators' agreement per class, with how often they said the model looked at the wrong region."""
    from service.labelstudio.orchestrate import review as review_svc

    settings = settings_of(request)
    with session_scope(settings) as s:
        projects_svc.get_project(s, pid)
    return review_svc(settings, pid)


@router.post("/projects/{pid}/label-studio/sync", tags=["label-studio"])
def sync_label_studio(pid: Pid, request: Request, c: Caller = Depends(writer)) -> dict:
    """Reconcile with Label Studio now (the background poll does the same every few seconds)."""
    from service.labelstudio.client import LabelStudioError
    from service.labelstudio.orchestrate import sync_project

    settings = settings_of(request)
    with session_scope(settings) as s:
        projects_svc.get_project(s, pid)
    try:
        out = sync_project(settings, pid)
    except LabelStudioError as e:  # not configured, unreachable, or it refused: say which
        raise HTTPException(502 if settings.label_studio_url else 409, str(e)) from None
    _advance(settings, pid)
    return out
