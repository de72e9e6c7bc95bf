"""Orchestration overhead of a round, and the REST API's latency while a round trains (issue 3).

Part 1 — `overhead`: everything a round costs the service except the workers' compute, for a
10,000-image pool (target < 2 s). In process, real store (SQLite by default; --postgres makes a
fresh PostgreSQL database on 127.0.0.1:5432 and drops it after, or --database-url URL) and real
Redis (REDIS_URL, default 127.0.0.1:6379, private queue prefix, its keys deleted after). The
jobs' outputs are written by this script instead of a worker (zeros / random scores of the
right shapes), so what is timed is only the service:
  pool (once per pool): folder listing, registration (sha256 + rows + ingest manifests),
      applying the ingest results;
  round: start_round + the train manifest; model version + exclusion rule + score manifest +
      enqueues; selection (hybrid: fusion, diversity, class budget) + queue entries; recording
      the round's budget of labels (one batch, record_labels; and one by one, record_label);
  and one idle reconciler tick while the score jobs run (the reconciler ticks every 0.5 s).
Each stage prints wall and process CPU seconds (the CPU of this process; PostgreSQL's own CPU is
in its server processes and not counted). --repeats N: N fresh projects on the same files, the
median per stage.

Part 2 — `load`: `camloop serve` + `camloop worker` subprocesses on loopback; a real round
trains (small-cnn, digits, one torch thread) in the worker while this script sends GETs at a
fixed rate (default 200 req/s) — open loop: request k is due at t0 + k/rate and sent then on a
free keep-alive connection (a new one when all are busy), whether or not earlier answers came
back; latency counts from the due time, so queueing in the server counts. Targets, one after
the other: the dashboard's GET /api/v1/projects/{pid}/metrics (goal p99 < 20 ms, no errors)
and the Prometheus GET /metrics. The round's state is sampled once a second during the load.

    python bench/orchestration_bench.py overhead [--n 10000] [--repeats 3] [--postgres] [--json out.json]
    python bench/orchestration_bench.py load [--rate 200] [--seconds 30] [--postgres] [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
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
from workers.provenance import provenance  # noqa: E402

from service.runtime.host import free_port  # noqa: E402  (after the path above)

CLASSES = [str(i) for i in range(10)]
SCORE_KEYS = ["least_confidence", "margin", "entropy", "vote_entropy", "mean_kl", "bald", "cam_mask_mean",
              "cam_mask_area", "cam_entropy", "cam_top2_overlap", "cam_disagreement", "cam_score"]
PG_ADMIN_URLS = ["postgresql://root@127.0.0.1:5432/test", "postgresql://postgres@127.0.0.1:5432/test"]


# ---------------------------------------------------------------------------------- machine

def machine() -> dict:
    """What ran it and what else was running (the machine is shared)."""
    others = []
    with contextlib.suppress(Exception):
        out = subprocess.run(["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()[1:]
        me = os.getpid()
        for line in out:
            pid, pcpu, _etime, args = line.split(None, 3)
            if int(pid) != me and float(pcpu) >= 5.0:
                others.append(f"{float(pcpu):.0f}% {args[:110]}")
    return {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "other_processes_over_5pct_cpu": others[:12]}


@contextlib.contextmanager
def postgres_database(url: str | None, create: bool):
    """Yield a PostgreSQL URL: `url` as is, or (create) a fresh database of ours, dropped after."""
    if not create:
        yield url
        return
    import psycopg

    admin, last, admin_url = None, None, None
    for u in PG_ADMIN_URLS:
        try:
            admin, admin_url = psycopg.connect(u, autocommit=True), u
            break
        except psycopg.OperationalError as e:
            last = e
    if admin is None:
        raise last
    name = f"camloop_bench_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with contextlib.suppress(Exception):
            from service.store import db

            for eng in list(getattr(db, "_engines", {}).values()):
                eng.dispose()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


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
                  "probs": probs, "embedding": rng.standard_normal((n, 96)).astype(np.float32),
                  "cam_lowres": np.zeros((n, 7, 7), np.float16)}
        for key in SCORE_KEYS:
            arrays[f"col_{key}"] = rng.random(n).astype(np.float32)
        np.savez(Path(m["out_dir"]) / f"scores_{int(k):05d}.npz", **arrays)


class _Clock:
    """Wall and process-CPU seconds per named stage."""

    def __init__(self):
        self.t: dict[str, tuple[float, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        w, c = time.perf_counter(), time.process_time()
        yield
        self.t[name] = (time.perf_counter() - w, time.process_time() - c)


def _one_overhead(settings, tmp: Path, budget: int, tag: str) -> dict:
    from sqlalchemy import select

    from service.core import items as items_svc
    from service.core import labels as labels_svc
    from service.core import paths
    from service.core import projects as projects_svc
    from service import rounds
    from service.rounds import handlers
    from service.store.db import session_scope
    from service.runtime.jobqueue import connection
    from service.store import Item, Job, Round

    clock = _Clock()
    with session_scope(settings) as s:
        pid = projects_svc.create_project(s, f"bench-{tag}", CLASSES, {"budget": budget, "strategy": "hybrid"}).id
    with clock("pool: list folder"):
        entries = items_svc.expand_request(settings, "pool", None, "pool")
    with clock("pool: register items"), session_scope(settings) as s:
        items_svc.register(s, settings, projects_svc.get_project(s, pid), entries, "bench")
    with session_scope(settings) as s:
        ingest_jobs = list(s.scalars(select(Job).where(Job.project_id == pid, Job.kind == "ingest")))
    for j in ingest_jobs:
        _fake_ingest(j)
    with clock("pool: apply ingest results"):
        rounds.advance_project(settings, pid)
        with session_scope(settings) as s:  # applied when a round waits on it; force it here
            handlers.ingest_state(s, settings, pid, connection(settings))
    # Labels so the measured round trains (round 1 would be a cold start with nothing to train).
    with session_scope(settings) as s:
        first = list(s.scalars(select(Item.id).where(Item.project_id == pid).order_by(Item.id).limit(2 * budget)))
    with clock("labels: record_labels, one batch"), session_scope(settings) as s:
        labels_svc.record_labels(s, projects_svc.get_project(s, pid),
                                 [(iid, CLASSES[k % 10], "bench", f"seed-{iid}") for k, iid in enumerate(first[:budget])],
                                 "api")
    with clock("labels: record_label, one by one"), session_scope(settings) as s:
        p = projects_svc.get_project(s, pid)
        for k, iid in enumerate(first[budget:]):
            labels_svc.record_label(s, p, iid, CLASSES[k % 10], "bench", "api", f"seed-{iid}")

    with clock("round: start + train manifest"):
        with session_scope(settings) as s:
            n = rounds.start_round(s, settings, projects_svc.get_project(s, pid)).number
        state = rounds.advance(settings, pid, n)
    assert state == "training", state
    rdir = paths.round_dir(settings, pid, n)
    _fake_train(rdir)
    with clock("round: model version + exclusion + score manifest + enqueue"):
        state = rounds.advance(settings, pid, n)
    assert state == "scoring", state
    with clock("tick: idle reconciler tick while scoring"):
        state = rounds.advance(settings, pid, n)
    _fake_scores(rdir)
    with clock("round: selection + queue entries"):
        state = rounds.advance(settings, pid, n)
    assert state == "labeling", state
    with session_scope(settings) as s:
        rnd = s.scalar(select(Round).where(Round.project_id == pid, Round.number == n))
        queued, shards = rnd.progress.get("queued"), rnd.progress.get("shards")
    with session_scope(settings) as s:
        pool = s.scalar(select(Item.id).where(Item.project_id == pid).order_by(Item.id.desc()).limit(1))
    assert queued == budget, queued
    return {"pid": pid, "queued": queued, "score_shards": shards, "t": clock.t}


def overhead(args) -> dict:
    from service.store.migrate import upgrade_head
    from service.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="camloop-orch-"))
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    _write_pngs(tmp, args.n)
    before = machine()
    with postgres_database(args.database_url, args.postgres) as url:
        settings = Settings(data_dir=tmp, redis_url=args.redis_url, database_url=url, queue_prefix=prefix)
        upgrade_head(settings)
        try:
            runs = [_one_overhead(settings, tmp, args.budget, f"{prefix}-{k}") for k in range(args.repeats)]
        finally:
            _cleanup_redis(settings, prefix)
    names = list(runs[0]["t"])
    med = {k: (statistics.median(r["t"][k][0] for r in runs), statistics.median(r["t"][k][1] for r in runs))
           for k in names}
    round_keys = [k for k in names if k.startswith("round:")]
    pool_keys = [k for k in names if k.startswith("pool:")]
    total = lambda keys, i: sum(med[k][i] for k in keys)  # noqa: E731
    out = {"n_items": args.n, "budget": args.budget, "repeats": args.repeats,
           "database": "postgresql" if (args.postgres or args.database_url) else "sqlite",
           "score_shards": runs[0]["score_shards"], "queued": runs[0]["queued"],
           "stages": {k: {"wall_s": round(w, 4), "cpu_s": round(c, 4),
                          "all_wall_s": [round(r["t"][k][0], 4) for r in runs]} for k, (w, c) in med.items()},
           "round_total": {"wall_s": round(total(round_keys, 0), 4), "cpu_s": round(total(round_keys, 1), 4)},
           "round_total_with_batch_labels": {
               "wall_s": round(total(round_keys, 0) + med["labels: record_labels, one batch"][0], 4),
               "cpu_s": round(total(round_keys, 1) + med["labels: record_labels, one batch"][1], 4)},
           "pool_total": {"wall_s": round(total(pool_keys, 0), 4), "cpu_s": round(total(pool_keys, 1), 4)},
           "per_label_ms": {"batch": round(med["labels: record_labels, one batch"][0] / args.budget * 1e3, 3),
                            "one_by_one": round(med["labels: record_label, one by one"][0] / args.budget * 1e3, 3)},
           "target_round_s": 2.0, "machine_before": before, "machine_after": machine()}
    out["meets_target"] = out["round_total_with_batch_labels"]["wall_s"] < 2.0
    return out


def _cleanup_redis(settings, prefix: str) -> None:
    from service.runtime.jobqueue import connection

    conn = connection(settings)
    keys = list(conn.scan_iter(match=f"rq:*{prefix}*", count=1000))
    if keys:
        conn.delete(*keys)
    conn.srem("rq:queues", *[f"rq:queue:{prefix}-{k}" for k in ("ingest", "train", "score")])


def _print_overhead(out: dict) -> None:
    print(f"round orchestration overhead: {out['n_items']:,}-image pool, budget {out['budget']}, "
          f"{out['database']}, median of {out['repeats']} (wall / process CPU seconds)")
    for k, v in out["stages"].items():
        print(f"  {k:62} {v['wall_s']:7.3f}  {v['cpu_s']:7.3f}")
    for k in ("pool_total", "round_total", "round_total_with_batch_labels"):
        print(f"  {k:62} {out[k]['wall_s']:7.3f}  {out[k]['cpu_s']:7.3f}")
    print(f"  per label: batch {out['per_label_ms']['batch']} ms, one by one {out['per_label_ms']['one_by_one']} ms")
    print(f"  target: round < 2 s → {'met' if out['meets_target'] else 'NOT met'}")
    print(f"  machine: {out['machine_before']['cpus']} CPUs, load average {out['machine_before']['loadavg']} → "
          f"{out['machine_after']['loadavg']}")


# ---------------------------------------------------------------------------------- part 2

async def _http_get(reader, writer, request: bytes) -> int:
    """One HTTP/1.1 keep-alive GET on an open connection → status code (body read and dropped)."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, chunked = 0, False
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v)
        elif k == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _open_loop(port: int, path: str, headers: dict, rate: float, seconds: float, timeout: float = 5.0):
    """Request k is due at t0 + k/rate; it goes out then on an idle connection, or a new one."""
    hdr = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{hdr}\r\n".encode()
    total = int(rate * seconds)
    idle: list = []
    lat: list[float] = []
    errors: dict[str, int] = {}
    opened = [0]
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.2

    async def one(k: int):
        due = t0 + k / rate
        conn = None
        while idle:  # newest first; uvicorn closes a keep-alive connection idle for 5 s: skip those
            r_, w_, last = idle.pop()
            if loop.time() - last < 4.0:
                conn = (r_, w_)
                break
            w_.close()
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
                opened[0] += 1
            status = await asyncio.wait_for(_http_get(*conn, request), timeout)
            took = loop.time() - due
            if status == 200:
                lat.append(took)
            else:
                errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
            idle.append((*conn, loop.time()))
        except Exception as e:  # noqa: BLE001 — every failure is counted, by kind
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            if conn is not None:
                conn[1].close()

    tasks = []
    for k in range(total):
        delay = t0 + k / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(k)))
    await asyncio.gather(*tasks)
    for _, w, _ in idle:
        w.close()
    late = loop.time() - (t0 + (total - 1) / rate)
    return lat, errors, opened[0], late


