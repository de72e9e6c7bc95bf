"""Two API replicas on one PostgreSQL database (issue 12, item 1).

The README says replicas may share the database: rounds move by compare-and-set, so two never
take the same transition. Here two `camloop serve` processes reconcile the same rounds every
0.05 s (ten times the default rate, so their ticks overlap constantly) while one real worker
trains and scores, and the test plays the expert: it posts the ground truth of each queued batch,
alternating replicas. Afterwards the database itself is asked for what a lost race would leave
behind: a second model version for a round, an item queued twice, a metrics history that
repeats a round, a round that failed on a constraint.
"""
from __future__ import annotations

import uuid

import httpx
import numpy as np
import psycopg
import pytest
import redis

from tests.worker_proc import (REDIS_URL, cleanup_queues, digits_arrays, free_port, start_server, start_worker,
                               stop_worker, unique_prefix, wait_for, worker_env, write_pngs)

pytestmark = pytest.mark.slow

KEY = "replicas-engineer-key-2b7d"
CLASSES = [str(i) for i in range(10)]
ROUNDS = 4


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _ok(r: httpx.Response, *codes: int) -> dict:
    assert r.status_code in (codes or (200,)), f"{r.request.method} {r.request.url} → {r.status_code}: {r.text}"
    return r.json()


def test_two_replicas_with_a_fast_reconciler_take_each_transition_once(pg_url, tmp_path):
    root = tmp_path / "data"
    images, labels = digits_arrays()
    order = np.random.default_rng(1).permutation(len(images))
    truth: dict[str, int] = {}
    for sub, idx in (("pool", order[:240]), ("val", order[240:300])):
        for uri, y in write_pngs(root, images[idx], labels[idx], sub=sub):
            truth[uri] = y
    prefix = unique_prefix("rep")
    env = worker_env(CAMLOOP_DATA_DIR=str(root), CAMLOOP_QUEUE_PREFIX=prefix, REDIS_URL=REDIS_URL,
                     DATABASE_URL=pg_url, CAMLOOP_API_KEYS=KEY, CAMLOOP_RECONCILE_INTERVAL_S="0.05",
                     CAMLOOP_JOB_RETRIES="2")
    ports = [free_port(), free_port()]
    clients = [httpx.Client(base_url=f"http://127.0.0.1:{p}/api/v1", headers={"Authorization": f"Bearer {KEY}"},
                            timeout=60) for p in ports]
    logs = [tmp_path / f"api{i}.log" for i in range(2)]
    servers, worker = [], None
    try:
        for port, log in zip(ports, logs):
            servers.append(start_server(env, log, port))
        for port, proc, log in zip(ports, servers, logs):
            wait_for(lambda: _healthy(port), timeout=120, what="camloop serve", proc=proc, log=log)
        worker = start_worker(env, tmp_path / "worker.log", "--heartbeat-ttl", "3")
        a, b = clients
        # reserve 0: every queue entry is a batch image, so "queued twice" has one meaning.
        cfg = {"epochs": 1, "budget": 12, "reserve": 0, "mc_samples": 2, "hflip": False, "pretrained": False,
               # The rule on, judging from round 2: a doubled round used to make it fire a round early.
               "exclusion": {"enabled": True, "rule": "threshold", "exclude_after": 2, "patience": 1,
                             "exclude_below": 0.3}}
        pid = _ok(a.post("/projects", json={"name": f"replicas-{uuid.uuid4().hex[:6]}", "classes": CLASSES,
                                             "config": cfg}), 201)["id"]
        pool = sorted(u for u in truth if u.startswith("pool/"))
        seeds = [{"uri": u, "split": "pool", "label": str(truth[u])} for u in pool[:40]]
        val = [{"uri": u, "split": "val", "label": str(y)} for u, y in truth.items() if u.startswith("val/")]
        _ok(b.post(f"/projects/{pid}/items", json={"items": seeds + val}), 202)
        _ok(a.post(f"/projects/{pid}/items", json={"folder": "pool"}), 202)

        for n in range(1, ROUNDS + 1):
            starter, watcher = clients[n % 2], clients[(n + 1) % 2]
            rnd = _ok(starter.post(f"/projects/{pid}/rounds", headers={"Idempotency-Key": f"round-{n}"}), 202)
            assert rnd["number"] == n

            def state(want=("labeling",)):
                r = _ok(watcher.get(f"/projects/{pid}/rounds/{n}"))
                assert r["state"] != "failed", f"round {n} failed: {r['error']}"
                return r if r["state"] in want else None

            wait_for(state, timeout=300, interval=0.2, what=f"round {n} labeling", proc=worker,
                     log=tmp_path / "worker.log")
            queue = _ok(watcher.get(f"/projects/{pid}/queue"))["items"]
            assert queue and all(e["status"] == "queued" for e in queue)
            for k, e in enumerate(queue):  # the expert answers one at a time, through either replica
                _ok(clients[k % 2].post(f"/projects/{pid}/labels", json={"labels": [
                    {"item_id": e["item_id"], "class": str(truth[e["uri"]]), "client_id": f"gt-{e['item_id']}"}]}),
                    200, 201)
            wait_for(lambda: state(("closed",)), timeout=60, what=f"round {n} closed")

        rounds = _ok(a.get(f"/projects/{pid}/rounds"))["rounds"]
        assert [r["state"] for r in rounds] == ["closed"] * ROUNDS and all(r["error"] is None for r in rounds)
        history = _ok(b.get(f"/projects/{pid}/metrics"))["history"]
        assert [h["round"] for h in history] == list(range(1, ROUNDS + 1)), history

        with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as db:
            versions = db.execute("SELECT round, count(*) FROM model_versions WHERE project_id = %s GROUP BY round "
                                  "ORDER BY round", (pid,)).fetchall()
            assert versions == [(r, 1) for r in range(1, ROUNDS + 1)], f"model versions per round: {versions}"
            twice = db.execute("SELECT q.item_id, count(*) FROM queue_entries q JOIN rounds r ON r.id = q.round_id "
                               "WHERE r.project_id = %s GROUP BY q.item_id HAVING count(*) > 1", (pid,)).fetchall()
            assert twice == [], f"items queued in more than one round: {twice}"
            n_queued = db.execute("SELECT count(*) FROM queue_entries q JOIN rounds r ON r.id = q.round_id "
                                  "WHERE r.project_id = %s", (pid,)).fetchone()[0]
            assert n_queued == 12 * ROUNDS
            # Each round linked to its own model version, and exclusion decided at most once per class.
            links = db.execute("SELECT r.number, m.round FROM rounds r JOIN model_versions m ON m.id = "
                               "r.model_version_id WHERE r.project_id = %s ORDER BY r.number", (pid,)).fetchall()
            assert links == [(r, r) for r in range(1, ROUNDS + 1)]
            labeled = db.execute("SELECT count(*) FROM items WHERE project_id = %s AND split = 'pool' AND "
                                 "status = 'labeled'", (pid,)).fetchone()[0]
            assert labeled == 40 + 12 * ROUNDS == _ok(a.get(f"/projects/{pid}/metrics"))["labeled"]
        for log in logs:
            text = log.read_text(errors="replace")
            for bad in ("Traceback", "IntegrityError", "UniqueViolation", "failed in"):
                assert bad not in text, f"{log.name}: {bad}\n{text[-3000:]}"
    finally:
        for c in clients:
            c.close()
        if worker is not None:
            stop_worker(worker)
        for s in servers:
            s.terminate()
            s.wait(timeout=30)
        cleanup_queues(redis.Redis.from_url(REDIS_URL), prefix)
