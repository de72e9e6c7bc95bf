"""The Prometheus registry of the process and the counters camloop's code increments.

Standalone (it imports nothing of the service), so whatever observes something (the reconciler when a
job finishes, the worker supervisor when it restarts a child) records it here without importing
the /metrics route, and the route (service.api.prometheus) renders this registry beside the
gauges it reads at scrape time.

  camloop_job_duration_seconds{kind}     histogram of finished jobs' durations (ingest, train, score, freeze)
  camloop_scored_items_total             pool images scored
  camloop_scoring_seconds_total          time the score jobs spent on them (rate ratio = throughput)
  camloop_scoring_items_per_second       throughput of the last score job (a gauge)
  camloop_worker_restarts_total          worker children `camloop serve --with-worker` (or the demo)
                                         started again after they died (service.runtime.supervise)
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from engine.contracts import ScoreJobResult
from engine.jobkinds import JobKind

REGISTRY = CollectorRegistry()
JOB_SECONDS = Histogram("camloop_job_duration_seconds", "Duration of finished RQ jobs", ["kind"], registry=REGISTRY,
                        buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
SCORED_ITEMS = Counter("camloop_scored_items", "Pool images scored by finished score jobs", registry=REGISTRY)
SCORING_SECONDS = Counter("camloop_scoring_seconds", "Seconds finished score jobs spent scoring", registry=REGISTRY)
SCORING_RATE = Gauge("camloop_scoring_items_per_second", "Throughput of the last score job", registry=REGISTRY)
WORKER_RESTARTS = Counter("camloop_worker_restarts", "Worker child processes started again after they died",
                          registry=REGISTRY)


def job_finished(kind: str, duration_s: float | None, result: dict | None) -> None:
    """Once per job, when the reconciler records it finished (a score job's result carries how
    many images it scored, `n`, in how many `seconds`)."""
    if duration_s is not None:
        JOB_SECONDS.labels(kind).observe(duration_s)
    if kind != JobKind.SCORE or not result or "n" not in result:  # "n": the job said it (Redis kept its answer)
        return
    scored = ScoreJobResult.model_validate(result)
    if scored.n and scored.seconds:
        n, secs = float(scored.n), max(1e-9, float(scored.seconds))
        SCORED_ITEMS.inc(n)
        SCORING_SECONDS.inc(secs)
        SCORING_RATE.set(n / secs)
