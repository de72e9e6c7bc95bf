"""Prometheus metrics. Gauges read from the store at scrape time (cached ~1 s so a 200 req/s
scraper costs a few queries a second); job durations and scoring throughput are observed by the
reconciler when it sees a job finish."""
from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from service.db import session_scope
from service.settings import Settings
from service.store import ROUND_STATES, Item, QueueEntry, Round

REGISTRY = CollectorRegistry()
JOB_SECONDS = Histogram("camloop_job_duration_seconds", "Duration of finished RQ jobs", ["kind"], registry=REGISTRY,
                        buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
_throughput = {"items_per_s": 0.0}


def job_finished(job) -> None:
    if job.duration_s is not None:
        JOB_SECONDS.labels(job.kind).observe(job.duration_s)
    if job.kind == "score" and job.result and job.result.get("n") and job.result.get("seconds"):
        _throughput["items_per_s"] = float(job.result["n"]) / max(1e-9, float(job.result["seconds"]))


class StoreCollector:
    def __init__(self, settings: Settings, ttl: float = 1.0):
        self.settings, self.ttl = settings, ttl
        self._cache: tuple[float, list] = (0.0, [])
        self._lock = threading.Lock()

    def _read(self) -> list:
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
        queue = GaugeMetricFamily("camloop_queue_depth", "Items waiting for experts")
        queue.add_metric([], depth)
        labels = GaugeMetricFamily("camloop_labels", "Labeled pool items per class", labels=["project", "class"])
        for pid, cls, n in per_class:
            labels.add_metric([str(pid), str(cls)], n)
        thr = GaugeMetricFamily("camloop_scoring_items_per_second", "Throughput of the last score job")
        thr.add_metric([], _throughput["items_per_s"])
        return [rounds, queue, labels, thr]

    def collect(self):
        with self._lock:
            t, fams = self._cache
            if time.monotonic() - t > self.ttl:
                fams = self._read()
                self._cache = (time.monotonic(), fams)
        yield from fams


def render(collector: StoreCollector) -> bytes:
    reg = CollectorRegistry()
    reg.register(collector)
    return generate_latest(REGISTRY) + generate_latest(reg)
