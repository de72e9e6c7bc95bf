"""Rounds: start (idempotent), list, one, retry."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Response
from sqlalchemy import select

from service import rounds as rounds_svc
from service.api.deps import CallerDep, Pid, RoundNo, SettingsDep, WriterDep
from service.api.routers.metrics import forget_metrics
from service.api.schemas import RoundIn, RoundOut, RoundsOut
from service.core import projects as projects_svc
from service.rounds import nudge
from service.store import Job, Round
from service.store.db import session_scope

router = APIRouter(tags=["rounds"])


def round_view(s, rnd: Round, settings) -> dict:
    jobs = s.scalars(select(Job).where(Job.round_id == rnd.id).order_by(Job.id))
    return {"job_limits": {"retries": settings.job_retries, "worker_deaths": settings.job_max_worker_deaths},
            "project_id": rnd.project_id, "number": rnd.number, "state": rnd.state, "stage": rnd.state,
            "error": rnd.error, "progress": rnd.progress or {}, "attempt": rnd.attempt,
            "train_only": bool(rnd.train_only), "model_version_id": rnd.model_version_id,
            "started_at": rnd.started_at, "finished_at": rnd.finished_at,
            "jobs": [{"id": j.rq_id, "kind": j.kind, "shard": j.shard, "state": j.state, "attempts": j.attempts,
                      "error": j.error, "duration_s": j.duration_s, "worker_deaths": j.worker_deaths or 0,
                      "retries_left": j.retries_left} for j in jobs]}


@router.post("/projects/{pid}/rounds", status_code=202, response_model=RoundOut,
             responses={200: {"description": "the round an earlier request with this Idempotency-Key started"},
                        409: {"description": "a round is working, or its batch is still being labeled (see force)"}})
def start_round(pid: Pid, settings: SettingsDep, c: WriterDep, response: Response,
                body: Annotated[RoundIn | None, Body()] = None,
                idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> dict:
    """Start the next round (train → score → select → labeling). A retry with the same
    Idempotency-Key header returns the same round instead of starting another."""
    body = body or RoundIn()
    with session_scope(settings) as s:
        rnd, created = rounds_svc.start_round(s, settings, projects_svc.get_project(s, pid),
                                              idempotency_key=idempotency_key, force=body.force,
                                              train_only=body.train_only)
        number = rnd.number
    if created:
        forget_metrics(settings, pid)
        nudge(settings, pid, number)  # enqueue the first jobs before answering
    else:
        response.status_code = 200
    with session_scope(settings) as s:
        return {**round_view(s, rounds_svc.get_round(s, pid, number), settings), "created": created}


@router.get("/projects/{pid}/rounds", response_model=RoundsOut)
def list_rounds(pid: Pid, settings: SettingsDep, c: CallerDep) -> dict:
    with session_scope(settings) as s:
        projects_svc.get_project(s, pid)
        rows = s.scalars(select(Round).where(Round.project_id == pid).order_by(Round.number))
        return {"rounds": [round_view(s, r, settings) for r in rows]}


@router.get("/projects/{pid}/rounds/{n}", response_model=RoundOut)
def get_round(pid: Pid, n: RoundNo, settings: SettingsDep, c: CallerDep) -> dict:
    nudge(settings, pid, force=False)
    with session_scope(settings) as s:
        return round_view(s, rounds_svc.get_round(s, pid, n), settings)


@router.post("/projects/{pid}/rounds/{n}/retry", status_code=202, response_model=RoundOut)
def retry_round(pid: Pid, n: RoundNo, settings: SettingsDep, c: WriterDep) -> dict:
    with session_scope(settings) as s:
        rounds_svc.retry_round(s, projects_svc.get_project(s, pid), n)
    nudge(settings, pid, n)
    with session_scope(settings) as s:
        return round_view(s, rounds_svc.get_round(s, pid, n), settings)
