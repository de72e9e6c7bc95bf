"""The job queue's client: the RQ connection (REDIS_URL, or the bundled Redis), the queues,
idempotent enqueue, and what a job's state is.

Queue names are ``<prefix>-ingest``, ``<prefix>-train``, ``<prefix>-score`` so ``rq info`` shows
them by name. Jobs are enqueued **by dotted name** (engine.jobkinds: ``workers.jobs.train_round``):
the API process never imports the worker code (and so never imports torch).

A worker that dies mid-job (SIGKILL, the kernel's OOM killer, a lost machine) is noticed within
one heartbeat TTL (service.runtime.worker.HeartbeatWorker keeps its running job's entry in RQ's
StartedJobRegistry alive with a short TTL), and `status()` asks RQ to clean that registry when
it sees a job "started". RQ then re-runs the abandoned job; the job itself resumes from its
checkpoint or skips finished outputs.

Worker deaths are not the job's fault: they never use the retries meant for errors in the job
itself (`Retry(max=job_retries)`). RQ retries an abandoned job out of that same budget, so
four kills during one training job used to fail the round; `on_job_failure`, the failure
callback of every job, gives the retry back for an abandonment and counts it in the job's
meta (`worker_deaths`), bounded apart by `job_max_worker_deaths` (a job that kills its worker
each time — the kernel's OOM killer — still ends, failed, saying so).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import redis
from rq import Callback, Queue, Retry
from rq.exceptions import AbandonedJobError, NoSuchJobError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.timeouts import TimerDeathPenalty

from engine.jobkinds import QUEUES, job_kind
from service.runtime import redis_server
from service.settings import Settings, get_settings
from service.store import JobState

log = logging.getLogger("camloop.jobqueue")

_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}


def redis_url(settings: Settings | None = None, *, own: bool = False, join_only: bool = False) -> str:
    """REDIS_URL, or the bundled server's (started, joined, or — own — owned; start_embedded)."""
    settings = settings or get_settings()
    return settings.redis_url or redis_server.start_embedded(settings.state_path, own=own, join_only=join_only)


def connection(settings: Settings | None = None, *, join_only: bool = False) -> redis.Redis:
    """One client (and so one connection pool) per Redis URL per process.

    The reconciler and request handlers ask for it several times a second; a fresh client each
    time meant a new TCP connection and its handshake (redis-py sends CLIENT SETINFO twice) for
    every poll — most of a reconciler tick's cost. redis-py's pool is thread-safe and resets
    itself in a forked child."""
    url = redis_url(settings, join_only=join_only)
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url)
            if client is None:
                client = _clients[url] = redis.Redis.from_url(url, health_check_interval=30)
    return client


