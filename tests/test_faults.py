"""Faults, with real processes: `camloop serve` and `camloop worker` subprocesses, a private
redis-server we can kill, PostgreSQL behind a TCP proxy we can cut, a model that runs out of
memory above a batch size.

  * a worker SIGKILLed during training and again during scoring: the round resumes from the
    checkpoint and completes; finished score shards are never scored again, no item twice;
  * Redis killed and restarted empty mid-round: the reconciler re-creates the lost jobs;
  * the database unreachable: requests answer 503 with a clear message, a transaction in
    flight leaves nothing behind, the retry counts each label once;
  * out of memory in training, evaluation and scoring: batches split, the round completes.

The shared Redis (127.0.0.1:6379) and PostgreSQL are never stopped: Redis here is our own
process; PostgreSQL is reached through a proxy, and only the proxy is cut.
"""
from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
import redis

from tests.worker_proc import (OOM_MODEL, PrivateRedis, TcpProxy, digits_arrays, free_port, kill, start_server,
                               start_worker, stop_worker, unique_prefix, wait_for, worker_env, write_pngs)

pytestmark = pytest.mark.slow  # real server + worker processes (not skipped; just selectable)

KEY, DASH = "faults-engineer-key-6f1e", "faults-dashboard-key-9a2c"
CLASSES = [str(i) for i in range(10)]


# ------------------------------------------------------------------ the stack

