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


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_labels_registered_as_a_random_sample_train_the_audits_random_curve(api):
    """A project that starts from a random sample of its pool (the demo's 200, a team's first
    export) says so with `labels_random`: round 1 already measures the random curve on them.
    Without the flag the same labels are not random evidence (they may have been hand-picked)."""
    from service.rounds import inputs

    c, settings = api
    no_control = {**FAST, "control": {"share": 0.0}}
    pool = write_digits(settings.data_dir, 300, "pool", seed=5)
    picked = {uri for uri, _ in pool[:60]}  # a seeded permutation: a random sample
    items = [{"uri": uri, "split": "pool", "label": cls if uri in picked else None} for uri, cls in pool]
    pids = {}
    for flag in (True, False):
        r = c.post("/api/v1/projects", json={"name": f"random-start-{flag}-{time.monotonic_ns()}",
                                             "classes": CLASSES, "config": no_control})
        assert r.status_code == 201, r.text
        pids[flag] = pid = r.json()["id"]
        r = c.post(f"/api/v1/projects/{pid}/items", json={"items": items, "labels_random": flag})
        assert r.status_code == 202, r.text
    with session_scope(settings) as s:
        marked = inputs.random_label_ids(s, pids[True])
        assert len(marked) == 60 and inputs.random_label_ids(s, pids[False]) == []
    # A strict flag: "yes" is not true.
    r = c.post(f"/api/v1/projects/{pids[True]}/items", json={"items": items[:1], "labels_random": "yes"})
    assert r.status_code == 422

    for flag, pid in pids.items():
        assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
        round_reaches(c, settings, pid, 1, "labeling")
    with session_scope(settings) as s:
        shadow = {flag: s.scalars(select(ModelVersion).where(ModelVersion.project_id == pid)).one().metrics.get("shadow")
                  for flag, pid in pids.items()}
    # Round 1's model trained on the 60 minus those held out; the flagged project measured its
    # random curve on them, the other has no random labels to measure on.
    assert shadow[True]["random_labels"] > 30 and len(shadow[True]["points"]) >= 2
    assert not (shadow[False] or {}).get("points")
    audit = c.get(f"/api/v1/projects/{pids[True]}/metrics").json()["audit"]
    assert audit is not None and audit["random_labels"] == shadow[True]["random_labels"]
