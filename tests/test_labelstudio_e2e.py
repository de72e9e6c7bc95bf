"""Issue 4 end to end: experts label a round in a real Label Studio and the next round trains on it.

Real processes only: `camloop serve` (with the Label Studio settings, so it creates the LS
project, pushes each round's batch and takes webhooks) and `camloop worker`, on the machine's
Redis and a SQLite store, against the shared Label Studio 1.23.2 of the test session. Experts
are users made through Label Studio's API; their answers are posted to Label Studio's own
annotation endpoint, as the labeling UI does. The test then reads camloop's REST API only.
"""
from __future__ import annotations

import httpx
import pytest

from service.labelstudio import config as cfg
from tests.labelstudio_server import label_studio  # noqa: F401  (session fixture)
from tests.labelstudio_stack import served_stack, stack_logs
from tests.worker_proc import digits_arrays, wait_for, write_pngs

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]

KEY = "ls-e2e-engineer-key"
SECRET = "ls-e2e-webhook-secret"
BUDGET = 8
SEEDED = 20


def _ok(r: httpx.Response, *codes: int) -> dict:
    assert r.status_code in (codes or (200,)), f"{r.request.method} {r.request.url} → {r.status_code}: {r.text}"
    return r.json()


@pytest.fixture
def stack(label_studio, tmp_path):  # noqa: F811
    with served_stack(label_studio, tmp_path, name="lse2e", key=KEY, secret=SECRET) as st:
        yield st


def _round(stack, pid: int, n: int, states: tuple[str, ...]) -> dict:
    def reached():
        r = stack["api"].get(f"/projects/{pid}/rounds/{n}")
        if r.status_code == 404:
            return None
        rnd = _ok(r)
        if rnd["state"] == "failed":
            raise AssertionError(f"round {n} failed: {rnd['error']}\n{stack_logs(stack)}")
        return rnd if rnd["state"] in states else None

    return wait_for(reached, timeout=600, interval=0.3, what=f"round {n} in {states}", proc=stack["server"],
                    log=stack["log"])