@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    srv = PrivateRedis(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.kill()


class Stack:
    """A data dir, `camloop serve` on a free port, and the workers we start; all killable."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.port = free_port()
        self.server = None
        self.workers: list = []
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}",
                                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)

    def start_server(self) -> None:
        self.server = start_server(self.env, self.root / "server.log", self.port)

        def healthy():
            try:
                return self.client.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout=120, what="camloop serve /healthz", proc=self.server, log=self.root / "server.log")

    def start_worker(self, *args: str, preload: str = "", **env: str):
        proc = start_worker({**self.env, **env}, self.root / "worker.log", "--heartbeat-ttl", "3", *args,
                            preload=preload)
        self.workers.append(proc)
        return proc

    def close(self) -> None:
        self.client.close()
        for w in self.workers:
            stop_worker(w)
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=30)
            except Exception:  # noqa: BLE001
                self.server.kill()

    def logs(self) -> str:
        out = []
        for name in ("server.log", "worker.log"):
            p = self.root / name
            if p.exists():
                out.append(f"--- {name}\n" + p.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    # -------------------------------------------------------------- REST helpers

    def ok(self, r: httpx.Response, *codes: int) -> dict:
        assert r.status_code in (codes or (200,)), f"{r.request.method} {r.request.url} → {r.status_code}: {r.text}"
        return r.json()

    def new_project(self, **cfg) -> int:
        body = {"name": f"faults-{uuid.uuid4().hex[:8]}", "classes": CLASSES,
                "config": {"epochs": 1, "budget": 20, "reserve": 0, "mc_samples": 2, "hflip": False, "pretrained": False, **cfg}}
        return self.ok(self.client.post("/api/v1/projects", json=body), 201)["id"]

    def round(self, pid: int, n: int) -> dict:
        return self.ok(self.client.get(f"/api/v1/projects/{pid}/rounds/{n}"))

    def wait_round(self, pid: int, n: int, states=("labeling",), timeout: float = 600) -> dict:
        def done():
            rnd = self.round(pid, n)
            if rnd["state"] == "failed" and "failed" not in states:
                raise AssertionError(f"round {n} failed: {rnd['error']}\n{self.logs()}")
            return rnd if rnd["state"] in states else None

        return wait_for(done, timeout=timeout, interval=0.2, what=f"round {n} in {states}", proc=self.server,
                        log=self.root / "server.log")


def make_stack(root: Path, redis_url: str, **env: str) -> Stack:
    base = worker_env(CAMLOOP_DATA_DIR=str(root), CAMLOOP_QUEUE_PREFIX=unique_prefix("flt"), REDIS_URL=redis_url,
                      CAMLOOP_API_KEYS=KEY, CAMLOOP_DASHBOARD_KEYS=DASH, CAMLOOP_JOB_RETRIES="2",
                      CAMLOOP_RECONCILE_INTERVAL_S="0.2")
    base.update(env)
    return Stack(root, base)


def write_digits_pool(root: Path, n_pool: int, n_val: int) -> dict[str, int]:
    images, labels = digits_arrays()
    order = np.random.default_rng(0).permutation(len(images))
    truth = {}
    for sub, idx in (("pool", order[:n_pool]), ("val", order[n_pool:n_pool + n_val])):
        for uri, y in write_pngs(root, images[idx], labels[idx], sub=sub):
            truth[uri] = y
    return truth


def register(stack: Stack, pid: int, truth: dict[str, int], seed_labels: int) -> None:
    """val with labels, the first `seed_labels` pool images labeled at registration, the rest unlabeled."""
    pool = sorted(u for u in truth if u.startswith("pool/"))
    items = [{"uri": u, "split": "val", "label": str(y)} for u, y in truth.items() if u.startswith("val/")]
    items += [{"uri": u, "split": "pool", "label": str(truth[u])} for u in pool[:seed_labels]]
    # The labeled files first: a file registered again (same content) is a duplicate and keeps its first entry.
    stack.ok(stack.client.post(f"/api/v1/projects/{pid}/items", json={"items": items}), 202)
    stack.ok(stack.client.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}), 202)


# ------------------------------------------------------------------ the database goes away

def _pg_direct(url: str):
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def test_database_unavailable_requests_fail_with_503_and_nothing_is_half_written(pg_url, private_redis, tmp_path):
    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    proxy = TcpProxy(host, int(port))
    via_proxy = pg_url.replace(host_port, f"127.0.0.1:{proxy.port}")
    stack = make_stack(tmp_path / "data", private_redis.url, DATABASE_URL=via_proxy)
    write_digits_pool(stack.root, 40, 0)
    try:
        stack.start_server()
        c = stack.client
        pid = stack.new_project()
        stack.ok(c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}), 202)
        items = [it["id"] for it in stack.ok(c.get(f"/api/v1/projects/{pid}/items"))["items"]]
        assert len(items) == 40

        # 1. PostgreSQL unreachable: every request that needs it fails fast, clearly, as 503.
        proxy.cut()
        for method, path, body in (("GET", f"/api/v1/projects/{pid}", None),
                                   ("GET", f"/api/v1/projects/{pid}/metrics", None),
                                   ("POST", f"/api/v1/projects/{pid}/labels",
                                    {"labels": [{"item_id": items[0], "class": "1", "client_id": "down-0"}]})):
            r = c.request(method, path, json=body)
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert r.headers.get("retry-after") and r.json()["detail"].startswith("database unavailable")
            for leak in ("Traceback", "SELECT", "INSERT", "psycopg", "postgresql", str(proxy.port), "[SQL"):
                assert leak not in r.text, (leak, r.text)
        assert c.get("/healthz").status_code == 200  # the process itself is fine

        # 2. It comes back: the same server answers again (dead pooled connections are replaced).
        proxy.restore()
        wait_for(lambda: c.get(f"/api/v1/projects/{pid}").status_code == 200, timeout=60, what="recovery")

        # 3. The connection dies with the transaction in flight, at its COMMIT: nothing of it stays.
        batch = {"labels": [{"item_id": i, "class": str(k % 10), "client_id": f"tx-{i}"} for k, i in enumerate(items[:20])]}
        proxy.cut_at_commit(b"INSERT INTO labels")
        r = c.post(f"/api/v1/projects/{pid}/labels", json=batch)
        assert proxy.trapped == 1, "the COMMIT trap did not fire"
        assert r.status_code == 503 and r.json()["detail"].startswith("database unavailable"), r.text
        with _pg_direct(pg_url) as db:
            assert db.execute("SELECT count(*) FROM labels WHERE project_id = %s", (pid,)).fetchone()[0] == 0
            assert db.execute("SELECT count(*) FROM items WHERE project_id = %s AND status = 'labeled'",
                              (pid,)).fetchone()[0] == 0

        # 4. The client retries the same request: every label once; a third delivery adds nothing.
        r = c.post(f"/api/v1/projects/{pid}/labels", json=batch)
        assert r.status_code == 201 and all(x["created"] for x in r.json()["labels"]), r.text
        r = c.post(f"/api/v1/projects/{pid}/labels", json=batch)
        assert r.status_code == 200 and not any(x["created"] for x in r.json()["labels"])
        with _pg_direct(pg_url) as db:
            assert db.execute("SELECT count(*) FROM labels WHERE project_id = %s", (pid,)).fetchone()[0] == 20
        assert stack.ok(c.get(f"/api/v1/projects/{pid}/metrics"))["labeled"] == 20

        # 5. Same for registering images: items and their ingest jobs commit together or not at all.
        more = write_pngs(stack.root, *digits_arrays(10, seed=7), sub="more")
        proxy.cut_at_commit(b"INSERT INTO items")
        r = c.post(f"/api/v1/projects/{pid}/items", json={"folder": "more"})
        assert proxy.trapped == 2 and r.status_code == 503, r.text
        with _pg_direct(pg_url) as db:
            assert db.execute("SELECT count(*) FROM items WHERE project_id = %s", (pid,)).fetchone()[0] == 40
            n_jobs = db.execute("SELECT count(*) FROM jobs WHERE project_id = %s", (pid,)).fetchone()[0]
        r = stack.ok(c.post(f"/api/v1/projects/{pid}/items", json={"folder": "more"}), 202)
        assert r["registered"] == len(more) and r["duplicates"] == 0
        with _pg_direct(pg_url) as db:
            assert db.execute("SELECT count(*) FROM jobs WHERE project_id = %s", (pid,)).fetchone()[0] == n_jobs + 1
        log = (stack.root / "server.log").read_text(errors="replace")
        assert "503 database unavailable" in log and KEY not in log and DASH not in log
    finally:
        stack.close()
        proxy.close()


# ------------------------------------------------------------------ a worker killed mid-job

def test_worker_sigkill_during_training_and_scoring_round_resumes_and_completes(private_redis, tmp_path):
    import torch
    from rq.job import Job

    stack = make_stack(tmp_path / "data", private_redis.url, CAMLOOP_SCORE_SHARD_SIZE="100")
    truth = write_digits_pool(stack.root, 700, 100)
    rconn = redis.Redis.from_url(private_redis.url)
    try:
        stack.start_server()
        w1 = stack.start_worker()
        c = stack.client
        pid = stack.new_project(epochs=4, mc_samples=8)
        register(stack, pid, truth, seed_labels=300)
        stack.ok(c.post(f"/api/v1/projects/{pid}/rounds"), 202)
        rdir = stack.root / "artifacts" / f"p{pid}" / "r0001"
        prefix = stack.env["CAMLOOP_QUEUE_PREFIX"]

        # --- SIGKILL during training, once an epoch is checkpointed and before the last one.
        last = rdir / "ckpt" / "last.pt"
        assert stack.round(pid, 1)["state"] in ("created", "training")  # not a cold start: 300 labels
        wait_for(last.is_file, timeout=300, interval=0.05, what="first epoch checkpoint", proc=w1,
                 log=stack.root / "worker.log")
        os.kill(w1.pid, signal.SIGSTOP)
        ck = torch.load(last, map_location="cpu", weights_only=False)
        assert not ck["finished"] and not (rdir / "model.pt").exists(), "training ended before the kill: make it longer"
        epoch_at_kill = ck["epoch"]
        kill(w1)
        train_id = f"{prefix}-p{pid}-r1-train-a0"
        assert Job.fetch(train_id, connection=rconn).get_status() == "started"  # what a dead worker leaves

        # --- a new worker; the dead one's job is retried within its heartbeat TTL and resumes.
        w2 = stack.start_worker()
        wait_for(rdir.joinpath("score.json").is_file, timeout=300, interval=0.005, what="score plan", proc=w2,
                 log=stack.root / "worker.log")
        os.kill(w2.pid, signal.SIGSTOP)  # frozen from here on, except for the short slices below
        shards = json.loads((rdir / "score.json").read_text())["shards"]
        assert len(shards) == 4

        # --- SIGKILL during scoring: a score job caught running, its output not written yet.
        def running_shard():
            for k in shards:
                jid = f"{prefix}-p{pid}-r1-score-{k}-a0"
                try:
                    st = Job.fetch(jid, connection=rconn).get_status()
                except Exception:  # noqa: BLE001 — not enqueued yet
                    continue
                if st == "started" and not (rdir / f"scores_{int(k):05d}.npz").exists():
                    return jid, k
            return None

        # Slow motion: the worker runs in 2 ms slices and every check is made while it is frozen,
        # so a shard of 100 small images (tens of ms) cannot slip between two looks, however fast
        # the machine (CI once scored all four between two HTTP polls).
        caught = running_shard()
        while caught is None:
            assert w2.poll() is None, stack.logs()
            if all((rdir / f"scores_{int(k):05d}.npz").exists() for k in shards):
                pytest.fail("every shard was scored before the test could catch one running")
            os.kill(w2.pid, signal.SIGCONT)
            time.sleep(0.002)
            os.kill(w2.pid, signal.SIGSTOP)
            caught = running_shard()
        killed_job, killed_shard = caught
        before = {f.name: f.stat().st_mtime_ns for f in rdir.glob("scores_*.npz")}
        kill(w2)
        assert f"scores_{int(killed_shard):05d}.npz" not in before

        stack.start_worker()
        rnd = stack.wait_round(pid, 1, states=("labeling",))

        # The round completed on the checkpoint: training resumed after the killed epoch.
        metrics = json.loads((rdir / "metrics.json").read_text())["train"]
        assert metrics["resumed_from"] >= epoch_at_kill >= 1 and metrics["epochs_run"] == 4
        # Shards finished before the kill were not scored again; the killed one was, once.
        after = {f.name: f.stat().st_mtime_ns for f in rdir.glob("scores_*.npz")}
        assert {k: after[k] for k in before} == before and len(after) == 4
        ids = np.concatenate([np.load(rdir / f"scores_{int(k):05d}.npz")["item_ids"] for k in shards])
        items = stack.ok(c.get(f"/api/v1/projects/{pid}/items", params={"split": "pool"}))["items"]
        unlabeled = {it["id"] for it in items if it["label"] is None}
        assert len(ids) == len(set(ids.tolist())) == len(unlabeled) == 400 and set(ids.tolist()) == unlabeled
        q = stack.ok(c.get(f"/api/v1/projects/{pid}/queue"))["items"]
        assert len(q) == 20 and len({e["item_id"] for e in q}) == 20
        # Each killed job was re-run once, without using one of its 2 retries (those are for errors
        # in the job itself: tests/test_worker_deaths.py); nothing failed on the way.
        for jid in (train_id, killed_job):
            job = Job.fetch(jid, connection=rconn)
            assert (job.retries_left, job.meta["worker_deaths"]) == (2, 1), jid
        assert all(j["state"] == "finished" for j in rnd["jobs"]) and rnd["error"] is None
    finally:
        stack.close()


# ------------------------------------------------------------------ Redis restarted, empty

def test_redis_killed_and_restarted_empty_mid_round_jobs_recreated_round_completes(tmp_path):
    from rq.job import Job

    own = PrivateRedis(tmp_path / "redis").start()  # this test kills it: not the module's
    stack = make_stack(tmp_path / "data", own.url)
    truth = write_digits_pool(stack.root, 500, 100)
    try:
        stack.start_server()
        w = stack.start_worker()
        c = stack.client
        pid = stack.new_project(epochs=4)
        register(stack, pid, truth, seed_labels=300)
        stack.ok(c.post(f"/api/v1/projects/{pid}/rounds"), 202)
        rdir = stack.root / "artifacts" / f"p{pid}" / "r0001"
        train_id = f"{stack.env['CAMLOOP_QUEUE_PREFIX']}-p{pid}-r1-train-a0"
        rconn = redis.Redis.from_url(own.url)
        wait_for(lambda: Job.fetch(train_id, connection=rconn).get_status() == "started" if rconn.exists(
            f"rq:job:{train_id}") else False, timeout=300, interval=0.05, what="train job running", proc=w)

        # Redis dies with the train job running in the worker, and comes back with nothing in it.
        own.kill()
        # Meanwhile the store is the truth and keeps answering: the round, labels, metrics.
        assert stack.round(pid, 1)["state"] == "training"
        pool_item = next(it["id"] for it in stack.ok(c.get(f"/api/v1/projects/{pid}/items",
                                                            params={"split": "pool", "status": "unlabeled"}))["items"])
        r = c.post(f"/api/v1/projects/{pid}/labels",
                   json={"labels": [{"item_id": pool_item, "class": "3", "client_id": "during-outage"}]})
        assert r.status_code == 201, r.text
        late = write_pngs(stack.root, *digits_arrays(5, seed=11), sub="late")  # registered while Redis is down:
        r = c.post(f"/api/v1/projects/{pid}/items", json={"folder": "late"})  # committed, ingested later
        assert r.status_code == 202 and r.json()["registered"] + r.json()["duplicates"] == len(late), r.text
        n_late = r.json()["registered"]  # digits has a few pixel-identical images: duplicates are not registered
        own.start()  # no persistence (--save "", no AOF): it starts empty

        rnd = stack.wait_round(pid, 1, states=("labeling",))
        assert rnd["error"] is None and all(j["state"] == "finished" for j in rnd["jobs"])
        train = next(j for j in rnd["jobs"] if j["kind"] == "train")
        assert w.poll() is None, "the worker process should outlive a Redis restart"
        # The train job was known only to the store when Redis came back: re-created from it
        # (attempts counts re-enqueues by the reconciler), or found finished by its output files.
        assert train["attempts"] >= 1 or not rconn.exists(f"rq:job:{train_id}")
        metrics = json.loads((rdir / "metrics.json").read_text())["train"]
        assert metrics["epochs_run"] == 4
        q = stack.ok(c.get(f"/api/v1/projects/{pid}/queue"))["items"]
        assert len(q) == 20 and len({e["item_id"] for e in q}) == 20 and pool_item not in {e["item_id"] for e in q}
        m = stack.ok(c.get(f"/api/v1/projects/{pid}/metrics"))
        assert m["labeled"] == 301  # 300 seeds + the label taken while Redis was down
        # The images registered during the outage: committed with their ingest job, which Redis lost.
        # Ingest results are collected when a round starts (rounds.advance in `created`): round 2's
        # start re-creates the lost job and the images are decoded, none lost.
        from sqlalchemy import create_engine, text
        db = create_engine(f"sqlite:///{stack.root.parent / (stack.root.name + '-state') / 'camloop.db'}")

        def late_cached() -> int:
            with db.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM items WHERE uri LIKE 'late/%' AND cache_index IS NOT NULL")
                                    ).scalar()

        stack.ok(c.post(f"/api/v1/projects/{pid}/rounds", json={"force": True}), 202)  # round 1 never labeled
        wait_for(lambda: late_cached() == n_late, timeout=120, what="late images ingested", proc=w)
        log = (stack.root / "worker.log").read_text(errors="replace")
        assert "Redis" in log or "building it again" in log
    finally:
        stack.close()
        own.kill()


# ------------------------------------------------------------------ out of memory

def test_out_of_memory_in_training_and_scoring_splits_the_batch_and_the_round_completes(private_redis, tmp_path):
    """The worker process runs a real small-cnn whose first layer raises torch.cuda.OutOfMemoryError
    for training batches above 8 images and inference batches above 64, as a small GPU would."""
    stack = make_stack(tmp_path / "data", private_redis.url, CAMLOOP_SCORE_SHARD_SIZE="200")
    truth = write_digits_pool(stack.root, 600, 60)  # val 60: the training job's own val pass fits
    try:
        stack.start_server()
        stack.start_worker(preload="import tests.worker_proc as w; w.register_oom_model('small-cnn')",
                           CAMLOOP_TEST_OOM_TRAIN_ABOVE="8", CAMLOOP_TEST_OOM_INFER_ABOVE="64",
                           CAMLOOP_TEST_OOM_KIND="cuda")
        c = stack.client
        pid = stack.new_project(epochs=1)  # the worker's small-cnn is the OOM-raising one
        register(stack, pid, truth, seed_labels=200)
        stack.ok(c.post(f"/api/v1/projects/{pid}/rounds"), 202)
        rnd = stack.wait_round(pid, 1, states=("labeling", "failed"))
        assert rnd["state"] == "labeling", f"{rnd['error']}\n{stack.logs()}"
        assert all(j["state"] == "finished" and j["attempts"] <= 1 for j in rnd["jobs"])  # no job failed and re-ran

        rdir = stack.root / "artifacts" / f"p{pid}" / "r0001"
        train = json.loads((rdir / "metrics.json").read_text())["train"]
        assert train["oom_splits"] >= 1 and train["batch_size"] <= 8, train
        log = (stack.root / "worker.log").read_text(errors="replace")
        assert "out of memory at batch" in log and "CUDA out of memory" in log
        # Scoring: 200-image shards at batch 256 → 128 → 64; every item once, nothing lost.
        shards = json.loads((rdir / "score.json").read_text())["shards"]
        ids = np.concatenate([np.load(rdir / f"scores_{int(k):05d}.npz")["item_ids"] for k in shards])
        assert len(ids) == len(set(ids.tolist())) == 400
        assert "score shard 0: out of memory at batch 256" in log and "retrying at 64" in log
        q = stack.ok(c.get(f"/api/v1/projects/{pid}/queue"))["items"]
        assert len(q) == 20 and all(e["scores"] for e in q)
    finally:
        stack.close()


def test_out_of_memory_split_scores_equal_a_run_at_the_batch_that_fits(tmp_path, monkeypatch):
    """The CPU allocator's RuntimeError too; and the split result is exactly the scoring at the
    batch size that fitted — nothing of a failed attempt leaks into it, no item twice."""
    import torch

    import workers.jobs as jobs
    from tests.worker_proc import register_oom_model
    from engine import contracts as c
    from workers.models import build_model
    from workers.scoring import score_images

    monkeypatch.setenv("CAMLOOP_TEST_OOM_INFER_ABOVE", "40")
    monkeypatch.setenv("CAMLOOP_TEST_OOM_KIND", "cpu")
    monkeypatch.setattr(jobs, "DEVICE", "cpu")
    register_oom_model()
    images, _ = digits_arrays(150)
    cache = tmp_path / "cache.npy"
    np.save(cache, images[..., None])
    torch.manual_seed(0)
    model = build_model(OOM_MODEL, 10, pretrained=False)
    ckpt = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict(),
                "meta": {"model": OOM_MODEL, "class_names": CLASSES, "channels": 1, "image_size": 28}}, ckpt)
    manifest = tmp_path / "score.json"
    c.write_manifest(manifest, c.ScoreManifest(
        project_id=1, round=1, checkpoint=str(ckpt),
        net=c.ModelSpec(model=OOM_MODEL, class_names=CLASSES, channels=1, image_size=28),
        active=[True] * 10, mc_samples=4, seed=3, out_dir=str(tmp_path), batch_size=128,
        shards={"0": c.ImageRefs.build(range(1000, 1150), [cache] * 150, range(150))}))
    out = jobs.score_shard(str(manifest), 0)
    assert (out["batch_size"], out["oom_splits"]) == (32, 2)  # 128 → 64 → 32 ≤ 40
    got = np.load(tmp_path / "scores_00000.npz")
    assert got["item_ids"].tolist() == list(range(1000, 1150))

    monkeypatch.setenv("CAMLOOP_TEST_OOM_INFER_ABOVE", "100000")
    ref_model = build_model(OOM_MODEL, 10, pretrained=False)
    ref_model.load_state_dict(model.state_dict())
    ref = score_images(ref_model, images[..., None], batch_size=32, mc_samples=4, seed=3, device="cpu",
                       class_mask=np.ones(10, bool), return_maps=True)
    np.testing.assert_array_equal(got["pred"], ref.pred)
    np.testing.assert_allclose(got["probs"], ref.probs, rtol=1e-6)
    for k, v in ref.columns.items():
        np.testing.assert_allclose(got[f"col_{k}"], v, rtol=1e-5, atol=1e-6)

    # Down to one image a batch; an image that alone does not fit is a real failure, re-raised.
    tried = []

    def never_fits(b):
        tried.append(b)
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")

    with pytest.raises(RuntimeError, match="can't allocate memory"):
        jobs.split_on_oom(never_fits, 4, what="never fits")
    assert tried == [4, 2, 1]
    tried.clear()

    def bug(b):  # any other error is not an OOM: no retry at a smaller batch
        tried.append(b)
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        jobs.split_on_oom(bug, 4, what="bug")
    assert tried == [4]
