"""Shared set-up of the issue 21 tests (export, model versions, predict): a digits project over
the real service (TestClient with the app's lifespan, real Redis, SQLite or PostgreSQL), its
rounds driven by a real rq SimpleWorker in this process, the ground truth as the expert."""
from __future__ import annotations

import time

from tests.conftest import label_queue, round_reaches, run_jobs, write_digits

CLASSES = [str(i) for i in range(10)]
FAST = {"epochs": 1, "budget": 20, "reserve": 0, "mc_samples": 2, "hflip": False, "pretrained": False}


def new_project(c, name="takeaway", classes=CLASSES, **cfg) -> int:
    r = c.post("/api/v1/projects", json={"name": f"{name}-{time.monotonic_ns()}", "classes": classes,
                                         "config": {**FAST, **cfg}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def register(c, settings, pid, pool=80, val=30, test=0) -> dict[str, str]:
    """Digits PNGs under the data root: `pool` unlabeled, `val` (and `test`) labeled. uri → class."""
    truth = {}
    pool_files = write_digits(settings.data_dir, pool, "pool", seed=1)
    val_files = write_digits(settings.data_dir, val, "val", seed=1, offset=pool)
    test_files = write_digits(settings.data_dir, test, "test", seed=1, offset=pool + val) if test else []
    items = [{"uri": u, "split": "val", "label": y} for u, y in val_files]
    items += [{"uri": u, "split": "test", "label": y} for u, y in test_files]
    assert c.post(f"/api/v1/projects/{pid}/items", json={"items": items}).status_code == 202
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}).status_code == 202
    run_jobs(settings, ("ingest",))
    truth.update(pool_files)
    truth.update(val_files)
    truth.update(test_files)
    return truth


def run_round(c, settings, pid, n, truth, *, label=True) -> dict:
    """Start round n, drive it to labeling, label its batch with the truth; the round as it reached labeling."""
    r = c.post(f"/api/v1/projects/{pid}/rounds")
    assert r.status_code == 202, r.text
    assert r.json()["number"] == n
    rnd = round_reaches(c, settings, pid, n, "labeling")
    if label:
        label_queue(c, pid, truth)
        round_reaches(c, settings, pid, n, "closed")
    return rnd
