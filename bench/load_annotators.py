"""Load: annotators posting labels while a dashboard polls metrics and a round trains (issue 7).

`camloop serve` + `camloop worker` subprocesses on loopback (PostgreSQL by default, or SQLite;
Redis with a private queue prefix). A project with the digits pool, a few hundred labels at
registration so round 1 trains on the worker; while it trains:

  * N simulated annotators (default 50), closed loop with think time: each POSTs 1–5 labels a
    request, mostly items of its own share of the pool, sometimes a "hot" item every annotator
    may label (relabels and conflicts), and re-sends 10 % of its requests at once (a client
    retry after a lost answer: same client ids, must count nothing twice). A request that
    fails (5xx, timeout, transport error) is kept and re-sent at the end, as a client would.
  * a dashboard, open loop at R requests/s (default 200): GET /api/v1/projects/{pid}/metrics
    and, every other request, the project page GET /api/v1/projects/{pid}/page (--no-page: metrics
    only), with a read-only key, each request sent at its scheduled time; latency is measured
    from the scheduled time, so a slow server is not hidden by a waiting client.

Then the store is checked against what the clients were told: every acknowledged client id
exactly once in the labels table, no label nobody sent, each item counted once in GET metrics
(labeled = distinct labeled pool items, per-class counts sum to it), the item's label one of its
labels. Prints a JSON report: per endpoint count, error rate, p50/p95/p99/max latency, achieved
rate; labels sent/acknowledged/lost/double-counted; the round's state.

    python bench/load_annotators.py [--annotators 50] [--dashboard-rps 200] [--seconds 60]
                                    [--db postgresql|sqlite] [--json out.json]

The test tests/test_load_annotators.py runs `run()` small (no timing assertions).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from workers.provenance import provenance  # noqa: E402

from service.runtime.host import free_port  # noqa: E402  (after the path above)

CLASSES = [str(i) for i in range(10)]
ENGINEER, DASHBOARD = "load-engineer-key", "load-dashboard-key"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


# ------------------------------------------------------------------------------ the stack

def _pg_url() -> tuple[str, str]:
    """(admin dsn, sqlalchemy url) of a fresh database on the machine's PostgreSQL."""
    import psycopg

    for user in ("root", "postgres"):
        dsn = f"host=127.0.0.1 port=5432 dbname=test user={user}"
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                name = f"camloop_load_{uuid.uuid4().hex[:10]}"
                c.execute(f'CREATE DATABASE "{name}"')
            return dsn, f"postgresql+psycopg://{user}@127.0.0.1:5432/{name}"
        except psycopg.OperationalError:
            continue
    raise RuntimeError("no PostgreSQL at 127.0.0.1:5432")


