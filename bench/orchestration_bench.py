"""Orchestration overhead of a round, and /metrics latency while a round trains (issue 3).

Part 1 — `overhead`: everything a round costs the service except the workers' compute, for a
10,000-image pool (target < 2 s). In process, real store (SQLite by default, --database-url for
PostgreSQL) and real Redis (REDIS_URL, default 127.0.0.1:6379, private queue prefix). The jobs'
outputs are written by this script instead of a worker (zeros / random scores of the right
shapes), so what is timed is only the service: registration (sha256 + rows + ingest manifests),
applying ingest results, start_round, the train manifest, model version + exclusion rule + score
manifests + enqueues, loading score shards + selection (hybrid: fusion, diversity, class budget)
+ queue entries, and one idle reconciler tick.

Part 2 — `metrics`: `camloop serve` + `camloop worker` subprocesses on loopback; a round trains
on the worker while this script sends GET /metrics at a fixed rate (default 200 req/s, open
loop: each request is sent at its scheduled time, late or not), and reports errors and latency
percentiles (goal p99 < 20 ms).

    python bench/orchestration_bench.py overhead [--n 10000] [--database-url URL] [--json out.json]
    python bench/orchestration_bench.py metrics  [--rate 200] [--seconds 10] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLASSES = [str(i) for i in range(10)]
SCORE_KEYS = ["least_confidence", "margin", "entropy", "vote_entropy", "mean_kl", "bald", "cam_mask_mean",
              "cam_mask_area", "cam_entropy", "cam_top2_overlap", "cam_disagreement", "cam_score"]


def _write_pngs(root: Path, n: int, sub: str = "pool") -> None:
    """n distinct small PNGs (distinct content: items are deduplicated by sha256)."""
    from PIL import Image

    folder = root / sub
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        Image.fromarray(img, mode="L").save(folder / f"{i:05d}.png", compress_level=1)


# ---------------------------------------------------------------------------------- part 1

def _fake_ingest(job) -> None:
    m = json.loads(Path(job.manifest_path).read_text())
    np.save(m["out"], np.zeros((len(m["items"]), 28, 28, 1), np.uint8))
    Path(m["result"]).write_text(json.dumps({"shard": m["shard"], "ok": [[iid, k] for k, (iid, _) in enumerate(m["items"])],
                                             "bad": []}))


def _fake_train(rdir: Path) -> None:
    m = json.loads((rdir / "train.json").read_text())
    rng = np.random.default_rng(1)

    def ev():
        pc = {c: {"accuracy": float(rng.uniform(0.6, 1)), "precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 40}
              for c in CLASSES}
        return {"accuracy": 0.8, "macro_f1": 0.8, "weighted_f1": 0.8, "ece": 0.05,
                "confusion": np.eye(10, dtype=int).tolist(), "per_class": pc}

    Path(m["out_checkpoint"]).write_bytes(b"not a real checkpoint: the bench times the service only")
    Path(m["out_metrics"]).write_text(json.dumps({"train": {"n_train": len(m["train"]["labels"]), "seconds": 0.0},
                                                  "val": ev(), "test": ev()}))


def _fake_scores(rdir: Path) -> None:
    m = json.loads((rdir / "score.json").read_text())
    rng = np.random.default_rng(2)
    for k, sh in m["shards"].items():
        n = len(sh["item_ids"])
        probs = rng.dirichlet(np.ones(10), n).astype(np.float32)
        arrays = {"item_ids": np.asarray(sh["item_ids"], np.int64), "pred": probs.argmax(1).astype(np.int64),
                  "probs": probs, "embedding": rng.standard_normal((n, 96)).astype(np.float32)}
        for key in SCORE_KEYS:
            arrays[f"col_{key}"] = rng.random(n).astype(np.float32)
        np.savez(Path(m["out_dir"]) / f"scores_{int(k):05d}.npz", **arrays)


def overhead(args) -> dict:
    from service import items as items_svc
    from service import labels as labels_svc
    from service import projects as projects_svc
    from service import rounds
    from service.db import session_scope
    from service.jobqueue import connection
    from service.migrate import upgrade_head
    from service.settings import Settings
    from service.store import Item, Job, Round
    from sqlalchemy import select

    tmp = Path(tempfile.mkdtemp(prefix="camloop-orch-"))
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings(data_dir=tmp, redis_url=args.redis_url, database_url=args.database_url, queue_prefix=prefix)
    t = {}
    _write_pngs(tmp, args.n)
    upgrade_head(settings)
    with session_scope(settings) as s:
        pid = projects_svc.create_project(s, f"bench-{prefix}", CLASSES, {"budget": args.budget, "strategy": "hybrid"}).id

    t0 = time.perf_counter()
    entries = items_svc.expand_request(settings, "pool", None, "pool")
    with session_scope(settings) as s:
        items_svc.register(s, settings, projects_svc.get_project(s, pid), entries, "bench")
    t["register_items"] = time.perf_counter() - t0

    with session_scope(settings) as s:
        ingest_jobs = list(s.scalars(select(Job).where(Job.project_id == pid, Job.kind == "ingest")))
    for j in ingest_jobs:
        _fake_ingest(j)
    t0 = time.perf_counter()
    rounds.advance_project(settings, pid)
    with session_scope(settings) as s:  # ingest is applied when a round waits on it; force it here
        rounds._ingest_state(s, settings, pid, connection(settings))
    t["apply_ingest_results"] = time.perf_counter() - t0

    # Some labels so the measured round trains (round 1 would be a cold start with nothing to train).
    with session_scope(settings) as s:
        p = projects_svc.get_project(s, pid)
        first = list(s.scalars(select(Item.id).where(Item.project_id == pid).order_by(Item.id).limit(args.budget)))
        t0 = time.perf_counter()
        for k, iid in enumerate(first):
            labels_svc.record_label(s, p, iid, CLASSES[k % 10], "bench", "api", f"seed-{iid}")
    t["record_labels_%d" % args.budget] = time.perf_counter() - t0

    stages = {}
    t0 = time.perf_counter()
    with session_scope(settings) as s:
        n = rounds.start_round(s, settings, projects_svc.get_project(s, pid)).number
    state = rounds.advance(settings, pid, n)
    stages["start_and_train_manifest"] = time.perf_counter() - t0
    assert state == "training", state
    rdir = tmp / "artifacts"
    from service import paths
    rdir = paths.round_dir(settings, pid, n)
    _fake_train(rdir)
    t0 = time.perf_counter()
    state = rounds.advance(settings, pid, n)
    stages["model_version_exclusion_score_manifests"] = time.perf_counter() - t0
    assert state == "scoring", state
    t0 = time.perf_counter()
    state = rounds.advance(settings, pid, n)
    stages["idle_tick_while_scoring"] = time.perf_counter() - t0
    _fake_scores(rdir)
    t0 = time.perf_counter()
    state = rounds.advance(settings, pid, n)
    stages["select_and_queue"] = time.perf_counter() - t0
    assert state == "labeling", state
    with session_scope(settings) as s:
        rnd = s.scalar(select(Round).where(Round.project_id == pid, Round.number == n))
        queued = rnd.progress.get("queued")
        shards = rnd.progress.get("shards")
    t["round_stages"] = stages
    t["round_total"] = sum(v for k, v in stages.items() if k != "idle_tick_while_scoring")
    out = {"n_items": args.n, "budget": args.budget, "queued": queued, "score_shards": shards,
           "database": "postgresql" if args.database_url else "sqlite", "seconds": t}
    _cleanup_redis(settings, prefix)
    return out


def _cleanup_redis(settings, prefix: str) -> None:
    from service.jobqueue import connection

    conn = connection(settings)
    keys = list(conn.scan_iter(match=f"rq:*{prefix}*", count=1000))
    if keys:
        conn.delete(*keys)


# ---------------------------------------------------------------------------------- part 2

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(args) -> dict:
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="camloop-metrics-"))
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    key = "bench-key"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMLOOP_") and k not in ("DATABASE_URL",)}
    env.update({"CAMLOOP_DATA_DIR": str(tmp), "CAMLOOP_QUEUE_PREFIX": prefix, "CAMLOOP_API_KEYS": key,
                "REDIS_URL": args.redis_url, "CAMLOOP_DEVICE": "cpu", "OMP_NUM_THREADS": "1"})
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    # Labeled pool images so the round trains for a while (many epochs, patience off).
    from workers.datasets import load_digits
    from PIL import Image

    d = load_digits()
    (tmp / "pool").mkdir()
    for i, (img, y) in enumerate(zip(d.images[:, :, :, 0], d.labels)):
        Image.fromarray(img, mode="L").save(tmp / "pool" / f"{i:05d}.png")
    port = _free_port()
    cmd = [sys.executable, "-c", "from service.cli import app; app()"]
    server = subprocess.Popen(cmd + ["serve", "--port", str(port), "--log-level", "warning"], env=env,
                              stdout=open(tmp / "server.log", "ab"), stderr=subprocess.STDOUT)
    worker = subprocess.Popen(cmd + ["worker"], env=env, stdout=open(tmp / "worker.log", "ab"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    h = {"Authorization": f"Bearer {key}"}
    try:
        c = httpx.Client(base_url=base, headers=h, timeout=30)
        for _ in range(600):
            try:
                if c.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        p = c.post("/api/v1/projects", json={"name": "metrics-bench", "classes": CLASSES,
                                              "config": {"epochs": args.epochs, "hflip": False, "pretrained": False,
                                                         "budget": 50}}).json()
        pid = p["id"]
        entries = [{"uri": f"pool/{i:05d}.png", "split": "pool", "label": str(int(y))} for i, y in enumerate(d.labels[:1200])]
        entries += [{"uri": f"pool/{i:05d}.png", "split": "val", "label": str(int(d.labels[i]))} for i in range(1200, 1500)]
        entries += [{"uri": f"pool/{i:05d}.png", "split": "pool"} for i in range(1500, len(d.labels))]
        r = c.post(f"/api/v1/projects/{pid}/items", json={"items": entries})
        assert r.status_code == 202, r.text
        r = c.post(f"/api/v1/projects/{pid}/rounds")
        assert r.status_code == 202, r.text
        n = r.json()["number"]
        for _ in range(3000):
            st = c.get(f"/api/v1/projects/{pid}/rounds/{n}").json()["state"]
            if st != "created":
                break
            time.sleep(0.2)
        assert st == "training", st
        time.sleep(1.0)  # let the worker get into its epochs
        lat, errors = _load(base, args.rate, args.seconds)
        state_after = c.get(f"/api/v1/projects/{pid}/rounds/{n}").json()["state"]
    finally:
        for proc in (worker, server):
            proc.terminate()
        for proc in (worker, server):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        import redis

        conn = redis.Redis.from_url(args.redis_url)
        keys = list(conn.scan_iter(match=f"rq:*{prefix}*", count=1000))
        if keys:
            conn.delete(*keys)
    lat_ms = np.asarray(lat) * 1000
    return {"rate": args.rate, "seconds": args.seconds, "requests": len(lat) + errors, "errors": errors,
            "p50_ms": float(np.percentile(lat_ms, 50)), "p95_ms": float(np.percentile(lat_ms, 95)),
            "p99_ms": float(np.percentile(lat_ms, 99)), "max_ms": float(lat_ms.max()),
            "round_state_during": "training", "round_state_after": state_after,
            "database": "postgresql" if args.database_url else "sqlite"}


def _load(base: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """Open-loop load: request k is due at t0 + k/rate; several threads so a slow answer does not
    delay the next send (latency is measured from the scheduled time, so queueing counts)."""
    import httpx

    total = int(rate * seconds)
    n_threads = 8
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    t0 = time.perf_counter() + 0.2

    def run(tid: int):
        with httpx.Client(base_url=base, timeout=10) as c:
            for k in range(tid, total, n_threads):
                due = t0 + k / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                try:
                    r = c.get("/metrics")
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - due
                with lock:
                    if ok:
                        lat.append(took)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return lat, errors[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["overhead", "metrics"])
    ap.add_argument("--n", type=int, default=10_000, help="pool size (overhead)")
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--epochs", type=int, default=60, help="epochs of the round that trains during the load")
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--database-url", default=None, help="PostgreSQL URL; default SQLite in a temp data dir")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = overhead(args) if args.part == "overhead" else metrics(args)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
