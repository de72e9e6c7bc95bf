"""The worker jobs as the store knows them (a round's, a conversion's, a prediction's): deterministic RQ ids, (re-)enqueueing, state.

Truth lives in the store and the artifacts folder; Redis only carries work. A job Redis lost is
enqueued again under the same id, and a finished output is recognised by its file (the job's
contract says which file it writes last), so nothing is done twice.
"""
from __future__ import annotations

import os
import threading
from datetime import timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import contracts as c
from engine.jobkinds import job_kind
from service.runtime import jobqueue, metrics
from service.settings import Settings
from service.store import Job, JobState, Round, utcnow

_cache: dict[str, tuple[tuple[int, int], object]] = {}
_CACHE_KEPT = 64
_lock = threading.Lock()


def rq_id(settings: Settings, rnd: Round, kind: str, shard: int | None = None) -> str:
    sh = "" if shard is None else f"-{shard}"
    return f"{settings.queue_prefix}-p{rnd.project_id}-r{rnd.number}-{kind}{sh}-a{rnd.attempt}"


def manifest(path, kind: str):
    """A job manifest, parsed once while the file is unchanged. The reconciler polls every job of
    an open round every ~0.5 s; a round's score manifest lists every pool image, and parsing it
    once per score job per tick cost ~0.4 s a tick on a 10k pool. Manifests are written once,
    atomically (os.replace), so (mtime, size) tells a new file from the parsed one."""
    key = str(path)
    st = os.stat(key)
    sig = (st.st_mtime_ns, st.st_size)
    hit = _cache.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]
    m = c.read_manifest(key, job_kind(kind).manifest)
    with _lock:
        if len(_cache) >= _CACHE_KEPT:
            _cache.pop(next(iter(_cache)))
        _cache[key] = (sig, m)
    return m


def ensure_job(s: Session, pid: int, round_id: int | None, rq: str, kind: str, shard: int | None,
               manifest_path: Path) -> Job:
    job = s.scalar(select(Job).where(Job.rq_id == rq))
    if job is None:
        job = Job(project_id=pid, round_id=round_id, rq_id=rq, kind=kind, shard=shard,
                  manifest_path=str(manifest_path), state=JobState.QUEUED)
        s.add(job)
        s.flush()
    return job


def _output(job: Job) -> tuple[Path | None, dict]:
    """(the file the job writes last, the result it stands for); (None, …) while unfinished."""
    spec = job_kind(job.kind)
    m = manifest(job.manifest_path, job.kind)
    return spec.done_file(m, job.shard), spec.outputs(m, job.shard)


def train_result(job: Job) -> c.TrainResult:
    """A finished train job's result (where its checkpoint and metrics are), as the contract types it."""
    return c.TrainResult.model_validate(job.result)


def poll(s: Session, settings: Settings, job: Job, conn) -> str:
    """Bring job.state up to date; (re-)enqueue when Redis does not have it. Returns the state."""
    if job.state in (JobState.FINISHED, JobState.FAILED):
        return job.state
    done, result = _output(job)
    finished = done is not None and done.is_file()
    st = jobqueue.status(job.rq_id, settings, conn)
    # The job writes its done file before RQ marks it finished: a job that ended between the file
    # check and the status read is "finished" in Redis with its file now there — look again
    # before taking it for one whose output was lost (that re-ran finished jobs under load).
    if finished or (st.state == JobState.FINISHED and done is not None and done.is_file()):
        job.state, job.result = JobState.FINISHED, result
        _counts(job, st)
        if st.result and "seconds" in st.result:
            job.result = {**job.result, **{k: st.result[k] for k in ("seconds", "n") if k in st.result}}
        job.duration_s = float(job.result.get("seconds") or (utcnow() - _aware(job.created_at)).total_seconds())
        metrics.job_finished(job.kind, job.duration_s, job.result)
        return job.state
    _counts(job, st)
    if st.state == JobState.FAILED:
        job.state, job.error = JobState.FAILED, st.error
    elif st.state in (JobState.MISSING, JobState.FINISHED):
        # Never enqueued, lost with Redis, or "finished" without its output file (the artifacts
        # were removed): run it again. Deterministic id, so concurrent reconcilers agree.
        args = (job.shard,) if job_kind(job.kind).takes_shard else ()
        jobqueue.enqueue(job.kind, job.rq_id, job.manifest_path, *args, settings=settings, conn=conn)
        job.attempts += 1
        job.state = JobState.QUEUED
    else:
        job.state = st.state
    return job.state


def _counts(job: Job, st: jobqueue.JobStatus) -> None:
    """The job's worker deaths and error retries left, as RQ knows them (kept when Redis lost the
    job: the re-enqueued one starts from zero deaths, but the store keeps the highest seen)."""
    if st.state == JobState.MISSING:
        return
    if st.worker_deaths > (job.worker_deaths or 0):
        job.worker_deaths = st.worker_deaths
    if st.retries_left is not None and st.retries_left != job.retries_left:
        job.retries_left = st.retries_left


def _aware(dt):
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