@dataclass
class Stack:
    root: Path
    db_url: str
    prefix: str
    port: int
    procs: list = field(default_factory=list)
    admin_dsn: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        import redis

        conn = redis.Redis.from_url(REDIS_URL)
        keys = list(conn.scan_iter(match=f"rq:*{self.prefix}*", count=1000))
        if keys:
            conn.delete(*keys)
        conn.srem("rq:queues", *[f"rq:queue:{self.prefix}-{k}" for k in ("ingest", "train", "score")])
        if self.admin_dsn:
            import psycopg

            from service.store import db
            db.dispose_engines()
            with psycopg.connect(self.admin_dsn, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{self.db_url.rsplit("/", 1)[1]}" WITH (FORCE)')


def start_stack(db: str = "postgresql", root: Path | None = None, worker_nice: int | None = None) -> Stack:
    import httpx

    root = Path(root or tempfile.mkdtemp(prefix="camloop-load-"))
    root.mkdir(parents=True, exist_ok=True)
    admin = None
    if db == "postgresql":
        admin, db_url = _pg_url()
    else:
        db_url = f"sqlite:///{root / 'camloop.db'}"
    st = Stack(root, db_url, f"load{uuid.uuid4().hex[:8]}", free_port(), admin_dsn=admin)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMLOOP_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"CAMLOOP_DATA_DIR": str(root), "CAMLOOP_QUEUE_PREFIX": st.prefix, "CAMLOOP_API_KEYS": ENGINEER,
                "CAMLOOP_DASHBOARD_KEYS": DASHBOARD, "REDIS_URL": REDIS_URL, "DATABASE_URL": db_url,
                "CAMLOOP_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "CAMLOOP_SCORE_SHARD_SIZE": "500"})
    if worker_nice is not None:
        env["CAMLOOP_WORKER_NICE"] = str(worker_nice)
    code = "from service.cli import app; app()"
    st.procs.append(subprocess.Popen([sys.executable, "-c", code, "serve", "--port", str(st.port), "--log-level",
                                      "warning"], env=env, cwd=ROOT, stdout=open(root / "server.log", "ab"),
                                     stderr=subprocess.STDOUT))
    st.procs.append(subprocess.Popen([sys.executable, "-c", code, "worker"], env=env, cwd=ROOT,
                                     stdout=open(root / "worker.log", "ab"), stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{st.url}/healthz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or st.procs[0].poll() is not None:
            st.close()
            raise RuntimeError("camloop serve did not come up:\n" + (root / "server.log").read_text()[-3000:])
        time.sleep(0.2)
    return st


def setup_project(st: Stack, *, seed_labels: int, epochs: int) -> tuple[int, list[int], dict[int, str]]:
    """Digits: pool (first `seed_labels` labeled at registration) + val; waits for ingest.
    Returns (project id, unlabeled pool item ids, ground truth by item id)."""
    import httpx
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.images))
    truth_by_uri = {}
    for sub, idx in (("pool", order[:1500]), ("val", order[1500:])):
        (st.root / sub).mkdir(exist_ok=True)
        for k, i in enumerate(idx):
            img = (d.images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
            Image.fromarray(img, mode="L").save(st.root / sub / f"{k:05d}.png")
            truth_by_uri[f"{sub}/{k:05d}.png"] = str(int(d.target[i]))
    c = httpx.Client(base_url=st.url, headers={"Authorization": f"Bearer {ENGINEER}"}, timeout=120)
    r = c.post("/api/v1/projects", json={"name": f"load-{st.prefix}", "classes": CLASSES,
                                         "config": {"epochs": epochs, "budget": 50, "mc_samples": 4, "hflip": False,
                                                    "pretrained": False, "exclusion": {"enabled": False}}})
    r.raise_for_status()
    pid = r.json()["id"]
    pool = sorted(u for u in truth_by_uri if u.startswith("pool/"))
    held = [{"uri": u, "split": "val", "label": y} for u, y in truth_by_uri.items() if u.startswith("val/")]
    seeds = [{"uri": u, "split": "pool", "label": truth_by_uri[u]} for u in pool[:seed_labels]]
    c.post(f"/api/v1/projects/{pid}/items", json={"items": held + seeds}).raise_for_status()
    c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}).raise_for_status()
    deadline = time.monotonic() + 300
    while True:  # ingest results are applied when a round starts; wait for the worker's outputs
        items = c.get(f"/api/v1/projects/{pid}/items", params={"limit": 10000}).json()["items"]
        cache = st.root / "artifacts" / f"p{pid}" / "cache"
        done = len(list(cache.glob("shard_*.json"))) if cache.exists() else 0
        jobs = len(list(cache.glob("ingest_*.json"))) if cache.exists() else 0
        if jobs and done == jobs:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("ingest did not finish")
        time.sleep(0.3)
    unlabeled = [it["id"] for it in items if it["split"] == "pool" and it["label"] is None]
    truth = {it["id"]: truth_by_uri[it["uri"]] for it in items}
    c.close()
    return pid, unlabeled, truth


# ------------------------------------------------------------------------------ the load

class Response:
    def __init__(self, status_code: int, body: bytes):
        self.status_code, self.content = status_code, body

    def json(self):
        return json.loads(self.content)


