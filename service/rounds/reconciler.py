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
import time

from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from engine.jobkinds import JobKind
from service.core.metrics import stopping_of
from service.core.projects import get_project
from service.errors import Conflict, Unprocessable
from service.rounds import handlers, hooks, inputs, swap
from service.rounds.lifecycle import get_round, start_round
from service.rounds.state import OPEN_STATES, RoundState, fail
from service.runtime import jobqueue
from service.runtime.failure_log import FailureStreak
from service.settings import Settings
from service.store import JOB_WAITING, Job, Round
from service.store.db import is_conflict, is_unavailable, session_scope

log = logging.getLogger("camloop.rounds")

_lock = threading.RLock()  # one advance at a time per process; the CAS updates guard across processes
_streaks: dict[tuple[str, int, int], FailureStreak] = {}  # rounds whose handler keeps failing where `failed` is no way out


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, RedisError) or (isinstance(exc, SQLAlchemyError)
                                           and (is_unavailable(exc) or is_conflict(exc)))


def advance(settings: Settings, project_id: int, number: int) -> str:
    """Move one round as far as the facts allow; returns its state."""
    entered: list[str] = []
    seen: str | None = None  # the state whose handler was running when an error came
    try:
        with _lock, session_scope(settings) as s:
            project = get_project(s, project_id)
            rnd = get_round(s, project_id, number)
            seen = rnd.state
            if RoundState(seen) not in handlers.HANDLERS:
                # Closed or failed since the caller listed it open (another thread or replica):
                # nothing to do — and no reading of a config that may be what failed it.
                return seen
            x = handlers.Ctx(s, settings, project, rnd, jobqueue.connection(settings),
                             inputs.config(project), entered)
            while True:
                before = seen = rnd.state
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
        state, failing = _fail_on_error(settings, project_id, number, exc, seen)
        entered = [state] if state == RoundState.FAILED.value else []
    else:
        failing = False
    if not failing and (streak := _streaks.pop((settings.database_url_effective, project_id, number), None)) is not None:
        streak.succeeded()
    hooks.run(settings, project_id, number, entered)
    if RoundState.CLOSED.value in entered:
        _auto_next(settings, project_id)
    return state


def _fail_on_error(settings: Settings, pid: int, number: int, exc: BaseException,
                   seen: str | None) -> tuple[str, bool]:
    """(the round's state now, whether it is left failing in a state with no way to `failed`)."""
    with _lock, session_scope(settings) as s:
        rnd = get_round(s, pid, number)
        if seen is not None and rnd.state != seen:
            # Another process (an API replica) moved the round while this one's handler ran: the
            # error belongs to a transition this process lost (e.g. a unique constraint the
            # winner's rows hold), not to the round, which the winner already took further.
            # Debug when it was failed meanwhile (most likely for this same error, by the thread or
            # replica that met it first: its record is the one that counts).
            log.log(logging.DEBUG if rnd.state == RoundState.FAILED.value else logging.WARNING,
                    "project %s round %s: %s while in %s, which another process left for %s meanwhile; "
                    "not failing the round", pid, number, type(exc).__name__, seen, rnd.state)
            return rnd.state, False
        if rnd.state in (RoundState.CLOSED.value, RoundState.FAILED.value, RoundState.LABELING.value):
            # No `failed` from these states: the error is logged, once per streak (a traceback
            # every tick would be the log flood the backstop exists to prevent).
            key = (settings.database_url_effective, pid, number)
            if key not in _streaks:
                _streaks[key] = FailureStreak(log, f"project {pid} round {number} ({rnd.state})")
            _streaks[key].failed(exc)
            return rnd.state, True
        stage = rnd.state
        if fail(s, rnd, stage, f"{stage}: {type(exc).__name__}: {exc}"):
            log.error("project %s round %s failed in %s: %s", pid, number, stage, exc, exc_info=exc)
        return rnd.state, False