def queue_name(name: str, settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    return f"{settings.queue_prefix}-{name}"


def queue(name: str, settings: Settings | None = None, conn: redis.Redis | None = None) -> Queue:
    """The queue `<prefix>-<name>`, name one of engine.jobkinds.QUEUES (ingest, train, score)."""
    if name not in QUEUES:
        raise ValueError(f"unknown queue {name!r}; camloop's are {', '.join(QUEUES)}")
    return Queue(queue_name(name, settings), connection=conn or connection(settings))


def forget_joined() -> None:
    """Drop the bundled servers this process only joined, and their clients: the next
    connection() looks again (its owner may have started a new one on another socket)."""
    for url in redis_server.forget_joined():
        _clients.pop(url, None)


@dataclass
class JobStatus:
    state: JobState       # queued | started | finished | failed | missing
    error: str | None = None
    result: dict | None = None
    worker_deaths: int = 0            # times the worker running it died (re-runs that used no retry)
    retries_left: int | None = None   # retries left for errors in the job itself


def on_job_failure(job: Job, connection, exc_type, exc_value, tb) -> None:
    """Every job's failure callback (by name: it runs wherever RQ handles the failure — a
    worker, the API's reconciler, `rq info`).

    For an abandonment (the worker died; StartedJobRegistry.cleanup raises nothing, it calls
    this with AbandonedJobError before deciding between retry and failure) the retry RQ is
    about to take is given back first, so the re-run costs the job's error budget nothing;
    `meta["worker_deaths"]` counts it. Past `meta["max_worker_deaths"]` no retry is left: the
    job fails, and `status()` says why. Errors raised by the job itself pass untouched."""
    if exc_type is None or not issubclass(exc_type, AbandonedJobError):
        return
    deaths = int(job.meta.get("worker_deaths", 0)) + 1
    limit = int(job.meta.get("max_worker_deaths", 10))
    job.meta["worker_deaths"] = deaths
    if deaths <= limit:
        job.retries_left = (job.retries_left or 0) + 1  # cleanup's job.retry() takes this one
        job.meta["retries_given_back"] = int(job.meta.get("retries_given_back", 0)) + 1
    else:
        job.retries_left = 0
    job.save_meta()
    log.warning("job %s: its worker died (%s of %s allowed); %s", job.id, deaths, limit,
                "re-run, no retry used" if deaths <= limit else "no more re-runs")


# RQ's own job states in which the job needs no new enqueue.
_LIVE = {"queued", "started", "deferred", "scheduled", "finished"}


def enqueue(kind: str, job_id: str, manifest_path: str, *args, settings: Settings | None = None,
            conn: redis.Redis | None = None, timeout_s: int | None = None) -> str:
    """Enqueue the job kind's entry point (engine.jobkinds) ``(manifest_path, *args)`` under a
    deterministic id, on the kind's queue.

    Idempotent: a job with this id that is still alive (queued, running, done) is left alone,
    so the reconciler may call this on every tick. A failed or vanished one is enqueued anew."""
    settings = settings or get_settings()
    conn = conn or connection(settings)
    try:
        existing = Job.fetch(job_id, connection=conn)
        if existing.get_status(refresh=True) in _LIVE:
            return job_id
        existing.delete()
    except NoSuchJobError:
        pass
    spec = job_kind(kind)
    q = queue(spec.queue, settings, conn)
    q.enqueue(spec.entry_point, manifest_path, *args, job_id=job_id,
              job_timeout=timeout_s or settings.job_timeout_s,
              # interval 0: retried at once by the same worker pool, no rq scheduler needed.
              retry=Retry(max=settings.job_retries) if settings.job_retries > 0 else None,
              on_failure=Callback(on_job_failure, timeout=30),
              meta={"max_worker_deaths": settings.job_max_worker_deaths, "worker_deaths": 0},
              result_ttl=7 * 24 * 3600, failure_ttl=7 * 24 * 3600,
              description=f"{kind} {Path(manifest_path).name}")
    return job_id


def _state(job: Job) -> str:
    """RQ's word for the job's state (queued, started, deferred, scheduled, finished, failed …)."""
    return str(job.get_status(refresh=True) or JobState.MISSING).split(".")[-1].lower()


def started_registry(queue_name: str, conn: redis.Redis) -> StartedJobRegistry:
    """A queue's StartedJobRegistry that can run on any thread. Counting it cleans it, and the
    cleaning runs on_job_failure under the registry's death penalty: RQ's default arms SIGALRM,
    which only the main thread may — off it (the reconciler, a request's thread) the callback
    failed and RQ took the retry out of the job's error budget after all."""
    return StartedJobRegistry(queue_name, connection=conn, death_penalty_class=TimerDeathPenalty)


def reap_abandoned(job: Job, conn: redis.Redis) -> None:
    """Let RQ handle this job's queue's abandoned executions (workers that stopped heartbeating):
    each is re-run (on_job_failure keeps the error budget whole), or failed past
    max_worker_deaths."""
    if job.origin:
        started_registry(job.origin, conn).cleanup()


def status(job_id: str, settings: Settings | None = None, conn: redis.Redis | None = None) -> JobStatus:
    conn = conn or connection(settings)
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return JobStatus(JobState.MISSING)
    st = _state(job)
    if st == JobState.STARTED:
        reap_abandoned(job, conn)  # a cheap ZRANGEBYSCORE when nothing expired
        st = _state(job)
        if st != JobState.STARTED:
            job.refresh()  # reaped just now: its meta (worker deaths) and retries changed under us
    counts = {"worker_deaths": int(job.meta.get("worker_deaths", 0)), "retries_left": job.retries_left}
    if st == JobState.FAILED:
        res = job.latest_result()
        exc = (res.exc_string if res is not None else None) or "job failed"
        lines = [ln for ln in exc.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else exc
        if "AbandonedJobError" in exc:
            deaths, limit = counts["worker_deaths"], job.meta.get("max_worker_deaths")
            last = (f"the worker running it died {deaths} times (killed, out of memory, or its machine went "
                    f"away), more than the {limit} re-runs CAMLOOP_JOB_MAX_WORKER_DEATHS allows: {last}"
                    if limit is not None and deaths > int(limit) else
                    "the worker running it died (killed, out of memory, or its machine went away) "
                    f"and its retries are used up: {last}")
        return JobStatus(JobState.FAILED, error=last, **counts)
    if st == JobState.FINISHED:
        res = job.latest_result()
        rv = res.return_value if res is not None else None
        return JobStatus(JobState.FINISHED, result=rv if isinstance(rv, dict) else None, **counts)
    if st == JobState.STARTED:
        return JobStatus(JobState.STARTED, **counts)
    if st in ("queued", "deferred", "scheduled"):  # RQ's words: all "waiting for a worker"
        return JobStatus(JobState.QUEUED, **counts)
    return JobStatus(JobState.MISSING)