class _Closed(Exception):
    pass


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, for the load generator only.

    httpx's async client costs a few ms of CPU per request and its pool slows down with many
    waiters; on 2 shared cores the generator would measure itself. This one writes the request
    bytes and reads status, headers and a Content-Length (or chunked) body — about 0.1 ms."""

    def __init__(self, host: str, port: int, headers: dict[str, str], size: int, timeout: float = 60):
        self.host, self.port, self.size, self.timeout = host, port, size, timeout
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items())
        self._idle: list = []
        self._slots = asyncio.Semaphore(size)

    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        head = f"{method} {path} HTTP/1.1\r\n{self._head}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        data = head.encode() + b"\r\n" + (body or b"")
        async with self._slots:
            while True:
                reused = bool(self._idle)
                conn = self._idle.pop() if reused else await asyncio.open_connection(self.host, self.port)
                reader, writer = conn
                try:
                    writer.write(data)
                    resp, keep = await asyncio.wait_for(self._read(reader), self.timeout)
                except (_Closed, ConnectionResetError, BrokenPipeError):
                    writer.close()
                    if reused:  # the server closed an idle keep-alive connection as we sent: resend
                        continue  # (HTTP clients do the same; our POSTs are idempotent by client id)
                    raise ConnectionResetError("server closed the connection") from None
                except BaseException:
                    writer.close()
                    raise
                if keep:
                    self._idle.append(conn)
                else:
                    writer.close()
                return resp

    @staticmethod
    async def _read(reader) -> tuple[Response, bool]:
        line = await reader.readline()
        if not line:
            raise _Closed()
        status = int(line.split(b" ", 2)[1])
        length, chunked, keep = 0, False, True
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            k, v = k.strip().lower(), v.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "transfer-encoding" and "chunked" in v:
                chunked = True
            elif k == "connection" and v == "close":
                keep = False
        if chunked:
            parts = []
            while True:
                n = int((await reader.readline()).strip(), 16)
                if n == 0:
                    await reader.readline()
                    break
                parts.append(await reader.readexactly(n))
                await reader.readline()
            return Response(status, b"".join(parts)), keep
        return Response(status, await reader.readexactly(length) if length else b""), keep

    async def get(self, path: str) -> Response:
        return await self.request("GET", path)

    async def post(self, path: str, json_body) -> Response:
        return await self.request("POST", path, json.dumps(json_body).encode())

    async def close(self) -> None:
        for _, w in self._idle:
            w.close()
        self._idle.clear()


@dataclass
class Endpoint:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    # the load generator's own lag: from a request's due time until its task ran (the generator
    # shares the cores; what it adds is not the server's)
    lags: list[float] = field(default_factory=list)
    # when each request was due, seconds from the run's start: where in the run the tail lies
    due_at: list[float] = field(default_factory=list)

    def record(self, status: str, seconds: float, ok: bool, due_at: float | None = None) -> None:
        self.latencies.append(seconds)
        if due_at is not None:
            self.due_at.append(due_at)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if not ok:
            self.errors += 1

    def summary(self, wall: float) -> dict:
        lat = np.asarray(self.latencies) * 1000 if self.latencies else np.zeros(1)
        n = len(self.latencies)
        return {"requests": n, "errors": self.errors, "error_rate": self.errors / n if n else 0.0,
                "rate_per_s": n / wall if wall else 0.0, "statuses": self.statuses,
                "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()),
                **({"generator_lag_p50_ms": float(np.percentile(self.lags, 50) * 1000),
                    "generator_lag_p99_ms": float(np.percentile(self.lags, 99) * 1000)} if self.lags else {}),
                **({"slow_seconds": self.slow_seconds()} if self.due_at else {})}

    def slow_seconds(self, top: int = 8) -> list[dict]:
        """The run's seconds with the most requests over 20 ms, the dashboard's p99 goal (when the
        tail happened: a steady tail is CPU scheduling, a few bad seconds are something the server
        did then)."""
        due = np.asarray(self.due_at)
        lat = np.asarray(self.latencies[-len(due):])
        slow = np.floor(due[lat > 0.020]).astype(int)
        if not len(slow):
            return []
        sec, count = np.unique(slow, return_counts=True)
        order = np.argsort(-count)[:top]
        return [{"second": int(sec[i]), "over_20ms": int(count[i]),
                 "max_ms": float(lat[(np.floor(due) == sec[i])].max() * 1000)} for i in sorted(order)]


@dataclass
class Ledger:
    """What the clients were told, to check the store against."""
    acked: dict[str, tuple[int, str]] = field(default_factory=dict)   # client id → (item, class), 2xx
    pending: list[dict] = field(default_factory=list)                 # bodies of failed requests: re-sent at the end
    resent_dupes: int = 0                                             # immediate duplicate deliveries
    dupes_created: int = 0                                            # ... that the server counted as new (must be 0)


async def _annotator(i: int, c, pid: int, own: list[int], hot: list[int], truth: dict[int, str], stop: float,
                     ep: Endpoint, ledger: Ledger, think: tuple[float, float], rng: random.Random) -> None:
    seq = 0
    url = f"/api/v1/projects/{pid}/labels"
    own = list(own)
    # An annotator looks at its first image too. Without this wait all of them posted in the same
    # millisecond at the start, a burst no team makes: 50 label writes at once held the server
    # ~0.3 s, and those first 0.3 s of dashboard polls were the whole p99 of a 30 s run.
    await asyncio.sleep(rng.uniform(*think))
    while time.monotonic() < stop:
        labels = []
        for _ in range(rng.randint(1, 5)):
            if own and rng.random() < 0.7:
                item = own.pop()
            else:
                item = rng.choice(hot)
            cls = truth[item] if rng.random() < 0.8 else rng.choice(CLASSES)  # experts disagree sometimes
            seq += 1
            labels.append({"item_id": item, "class": cls, "client_id": f"a{i}-{seq}", "who": f"annotator-{i}"})
        body = {"labels": labels}
        for attempt in range(2 if rng.random() < 0.1 else 1):
            t0 = time.perf_counter()
            try:
                r = await c.post(url, body)
                status, ok = str(r.status_code), r.status_code in (200, 201)
            except Exception as e:  # noqa: BLE001 — timeouts, resets: the client keeps it and re-sends later
                status, ok, r = type(e).__name__, False, None
            ep.record(status, time.perf_counter() - t0, ok)
            if ok:
                for lab in labels:
                    ledger.acked[lab["client_id"]] = (lab["item_id"], lab["class"])
                if attempt == 1:
                    ledger.resent_dupes += 1
                    ledger.dupes_created += sum(1 for x in r.json()["labels"] if x["created"])
            else:
                ledger.pending.append(body)
                break
        await asyncio.sleep(rng.uniform(*think))


async def _dashboard(c: RawHttp, pid: int, rps: float, stop: float, ep: Endpoint, in_flight: int,
                     page_ep: Endpoint | None = None) -> None:
    """Open loop: request k is due at start + k/rps whether or not earlier ones came back; at most
    `in_flight` are outstanding (a dashboard's connection pool), later ones wait their turn in
    a FIFO and that wait counts in their latency (measured from the due time)."""
    url = f"/api/v1/projects/{pid}/metrics"
    page = f"/api/v1/projects/{pid}/page"
    interval = 1.0 / rps
    start = time.monotonic()
    tasks = set()

    async def one(due: float, on_page: bool) -> None:
        (page_ep if on_page else ep).lags.append(time.monotonic() - due)
        try:  # RawHttp holds at most `in_flight` connections; the rest wait in its FIFO
            r = await c.get(page if on_page else url)
            status, ok = str(r.status_code), r.status_code == 200
        except Exception as e:  # noqa: BLE001
            status, ok = type(e).__name__, False
        (page_ep if on_page else ep).record(status, time.monotonic() - due, ok, due - start)

    k = 0
    while True:
        due = start + k * interval
        if due >= stop:
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.create_task(one(due, page_ep is not None and k % 2 == 1))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        k += 1
        if k % 50 == 0:
            await asyncio.sleep(0)  # behind schedule: still let the responses in
    if tasks:
        await asyncio.gather(*tasks)


async def _load(url: str, pid: int, unlabeled: list[int], truth: dict[int, str], *, annotators: int,
                dashboard_rps: float, seconds: float, think: tuple[float, float], seed: int,
                page: bool = True) -> dict:
    rng = random.Random(seed)
    items = list(unlabeled)
    rng.shuffle(items)
    hot, rest = items[:20], items[20:]
    shares = [rest[k::annotators] for k in range(annotators)]
    ledger, labels_ep, dash_ep = Ledger(), Endpoint(), Endpoint()
    page_ep = Endpoint() if page else None
    in_flight = 64  # the dashboard's connections; more requests due wait (in a FIFO) for one
    host, port = url.split("//", 1)[1].split(":")
    ann = RawHttp(host, int(port), {"Authorization": f"Bearer {ENGINEER}"}, size=annotators)
    dash = RawHttp(host, int(port), {"Authorization": f"Bearer {DASHBOARD}"}, size=in_flight)
    t0, started_unix = time.monotonic(), time.time()
    stop = t0 + seconds
    await asyncio.gather(
        _dashboard(dash, pid, dashboard_rps, stop, dash_ep, in_flight, page_ep),
        *[_annotator(i, ann, pid, shares[i], hot, truth, stop, labels_ep, ledger, think, random.Random(seed + i))
          for i in range(annotators)])
    wall = time.monotonic() - t0
    # Re-send what failed, until it is through (idempotent: client ids).
    resent_after = 0
    for body in ledger.pending:
        for _ in range(20):
            try:
                r = await ann.post(f"/api/v1/projects/{pid}/labels", body)
                if r.status_code in (200, 201):
                    for lab in body["labels"]:
                        ledger.acked[lab["client_id"]] = (lab["item_id"], lab["class"])
                    resent_after += 1
                    break
            except Exception:  # noqa: BLE001
                pass
            await asyncio.sleep(0.5)
    await ann.close()
    await dash.close()
    both = Endpoint(dash_ep.latencies + (page_ep.latencies if page_ep else []), dash_ep.errors + (
        page_ep.errors if page_ep else 0), lags=dash_ep.lags + (page_ep.lags if page_ep else []),
        due_at=dash_ep.due_at + (page_ep.due_at if page_ep else []))
    return {"wall_s": wall, "started_unix": started_unix, "labels_endpoint": labels_ep.summary(wall),
            "metrics_endpoint": dash_ep.summary(wall),
            **({"page_endpoint": page_ep.summary(wall), "dashboard_all": both.summary(wall)} if page_ep else {}),
            "ledger": ledger, "resent_after_failure": resent_after, "hot_items": hot}


def verify(db_url: str, pid: int, ledger: Ledger, metrics: dict) -> dict:
    """The store against what the clients were told."""
    from sqlalchemy import create_engine, text

    eng = create_engine(db_url)
    with eng.connect() as c:
        rows = c.execute(text("SELECT external_id, item_id, class_name, id FROM labels WHERE project_id = :p "
                              "AND source = 'api'"), {"p": pid}).all()
        item_rows = c.execute(text("SELECT id, status, label FROM items WHERE project_id = :p AND split = 'pool'"),
                              {"p": pid}).all()
        all_labels = c.execute(text("SELECT item_id, class_name, id FROM labels WHERE project_id = :p"),
                               {"p": pid}).all()
    eng.dispose()
    stored: dict[str, list] = {}
    for ext, item, cls, _ in rows:
        stored.setdefault(ext, []).append((item, cls))
    lost = [cid for cid in ledger.acked if cid not in stored]
    doubled = [cid for cid, v in stored.items() if len(v) > 1]
    unknown = [cid for cid in stored if cid not in ledger.acked]
    wrong = [cid for cid, (item, cls) in ledger.acked.items() if cid in stored and stored[cid][0] != (item, cls)]
    by_item: dict[int, list[tuple[int, str]]] = {}
    for item, cls, lid in all_labels:
        by_item.setdefault(item, []).append((lid, cls))
    labeled = [r for r in item_rows if r[1] == "labeled"]
    status = {r[0]: r[1] for r in item_rows}
    not_marked = [i for i in by_item if i in status and status[i] != "labeled"]
    label_not_theirs = [r[0] for r in labeled if r[2] not in {cls for _, cls in by_item.get(r[0], [])}]
    not_newest = [r[0] for r in labeled if by_item.get(r[0]) and r[2] != max(by_item[r[0]])[1]]
    per_class_sum = sum(v["labeled"] for v in metrics["per_class"].values())
    return {
        "acknowledged_client_ids": len(ledger.acked), "stored_api_labels": len(rows),
        "lost": len(lost), "double_counted": len(doubled) + abs(metrics["labeled"] - len(labeled)),
        "stored_but_never_acknowledged": len(unknown), "stored_with_other_item_or_class": len(wrong),
        "pool_items_labeled": len(labeled), "metrics_labeled": metrics["labeled"], "metrics_per_class_sum": per_class_sum,
        "items_with_labels_not_marked_labeled": len(not_marked),
        "items_whose_label_is_none_of_theirs": len(label_not_theirs),
        "items_whose_label_is_not_their_newest_row": len(not_newest),
        "immediate_duplicate_deliveries": ledger.resent_dupes, "duplicates_counted_as_new": ledger.dupes_created,
    }


def _cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(*, annotators: int = 50, dashboard_rps: float = 200, seconds: float = 60, db: str = "postgresql",
        seed_labels: int = 300, epochs: int = 15, think: tuple[float, float] = (0.3, 1.2), seed: int = 0,
        root: Path | None = None, page: bool = True, worker_nice: int | None = None) -> dict:
    import httpx

    st = start_stack(db, root, worker_nice)
    try:
        pid, unlabeled, truth = setup_project(st, seed_labels=seed_labels, epochs=epochs)
        c = httpx.Client(base_url=st.url, headers={"Authorization": f"Bearer {ENGINEER}"}, timeout=60)
        c.post(f"/api/v1/projects/{pid}/rounds").raise_for_status()
        state_before = c.get(f"/api/v1/projects/{pid}/rounds/1").json()["state"]
        load_avg_before = os.getloadavg()
        cpu0 = [_cpu_s(p.pid) for p in st.procs]
        load = asyncio.run(_load(st.url, pid, unlabeled, truth, annotators=annotators, dashboard_rps=dashboard_rps,
                                 seconds=seconds, think=think, seed=seed, page=page))
        cpu = [_cpu_s(p.pid) - c0 for p, c0 in zip(st.procs, cpu0)]
        load_avg_after = os.getloadavg()
        rnd = c.get(f"/api/v1/projects/{pid}/rounds/1").json()
        time.sleep(1.0)  # GET metrics may be one reconciler tick (0.5 s) stale: read it after one
        metrics = c.get(f"/api/v1/projects/{pid}/metrics").json()
        c.close()
        check = verify(st.db_url, pid, load.pop("ledger"), metrics)
        load.pop("hot_items")
        server_log = (st.root / "server.log").read_text(errors="replace")
        return {"config": {"annotators": annotators, "dashboard_rps": dashboard_rps, "seconds": seconds, "db": db,
                           "page": page, "worker_nice": worker_nice,
                           "seed_labels": seed_labels, "epochs": epochs, "think_s": list(think)},
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                            "load_generator": "same machine, one asyncio process (raw HTTP/1.1 keep-alive)",
                            "load_average_before": load_avg_before, "load_average_after": load_avg_after},
                "cpu_seconds_during_load": {"api_server": cpu[0], "worker": cpu[1],
                                            "api_ms_per_request": 1000 * cpu[0] / max(1, load["labels_endpoint"][
                                                "requests"] + load["metrics_endpoint"]["requests"] + load.get(
                                                "page_endpoint", {}).get("requests", 0))},
                "round": {"state_at_start": state_before, "state_at_end": rnd["state"], "error": rnd["error"],
                          "train_seconds": next((j["duration_s"] for j in rnd["jobs"] if j["kind"] == "train"), None)},
                **load, "check": check, "server_log_500s": server_log.count("→ 500")}
    finally:
        st.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--annotators", type=int, default=50)
    ap.add_argument("--dashboard-rps", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--no-page", dest="page", action="store_false", help="the dashboard polls GET metrics only")
    ap.add_argument("--worker-nice", type=int, default=None,
                    help="the worker's CAMLOOP_WORKER_NICE (default: the service's default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = run(annotators=args.annotators, dashboard_rps=args.dashboard_rps, seconds=args.seconds, db=args.db,
              epochs=args.epochs, page=args.page, worker_nice=args.worker_nice)
    text = json.dumps({**out, "provenance": provenance()}, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
