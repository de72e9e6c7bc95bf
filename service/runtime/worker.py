"""The worker process's side of the queue: its RQ worker class, how a parent starts one as a
child, and which workers are alive.

`camloop worker` (service.cli.server) builds a `HeartbeatWorker` on every queue of
engine.jobkinds.QUEUES; `spawn_worker` starts that command as a child of `camloop serve
--with-worker` or the demo; `live_workers` is what readiness and /metrics count.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from datetime import datetime, timezone

from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.worker.base import WorkerStatus

from engine.jobkinds import QUEUES
from service.runtime import jobqueue
from service.runtime.host import pid_alive
from service.settings import Settings

log = logging.getLogger("camloop.worker")

DEFAULT_HEARTBEAT_TTL_S = 30  # a dead worker's job is retried this long after its last heartbeat
# RQ's worker key lives worker_ttl + 60 s past its last heartbeat, and an idle worker beats every
# worker_ttl - 15 s: RQ's 420 s default would let a dead worker look alive for 8 minutes to
# readiness (worker_seen). 30: an idle worker beats every 15 s.
WORKER_TTL_S = 30


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


def lower_priority(increment: int) -> int:
    """Add `increment` to this process's niceness (CAMLOOP_WORKER_NICE) and return the new one.

    Measured on 2 shared cores (docs/benchmarks.md, issue 22): a round training at the default
    priority took the core the API needed to answer dashboards and annotators. A worker on a
    machine of its own loses nothing by it: no one else wants the CPU there.
    """
    if increment <= 0:
        return os.nice(0)
    try:
        now = os.nice(increment)
    except OSError as e:  # a platform or sandbox that refuses: the worker runs anyway, and says so
        log.warning("could not lower the worker's CPU priority by %d: %s", increment, e)
        return os.nice(0)
    return now


def spawn_worker(settings: Settings, *, extra_env: dict[str, str] | None = None, burst: bool = False,
                 stdout=None) -> subprocess.Popen:
    """Start `camloop worker` as a child connected to the same Redis (embedded or not); it ends
    when this process does, however this process ends (`--parent-pid`)."""
    env = {**os.environ, "REDIS_URL": jobqueue.redis_url(settings), **(extra_env or {})}
    cmd = [sys.executable, "-c", "from service.cli import app; app()", "worker", "--parent-pid", str(os.getpid())]
    cmd += ["--burst"] if burst else []
    # Its own session: a Ctrl-C in the terminal reaches this process only, which then stops the
    # child itself (and the supervisor does not see it die of the SIGINT and start it again).
    if stdout is None:
        return subprocess.Popen(cmd, env=env, start_new_session=True)
    return subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def live_workers(settings: Settings, conn) -> list[Worker]:
    """RQ workers listening on any of camloop's queues whose last heartbeat is recent."""
    fresh_s = WORKER_TTL_S + 30  # an idle worker beats every WORKER_TTL_S - 15 s
    host = socket.gethostname()
    now = datetime.now(timezone.utc)
    out, seen = [], set()
    for name in QUEUES:
        for w in Worker.all(connection=conn, queue=jobqueue.queue(name, settings, conn)):
            if w is None or w.name in seen:
                continue
            beat = w.last_heartbeat
            if beat is not None and beat.tzinfo is None:
                beat = beat.replace(tzinfo=timezone.utc)
            if w.hostname == host and w.pid and not pid_alive(int(w.pid)):
                continue  # a worker of this machine that died: its key outlives it by a minute or so
            if beat is None or (now - beat).total_seconds() <= fresh_s:
                seen.add(w.name)
                out.append(w)
    return out
