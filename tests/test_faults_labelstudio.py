"""Fault: the API process is SIGKILLed and restarted while Label Studio's webhooks keep arriving.

Real processes: `camloop serve` (Label Studio settings: it pushes the round's batch, takes the
webhooks, polls every second), `camloop worker`, the session's real Label Studio 1.23.2. An
expert answers the round's tasks one after the other through Label Studio's API; part-way the
API process is killed with SIGKILL (webhooks in flight are lost, Label Studio never re-sends
them), the expert goes on, the API comes back on the same port and data. The reconciliation
poll must recover every missed answer: each item labeled once with the expert's class, the
round closes, a manual sync afterwards finds nothing new.
"""
from __future__ import annotations

import threading
import time

import httpx
import pytest
import redis

from service.labelstudio import config as cfg
from tests.labelstudio_server import free_port, label_studio  # noqa: F401  (session fixture)
from tests.worker_proc import (REDIS_URL, cleanup_queues, digits_arrays, kill, start_server, start_worker,
                               stop_worker, unique_prefix, wait_for, worker_env, write_pngs)

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]

KEY, SECRET = "lsfault-engineer-key", "lsfault-webhook-secret"
BUDGET = 24


def test_api_killed_and_restarted_while_webhooks_arrive_nothing_lost_nothing_twice(label_studio, tmp_path):  # noqa: F811
    ls_url, token = label_studio
    root = tmp_path / "data"
    root.mkdir()
    prefix = unique_prefix("lsflt")
    port = free_port()
    env = worker_env(CAMLOOP_DATA_DIR=str(root), CAMLOOP_QUEUE_PREFIX=prefix, CAMLOOP_API_KEYS=KEY, REDIS_URL=REDIS_URL,
                     CAMLOOP_RECONCILE_INTERVAL_S="0.3", CAMLOOP_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
                     CAMLOOP_LABEL_STUDIO_URL=ls_url, CAMLOOP_LABEL_STUDIO_TOKEN=token,
                     CAMLOOP_LABEL_STUDIO_WEBHOOK_SECRET=SECRET, CAMLOOP_LABEL_STUDIO_POLL_INTERVAL_S="1",
                     CAMLOOP_URL_SIGNING_KEY="lsfault-signing-key")
    log = root / "server.log"
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"Authorization": f"Bearer {KEY}"},
                       timeout=60)
    ls = httpx.Client(base_url=ls_url, headers={"Authorization": f"Token {token}"}, timeout=30)

    def up(proc):
        def healthy():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False
        wait_for(healthy, timeout=120, what="camloop serve", proc=proc, log=log)

    server = start_server(env, log, port)
    worker = start_worker(env, root / "worker.log")
    try:
        up(server)
        images, labels = digits_arrays(60, seed=5)
        truth = {uri: str(y) for uri, y in write_pngs(root, images, labels)}
        r = api.post("/projects", json={"name": f"lsfault-{port}", "classes": [str(i) for i in range(10)],
                                        "config": {"budget": BUDGET, "reserve": 0, "epochs": 1, "pretrained": False}})
        assert r.status_code == 201 and r.json()["warnings"] == [], r.text
        pid = r.json()["id"]
        assert api.post(f"/projects/{pid}/items", json={"folder": "pool"}).status_code == 202
        assert api.post(f"/projects/{pid}/rounds").status_code == 202  # cold start: a random batch

        def round_state():
            return api.get(f"/projects/{pid}/rounds/1").json()["state"]

        wait_for(lambda: round_state() == "labeling", timeout=300, what="round 1 labeling", proc=server, log=log)
        queue = api.get(f"/projects/{pid}/queue").json()["items"]
        assert len(queue) == BUDGET
        uri_of = {q["item_id"]: q["uri"] for q in queue}
        ls_pid = next(p["id"] for p in _ls_projects(ls) if p["title"] == f"camloop: lsfault-{port}")

        def tasks():
            r = ls.get("/api/tasks", params={"project": ls_pid, "fields": "all", "page_size": 100})
            return r.json()["tasks"] if r.status_code == 200 else []

        pushed = wait_for(lambda: (t := tasks()) and len(t) == BUDGET and t, timeout=120, what="tasks in LS")
        by_item = {int(t["data"][cfg.ITEM_ID]): t["id"] for t in pushed}
        r = ls.post("/api/users/", json={"email": f"x{port}@camloop.test", "username": f"x{port}", "first_name": "X",
                                         "password": "not-used-here-1"})
        expert = r.json()["id"]

        # The expert answers every task, one after the other, while the API is killed and restarted.
        answered: list[int] = []
        order = [q["item_id"] for q in queue]

        def expert_works():
            for iid in order:
                res = [{"from_name": cfg.CLASS_FROM, "to_name": cfg.IMAGE, "type": "choices",
                        "value": {"choices": [truth[uri_of[iid]]]}}]
                r = ls.post(f"/api/tasks/{by_item[iid]}/annotations/",
                            json={"result": res, "was_cancelled": False, "completed_by": expert, "lead_time": 1.0})
                assert r.status_code == 201, r.text
                answered.append(iid)
                time.sleep(0.25)

        t = threading.Thread(target=expert_works)
        t.start()
        wait_for(lambda: len(answered) >= BUDGET // 4, timeout=120, what="first answers")
        kill(server)                        # SIGKILL: webhooks in flight and during the outage are lost
        at_kill = len(answered)
        wait_for(lambda: len(answered) >= BUDGET // 2 + 2, timeout=120, what="answers while the API is down")
        server = start_server(env, log, port)
        up(server)
        t.join(timeout=120)
        assert len(answered) == BUDGET and at_kill < BUDGET // 2 + 2

        # The poll recovers everything Label Studio holds: each item once, with the expert's class.
        def all_labeled():
            items = api.get(f"/projects/{pid}/items", params={"split": "pool", "limit": 1000}).json()["items"]
            got = {it["id"]: it for it in items if it["id"] in uri_of}
            return got if all(it["status"] == "labeled" for it in got.values()) else None

        got = wait_for(all_labeled, timeout=120, what="every answer in the store", proc=server, log=log)
        for iid, it in got.items():
            assert it["label"] == truth[uri_of[iid]], (iid, it)
        wait_for(lambda: round_state() == "closed", timeout=60, what="round 1 closed", proc=server, log=log)
        sync = api.post(f"/projects/{pid}/label-studio/sync").json()
        assert (sync["created"], sync["updated"], sync["deleted"]) == (0, 0, 0), sync
        time.sleep(1.0)  # GET metrics may be one reconciler tick stale
        assert api.get(f"/projects/{pid}/metrics").json()["labeled"] == BUDGET
        from sqlalchemy import create_engine, text
        eng = create_engine(f"sqlite:///{root.parent / (root.name + '-state') / 'camloop.db'}")
        with eng.connect() as db:
            per_item = db.execute(text("SELECT item_id, count(*) FROM labels WHERE project_id = :p GROUP BY item_id"),
                                  {"p": pid}).all()
        eng.dispose()
        assert sorted(i for i, _ in per_item) == sorted(uri_of) and all(n == 1 for _, n in per_item), per_item
    finally:
        api.close()
        ls.close()
        stop_worker(worker)
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)
        cleanup_queues(redis.Redis.from_url(REDIS_URL), prefix)


def _ls_projects(ls: httpx.Client) -> list[dict]:
    r = ls.get("/api/projects/", params={"page_size": 1000}).json()
    return r["results"] if isinstance(r, dict) else r