def _auto_next(settings: Settings, pid: int) -> None:
    with session_scope(settings) as s:
        project = get_project(s, pid)
        try:
            config = inputs.config(project)
        except ValidationError as e:  # changed since the round started? start_round would refuse it too
            log.info("project %s: no automatic next round: its config is invalid: %s", pid, e)
            return
        if not config.auto_next_round:
            return
        last = s.scalar(select(Round).where(Round.project_id == pid).order_by(Round.number.desc()).limit(1))
        if last is None or not (last.progress or {}).get("queued"):
            return  # the round queued nothing: another round would queue nothing either
        if config.stop_when_stable:
            signal = stopping_of(s, project)
            if signal["suggest_stop"]:
                # The closed round says why no round followed it (metrics show it too).
                last.progress = {**(last.progress or {}), "auto_next_stopped": signal["reason"]}
                log.info("project %s: no automatic next round after round %s: %s", pid, last.number,
                         signal["reason"])
                return
        try:
            start_round(s, settings, project)
        except (Conflict, Unprocessable) as e:
            log.info("project %s: no automatic next round: %s", pid, e)


def advance_project(settings: Settings, project_id: int) -> None:
    """Advance the project's open rounds and its pending ingest jobs."""
    with session_scope(settings) as s:
        open_rounds = list(s.scalars(select(Round.number).where(Round.project_id == project_id,
                                                                Round.state.in_(OPEN_STATES))))
        # The project's waiting ingest jobs (applied here while no round is open) and swap-test
        # jobs (they outlive their round's labeling), in one query.
        pending = dict(s.execute(select(Job.kind, func.count()).where(
            Job.project_id == project_id, Job.kind.in_((JobKind.INGEST, JobKind.SWAP)),
            Job.state.in_(JOB_WAITING)).group_by(Job.kind)).all())
        pending_ingest, pending_swap = pending.get(JobKind.INGEST, 0), pending.get(JobKind.SWAP, 0)
    outage = None
    for n in open_rounds:
        try:
            advance(settings, project_id, n)
        except Exception as exc:  # noqa: BLE001 — an outage (advance fails rounds for anything else)
            outage = outage or exc  # the other rounds still get their turn; raised once, below
    if pending_ingest and not open_rounds:
        with _lock, session_scope(settings) as s:
            handlers.ingest_state(s, settings, project_id, jobqueue.connection(settings))
    if pending_swap:
        # A background-swap test outlives its round's labeling: its report is stored when it ends.
        with _lock, session_scope(settings) as s:
            swap.apply_finished(s, settings, project_id, jobqueue.connection(settings))
    if outage is not None:
        raise outage


def reconcile_all(settings: Settings) -> None:
    with session_scope(settings) as s:
        pids = set(s.scalars(select(Round.project_id).where(Round.state.in_(OPEN_STATES))))
        pids |= set(s.scalars(select(Job.project_id).where(Job.kind.in_((JobKind.INGEST, JobKind.SWAP)),
                                                           Job.state.in_(JOB_WAITING))))
    for pid in sorted(pids):
        advance_project(settings, pid)


_nudged: dict[int, float] = {}   # project → monotonic time its last nudge from a request started
_nudge_lock = threading.Lock()


def nudge(settings: Settings, pid: int, number: int | None = None, *, force: bool = True) -> None:
    """Advance the project's rounds (or round `number`) now, for a request.

    Requests that start work (a round start or retry, registering images, a Label Studio sync)
    call it with force, so their answer shows the jobs they caused. Reads and labels only nudge
    (force=False): at most once per reconcile_interval_s per project — a dashboard polling at
    200 req/s, or 50 annotators, would otherwise run the state machine hundreds of times a
    second, one at a time under the reconciler's lock; the background reconciler ticks anyway.
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
            advance_project(settings, pid)
        else:
            advance(settings, pid, number)
    except RedisError as e:
        log.warning("project %s: jobs not enqueued now, job queue unavailable (%s); the reconciler will",
                    pid, type(e).__name__)


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
