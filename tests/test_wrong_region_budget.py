"""Wrong-region votes do something (issue 13): the experts' "the model looked at the wrong
region" votes per guessed class reach the class budget of the next round's batch.

The engine: select_from_scores on score files on disk, with and without votes. The service: a
project's round 3 selects with the votes filed (in the Label Studio bridge's ledger) on round 2's
queue, over real PostgreSQL/SQLite, Redis and an RQ worker; its recorded class quota is compared
with the engine's quota on the same score files without the votes.
"""
from __future__ import annotations

import time

import numpy as np
from sqlalchemy import insert, select

from service.core import paths
from service.labelstudio.ledger import annotations
from service.store import Item, ModelVersion, QueueEntry, Round, utcnow
from service.store.db import session_scope
from tests.conftest import label_queue, round_reaches, write_digits
from engine import contracts as c
from engine.decisions import evidence_accuracy, evidence_of
from engine.selection import select_from_scores

CLASSES = [str(i) for i in range(10)]


def _score_file(path, n=400, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {c.SCORE_ITEM_IDS: np.arange(1, n + 1, dtype=np.int64), c.SCORE_PRED: np.arange(n) % classes,
              c.SCORE_PROBS: rng.dirichlet(np.ones(classes), n).astype(np.float32),
              c.SCORE_EMBEDDING: rng.normal(size=(n, 8)).astype(np.float32),
              c.SCORE_GATED: np.zeros(n, bool)}
    for k in ("margin", "entropy", "bald", "least_confidence", "cam_score"):
        arrays[c.SCORE_COLUMN_PREFIX + k] = rng.random(n).astype(np.float32)
    np.savez(path, **arrays)
    return path


def test_a_flagged_class_gets_more_of_the_batch(tmp_path):
    f = _score_file(tmp_path / "scores_00000.npz")
    names = ["a", "b", "c", "d"]
    args = ("hybrid", names, [True] * 4, 40, 0, [0.8] * 4, 0, 2)
    plain = select_from_scores([f], *args)
    assert plain.quota == [10, 10, 10, 10]
    # Experts flagged 8 of 10 of the model's "c" guesses, none of the others'.
    votes = (np.array([0, 0, 8, 0]), np.array([10, 10, 10, 10]))
    flagged = select_from_scores([f], *args, wrong_region_votes=votes)
    assert sum(flagged.quota) == 40 and flagged.quota[2] > 2 * plain.quota[2] / 1.5
    assert flagged.quota[2] == max(flagged.quota) and all(q < 10 for i, q in enumerate(flagged.quota) if i != 2)
    picked_c = sum(p.pred == "c" for p in flagged.batch)
    assert picked_c == flagged.quota[2] > sum(p.pred == "c" for p in plain.batch)
    # Votes that flag nothing leave the quota as it was; a strategy without a class budget ignores them.
    assert select_from_scores([f], *args, wrong_region_votes=(np.zeros(4), np.full(4, 10.0))).quota == plain.quota
    assert select_from_scores([f], "margin", *args[1:], wrong_region_votes=votes).quota is None


FAST = {"epochs": 5, "budget": 50, "reserve": 0, "mc_samples": 2, "hflip": False, "pretrained": False,
        "strategy": "hybrid"}


def test_the_service_passes_the_votes_to_the_next_rounds_class_budget(api):
    c, settings = api
    r = c.post("/api/v1/projects", json={"name": f"wr-{time.monotonic_ns()}", "classes": CLASSES, "config": FAST})
    pid = r.json()["id"]
    truth = dict(write_digits(settings.data_dir, 300, "pool", seed=5))
    val = write_digits(settings.data_dir, 80, "val", seed=5, offset=300)
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool", "items": [
        {"uri": u, "split": "val", "label": y} for u, y in val]}).status_code == 202
    for n in (1, 2):
        assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
        round_reaches(c, settings, pid, n, "labeling")
        items = label_queue(c, pid, truth)
        round_reaches(c, settings, pid, n, "closed")
    # The experts reviewed round 2's tasks (each showed the map of the model's guess) and said
    # "wrong region" on every task where the model guessed the class it guessed most.
    with session_scope(settings) as s:
        rid = s.scalar(select(Round.id).where(Round.project_id == pid, Round.number == 2))
        guesses = dict(s.execute(select(QueueEntry.item_id, QueueEntry.pred).where(QueueEntry.round_id == rid)).all())
        # A class the model guessed several times, with many images left in the pool (the quota
        # of a class is capped by the pool images predicted as it).
        left = [truth[u] for u in s.scalars(select(Item.uri).where(Item.project_id == pid, Item.split == "pool",
                                                                    Item.status == "unlabeled"))]
        target = max((k for k in CLASSES if list(guesses.values()).count(k) >= 3), key=lambda k: (left.count(k), k))
        s.execute(insert(annotations), [
            {"annotation_id": 10_000 * pid + i, "ls_project_id": 900 + pid, "ls_task_id": i, "project_id": pid,
             "item_id": e["item_id"], "annotator": 1, "label": truth[e["uri"]],
             "wrong_region": guesses[e["item_id"]] == target, "skipped": False, "round": 2, "seen_at": utcnow()}
            for i, e in enumerate(items)])
    flagged = list(guesses.values()).count(target)
    assert flagged >= 3
    m = c.get(f"/api/v1/projects/{pid}/metrics").json()
    assert m["per_class"][target]["wrong_region_votes"] == flagged  # what the metrics already showed

    # A smaller batch for round 3, so that no class's quota is capped by the images predicted as it.
    assert c.patch(f"/api/v1/projects/{pid}", json={"config": {"budget": 16}}).status_code == 200
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    rnd = round_reaches(c, settings, pid, 3, "labeling")
    quota = rnd["progress"]["class_quota"]
    assert sum(quota.values()) == 16
    # The same round's score files and evidence, selected without the votes: the target class
    # gets fewer of the 16.
    with session_scope(settings) as s:
        mv = s.scalar(select(ModelVersion).where(ModelVersion.project_id == pid, ModelVersion.round == 3))
        acc = evidence_accuracy(evidence_of(3, mv.metrics, CLASSES), CLASSES)
    files = sorted(paths.round_dir(settings, pid, 3).glob("scores_*.npz"))
    plain = select_from_scores(files, "hybrid", CLASSES, [True] * 10, 16, 0, acc, 0, 3)
    without = dict(zip(CLASSES, plain.quota))
    assert quota[target] > without[target], (target, quota, without)
    assert sum(quota[k] for k in CLASSES if k != target) < sum(without[k] for k in CLASSES if k != target)
