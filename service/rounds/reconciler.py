"""The reconciler: moves every open round as far as the facts allow, again and again.

`advance(settings, project_id, number)` is idempotent and safe to call any time, from any
number of processes: it runs the handler of the round's state (service.rounds.handlers) until
the state stops changing. A background thread in the API process calls `reconcile_all` every
~0.5 s, and request handlers call `advance` for their project.

An error inside a handler that is not an outage (Redis or the database away: those pass, and
the next tick tries again) moves the round to `failed` with the reason, once — never a round
stuck in its state with a traceback in the log several times a second — so a retry can follow
the fix.
"""
from __future__ import annotations

import logging
import threading

from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from service.core.projects import get_project
from service.rounds import handlers, hooks
from service.rounds.lifecycle import get_round, start_round
from service.rounds.state import OPEN_STATES, RoundState, fail
from service.runtime import jobqueue
from service.runtime.failure_log import FailureStreak
from service.settings import Settings
from service.store import Job, Round
from service.store.db import is_conflict, is_unavailable, session_scope
from workers.engine.config import ProjectConfig

log = logging.getLogger("camloop.rounds")

_lock = threading.RLock()  # one advance at a time per process; the CAS updates guard across processes


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, RedisError) or (isinstance(exc, SQLAlchemyError)
                                           and (is_unavailable(exc) or is_conflict(exc)))


def advance(settings: Settings, project_id: int, number: int) -> str:
    """Move one round as far as the facts allow; returns its state."""
    entered: list[str] = []
    try:
        with _lock, session_scope(settings) as s:
            project = get_project(s, project_id)
            rnd = get_round(s, project_id, number)
            x = handlers.Ctx(s, settings, project, rnd, jobqueue.connection(settings),
                             ProjectConfig.model_validate(project.config or {}), entered)
            while True:
                before = rnd.state
                handler = handlers.HANDLERS.get(RoundState(before))
                if handler is None:
                    break
                handler(x)
                if rnd.state == before:
                    break
            state = rnd.state
    except Exception as exc:  # noqa: BLE001 — sorted below: outage (try again) or the round's own error
        if _transient(exc):
            raise
        state = _fail_on_error(settings, project_id, number, exc)
        entered = [state] if state == RoundState.FAILED.value else []
    hooks.run(settings, project_id, number, entered)
    if RoundState.CLOSED.value in entered:
        _auto_next(settings, project_id)
    return state


def _fail_on_error(settings: Settings, pid: int, number: int, exc: BaseException) -> str:
    with _lock, session_scope(settings) as s:
        rnd = get_round(s, pid, number)
        if rnd.state in (RoundState.CLOSED.value, RoundState.FAILED.value, RoundState.LABELING.value):
            log.exception("project %s round %s (%s): %s", pid, number, rnd.state, exc)
            return rnd.state
        stage = rnd.state
        if fail(s, rnd, stage, f"{stage}: {type(exc).__name__}: {exc}"):
            log.error("project %s round %s failed in %s: %s", pid, number, stage, exc, exc_info=exc)
        return rnd.state


def _auto_next(settings: Settings, pid: int) -> None:
    from service.errors import Conflict, Unprocessable

    with session_scope(settings) as s:
        project = get_project(s, pid)
        if not (project.config or {}).get("auto_next_round"):
            return
        last = s.scalar(select(Round).where(Round.project_id == pid).order_by(Round.number.desc()).limit(1))
        if last is None or not (last.progress or {}).get("queued"):
            return  # the round queued nothing: another round would queue nothing either
        try:
            start_round(s, settings, project)
        except (Conflict, Unprocessable) as e:
            log.info("project %s: no automatic next round: %s", pid, e)


def advance_project(settings: Settings, project_id: int) -> None:
    """Advance the project's open rounds and its pending ingest jobs."""
    with session_scope(settings) as s:
        open_rounds = list(s.scalars(select(Round.number).where(Round.project_id == project_id,
                                                                Round.state.in_(OPEN_STATES))))
        pending_ingest = s.scalar(select(func.count()).select_from(Job).where(
            Job.project_id == project_id, Job.kind == "ingest", Job.state.in_(("queued", "started"))))
    outage = None
    for n in open_rounds:
        try:
            advance(settings, project_id, n)
        except Exception as exc:  # noqa: BLE001 — an outage (advance fails rounds for anything else)
            outage = outage or exc  # the other rounds still get their turn; raised once, below
    if pending_ingest and not open_rounds:
        with _lock, session_scope(settings) as s:
            handlers.ingest_state(s, settings, project_id, jobqueue.connection(settings))
    if outage is not None:
        raise outage


def reconcile_all(settings: Settings) -> None:
    with session_scope(settings) as s:
        pids = set(s.scalars(select(Round.project_id).where(Round.state.in_(OPEN_STATES))))
        pids |= set(s.scalars(select(Job.project_id).where(Job.kind == "ingest", Job.state.in_(("queued", "started")))))
    for pid in sorted(pids):
        advance_project(settings, pid)


class Reconciler(threading.Thread):
    """Background loop in the API process: reconcile_all every `interval` seconds."""

    def __init__(self, settings: Settings, interval: float = 0.5):
        super().__init__(name="camloop-reconciler", daemon=True)
        self.settings, self.interval = settings, interval
        self._stop_evt = threading.Event()

    def run(self) -> None:
        streak = FailureStreak(log, "reconcile")
        while not self._stop_evt.is_set():
            try:
                reconcile_all(self.settings)
                streak.succeeded()
            except Exception as exc:  # noqa: BLE001 — keep reconciling after a transient DB/Redis error
                streak.failed(exc)
            self._stop_evt.wait(self.interval)

    def stop(self) -> None:
        self._stop_evt.set()