def _expert(ls: httpx.Client, name: str) -> int:
    r = ls.post("/api/users/", json={"email": f"{name}@camloop.test", "username": name, "first_name": name,
                                     "password": "not-used-here-1"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _answer(ls: httpx.Client, task_id: int, user: int, label: str | None, *, wrong: bool = False) -> None:
    """What the labeling UI posts when an expert submits (label) or skips (None) a task."""
    result = [] if label is None else [
        {"from_name": cfg.CLASS_FROM, "to_name": cfg.IMAGE, "type": "choices", "value": {"choices": [label]}}]
    if wrong:
        result.append({"from_name": cfg.WRONG_FROM, "to_name": cfg.HEATMAP, "type": "choices",
                       "value": {"choices": [cfg.WRONG_VALUE]}})
    r = ls.post(f"/api/tasks/{task_id}/annotations/",
                json={"result": result, "was_cancelled": label is None, "completed_by": user, "lead_time": 3.0})
    assert r.status_code == 201, r.text


def test_experts_label_in_label_studio_and_the_next_round_trains_on_it(stack):
    api, ls, root = stack["api"], stack["ls"], stack["root"]
    images, labels = digits_arrays(160, seed=3)
    truth = {}
    for sub, sl in (("pool", slice(0, 120)), ("val", slice(120, 160))):
        for uri, y in write_pngs(root, images[sl], labels[sl], sub=sub):
            truth[uri] = str(y)
    classes = [str(i) for i in range(10)]

    # Creating the project creates its Label Studio project (webhook registered with our secret).
    p = _ok(api.post("/projects", json={"name": f"ls-e2e-{stack['port']}", "classes": classes, "config": {
        "budget": BUDGET, "reserve": 0, "epochs": 1, "mc_samples": 2, "hflip": False, "pretrained": False,
        "auto_next_round": True}}), 201)
    pid = p["id"]
    ls_projects = ls.get("/api/projects/", params={"page_size": 1000}).json()
    ls_projects = ls_projects["results"] if isinstance(ls_projects, dict) else ls_projects
    ls_pid = next(x["id"] for x in ls_projects if x["title"] == f"camloop: ls-e2e-{stack['port']}")
    hooks = ls.get("/api/webhooks/", params={"project": ls_pid}).json()
    assert [h["url"] for h in hooks] == [f"http://127.0.0.1:{stack['port']}/api/v1/webhooks/label-studio"]

    seeded = [u for u in truth if u.startswith("pool/")][:SEEDED]
    items = [{"uri": u, "split": "val", "label": y} for u, y in truth.items() if u.startswith("val/")]
    items += [{"uri": u, "split": "pool", "label": truth[u]} for u in seeded]
    _ok(api.post(f"/projects/{pid}/items", json={"items": items}), 202)
    _ok(api.post(f"/projects/{pid}/items", json={"folder": "pool"}), 202)

    # Round 1 trains on the seeded labels, scores the pool and queues BUDGET images in Label Studio.
    _ok(api.post(f"/projects/{pid}/rounds"), 202)
    _round(stack, pid, 1, ("labeling",))
    queue = _ok(api.get(f"/projects/{pid}/queue"))["items"]
    assert len(queue) == BUDGET
    uri_of = {q["item_id"]: q["uri"] for q in queue}

    def ls_tasks():
        r = ls.get("/api/tasks", params={"project": ls_pid, "fields": "all", "page_size": 100})
        return r.json()["tasks"] if r.status_code == 200 else []

    tasks = wait_for(lambda: (t := ls_tasks()) and len(t) == BUDGET and t, timeout=120, what="batch in Label Studio",
                     log=stack["log"])
    by_item = {int(t["data"][cfg.ITEM_ID]): t for t in tasks}
    assert set(by_item) == set(uri_of)
    # The guess is ticked (a prediction, one model_version for every round) only where its
    # calibrated probability reaches guess.threshold (0.9 by default); the header says which.
    for t in tasks:
        head = t["data"][cfg.GUESS]
        if t["predictions"]:
            assert t["predictions"][0].get("model_version") == cfg.MODEL_VERSION
            assert t["predictions"][0]["score"] >= 0.9 and head.endswith("pre-selected: change it if it is wrong")
        else:
            assert "not pre-selected" in head or head.startswith("hidden"), head

    # Two experts: one labels all but two tasks (one flagged "looked at the wrong region"), one skips.
    alice, bob = _expert(ls, f"alice-{stack['port']}"), _expert(ls, f"bob-{stack['port']}")
    ordered = [q["item_id"] for q in queue]
    skipped_item, wrong_item = ordered[-1], ordered[0]
    for iid in ordered[:-1]:
        _answer(ls, by_item[iid]["id"], alice, truth[uri_of[iid]], wrong=(iid == wrong_item))
    _answer(ls, by_item[skipped_item]["id"], bob, None)

    # The webhooks (and the poll behind them) close round 1; auto_next_round starts round 2,
    # which trains on the seeded labels plus the experts' BUDGET - 1.
    _round(stack, pid, 1, ("closed",))
    r2 = _round(stack, pid, 2, ("labeling", "closed"))
    assert r2["number"] == 2
    m = _ok(api.get(f"/projects/{pid}/metrics"))
    assert m["labeled"] == SEEDED + BUDGET - 1 and m["skipped"] == 1
    assert m["history"][-1]["round"] == 2 and m["history"][-1]["labeled"] == SEEDED + BUDGET - 1
    # The latest model's confusion matrix (true class × predicted) over the held-out split.
    assert m["evaluated_on"] == "val" and len(m["confusion"]) == len(classes)
    assert sum(map(sum, m["confusion"])) == sum(pc["support"] for pc in m["per_class"].values()) == 40
    # "Wrong region" is about the map of the class the model guessed: filed there, with the
    # expert's answer beside it.
    guessed = next(q["predicted"] for q in queue if q["item_id"] == wrong_item)
    assert m["per_class"][guessed]["wrong_region_votes"] == 1
    assert m["per_class"][guessed]["wrong_region_by_expert_class"] == {truth[uri_of[wrong_item]]: 1}
    assert sum(pc["wrong_region_votes"] for pc in m["per_class"].values()) == 1
    listed = {it["id"]: it for it in _ok(api.get(f"/projects/{pid}/items", params={"split": "pool",
                                                                                   "limit": 1000}))["items"]}
    for iid in ordered[:-1]:
        assert (listed[iid]["status"], listed[iid]["label"]) == ("labeled", truth[uri_of[iid]])
    assert listed[skipped_item]["status"] == "skipped"
    # Nothing counted twice: a manual sync (webhook + poll already ran) creates nothing new.
    sync = _ok(api.post(f"/projects/{pid}/label-studio/sync"))
    assert sync["created"] == 0 and sync["updated"] == 0 and sync["deleted"] == 0 and sync["retracted"] == [], sync
    assert _ok(api.get(f"/projects/{pid}/metrics"))["labeled"] == SEEDED + BUDGET - 1
    rv = _ok(api.get(f"/projects/{pid}/review"))
    assert rv["review"] == [] and "per_class" in rv["agreement"]
    # Round 2's batch is in Label Studio too, with round 2's predictions.
    wait_for(lambda: len(ls_tasks()) == 2 * BUDGET, timeout=120, what="round 2 batch in Label Studio",
             log=stack["log"])
