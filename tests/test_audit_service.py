"""The audit of the lift through the service (issue 22): the train job's shadow models on the
project's random labels (a random cold start, the control slice), the audit computed when the
round's model is registered, and GET /metrics's `audit` section. Digits, no validation split:
the shadow models and the round's model are compared on the random labels held out."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from service.store import ModelVersion
from service.store.db import session_scope
from tests.conftest import label_queue, round_reaches, write_digits

CLASSES = [str(i) for i in range(10)]
FAST = {"epochs": 2, "budget": 40, "reserve": 0, "mc_samples": 2, "hflip": False, "pretrained": False,
        "first_batch": "random", "stopping": {"stop_set_size": 0},
        "control": {"share": 0.5, "min_per_round": 5},
        "audit": {"min_rounds": 2, "min_points": 2, "min_random_labels": 10}}


def _closed(c, pid, n):
    deadline = time.monotonic() + 120
    while c.get(f"/api/v1/projects/{pid}/rounds/{n}").json()["state"] != "closed":
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_metrics_carry_the_audit_after_each_trained_round(api):
    c, settings = api
    r = c.post("/api/v1/projects", json={"name": f"audit-{time.monotonic_ns()}", "classes": CLASSES, "config": FAST})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    pool = dict(write_digits(settings.data_dir, 400, "pool", seed=3))
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}).status_code == 202
    assert c.get(f"/api/v1/projects/{pid}/metrics").json()["audit"] is None  # no model yet

    audits = []
    for n in (1, 2, 3):
        assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
        round_reaches(c, settings, pid, n, "labeling")
        if n > 1:  # round n's model trained on the labels of rounds 1..n-1
            audits.append(c.get(f"/api/v1/projects/{pid}/metrics").json()["audit"])
        label_queue(c, pid, pool)
        _closed(c, pid, n)

    first, second = audits
    for a in audits:
        assert a["accuracy_now"]["on"] == "random_holdout"
        assert 0 <= a["accuracy_now"]["low"] <= a["accuracy_now"]["value"] <= a["accuracy_now"]["high"] <= 1
        assert a["random_curve"] and all(p["labels"] <= a["random_labels"] for p in a["random_curve"])
        assert a["reset_at_round"] is None and a["advice"]
    # Round 2's model trained on round 1's random cold start (40) only; round 3's also on 20 control.
    assert first["verdict"] == "too_early" and "rounds" in first["advice"]
    assert second["random_labels"] > first["random_labels"] and second["labels_now"] > first["labels_now"]
    assert second["verdict"] in ("paying_off", "not_paying_off")
    assert second["random_would_need"] is not None and second["labels_saved"] is not None
    # What the metrics show is what the model version stored when it was registered (read, not recomputed).
    with session_scope(settings) as s:
        mv = s.scalars(select(ModelVersion).where(ModelVersion.project_id == pid).order_by(ModelVersion.round)).all()
        assert [m.round for m in mv] == [2, 3] and mv[-1].metrics["audit"] == second
        shadow = mv[-1].metrics["shadow"]
        assert shadow["on"] == "random_holdout" and shadow["current"]["n"] == second["accuracy_now"]["n"]
