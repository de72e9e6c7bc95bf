"""What routes depend on: the settings, the caller (by key), path parameters, the nudge."""
from __future__ import annotations

import logging
import threading
import time
from typing import Annotated

from fastapi import Depends, Path, Request
from redis.exceptions import RedisError

from service.api.auth import Caller, authenticate, require_write
from service.api.schemas import MAX_ID
from service.settings import Settings

log = logging.getLogger("camloop.api")


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


# async: a key check is a hash and a constant-time compare, microseconds; a sync dependency
# would cost every request a hop to the thread pool and back.
async def caller(request: Request) -> Caller:
    return authenticate(request, settings_of(request))


async def writer(c: Caller = Depends(caller)) -> Caller:
    return require_write(c)


SettingsDep = Annotated[Settings, Depends(settings_of)]
CallerDep = Annotated[Caller, Depends(caller)]
WriterDep = Annotated[Caller, Depends(writer)]

# Ids are bounded in the contract (the store's INTEGER columns): a larger number is a 422 from
# validation, not an overflow inside the database driver (found by tests/test_fuzz_openapi.py).
Pid = Annotated[int, Path(ge=1, le=MAX_ID, description="project id")]
Iid = Annotated[int, Path(ge=1, le=MAX_ID, description="item id")]
RoundNo = Annotated[int, Path(ge=1, le=MAX_ID, description="round number")]

_nudged: dict[int, float] = {}   # project → monotonic time its last nudge from a request started
_nudge_lock = threading.Lock()


def advance(settings: Settings, pid: int, number: int | None = None, *, force: bool = True) -> None:
    """Advance the project's rounds (or round `number`) now.

    Requests that start work (a round start or retry, registering images, a Label Studio sync)
    call it with force, so their answer shows the jobs they caused. Reads and labels only nudge
    (force=False): at most once per reconcile_interval_s per project — a dashboard polling at
    200 req/s, or 50 annotators, would otherwise run the state machine hundreds of times a
    second, one at a time under the reconciler's lock; the background reconciler ticks anyway.
    Redis down is no reason to fail a request whose work is committed: the store is the
    truth, and the reconciler enqueues (again) what is missing once Redis answers."""
    from service import rounds

    if not force:
        now = time.monotonic()
        with _nudge_lock:
            if now - _nudged.get(pid, float("-inf")) < settings.reconcile_interval_s:
                return
            _nudged[pid] = now
    try:
        if number is None:
            rounds.advance_project(settings, pid)
        else:
            rounds.advance(settings, pid, number)
    except RedisError as e:
        log.warning("project %s: jobs not enqueued now, job queue unavailable (%s); the reconciler will",
                    pid, type(e).__name__)