def _pcts(lat: list[float]) -> dict:
    if not lat:
        return {}
    ms = np.asarray(lat) * 1e3
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 95, 99, 99.9)} | \
        {"max_ms": round(float(ms.max()), 2), "mean_ms": round(float(ms.mean()), 2)}


def load(args) -> dict:
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="camloop-load-"))
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    key, dash = "bench-key-0123456789", "bench-dash-0123456789"
    with postgres_database(args.database_url, args.postgres) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAMLOOP_") and k not in ("DATABASE_URL",)}
        env.update({"CAMLOOP_DATA_DIR": str(tmp), "CAMLOOP_QUEUE_PREFIX": prefix, "CAMLOOP_API_KEYS": key,
                    "CAMLOOP_DASHBOARD_KEYS": dash, "REDIS_URL": args.redis_url, "CAMLOOP_DEVICE": "cpu",
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        if url:
            env["DATABASE_URL"] = url
        from PIL import Image

        from engine.datasets import load_digits

        d = load_digits()
        (tmp / "pool").mkdir()
        for i, img in enumerate(d.images[:, :, :, 0]):
            Image.fromarray(img, mode="L").save(tmp / "pool" / f"{i:05d}.png")
        port = free_port()
        cmd = [sys.executable, "-c", "from service.cli import app; app()"]
        server = subprocess.Popen(cmd + ["serve", "--port", str(port), "--log-level", "warning"], env=env,
                                  stdout=open(tmp / "server.log", "ab"), stderr=subprocess.STDOUT)
        worker = subprocess.Popen(cmd + ["worker"], env=env, stdout=open(tmp / "worker.log", "ab"),
                                  stderr=subprocess.STDOUT)
        h = {"Authorization": f"Bearer {key}"}
        results = {}
        try:
            c = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=h, timeout=30)
            for _ in range(600):
                with contextlib.suppress(httpx.TransportError):
                    if c.get("/healthz").status_code == 200:
                        break
                time.sleep(0.2)
            p = c.post("/api/v1/projects", json={"name": "load-bench", "classes": CLASSES,
                                                  "config": {"epochs": args.epochs, "hflip": False,
                                                             "pretrained": False, "budget": 50}}).json()
            pid = p["id"]
            labels = [str(int(y)) for y in d.labels]
            entries = [{"uri": f"pool/{i:05d}.png", "split": "pool", "label": labels[i]} for i in range(1200)]
            entries += [{"uri": f"pool/{i:05d}.png", "split": "val", "label": labels[i]} for i in range(1200, 1500)]
            entries += [{"uri": f"pool/{i:05d}.png", "split": "pool"} for i in range(1500, len(labels))]
            r = c.post(f"/api/v1/projects/{pid}/items", json={"items": entries})
            assert r.status_code == 202, r.text
            r = c.post(f"/api/v1/projects/{pid}/rounds")
            assert r.status_code == 202, r.text
            n = r.json()["number"]
            st = None
            for _ in range(3000):
                st = c.get(f"/api/v1/projects/{pid}/rounds/{n}").json()["state"]
                if st != "created":
                    break
                time.sleep(0.2)
            assert st == "training", st
            time.sleep(2.0)  # let the worker get into its epochs
            targets = [("dashboard GET /api/v1/projects/{pid}/metrics", f"/api/v1/projects/{pid}/metrics",
                        {"Authorization": f"Bearer {dash}"}),
                       ("prometheus GET /metrics", "/metrics", {})]
            if args.only:
                targets = [x for x in targets if x[0].startswith(args.only)]
            for name, path, hdrs in targets:
                states: list[str] = []
                stop = threading.Event()

                def sample():
                    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=h, timeout=30) as cc:
                        while not stop.wait(1.0):
                            with contextlib.suppress(Exception):
                                states.append(cc.get(f"/api/v1/projects/{pid}/rounds/{n}").json()["state"])

                th = threading.Thread(target=sample, daemon=True)
                th.start()
                spy = None
                if args.py_spy:  # a sampling profile of the server while it answers (diagnosis only)
                    spy = subprocess.Popen([args.py_spy, "record", "-p", str(server.pid), "-r", "200", "--threads",
                                            "-f", "raw", "-o", f"{args.json or 'load'}.{path.strip('/').replace('/', '_')}.txt",
                                            "-d", str(int(args.seconds) + 1)], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
                cpu0 = {pp.pid: _proc_cpu(pp.pid) for pp in (server, worker)}
                la0 = os.getloadavg()
                lat, errors, opened, late = asyncio.run(_open_loop(port, path, hdrs, args.rate, args.seconds))
                cpu1 = {pp.pid: _proc_cpu(pp.pid) for pp in (server, worker)}
                stop.set()
                th.join()
                if spy is not None:
                    spy.wait()
                results[name] = {"requests": int(args.rate * args.seconds), "ok": len(lat),
                                 "errors": sum(errors.values()), "errors_by_kind": errors,
                                 "connections_opened": opened, "last_send_late_s": round(late, 3),
                                 **_pcts(lat),
                                 "server_cpu_s": round(cpu1[server.pid] - cpu0[server.pid], 2),
                                 "server_cpu_ms_per_answer": round((cpu1[server.pid] - cpu0[server.pid]) * 1e3
                                                                   / max(1, len(lat)), 2),
                                 "achieved_per_s": round(len(lat) / args.seconds, 1),
                                 "worker_cpu_s": round(cpu1[worker.pid] - cpu0[worker.pid], 2),
                                 "round_states_sampled": {s_: states.count(s_) for s_ in sorted(set(states))},
                                 "loadavg_before": [round(x, 2) for x in la0],
                                 "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
        finally:
            others = machine()
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
            conn.srem("rq:queues", *[f"rq:queue:{prefix}-{k}" for k in ("ingest", "train", "score")])
    return {"rate_per_s": args.rate, "seconds": args.seconds,
            "database": "postgresql" if (args.postgres or args.database_url) else "sqlite",
            "worker": "small-cnn on digits (1200 labels ×2 duplication), 1 torch thread, CPU",
            "targets": results, "goal_p99_ms": 20.0, "machine_during": others}


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children) from /proc."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _print_load(out: dict) -> None:
    print(f"open-loop GETs at {out['rate_per_s']:.0f}/s for {out['seconds']:.0f} s each, {out['database']}, while "
          f"a round trains in a real worker ({out['worker']})")
    for name, r in out["targets"].items():
        print(f"  {name}: {r['ok']}/{r['requests']} ok, errors {r['errors']} {r['errors_by_kind'] or ''}; "
              f"p50 {r.get('p50_ms')} p95 {r.get('p95_ms')} p99 {r.get('p99_ms')} max {r.get('max_ms')} ms; "
              f"server CPU {r['server_cpu_s']} s ({r['server_cpu_ms_per_answer']} ms an answer), "
              f"worker CPU {r['worker_cpu_s']} s; "
              f"round states sampled {r['round_states_sampled']}; load avg {r['loadavg_before']} → {r['loadavg_after']}")
    print(f"  goal p99 < {out['goal_p99_ms']:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["overhead", "load"])
    ap.add_argument("--n", type=int, default=10_000, help="pool size (overhead)")
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3, help="fresh projects on the same files (overhead)")
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--epochs", type=int, default=60, help="epochs of the round that trains during the load")
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--database-url", default=None, help="a PostgreSQL URL; default SQLite in a temp data dir")
    ap.add_argument("--postgres", action="store_true", help="a fresh PostgreSQL database of our own, dropped after")
    ap.add_argument("--py-spy", default=None, help="path of a py-spy binary: profile the server during each load")
    ap.add_argument("--only", default=None, choices=["dashboard", "prometheus"], help="load one target only")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = overhead(args) if args.part == "overhead" else load(args)
    (_print_overhead if args.part == "overhead" else _print_load)(out)
    if args.json:
        Path(args.json).write_text(json.dumps({**out, "provenance": provenance()}, indent=2))


if __name__ == "__main__":
    main()
