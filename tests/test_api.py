"""The REST contract over HTTP (TestClient, app lifespan + reconciler running) on SQLite and
PostgreSQL, real Redis; jobs run by a real rq SimpleWorker draining our queues."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import func, select

from service.store.db import session_scope
from service.store import Label
from tests.conftest import DASHBOARD_KEY, ENGINEER_KEY, run_jobs, write_digits

CLASSES = [str(i) for i in range(10)]
FAST = {"epochs": 1, "budget": 12, "reserve": 0, "mc_samples": 2, "hflip": False, "pretrained": False}


def wait_until(get, cond, what: str, limit: int = 600):
    """Poll (≤ limit × 0.1 s) until cond(value); a bound on waiting, not a timing assertion."""
    for _ in range(limit):
        v = get()
        if cond(v):
            return v
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}: last {v}")


def new_project(c, name="digits", **cfg) -> int:
    r = c.post("/api/v1/projects", json={"name": f"{name}-{time.monotonic_ns()}", "classes": CLASSES,
                                         "config": {**FAST, **cfg}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def register(c, settings, pid, pool=40, val=20, seed_labels=0):
    """Digits under the data root: `pool` unlabeled (first `seed_labels` labeled), `val` labeled."""
    pool_files = write_digits(settings.data_dir, pool, "pool", seed=1)
    val_files = write_digits(settings.data_dir, val, "val", seed=1, offset=pool)
    items = [{"uri": u, "split": "val", "label": y} for u, y in val_files]
    items += [{"uri": u, "split": "pool", "label": y} for u, y in pool_files[:seed_labels]]
    r = c.post(f"/api/v1/projects/{pid}/items", json={"items": items})
    assert r.status_code == 202, r.text
    r = c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"})
    assert r.status_code == 202, r.text
    assert r.json()["duplicates"] == seed_labels  # the seeded files were registered already
    run_jobs(settings, ("ingest",))
    return dict(pool_files)


def get_round(c, pid, n):
    r = c.get(f"/api/v1/projects/{pid}/rounds/{n}")
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------ auth

def test_auth_keys_roles_and_open_healthz(api):
    c, _ = api
    assert c.get("/healthz", headers={"Authorization": ""}).status_code == 200
    pid = new_project(c)
    r = c.get(f"/api/v1/projects/{pid}", headers={"Authorization": ""})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    bad = "not-a-key-" + ENGINEER_KEY
    r = c.get(f"/api/v1/projects/{pid}", headers={"Authorization": f"Bearer {bad}"})
    assert r.status_code == 401 and bad not in r.text and ENGINEER_KEY not in r.text
    dash = {"Authorization": f"Bearer {DASHBOARD_KEY}"}
    assert c.get(f"/api/v1/projects/{pid}", headers=dash).status_code == 200
    assert c.get(f"/api/v1/projects/{pid}/metrics", headers=dash).status_code == 200
    for path in (f"/api/v1/projects/{pid}/rounds", f"/api/v1/projects/{pid}/classes/3/exclude"):
        r = c.post(path, headers=dash, json={})
        assert r.status_code == 403 and DASHBOARD_KEY not in r.text
    r = c.post("/api/v1/projects", headers=dash, json={"name": "x", "classes": ["a", "b"]})
    assert r.status_code == 403


def test_the_api_process_never_imports_torch():
    code = ("import sys; from service.api import create_app; import service.rounds, service.runtime.jobqueue, "
            "service.core.heatmap_view, strategies.selection, strategies.budget, strategies.exclusion; "
            "create_app(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "False", out.stderr


# ------------------------------------------------------------------ items

def test_register_refuses_paths_outside_the_data_root(api, tmp_path):
    c, settings = api
    pid = new_project(c)
    write_digits(settings.data_dir, 3, "pool")
    outside = tmp_path / "outside.png"
    outside.write_bytes((settings.data_dir / "pool" / "00000.png").read_bytes())
    (settings.data_dir / "link.png").symlink_to(outside)
    for uri in ("../outside.png", "pool/../../outside.png", str(outside), "link.png"):
        r = c.post(f"/api/v1/projects/{pid}/items", json={"items": [{"uri": uri}]})
        assert r.status_code == 400, (uri, r.text)
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": ".."}).status_code == 400
    r = c.post(f"/api/v1/projects/{pid}/items", json={"items": [{"uri": "pool/00000.png", "label": "eleven"}]})
    assert r.status_code == 422 and "unknown class 'eleven'" in r.json()["detail"]
    r = c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"})
    assert r.json()["registered"] == 3
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}).json()["duplicates"] == 3


def test_bad_images_are_quarantined_with_the_reason(api):
    c, settings = api
    pid = new_project(c)
    write_digits(settings.data_dir, 2, "pool")
    (settings.data_dir / "pool" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (settings.data_dir / "pool" / "empty.png").write_bytes(b"")
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}).json()["registered"] == 4
    run_jobs(settings, ("ingest",))
    items = wait_until(lambda: c.get(f"/api/v1/projects/{pid}/items").json()["items"],
                       lambda v: sum(i["status"] == "quarantined" for i in v) == 2, "quarantine")
    bad = {i["uri"]: i["reason"] for i in items if i["status"] == "quarantined"}
    assert set(bad) == {"pool/broken.png", "pool/empty.png"} and all(bad.values())


# ------------------------------------------------------------------ rounds, queue, labels

def test_cold_start_round_queue_labels_and_close(api):
    c, settings = api
    pid = new_project(c)
    truth = register(c, settings, pid)
    r = c.post(f"/api/v1/projects/{pid}/rounds")
    assert r.status_code == 202 and r.json()["number"] == 1
    rnd = wait_until(lambda: get_round(c, pid, 1), lambda v: v["state"] == "labeling", "labeling")
    assert rnd["progress"]["cold_start"] is True  # nothing labeled in the pool: a random first batch
    q = c.get(f"/api/v1/projects/{pid}/queue").json()
    assert q["round"] == 1 and len(q["items"]) == FAST["budget"]
    assert [e["rank"] for e in q["items"]] == list(range(FAST["budget"]))
    # While its batch waits for experts a new start is refused, saying how many images wait; with
    # force it closes the round and they go back to the pool.
    r = c.post(f"/api/v1/projects/{pid}/rounds")
    assert r.status_code == 409 and f"{FAST['budget']} of its {FAST['budget']} images" in r.json()["detail"]
    assert get_round(c, pid, 1)["state"] == "labeling"
    assert c.post(f"/api/v1/projects/{pid}/rounds", json={"force": True}).status_code == 202
    one = get_round(c, pid, 1)
    assert one["state"] == "closed" and one["progress"]["abandoned"] == FAST["budget"]
    wait_until(lambda: get_round(c, pid, 2), lambda v: v["state"] == "labeling", "labeling 2")
    q = c.get(f"/api/v1/projects/{pid}/queue").json()
    labels = [{"item_id": e["item_id"], "class": truth[e["uri"]], "client_id": f"r2-{e['item_id']}"} for e in q["items"]]
    r = c.post(f"/api/v1/projects/{pid}/labels", json={"labels": labels})
    assert r.status_code == 201 and all(x["created"] for x in r.json()["labels"])
    assert all(x["round"] == 2 for x in r.json()["labels"])
    wait_until(lambda: get_round(c, pid, 2), lambda v: v["state"] == "closed", "closed")
    m = c.get(f"/api/v1/projects/{pid}/metrics").json()
    assert m["labeled"] == FAST["budget"] and m["round_state"] == "closed"
    assert sum(v["labeled"] for v in m["per_class"].values()) == FAST["budget"]
    assert c.get(f"/api/v1/projects/{pid}/queue").json()["items"] == []


def test_concurrent_round_starts_one_wins(api):
    c, settings = api
    pid = new_project(c)
    # Seed labels: round 1 then waits in `training` (no worker here), an active round. A cold
    # start would reach `labeling` at once, and a start after that legitimately closes it.
    register(c, settings, pid, pool=10, val=5, seed_labels=4)
    barrier, codes = threading.Barrier(4), []

    def start():
        barrier.wait()
        codes.append(c.post(f"/api/v1/projects/{pid}/rounds").status_code)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [202, 409, 409, 409]
    assert len(c.get(f"/api/v1/projects/{pid}/rounds").json()["rounds"]) == 1


def test_labels_are_idempotent_validated_and_never_double_counted(api):
    c, settings = api
    pid = new_project(c)
    register(c, settings, pid, pool=6, val=2)
    item = c.get(f"/api/v1/projects/{pid}/items", params={"split": "pool"}).json()["items"][0]["id"]
    url = f"/api/v1/projects/{pid}/labels"
    one = {"labels": [{"item_id": item, "class": "3", "client_id": "abc", "who": "ann"}]}
    r1, r2 = c.post(url, json=one), c.post(url, json=one)
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert r1.json()["labels"][0]["id"] == r2.json()["labels"][0]["id"] and not r2.json()["labels"][0]["created"]
    r = c.post(url, json={"labels": [{"item_id": item, "class": "4", "client_id": "abc"}]})
    assert r.status_code == 409 and "abc" in r.json()["detail"]
    r = c.post(url, json={"labels": [{"item_id": item, "class": "cat", "client_id": "x1"}]})
    assert r.status_code == 422 and "unknown class 'cat'" in r.json()["detail"] and "0, 1, 2" in r.json()["detail"]
    r = c.post(url, json={"labels": [{"item_id": 10 ** 9, "class": "3", "client_id": "x2"}]})
    assert r.status_code == 422
    # A relabel under a new id: recorded, the latest wins, the item still counts once.
    assert c.post(url, json={"labels": [{"item_id": item, "class": "5", "client_id": "def"}]}).status_code == 201
    m = c.get(f"/api/v1/projects/{pid}/metrics").json()
    assert m["labeled"] == 1 and m["per_class"]["5"]["labeled"] == 1 and m["per_class"]["3"]["labeled"] == 0
    with session_scope(settings) as s:
        assert s.scalar(select(func.count()).select_from(Label).where(Label.item_id == item)) == 2


def test_exclude_and_include_record_who_and_why(api):
    c, _ = api
    pid = new_project(c)
    r = c.post(f"/api/v1/projects/{pid}/classes/7/exclude", json={"reason": "ambiguous glyphs"})
    assert r.status_code == 200
    cls = {x["name"]: x for x in r.json()["classes"]}
    assert cls["7"]["status"] == "excluded" and cls["7"]["reason"] == "ambiguous glyphs"
    assert cls["7"]["changed_by"].startswith("key:") and ENGINEER_KEY not in r.text and cls["7"]["changed_at"]
    assert c.post(f"/api/v1/projects/{pid}/classes/nope/exclude", json={}).status_code == 404
    r = c.post(f"/api/v1/projects/{pid}/classes/7/include", json={"reason": "new guideline"})
    cls = {x["name"]: x for x in r.json()["classes"]}
    assert cls["7"]["status"] == "active" and cls["7"]["reason"] == "new guideline"
    m = c.get(f"/api/v1/projects/{pid}/metrics").json()
    assert m["per_class"]["7"]["status"] == "active"


def test_the_reserve_follows_the_batch_and_stays_with_the_experts_until_the_next_batch(api):
    """Default reserve: half the budget, queued after the batch. Labeling the batch closes the
    round; the reserve stays queued (the experts label it while the next round trains), then the
    next round's batch replaces what is left of it."""
    c, settings = api
    pid = new_project(c, reserve=None)  # the default
    truth = register(c, settings, pid)
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    rnd = wait_until(lambda: get_round(c, pid, 1), lambda v: v["state"] == "labeling", "labeling")
    half = FAST["budget"] // 2
    assert rnd["progress"]["queued"] == FAST["budget"] and rnd["progress"]["reserve"] == half
    q = c.get(f"/api/v1/projects/{pid}/queue").json()["items"]
    assert [e["reserve"] for e in q] == [False] * FAST["budget"] + [True] * half
    batch, reserve = q[:FAST["budget"]], q[FAST["budget"]:]
    labels = [{"item_id": e["item_id"], "class": truth[e["uri"]], "client_id": f"b-{e['item_id']}"} for e in batch]
    # ... and one reserve image, answered while the next round works
    labels.append({"item_id": reserve[0]["item_id"], "class": truth[reserve[0]["uri"]], "client_id": "r-0"})
    assert c.post(f"/api/v1/projects/{pid}/labels", json={"labels": labels}).status_code == 201
    wait_until(lambda: get_round(c, pid, 1), lambda v: v["state"] == "closed", "closed")
    # Between rounds the queue offers what is left of the reserve.
    between = c.get(f"/api/v1/projects/{pid}/queue").json()
    assert between["round"] == 1 and [e["item_id"] for e in between["items"]] == [e["item_id"] for e in reserve[1:]]
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202  # nothing of round 1's batch waits
    # The jobs run in this process (burst), again until the round has chained train → score.
    two = wait_until(lambda: (run_jobs(settings, ("train", "score")), get_round(c, pid, 2))[1],
                     lambda v: v["state"] == "labeling", "labeling 2", limit=300)
    assert two["progress"]["reserve_withdrawn"] == half - 1
    items = {i["id"]: i for i in c.get(f"/api/v1/projects/{pid}/items", params={"split": "pool"}).json()["items"]}
    assert items[reserve[0]["item_id"]]["status"] == "labeled"
    new_q = {e["item_id"] for e in c.get(f"/api/v1/projects/{pid}/queue").json()["items"]}
    for e in reserve[1:]:  # back in the pool, or picked again by the new ranking
        assert items[e["item_id"]]["status"] == ("queued" if e["item_id"] in new_q else "unlabeled")
    m = c.get(f"/api/v1/projects/{pid}/metrics").json()
    assert m["labeled"] == FAST["budget"] + 1


