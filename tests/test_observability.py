"""GET /metrics (Prometheus) through a real round, and RQ's own `rq info` naming camloop's queues.

Real parts: the app over TestClient with its reconciler, the machine's Redis (a queue prefix of
our own), a SQLite store of this test only (so the store-wide gauges count our rounds alone),
jobs run by a real rq SimpleWorker.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ENGINEER_KEY, make_settings, run_jobs, write_digits

CLASSES = [str(i) for i in range(10)]
BUDGET = 10


def scrape(c) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label items): value} of one scrape (no key needed, like /healthz)."""
    r = c.get("/metrics", headers={"Authorization": ""})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def fresh(c, seconds: float = 1.2):
    time.sleep(seconds)  # the store gauges are cached for 1 s
    return scrape(c)


def wait_state(c, pid, n, states, limit=600):
    for _ in range(limit):
        rnd = c.get(f"/api/v1/projects/{pid}/rounds/{n}").json()
        assert rnd["state"] != "failed", rnd["error"]
        if rnd["state"] in states:
            return rnd
        time.sleep(0.1)
    raise AssertionError(f"round {n} never reached {states}: {rnd}")


@pytest.fixture
def client(tmp_path, queue_prefix):
    from fastapi.testclient import TestClient

    from service.api import create_app

    root = tmp_path / "data"
    root.mkdir()
    settings = make_settings(root, f"sqlite:///{tmp_path / 'camloop.db'}", queue_prefix)
    with TestClient(create_app(settings, labelstudio=False)) as c:
        c.headers["Authorization"] = f"Bearer {ENGINEER_KEY}"
        yield c, settings


def test_metrics_follow_a_round_through_its_stages(client):
    c, settings = client
    pid = c.post("/api/v1/projects", json={"name": "obs", "classes": CLASSES, "config": {
        "epochs": 1, "budget": BUDGET, "reserve": 0, "mc_samples": 2, "hflip": False, "pretrained": False}}).json()["id"]
    pool = write_digits(settings.data_dir, 60, "pool", seed=2)
    val = write_digits(settings.data_dir, 20, "val", seed=2, offset=60)
    seeded = pool[:30]
    items = [{"uri": u, "split": "val", "label": y} for u, y in val]
    items += [{"uri": u, "split": "pool", "label": y} for u, y in seeded]
    items += [{"uri": u, "split": "pool"} for u, _ in pool[30:]]
    assert c.post(f"/api/v1/projects/{pid}/items", json={"items": items}).status_code == 202
    before = scrape(c)
    ingest_q = f"{settings.queue_prefix}-ingest"
    assert value(before, "camloop_redis_up") == 1
    assert value(before, "camloop_rq_jobs", queue=ingest_q, state="queued") >= 1  # by name, like `rq info`
    run_jobs(settings, ("ingest",))

    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    wait_state(c, pid, 1, ("training",))
    m = fresh(c)
    assert value(m, "camloop_rounds", stage="training") == 1
    assert value(m, "camloop_rq_jobs", queue=f"{settings.queue_prefix}-train", state="queued") == 1
    per_class = {}
    for _, y in seeded:
        per_class[y] = per_class.get(y, 0) + 1
    for cls, n in per_class.items():
        assert value(m, "camloop_labels", project=str(pid), **{"class": cls}) == n

    run_jobs(settings, ("train",))
    wait_state(c, pid, 1, ("scoring",))
    run_jobs(settings, ("score",))
    wait_state(c, pid, 1, ("labeling",))
    m = fresh(c)
    assert value(m, "camloop_rounds", stage="labeling") == 1 and value(m, "camloop_rounds", stage="training") == 0
    assert value(m, "camloop_queue_depth") == BUDGET
    assert value(m, "camloop_rq_jobs", queue=f"{settings.queue_prefix}-train", state="queued") == 0
    for kind in ("train", "score"):
        grew = value(m, "camloop_job_duration_seconds_count", kind=kind) - \
            value(before, "camloop_job_duration_seconds_count", kind=kind)
        assert grew >= 1, kind
    scored = value(m, "camloop_scored_items_total") - value(before, "camloop_scored_items_total")
    assert scored == 30  # the unlabeled pool, once
    assert value(m, "camloop_scoring_items_per_second") > 0
    assert value(m, "camloop_scoring_seconds_total") > value(before, "camloop_scoring_seconds_total")

    # An expert labels three queued images: the queue shrinks, the class counts grow.
    queue = c.get(f"/api/v1/projects/{pid}/queue").json()["items"][:3]
    truth = dict(pool)
    r = c.post(f"/api/v1/projects/{pid}/labels", json={"labels": [
        {"item_id": q["item_id"], "class": truth[q["uri"]], "client_id": f"obs-{q['item_id']}"} for q in queue]})
    assert r.status_code == 201
    m = fresh(c)
    assert value(m, "camloop_queue_depth") == BUDGET - 3
    assert sum(v for (name, lab), v in m.items() if name == "camloop_labels" and ("project", str(pid)) in lab) == 33


def test_rq_info_lists_camloops_queues_by_name(client):
    """`rq info` (RQ's own monitor) shows <prefix>-ingest|train|score once they have had jobs."""
    c, settings = client
    from engine.jobkinds import QUEUES
    from service.runtime import jobqueue

    for kind in QUEUES:  # one job on each queue; never run (the queue prefix is cleaned up)
        manifest = settings.data_dir / f"{kind}.json"
        manifest.write_text("{}")
        jobqueue.enqueue(kind, f"{settings.queue_prefix}-probe-{kind}", str(manifest), settings=settings)
    rq = Path(sys.executable).with_name("rq")
    out = subprocess.run([str(rq), "info", "--url", jobqueue.redis_url(settings), "--only-queues", "--raw"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stderr
    lines = {ln.split()[1]: ln for ln in out.stdout.splitlines() if ln.startswith("queue ")}
    for kind in QUEUES:
        name = f"{settings.queue_prefix}-{kind}"
        assert name in lines, out.stdout[-2000:]
        assert lines[name].split()[2] == "1,"  # "queue <name> 1, 0 executing, …": one queued job
