"""Prometheus metrics at GET /metrics.

Gauges are read from the store and from Redis at scrape time (cached ~1 s, so a 200 req/s scraper
costs a few queries a second):

  camloop_rounds{stage}                  rounds by stage (created … labeling, closed, failed)
  camloop_queue_depth                    images waiting for experts (queued in a labeling round)
  camloop_labels{project,class}          labeled pool images per class
  camloop_rq_jobs{queue,state}           RQ jobs per queue (<prefix>-ingest|train|score): queued, started, failed
  camloop_redis_up                       1 when the job queue answered this scrape
  camloop_workers                        workers on camloop's queues with a recent heartbeat

Beside them, the process's registry (service.runtime.metrics): job durations and scoring
throughput, observed by the reconciler when it sees a job finish (service.core.jobs.poll),
in the API process that serves this endpoint, and the worker restarts of the supervisor.
"""
from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from rq.registry import FailedJobRegistry
from sqlalchemy import func, select

from engine.jobkinds import QUEUES
from service.runtime import jobqueue
from service.runtime.metrics import REGISTRY
from service.runtime.worker import live_workers
from service.settings import Settings
from service.store import Item, ItemStatus, JobState, QueueEntry, Round, RoundState
from service.store.db import session_scope

log = logging.getLogger("camloop.observability")


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
                             .where(Item.status == ItemStatus.QUEUED, Round.state == RoundState.LABELING)) or 0
            per_class = s.execute(select(Item.project_id, Item.label, func.count())
                                  .where(Item.split == "pool", Item.status == ItemStatus.LABELED)
                                  .group_by(Item.project_id, Item.label)).all()
        rounds = GaugeMetricFamily("camloop_rounds", "Rounds by stage", labels=["stage"])
        for st in RoundState:
            rounds.add_metric([st.value], by_state.get(st, 0))
        queue = GaugeMetricFamily("camloop_queue_depth", "Images waiting for experts")
        queue.add_metric([], depth)
        labels = GaugeMetricFamily("camloop_labels", "Labeled pool images per class", labels=["project", "class"])
        for pid, cls, n in per_class:
            labels.add_metric([str(pid), str(cls)], n)
        return [rounds, queue, labels]

    def _read_rq(self) -> list:
        """Jobs per RQ queue and state, by the names `rq info` and rq-dashboard show."""
        up = GaugeMetricFamily("camloop_redis_up", "1 when the job queue's Redis answered this scrape")
        jobs = GaugeMetricFamily("camloop_rq_jobs", "RQ jobs per queue and state", labels=["queue", "state"])
        try:
            if self._conn is None:
                self._conn = jobqueue.connection(self.settings)
            rows = []
            for name in QUEUES:
                q = jobqueue.queue(name, self.settings, self._conn)
                rows += [(q.name, JobState.QUEUED, q.count),
                         (q.name, JobState.STARTED, jobqueue.started_registry(q.name, self._conn).count),
                         (q.name, JobState.FAILED, FailedJobRegistry(queue=q).count)]
            n_workers = len(live_workers(self.settings, self._conn))
        except Exception as e:  # noqa: BLE001 — Redis away: say so in the metrics, never fail the scrape
            log.warning("metrics: job queue unreachable: %s: %s", type(e).__name__, e)
            self._conn = None
            up.add_metric([], 0)
            return [up]
        for name, state, n in rows:
            jobs.add_metric([name, state.value], n)
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