def test_failed_job_fails_the_round_with_the_reason_and_retry_re_enqueues(api):
    c, settings = api
    pid = new_project(c)
    register(c, settings, pid, pool=12, val=4, seed_labels=6)
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    wait_until(lambda: get_round(c, pid, 1), lambda v: v["state"] == "training", "training")
    from service.core import paths
    paths.cache_file(settings, pid, 0).unlink()  # the decoded images are gone: the job cannot read them
    run_jobs(settings, ("train",))  # the job raises; Retry runs it again, then it is failed
    rnd = wait_until(lambda: get_round(c, pid, 1), lambda v: v["state"] == "failed", "failed")
    assert "shard_00000.npy" in rnd["error"]
    assert rnd["jobs"][0]["state"] == "failed" and rnd["jobs"][0]["id"].endswith("-a0")
    r = c.post(f"/api/v1/projects/{pid}/rounds/1/retry")
    assert r.status_code == 202 and r.json()["state"] == "training" and r.json()["attempt"] == 1
    from service.runtime import jobqueue
    assert jobqueue.status(f"{settings.queue_prefix}-p{pid}-r1-train-a1", settings).state == "queued"
    assert c.post(f"/api/v1/projects/{pid}/rounds/1/retry").status_code == 409  # not failed now


def test_prometheus_metrics_and_heatmap_without_scores(api):
    c, settings = api
    pid = new_project(c)
    register(c, settings, pid, pool=4, val=2)
    text = c.get("/metrics", headers={"Authorization": ""}).text
    for name in ("camloop_rounds", "camloop_queue_depth", "camloop_labels", "camloop_scoring_items_per_second"):
        assert name in text
    item = c.get(f"/api/v1/projects/{pid}/items").json()["items"][0]["id"]
    r = c.get(f"/api/v1/projects/{pid}/items/{item}/heatmap.png")
    assert r.status_code == 404 and "no Grad-CAM map" in r.json()["detail"]
    assert c.get(f"/api/v1/projects/{pid}/items/999999/heatmap.png").status_code == 404


def test_dashboard_metrics_cache_serves_one_recompute_and_never_hides_a_class_change(api):
    c, settings = api
    pid = new_project(c)
    dash = {"Authorization": f"Bearer {DASHBOARD_KEY}"}
    first = c.get(f"/api/v1/projects/{pid}/metrics", headers=dash)
    assert first.status_code == 200 and first.json()["per_class"]["3"]["status"] == "active"
    # Many dashboards at once: every one answered, all with the same (cached or recomputed) view.
    answers = []

    def poll():
        answers.append(c.get(f"/api/v1/projects/{pid}/metrics", headers=dash))

    threads = [threading.Thread(target=poll) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in answers] == [200] * 16
    assert {r.json()["per_class"]["3"]["status"] for r in answers} == {"active"}
    # A write drops the cached answer: the next dashboard read already shows it.
    assert c.post(f"/api/v1/projects/{pid}/classes/3/exclude", json={"reason": "hopeless"}).status_code == 200
    after = c.get(f"/api/v1/projects/{pid}/metrics", headers=dash).json()["per_class"]["3"]
    assert (after["status"], after["reason"]) == ("excluded", "hopeless")
