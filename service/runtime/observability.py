"""Prometheus metrics at GET /metrics.

Gauges are read from the store and from Redis at scrape time (cached ~1 s, so a 200 req/s scraper
costs a few queries a second):

  camloop_rounds{stage}                  rounds by stage (created … labeling, closed, failed)
  camloop_queue_depth                    images waiting for experts (queued in a labeling round)
  camloop_labels{project,class}          labeled pool images per class
  camloop_rq_jobs{queue,state}           RQ jobs per queue (<prefix>-ingest|train|score): queued, started, failed
  camloop_redis_up                       1 when the job queue answered this scrape
  camloop_workers                        workers on camloop's queues with a recent heartbeat
  camloop_worker_restarts_total          worker children `camloop serve --with-worker` (or the demo)
                                         started again after they died (service.runtime.supervise)

Job durations and scoring throughput are observed by the reconciler when it sees a job finish
(service.rounds.jobs.poll → job_finished), in the API process that serves this endpoint:

  camloop_job_duration_seconds{kind}     histogram of finished jobs' durations (ingest, train, score)
  camloop_scored_items_total             pool images scored
  camloop_scoring_seconds_total          time the score jobs spent on them (rate ratio = throughput)
  camloop_scoring_items_per_second       throughput of the last score job
"""
from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from service.store.db import session_scope
from service.settings import Settings
from service.rounds.state import ROUND_STATES
from service.store import Item, QueueEntry, Round

log = logging.getLogger("camloop.observability")

REGISTRY = CollectorRegistry()
JOB_SECONDS = Histogram("camloop_job_duration_seconds", "Duration of finished RQ jobs", ["kind"], registry=REGISTRY,
                        buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
SCORED_ITEMS = Counter("camloop_scored_items", "Pool images scored by finished score jobs", registry=REGISTRY)
SCORING_SECONDS = Counter("camloop_scoring_seconds", "Seconds finished score jobs spent scoring", registry=REGISTRY)
_throughput = {"items_per_s": 0.0}


def job_finished(job) -> None:
    """Called once per job when the reconciler records it finished (job: service.store.Job)."""
    if job.duration_s is not None:
        JOB_SECONDS.labels(job.kind).observe(job.duration_s)
    result = job.result or {}
    if job.kind == "score" and result.get("n") and result.get("seconds"):
        n, secs = float(result["n"]), max(1e-9, float(result["seconds"]))
        SCORED_ITEMS.inc(n)
        SCORING_SECONDS.inc(secs)
        _throughput["items_per_s"] = n / secs


class StoreCollector:
    def __init__(self, settings: Settings, ttl: float = 1.0):
        self.settings, self.ttl = settings, ttl
        self._cache: tuple[float, list] = (0.0, [])
        self._lock = threading.Lock()
        self._conn = None

    def _read_store(self) -> list:
        with session_scope(self.settings) as s:
            by_state = dict(s.execute(select(Round.state, func.count()).group_by(Round.state)).all())
            depth = s.scalar(select(func.count()).select_from(QueueEntry).join(Item, Item.id == QueueEntry.item_id)
                             .join(Round, Round.id == QueueEntry.round_id)
                             .where(Item.status == "queued", Round.state == "labeling")) or 0
            per_class = s.execute(select(Item.project_id, Item.label, func.count())
                                  .where(Item.split == "pool", Item.status == "labeled")
                                  .group_by(Item.project_id, Item.label)).all()
        rounds = GaugeMetricFamily("camloop_rounds", "Rounds by stage", labels=["stage"])
        for st in ROUND_STATES:
            rounds.add_metric([st], by_state.get(st, 0))
        queue = GaugeMetricFamily("camloop_queue_depth", "Images waiting for experts")
        queue.add_metric([], depth)
        labels = GaugeMetricFamily("camloop_labels", "Labeled pool images per class", labels=["project", "class"])
        for pid, cls, n in per_class:
            labels.add_metric([str(pid), str(cls)], n)
        thr = GaugeMetricFamily("camloop_scoring_items_per_second", "Throughput of the last score job")
        thr.add_metric([], _throughput["items_per_s"])
        return [rounds, queue, labels, thr]

    def _read_rq(self) -> list:
        """Jobs per RQ queue and state, by the names `rq info` and rq-dashboard show."""
        from rq.registry import FailedJobRegistry

        from service.runtime import jobqueue

        up = GaugeMetricFamily("camloop_redis_up", "1 when the job queue's Redis answered this scrape")
        jobs = GaugeMetricFamily("camloop_rq_jobs", "RQ jobs per queue and state", labels=["queue", "state"])
        try:
            if self._conn is None:
                self._conn = jobqueue.connection(self.settings)
            rows = []
            for kind in jobqueue.KINDS:
                q = jobqueue.queue(kind, self.settings, self._conn)
                rows += [(q.name, "queued", q.count),
                         (q.name, "started", jobqueue.started_registry(q.name, self._conn).count),
                         (q.name, "failed", FailedJobRegistry(queue=q).count)]
            from service.runtime.readiness import live_workers
            n_workers = len(live_workers(self.settings, self._conn))
        except Exception as e:  # noqa: BLE001 — Redis away: say so in the metrics, never fail the scrape
            log.warning("metrics: job queue unreachable: %s: %s", type(e).__name__, e)
            self._conn = None
            up.add_metric([], 0)
            return [up]
        for name, state, n in rows:
            jobs.add_metric([name, state], n)
        up.add_metric([], 1)
        workers = GaugeMetricFamily("camloop_workers", "Workers on camloop's queues with a recent heartbeat")
        workers.add_metric([], n_workers)
        return [up, jobs, workers]

    def collect(self):
        with self._lock:
            t, fams = self._cache
            if time.monotonic() - t > self.ttl:
                fams = self._read_store() + self._read_rq()
                self._cache = (time.monotonic(), fams)
        yield from fams


def render(collector: StoreCollector) -> bytes:
    reg = CollectorRegistry()
    reg.register(collector)
    return generate_latest(REGISTRY) + generate_latest(reg)
