"""The jobs of a round, as the store knows them: deterministic RQ ids, (re-)enqueueing, state.

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

from service.runtime import jobqueue
from service.settings import Settings
from service.store import Job, Round, utcnow
from engine import contracts as c

_MANIFEST_MODELS = {"ingest": c.IngestManifest, "train": c.TrainManifest, "score": c.ScoreManifest,
                    "freeze": c.FreezeReportManifest, "convert": c.ConvertManifest, "predict": c.PredictManifest}
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
    m = c.read_manifest(key, _MANIFEST_MODELS[kind])
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
                  manifest_path=str(manifest_path), state="queued")
        s.add(job)
        s.flush()
    return job


def _output(job: Job) -> tuple[Path | None, dict]:
    """(the file the job writes last, the result it stands for); (None, …) while unfinished."""
    m = manifest(job.manifest_path, job.kind)
    if job.kind == "ingest":
        done = Path(m.result) if Path(m.out).is_file() else None
        return done, {"shard": job.shard, "result": m.result}
    if job.kind == "freeze":
        return Path(m.result), {"result": m.result, "figure": m.out_png}
    if job.kind == "convert":  # a model version's TorchScript + ONNX (service.core.models)
        out = c.ModelFiles(m.out_dir).result
        return out, {"result": str(out)}
    if job.kind == "predict":  # a prediction request too large to answer at once (service.core.predict)
        return Path(m.result), {"result": m.result}
    files = c.RoundFiles(m.out_dir)
    if job.kind == "train":
        done = files.metrics if files.checkpoint.is_file() else None
        return done, {"checkpoint": str(files.checkpoint), "metrics": str(files.metrics)}
    out = files.score_file(job.shard)
    return out, {"shard": job.shard, "scores": str(out)}


def poll(s: Session, settings: Settings, job: Job, conn) -> str:
    """Bring job.state up to date; (re-)enqueue when Redis does not have it. Returns the state."""
    if job.state in ("finished", "failed"):
        return job.state
    done, result = _output(job)
    if done is not None and done.is_file():
        job.state, job.result = "finished", result
        st = jobqueue.status(job.rq_id, settings, conn)
        _counts(job, st)
        if st.result and "seconds" in st.result:
            job.result = {**job.result, **{k: st.result[k] for k in ("seconds", "n") if k in st.result}}
        job.duration_s = float(job.result.get("seconds") or (utcnow() - _aware(job.created_at)).total_seconds())
        from service.runtime import observability
        observability.job_finished(job)
        return job.state
    st = jobqueue.status(job.rq_id, settings, conn)
    _counts(job, st)
    if st.state == "failed":
        job.state, job.error = "failed", st.error
    elif st.state in ("missing",) or (st.state == "finished"):
        # Never enqueued, lost with Redis, or "finished" without its output file (the artifacts
        # were removed): run it again. Deterministic id, so concurrent reconcilers agree.
        args = (job.shard,) if job.kind == "score" else ()
        jobqueue.enqueue(job.kind, job.rq_id, job.manifest_path, *args, settings=settings, conn=conn)
        job.attempts += 1
        job.state = "queued"
    else:
        job.state = st.state
    return job.state


def _counts(job: Job, st: jobqueue.JobStatus) -> None:
    """The job's worker deaths and error retries left, as RQ knows them (kept when Redis lost the
    job: the re-enqueued one starts from zero deaths, but the store keeps the highest seen)."""
    if st.state == "missing":
        return
    if st.worker_deaths > (job.worker_deaths or 0):
        job.worker_deaths = st.worker_deaths
    if st.retries_left is not None and st.retries_left != job.retries_left:
        job.retries_left = st.retries_left


def _aware(dt):
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
