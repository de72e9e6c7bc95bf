"""The random control slice through the service (issue 22), on SQLite and PostgreSQL: queue
entries marked `control`, each round's estimate and the pooled one in GET /metrics, the history's
control columns, the evidence read from the control without a validation split, and the edge
cases: a relabel counts once, a retracted label drops out, skipped and quarantined control images
are missing, a class excluded since still counts, a budget too small gets none and says why."""
from __future__ import annotations

import time

from sqlalchemy import select

from service.store import Item, ItemStatus, QueueEntry, Round
from service.store.db import session_scope
from tests.conftest import label_queue, round_reaches, write_digits

CLASSES = [str(i) for i in range(10)]
FAST = {"epochs": 2, "budget": 30, "reserve": 0, "mc_samples": 2, "hflip": False, "pretrained": False,
        "first_batch": "random", "stopping": {"stop_set_size": 0},
        "control": {"share": 0.5, "min_per_round": 5, "rounds": 2, "min_per_class": 1}}


def _entries(settings, pid, number):
    with session_scope(settings) as s:
        rid = s.scalar(select(Round.id).where(Round.project_id == pid, Round.number == number))
        return [(e.item_id, e.rank, e.pred, e.control, e.reserve) for e in
                s.scalars(select(QueueEntry).where(QueueEntry.round_id == rid).order_by(QueueEntry.rank))]


def _closed(c, pid, n):
    deadline = time.monotonic() + 60
    while c.get(f"/api/v1/projects/{pid}/rounds/{n}").json()["state"] != "closed":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_round_with_a_control_slice_end_to_end(api):
    c, settings = api
    r = c.post("/api/v1/projects", json={"name": f"control-{time.monotonic_ns()}", "classes": CLASSES, "config": FAST})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    pool = dict(write_digits(settings.data_dir, 300, "pool", seed=5))
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}).status_code == 202

    # Round 1: a random cold start: every entry random (control), none guessed.
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    round_reaches(c, settings, pid, 1, "labeling")
    e1 = _entries(settings, pid, 1)
    assert len(e1) == 30 and all(ctl and pred is None for _, _, pred, ctl, _ in e1)
    label_queue(c, pid, pool)
    _closed(c, pid, 1)
    m = c.get(f"/api/v1/projects/{pid}/metrics").json()
    assert m["control"] is None  # no guess: no estimate

    # Round 2: a trained model ranks; half the batch (15) is drawn at random, at random places.
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    rnd = round_reaches(c, settings, pid, 2, "labeling")
    assert rnd["progress"]["control"] == 15
    e2 = _entries(settings, pid, 2)
    ctl = [e for e in e2 if e[3]]
    assert len(e2) == 30 and len(ctl) == 15 and all(e[2] is not None for e in ctl)
    assert sorted(e[1] for e in ctl) != list(range(15, 30))  # not the batch's tail: interleaved
    labeled = label_queue(c, pid, pool)
    truth = {q["item_id"]: pool[q["uri"]] for q in labeled}
    _closed(c, pid, 2)

    m = c.get(f"/api/v1/projects/{pid}/metrics").json()
    est = {e["round"]: e for e in m["control"]["rounds"]}[2]
    right = sum(truth[i] == pred for i, _, pred, _, _ in ctl)
    assert (est["n"], est["correct"], est["missing"], est["waiting"]) == (15, right, 0, 0)
    assert 0.0 <= est["low"] <= est["accuracy"] <= est["high"] <= 1.0
    assert sum(v["n"] for v in est["per_class"].values()) == 15
    row = {h["round"]: h for h in m["history"]}[2]
    assert row["control_n"] == 15 and row["control_accuracy"] == est["accuracy"]
    assert m["control"]["share"] == 0.5
    # The latest model is round 2's: the control labels before it are none; held-out labeled images.
    assert m["evaluated_on"] == "holdout" and m["control"]["pooled"] is None

    # The edge cases, on round 2's control images, as the store records them.
    a, b, q, k = (e[0] for e in ctl[:4])
    wrong = next(n for n in CLASSES if n != truth[a])
    assert c.post(f"/api/v1/projects/{pid}/labels", json={"labels": [
        {"item_id": a, "class": wrong, "client_id": "relabel-a"}]}).status_code == 201   # relabeled: counts once
    with session_scope(settings) as s:
        s.get(Item, b).label, s.get(Item, b).status = None, ItemStatus.QUEUED            # retracted by Label Studio
        s.get(Item, q).status = ItemStatus.QUARANTINED                                  # quarantined
        s.get(Item, k).label, s.get(Item, k).status = None, ItemStatus.SKIPPED          # every expert skipped it
    excl = next(e for e in ctl[4:] if truth[e[0]] != truth[a])
    assert c.post(f"/api/v1/projects/{pid}/classes/{truth[excl[0]]}/exclude", json={"reason": "test"}).status_code == 200
    m = c.get(f"/api/v1/projects/{pid}/metrics").json()
    est2 = {e["round"]: e for e in m["control"]["rounds"]}[2]
    now_right = right - (truth[a] == ctl[0][2]) + (wrong == ctl[0][2]) - sum(truth[e[0]] == e[2] for e in ctl[1:4])
    assert (est2["n"], est2["missing"], est2["waiting"], est2["correct"]) == (12, 2, 1, now_right)
    # The excluded class's control labels still count (the model on the pool as it is).
    # Per class = per current label: the relabeled image moved to `wrong`'s class.
    assert est2["per_class"][truth[excl[0]]]["n"] == est["per_class"][truth[excl[0]]]["n"] - \
        sum(truth[e[0]] == truth[excl[0]] for e in ctl[1:4]) + (wrong == truth[excl[0]])
    assert c.post(f"/api/v1/projects/{pid}/classes/{truth[excl[0]]}/include", json={}).status_code == 200
    with session_scope(settings) as s:
        s.get(Item, b).label, s.get(Item, b).status = truth[b], ItemStatus.LABELED
        s.get(Item, k).label, s.get(Item, k).status = truth[k], ItemStatus.LABELED

    # Round 3: its model's evidence reads round 2's control labels (no validation split), and the
    # budget changed mid-way: 12 → no control slice, and the round says why.
    assert c.patch(f"/api/v1/projects/{pid}", json={"config": {"budget": 9}}).status_code == 200
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    rnd = round_reaches(c, settings, pid, 3, "labeling")
    assert "control" not in rnd["progress"] and "min_per_round" in rnd["progress"]["control_note"]
    assert not any(e[3] for e in _entries(settings, pid, 3))
    m = c.get(f"/api/v1/projects/{pid}/metrics").json()
    assert m["evaluated_on"] == "control" and m["evidence"]["source"] == "control"
    assert m["evidence"]["rounds"] == [2] and m["evidence"]["n"] == 14
    assert m["control"]["pooled"]["n"] == 14 and m["accuracy"] == m["control"]["pooled"]["accuracy"]
    assert m["confusion_on"] == "holdout"
    srcs = m["evidence"]["per_class_source"]
    assert set(srcs.values()) <= {"control", "holdout"} and "control" in srcs.values()
    for name, src in srcs.items():
        if src == "control":
            pc = m["control"]["pooled"]["per_class"][name]
            assert m["per_class"][name]["evidence"] == {"correct": pc["correct"], "total": pc["n"], "source": "control"}
            assert m["per_class"][name]["accuracy"] == pc["correct"] / pc["n"]
