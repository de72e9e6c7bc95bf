"""Chaos: a seeded run of several rounds while a controller SIGKILLs the worker, the API and Redis
at random moments and starts them again (issue 12, item 7).

The stack is the production shape with real processes: `camloop serve` (SQLite file), one
`camloop worker` (--heartbeat-ttl 3) and a private redis-server without persistence, so a
restarted Redis comes back empty. The test plays a retrying client: it starts each round (one
Idempotency-Key per round, re-sent until answered), reads the queue and posts the ground truth
one label at a time (the same client_id re-sent until answered), never calling retry, force or
anything else by hand. Meanwhile the controller, driven by one seeded RNG, kills a random
component every few seconds and restarts it after a random pause.

At the end: every round closed, none retried by hand; labels acknowledged = labels stored =
the metrics' labeled count (less the seeds); no item queued twice; nothing left running.

The seed is printed (pytest shows it with a failure) and every assertion names it; replay one
with CAMLOOP_CHAOS_SEED=<seed>. CAMLOOP_CHAOS_ROUNDS (default 3) lengthens the run.
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from tests.worker_proc import (PrivateRedis, digits_arrays, free_port, start_server, start_worker, wait_for,
                               worker_env, write_pngs)

pytestmark = pytest.mark.slow

KEY = "chaos-engineer-key-91d3"
CLASSES = [str(i) for i in range(10)]
BUDGET = 10
SEEDS = 40  # pool images labeled at registration: round 1 trains


class Chaos:
    """The components, each killable and restartable, and the controller that does it."""

    def __init__(self, root: Path, seed: int):
        self.root, self.rng = root, random.Random(seed)
        self.redis = PrivateRedis(root / "redis")
        self.port = free_port()
        self.env = worker_env(CAMLOOP_DATA_DIR=str(root / "data"), CAMLOOP_QUEUE_PREFIX=f"chaos{uuid.uuid4().hex[:6]}",
                              REDIS_URL=self.redis.url, DATABASE_URL=f"sqlite:///{root / 'camloop.db'}",
                              CAMLOOP_API_KEYS=KEY, CAMLOOP_RECONCILE_INTERVAL_S="0.2", CAMLOOP_JOB_RETRIES="1")
        self.api = self.worker = None
        self.started: list[psutil.Process] = []  # every process we started, to check none outlives the test
        self.kills: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self.covered = threading.Event()  # each kind has been killed and started again at least once
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.t0 = time.monotonic()

    # -------------------------------------------------------------- components
    def start_redis(self) -> None:
        self.redis.start()
        self.started.append(psutil.Process(self.redis.proc.pid))

    def start_api(self) -> None:
        self.api = start_server(self.env, self.root / "api.log", self.port)
        self.started.append(psutil.Process(self.api.pid))

    def start_worker(self) -> None:
        self.worker = start_worker(self.env, self.root / "worker.log", "--heartbeat-ttl", "3")
        self.started.append(psutil.Process(self.worker.pid))

    def kill(self, what: str) -> None:
        proc = {"api": self.api, "worker": self.worker, "redis": self.redis.proc}[what]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            self.kills.append((round(time.monotonic() - self.t0, 1), what))

    def restart(self, what: str) -> None:
        {"api": self.start_api, "worker": self.start_worker, "redis": self.start_redis}[what]()

    # -------------------------------------------------------------- the controller
    def run_controller(self, budget: dict[str, int]) -> None:
        left = dict(budget)
        first = self.rng.sample(sorted(budget), len(budget))  # each kind once, in a random order, first
        while not self._stop.wait(self.rng.uniform(1.5, 4.5)):
            victims = [k for k, n in left.items() if n > 0]
            if not victims:
                return
            what = first.pop(0) if first else self.rng.choice(victims)
            pause = self.rng.uniform(0.3, 3.0)
            with self._lock:
                if self._stop.is_set():
                    return
                self.kill(what)
                left[what] -= 1
            time.sleep(pause)
            with self._lock:
                self.restart(what)
            if {w for _, w in self.kills} >= set(budget):
                self.covered.set()

    def start_controller(self, budget: dict[str, int]) -> None:
        self.thread = threading.Thread(target=self.run_controller, args=(budget,), name="chaos", daemon=True)
        self.thread.start()

    def stop_controller(self) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(timeout=60)

    def stop_all(self) -> None:
        self.stop_controller()
        for proc in (self.api, self.worker):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except Exception:  # noqa: BLE001
                    proc.kill()
                    proc.wait()
        self.redis.kill()

    def still_running(self) -> list[str]:
        out = []
        for p in self.started:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            except psutil.NoSuchProcess:
                pass
        mark = str(self.root)
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if (mark in cmd or self.env["CAMLOOP_QUEUE_PREFIX"] in cmd) and p.pid != os.getpid():
                out.append(f"{p.pid} {cmd[:120]}")
        return out


class RetryingClient:
    """What a careful client does: re-send the same request (same Idempotency-Key, same
    client_id) until the API answers it, through API restarts and 503s."""

    def __init__(self, port: int, seed: int):
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=30,
                                 headers={"Authorization": f"Bearer {KEY}"})
        self.seed = seed
        self.resent = 0

    def call(self, method: str, path: str, ok=(200, 201, 202), deadline_s: float = 300, **kw) -> dict:
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                r = self.http.request(method, path, **kw)
                if r.status_code in ok:
                    return r.json()
                assert r.status_code >= 500, f"seed {self.seed}: {method} {path} → {r.status_code}: {r.text}"
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"seed {self.seed}: {method} {path} never answered"
            self.resent += 1
            time.sleep(0.3)


def test_chaos_rounds_complete_and_no_label_is_lost_or_counted_twice(tmp_path):
    seed = int(os.environ.get("CAMLOOP_CHAOS_SEED") or random.SystemRandom().randrange(1_000_000))
    rounds = int(os.environ.get("CAMLOOP_CHAOS_ROUNDS", "3"))
    print(f"chaos seed {seed} (replay: CAMLOOP_CHAOS_SEED={seed})", flush=True)
    images, labels = digits_arrays()
    order = np.random.default_rng(seed).permutation(len(images))
    truth: dict[str, int] = {}
    for sub, idx in (("pool", order[:260]), ("val", order[260:320])):
        for uri, y in write_pngs(tmp_path / "data", images[idx], labels[idx], sub=sub):
            truth[uri] = y
    chaos = Chaos(tmp_path, seed)
    client = None
    try:
        chaos.start_redis()
        chaos.start_api()
        chaos.start_worker()
        client = RetryingClient(chaos.port, seed)
        pid = client.call("POST", "/projects", ok=(201,), json={
            "name": f"chaos-{seed}", "classes": CLASSES,
            # reserve 0: the batch is the queue, and an item in two rounds' queues would be a bug.
            "config": {"epochs": 2, "budget": BUDGET, "reserve": 0, "mc_samples": 2, "hflip": False,
                       "pretrained": False}})["id"]
        pool = sorted(u for u in truth if u.startswith("pool/"))
        items = [{"uri": u, "split": "val", "label": str(y)} for u, y in truth.items() if u.startswith("val/")]
        items += [{"uri": u, "split": "pool", "label": str(truth[u])} for u in pool[:SEEDS]]
        client.call("POST", f"/projects/{pid}/items", ok=(202,), json={"items": items})
        client.call("POST", f"/projects/{pid}/items", ok=(202,), json={"folder": "pool"})

        chaos.start_controller({"worker": 2 + rounds, "api": 1 + rounds, "redis": rounds})
        acknowledged: dict[str, int] = {}  # client_id → item
        for n in range(1, rounds + 1):
            rnd = client.call("POST", f"/projects/{pid}/rounds", headers={"Idempotency-Key": f"chaos-{seed}-r{n}"})
            assert rnd["number"] == n, f"seed {seed}: {rnd}"

            def state_in(*want):
                r = client.call("GET", f"/projects/{pid}/rounds/{n}")
                assert r["state"] != "failed", f"seed {seed}: round {n} failed: {r['error']} (kills {chaos.kills})"
                return r if r["state"] in want else None

            wait_for(lambda: state_in("labeling", "closed"), timeout=600, interval=0.3, what=f"round {n} labeling")
            queue = client.call("GET", f"/projects/{pid}/queue", params={"round": n})["items"]
            assert len(queue) == BUDGET, f"seed {seed}: round {n} queued {len(queue)}"
            for k, e in enumerate(queue):  # the expert answers one image at a time
                if n == rounds and k == len(queue) - 1:
                    # The last answer waits until every kind of component has died once: a run
                    # that happens to be quick still goes through each kind of death.
                    assert chaos.covered.wait(300), f"seed {seed}: the controller did not kill each kind"
                cid = f"chaos-{seed}-{e['item_id']}"
                client.call("POST", f"/projects/{pid}/labels", ok=(200, 201), json={"labels": [
                    {"item_id": e["item_id"], "class": str(truth[e["uri"]]), "client_id": cid}]})
                acknowledged[cid] = e["item_id"]
            wait_for(lambda: state_in("closed"), timeout=300, interval=0.3, what=f"round {n} closed")

        chaos.stop_controller()
        # Quiet now: a component killed last was started again by the controller. The store must
        # agree with what the client was told, and with the metrics.
        final = client.call("GET", f"/projects/{pid}/rounds")["rounds"]
        assert [(r["state"], r["attempt"]) for r in final] == [("closed", 0)] * rounds, \
            f"seed {seed}: {[(r['number'], r['state'], r['attempt'], r['error']) for r in final]}"
        metrics = client.call("GET", f"/projects/{pid}/metrics")
        with sqlite3.connect(tmp_path / "camloop.db") as db:
            stored = dict(db.execute("SELECT external_id, item_id FROM labels WHERE project_id = ? AND source = 'api'",
                                     (pid,)).fetchall())
            twice = db.execute("SELECT q.item_id, count(*) FROM queue_entries q JOIN rounds r ON r.id = q.round_id "
                               "WHERE r.project_id = ? GROUP BY q.item_id HAVING count(*) > 1", (pid,)).fetchall()
            labeled = db.execute("SELECT count(*) FROM items WHERE project_id = ? AND split = 'pool' AND "
                                 "status = 'labeled'", (pid,)).fetchone()[0]
        report = f"seed {seed}, kills {chaos.kills}, requests re-sent {client.resent}"
        assert len(acknowledged) == BUDGET * rounds, report
        assert stored == acknowledged, report  # each label once, on its item
        assert metrics["labeled"] == labeled == SEEDS + len(acknowledged), (metrics["labeled"], labeled, report)
        assert twice == [], f"items queued twice: {twice}; {report}"
        assert {w for _, w in chaos.kills} == {"worker", "api", "redis"}, report
        print(report, flush=True)
    except BaseException:
        # What a replay needs beside the seed: when each component died, and the logs' ends.
        print(f"seed {seed}: kills {chaos.kills}", flush=True)
        for name in ("api.log", "worker.log"):
            path = tmp_path / name
            if path.exists():
                print(f"--- {name} (end)\n{path.read_text(errors='replace')[-6000:]}", flush=True)
        raise
    finally:
        if client is not None:
            client.http.close()
        chaos.stop_all()
    wait_for(lambda: not chaos.still_running(), timeout=30, what=f"nothing left running (seed {seed})")
