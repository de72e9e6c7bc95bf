"""Readiness (GET /readyz): is anyone doing the work that waits?

/healthz says the API process answers. It said "ok" while a round waited forever at
"waiting_for: ingest" because no worker was left (a dead worker child, a worker never started).
Readiness adds what an orchestrator or an operator needs: the live workers on camloop's queues
(RQ's worker registry, with a fresh heartbeat), the jobs the store says wait, and — when no
worker has been seen for `worker_grace_s` while jobs wait — a 503 saying so. Without waiting
jobs, no worker is not a problem (an idle installation may scale its workers to zero).
"""
from __future__ import annotations

import threading
import time

from redis.exceptions import RedisError
from sqlalchemy import func, select

from service.runtime import jobqueue
from service.runtime.worker import live_workers
from service.settings import Settings
from service.store import JOB_WAITING, Job
from service.store.db import session_scope

_CACHE_S = 1.0


class Readiness:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.last_seen = time.monotonic()  # counting from the start: a worker gets the grace to appear
        self._lock = threading.Lock()
        self._cache: tuple[float, dict] | None = None

    def check(self) -> dict:
        with self._lock:
            if self._cache is not None and time.monotonic() - self._cache[0] < _CACHE_S:
                return self._cache[1]
            answer = self._check()
            self._cache = (time.monotonic(), answer)
            return answer

    def _check(self) -> dict:
        problems: list[str] = []
        workers = None
        try:
            workers = len(live_workers(self.settings, jobqueue.connection(self.settings)))
        except (RedisError, OSError) as e:
            problems.append(f"the job queue does not answer ({type(e).__name__})")
        now = time.monotonic()
        if workers:
            self.last_seen = now
        with session_scope(self.settings) as s:
            waiting = s.scalar(select(func.count()).select_from(Job).where(Job.state.in_(JOB_WAITING))) or 0
        unseen = now - self.last_seen
        if workers == 0 and waiting and unseen > self.settings.worker_grace_s:
            problems.append(f"no worker has been seen for {unseen:.0f} s while {waiting} jobs wait: start "
                            "`camloop worker` (or look at its log)")
        return {"status": "ready" if not problems else "not ready", "workers": workers,
                "seconds_since_a_worker_was_seen": 0 if workers else round(unseen, 1), "jobs_waiting": waiting,
                "problems": problems}
