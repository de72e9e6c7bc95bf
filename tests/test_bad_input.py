"""Bad input: each one a clear 4xx, or an item quarantined with its reason — never a crash
(5xx), never a lost or double-counted label.

The API runs with its lifespan (migrations + reconciler) over TestClient on SQLite, real Redis
(a queue prefix of our own); ingest jobs run in a real rq worker draining our queues. The
last test races round starts through two `camloop serve` processes on one PostgreSQL database.
"""
from __future__ import annotations

import hashlib
import io
import json
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr
from sqlalchemy import func, select

from service.store.db import session_scope
from service.store import Item, Label
from tests.conftest import DASHBOARD_KEY, ENGINEER_KEY, make_settings, run_jobs, write_digits

CLASSES = [str(i) for i in range(10)]
SECRET = "bad-input-webhook-secret-71c3"
LIMIT = 64 * 1024  # max_upload_bytes for these tests


@pytest.fixture
def app(tmp_path, queue_prefix):
    from fastapi.testclient import TestClient

    from service.api import create_app

    root = tmp_path / "data"
    root.mkdir()
    settings = make_settings(root, f"sqlite:///{tmp_path / 'camloop.db'}", queue_prefix, max_upload_bytes=LIMIT,
                             max_image_pixels=4_000_000, label_studio_webhook_secret=SecretStr(SECRET))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {ENGINEER_KEY}"
        yield client, settings


def new_project(c, **cfg) -> int:
    r = c.post("/api/v1/projects", json={"name": f"bad-{time.monotonic_ns()}", "classes": CLASSES,
                                         "config": {"epochs": 1, "budget": 5, "reserve": 0, "pretrained": False, **cfg}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def no_5xx(r: httpx.Response) -> httpx.Response:
    assert r.status_code < 500, f"{r.request.method} {r.request.url} → {r.status_code}: {r.text}"
    return r


# ------------------------------------------------------------------ image files

def _png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int) -> bytes:
    """A valid greyscale PNG of side × side zero pixels: a few hundred KB that inflate to side² bytes."""
    row = b"\x00" * (side + 1)  # filter byte + pixels
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", body) + _chunk(b"IEND", b""))


def test_bad_image_files_are_quarantined_with_their_reason_and_odd_modes_decode(app):
    c, settings = app
    pid = new_project(c)
    root = settings.data_dir
    (root / "pool").mkdir()
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "RGB")
    png, jpg = _png_bytes(noise), _png_bytes(noise, "JPEG")
    bad = {
        "pool/zero.png": (b"", "zero-byte"),
        "pool/truncated.png": (png[: len(png) // 2], "truncated|corrupt"),
        "pool/truncated.jpg": (jpg[: len(jpg) // 3], "truncated|corrupt"),
        "pool/garbage.png": (b"\x89PNG\r\n\x1a\n" + rng.bytes(3000), "corrupt|truncated|recognised"),
        "pool/html.png": (b"<html><body>not an image</body></html>", "not a recognised image"),
        "pool/bomb.png": (png_bomb(12_000), "decompression bomb"),  # 144 M pixels > 4 M allowed
    }
    for rel, (data, _) in bad.items():
        (root / rel).write_bytes(data)
    grad16 = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    Image.fromarray(grad16).save(root / "pool/sixteen.png")               # I;16
    Image.new("CMYK", (40, 30), (0, 0, 0, 0)).save(root / "pool/cmyk.jpg")  # no ink: white
    Image.new("P", (20, 20), 3).save(root / "pool/palette.gif")
    write_digits(root, 3, "pool/ok")
    r = c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"})
    assert r.status_code == 202 and r.json()["registered"] == len(bad) + 3 + 3, r.text
    run_jobs(settings, ("ingest",))
    deadline = time.monotonic() + 60
    while True:
        items = {it["uri"]: it for it in c.get(f"/api/v1/projects/{pid}/items").json()["items"]}
        if sum(it["status"] == "quarantined" for it in items.values()) >= len(bad) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for rel, (_, reason) in bad.items():
        assert items[rel]["status"] == "quarantined", (rel, items[rel])
        assert items[rel]["reason"] and __import__("re").search(reason, items[rel]["reason"]), (rel, items[rel])
    for rel in ("pool/sixteen.png", "pool/cmyk.jpg", "pool/palette.gif", "pool/ok/00000.png"):
        assert items[rel]["status"] == "unlabeled" and items[rel]["reason"] is None, items[rel]
    # A quarantined item cannot be labeled (409 with the reason); its neighbours can.
    r = c.post(f"/api/v1/projects/{pid}/labels",
               json={"labels": [{"item_id": items["pool/bomb.png"]["id"], "class": "1", "client_id": "q1"}]})
    assert r.status_code == 409 and "quarantined" in r.json()["detail"] and "bomb" in r.json()["detail"]
    # The odd modes decoded to the cache as the model's 1-channel uint8: CMYK white, 16-bit scaled.
    from service.core import paths
    with session_scope(settings) as s:
        from service.store import Item
        rows = {it.uri: it for it in s.scalars(select(Item).where(Item.project_id == pid))}
    cmyk, six = rows["pool/cmyk.jpg"], rows["pool/sixteen.png"]
    cache = np.load(paths.cache_file(settings, pid, cmyk.cache_shard))
    assert cache[cmyk.cache_index].min() >= 250
    assert cache[six.cache_index].max() >= 250 and cache[six.cache_index][14, :4].min() < 20


# ------------------------------------------------------------------ paths

def test_paths_leaving_the_data_root_are_refused_or_quarantined(app, tmp_path):
    c, settings = app
    pid = new_project(c)
    root = settings.data_dir
    write_digits(root, 2, "pool")
    outside = tmp_path / "secret-outside.png"
    outside.write_bytes((root / "pool" / "00000.png").read_bytes()[:-1] + b"\x01")  # other content
    (root / "link-out.png").symlink_to(outside)
    (root / "dir-out").symlink_to(tmp_path)
    for uri in ("../secret-outside.png", "pool/../../secret-outside.png", str(outside), "link-out.png",
                "dir-out/secret-outside.png", "pool/\x00.png", "", "/etc/passwd", "pool/missing.png"):
        r = no_5xx(c.post(f"/api/v1/projects/{pid}/items", json={"items": [{"uri": uri}]}))
        assert r.status_code == 400, (uri, r.text)
        assert "secret" not in r.json()["detail"].replace("secret-outside", "")  # names the path, never content
    for folder in ("..", "dir-out", "../data", "/tmp"):
        r = no_5xx(c.post(f"/api/v1/projects/{pid}/items", json={"folder": folder}))
        assert r.status_code == 400, (folder, r.text)
    # A link out *inside* a registered folder: refused, or registered and quarantined with the reason.
    (root / "pool" / "sneaky.png").symlink_to(outside)
    r = no_5xx(c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}))
    if r.status_code == 202:
        run_jobs(settings, ("ingest",))
        deadline = time.monotonic() + 60
        while True:
            items = {it["uri"]: it for it in c.get(f"/api/v1/projects/{pid}/items").json()["items"]}
            if items.get("pool/sneaky.png", {}).get("status") == "quarantined" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert items["pool/sneaky.png"]["status"] == "quarantined" and "outside" in items["pool/sneaky.png"]["reason"]
        # ...and the file it points to was never read, not even to hash it at registration
        with session_scope(settings) as s:
            digest = s.scalar(select(Item.sha256).where(Item.project_id == pid, Item.uri == "pool/sneaky.png"))
        assert digest and digest != hashlib.sha256(outside.read_bytes()).hexdigest()
        assert items["pool/00000.png"]["status"] == "unlabeled"
    else:
        assert r.status_code == 400, r.text
    # The signed-file route refuses the same paths even with a valid signature.
    from service.labelstudio.routes import FILES_PREFIX
    from service.core.signing import UrlSigner
    signer = UrlSigner.from_settings(settings)
    for rel in ("../secret-outside.png", "link-out.png", "dir-out/secret-outside.png"):
        url = signer.sign(f"{FILES_PREFIX}/{rel}")
        r = no_5xx(c.get(url.replace(settings.public_base_url, ""), headers={"Authorization": ""}))
        assert r.status_code in (400, 404) and r.content != outside.read_bytes(), (rel, r.status_code)


# ------------------------------------------------------------------ labels, JSON, classes

def test_unknown_classes_malformed_json_and_wrong_types_are_4xx_and_store_nothing(app):
    c, settings = app
    pid = new_project(c)
    write_digits(settings.data_dir, 3, "pool")
    c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"})
    item = c.get(f"/api/v1/projects/{pid}/items").json()["items"][0]["id"]
    url = f"/api/v1/projects/{pid}/labels"
    cases = [
        (json.dumps({"labels": [{"item_id": item, "class": "eleven", "client_id": "a"}]}), 422, "unknown class 'eleven'"),
        (json.dumps({"labels": [{"item_id": item, "class": "3", "client_id": "b"},
                                {"item_id": item, "class": "nope", "client_id": "c"}]}), 422, "unknown class 'nope'"),
        ("{not json", 422, "JSON decode error"),
        ('{"labels": [', 422, "JSON"),
        (json.dumps({"labels": "all of them"}), 422, "list"),
        (json.dumps({"labels": [{"item_id": "abc", "class": "3", "client_id": "d"}]}), 422, "integer"),
        (json.dumps({"labels": [{"item_id": item, "class": "3", "client_id": ""}]}), 422, "client_id"),
        (json.dumps({"labels": [{"item_id": item, "class": "3"}]}), 422, "client_id"),
        (json.dumps([1, 2, 3]), 422, ""),
        ("null", 422, ""),
        (b"\xff\xfe\x00garbage", 422, ""),
    ]
    for body, status, words in cases:
        r = no_5xx(c.post(url, content=body, headers={"Content-Type": "application/json"}))
        assert r.status_code == status and words in r.text, (body, r.status_code, r.text)
    # The second case had a good label before the bad one: the request is one transaction, nothing stored.
    with session_scope(settings) as s:
        assert s.scalar(select(func.count()).select_from(Label).where(Label.project_id == pid)) == 0
    r = no_5xx(c.post(f"/api/v1/projects/{pid}/items", json={"items": [{"uri": "pool/00001.png", "label": "cat"}]}))
    assert r.status_code == 422 and "unknown class 'cat'" in r.json()["detail"]
    assert no_5xx(c.post(f"/api/v1/projects/{pid}/classes/cat/exclude", json={})).status_code == 404
    for bad in ({"name": "x", "classes": ["a"]}, {"name": "x", "classes": ["a", "a"]}, {"name": "", "classes": ["a", "b"]},
                {"name": "x", "classes": ["a", "b"], "config": {"strategy": "psychic"}},
                {"name": "x", "classes": ["a", "b"], "config": {"budget": 0}},
                {"name": "x", "classes": ["a", "b"], "config": {"no_such_key": 1}}, {"classes": ["a", "b"]}):
        r = no_5xx(c.post("/api/v1/projects", json=bad))
        assert r.status_code == 422, (bad, r.text)
    for path in (f"/api/v1/projects/{pid}/items?limit=abc", "/api/v1/projects/notanumber",
                 f"/api/v1/projects/{pid}/rounds/x", f"/api/v1/projects/{pid}/queue?round=first"):
        assert no_5xx(c.get(path)).status_code == 422, path
    for path in ("/api/v1/projects/999999", f"/api/v1/projects/{pid}/rounds/7", f"/api/v1/projects/{pid}/items/999999/heatmap.png"):
        assert no_5xx(c.get(path)).status_code == 404, path


def test_oversized_request_bodies_are_refused_with_413(app):
    c, _ = app
    pid = new_project(c)
    big = {"labels": [{"item_id": 1, "class": "3", "client_id": f"x{i:08d}"} for i in range(LIMIT // 40 + 100)]}
    body = json.dumps(big).encode()
    assert len(body) > LIMIT
    r = no_5xx(c.post(f"/api/v1/projects/{pid}/labels", content=body, headers={"Content-Type": "application/json"}))
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it streams
        for k in range(0, len(body), 8192):
            yield body[k:k + 8192]

    r = no_5xx(c.post(f"/api/v1/projects/{pid}/labels", content=chunks(), headers={"Content-Type": "application/json"}))
    assert r.status_code == 413, r.text
    r = no_5xx(c.post("/api/v1/webhooks/label-studio", content=body, headers={"X-Camloop-Webhook-Secret": SECRET}))
    assert r.status_code == 413
    r = no_5xx(c.post(f"/api/v1/projects/{pid}/labels", content=b"{}", headers={"Content-Length": "12x"}))
    assert r.status_code == 400
    # Just under the limit is fine (here: a 422 for the content, not a 413).
    ok = json.dumps({"labels": [{"item_id": 1, "class": "3", "client_id": "y" * 100}]})
    assert c.post(f"/api/v1/projects/{pid}/labels", content=ok, headers={"Content-Type": "application/json"}).status_code == 422


# ------------------------------------------------------------------ webhooks

def _linked_project(c, settings, ls_pid: int) -> tuple[int, list[int]]:
    """A project linked to a (pretend) Label Studio project id, and its two items."""
    from service.store.db import get_engine
    from service.labelstudio import ledger

    pid = new_project(c)
    write_digits(settings.data_dir, 2, f"p{pid}")
    c.post(f"/api/v1/projects/{pid}/items", json={"folder": f"p{pid}"})
    items = [it["id"] for it in c.get(f"/api/v1/projects/{pid}/items").json()["items"]]
    ledger.ensure_tables(get_engine(settings))
    with session_scope(settings) as s:
        ledger.set_link(s, pid, ls_pid, None, 1)
    return pid, items


def annotation(ls_pid: int, item: int, ann_id: int, label: str, action="ANNOTATION_CREATED") -> bytes:
    task = {"id": 10_000 + item, "project": ls_pid, "data": {"camloop_item_id": item, "camloop_round": 1}}
    ann = {"id": ann_id, "task": task["id"], "project": ls_pid, "completed_by": 1,
           "updated_at": "2025-01-01T00:00:00Z",
           "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]}
    return json.dumps({"action": action, "project": {"id": ls_pid}, "annotation": ann, "task": task}).encode()


def _secret_of(settings, ls_pid: int | None) -> dict:
    """The header of a webhook of Label Studio project `ls_pid` (its own secret; the configured
    one for a body that names no project)."""
    from service.core.signing import signing_key
    from service.labelstudio.webhook import project_secret, webhook_key

    secret = SECRET if ls_pid is None else project_secret(webhook_key(signing_key(settings), SECRET), ls_pid)
    return {"X-Camloop-Webhook-Secret": secret}


def test_webhooks_without_or_with_a_wrong_secret_malformed_or_replayed(app):
    c, settings = app
    pid, (item, other) = _linked_project(c, settings, ls_pid=4242)
    hook = "/api/v1/webhooks/label-studio"
    body = annotation(4242, item, ann_id=7, label="3")
    h = _secret_of(settings, 4242)
    # The hook needs no API key but its own secret: missing → 401, wrong (even a prefix) → 403.
    assert no_5xx(c.post(hook, content=body, headers={"Authorization": ""})).status_code == 401
    own = h["X-Camloop-Webhook-Secret"]
    for wrong in ("guess", SECRET[:-1], SECRET + "x", "", ENGINEER_KEY, SECRET, own[:-1],
                  _secret_of(settings, 4243)["X-Camloop-Webhook-Secret"]):
        r = no_5xx(c.post(hook, content=body, headers={"X-Camloop-Webhook-Secret": wrong}))
        assert r.status_code in (401, 403) and SECRET not in r.text and own not in r.text, (wrong, r.text)
    for junk, ls_pid, status in ((b"{oops", None, 400), (b"{}", None, 400), (json.dumps({"action": 5}).encode(), None, 400),
                                 (json.dumps({"action": "ANNOTATION_CREATED", "project": {"id": 4242}}).encode(), 4242, 400),
                                 (json.dumps({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": "x"}]}).encode(),
                                  None, 400),
                                 (annotation(999, item, 8, "3"), 999, 404)):
        r = no_5xx(c.post(hook, content=junk, headers=_secret_of(settings, ls_pid)))
        assert r.status_code == status, (junk, r.text)
    # A class the project does not have: kept for review, reported as 422, not a label.
    r = no_5xx(c.post(hook, content=annotation(4242, other, 9, "zebra"), headers=h))
    assert r.status_code == 422 and "zebra" in r.text
    assert c.get(f"/api/v1/projects/{pid}/metrics").json()["labeled"] == 0
    # Delivered, then replayed three times (Label Studio or an attacker resending it): one label.
    first = c.post(hook, content=body, headers=h)
    assert first.status_code == 200 and first.json()["created"] == 1, first.text
    for _ in range(3):
        again = c.post(hook, content=body, headers=h)
        assert again.status_code == 200 and again.json()["created"] == 0 and again.json()["unchanged"] == 1
    with session_scope(settings) as s:
        assert s.scalar(select(func.count()).select_from(Label).where(Label.item_id == item)) == 1
    m = c.get(f"/api/v1/projects/{pid}/metrics").json()
    assert m["labeled"] == 1 and m["per_class"]["3"]["labeled"] == 1


def test_webhook_with_a_json_body_that_is_not_an_object_is_a_400(app):
    c, _ = app
    for body in (b"[]", b'[{"action": "ANNOTATION_CREATED"}]', b'"text"', b"42", b"null"):
        r = c.post("/api/v1/webhooks/label-studio", content=body, headers={"X-Camloop-Webhook-Secret": SECRET})
        assert r.status_code == 400, (body, r.status_code, r.text)


def test_webhook_refused_when_the_server_has_no_secret_configured(tmp_path, queue_prefix):
    from fastapi.testclient import TestClient

    from service.api import create_app

    settings = make_settings(tmp_path / "d", f"sqlite:///{tmp_path / 'c.db'}", queue_prefix)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        r = c.post("/api/v1/webhooks/label-studio", content=b"{}", headers={"X-Camloop-Webhook-Secret": ""})
        assert r.status_code == 503 and "not configured" in r.json()["detail"]


# ------------------------------------------------------------------ concurrent round starts

def test_round_start_check_then_insert_race_lets_only_one_win(pg_url, tmp_path, queue_prefix):
    """The race made deterministic on PostgreSQL: start B is held right after its "is a round
    active?" query until start A has committed its round; then B goes on."""
    from sqlalchemy import event

    from service import rounds
    from service.store.db import get_engine
    from service.errors import Conflict
    from service.store.migrate import upgrade_head
    from service.core.projects import create_project, get_project

    settings = make_settings(tmp_path, pg_url, queue_prefix)
    upgrade_head(settings)
    with session_scope(settings) as s:
        pid = create_project(s, f"race-{time.monotonic_ns()}", CLASSES, None).id
        s.add(Item(project_id=pid, uri="pool/x.png", sha256="0" * 64, split="pool"))  # a round needs pool images
    engine = get_engine(settings)
    b_checked, a_done = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def hold_b(conn, cursor, statement, params, context, executemany):
        if threading.current_thread().name == "B" and "FROM rounds" in statement and "IN (" in statement \
                and not b_checked.is_set():
            b_checked.set()
            a_done.wait(5)  # with a lock taken before the check, A waits for B instead: 5 s, then B goes on

    def start(name: str, first: threading.Event | None):
        if first is not None:
            first.wait(10)
        try:
            with session_scope(settings) as s:
                outcome[name] = rounds.start_round(s, settings, get_project(s, pid))[0].number
        except Conflict as e:
            outcome[name] = e
        finally:
            if name == "A":
                a_done.set()

    event.listen(engine, "after_cursor_execute", hold_b)
    try:
        tb = threading.Thread(target=start, args=("B", None), name="B")
        ta = threading.Thread(target=start, args=("A", b_checked), name="A")
        tb.start(), ta.start()
        tb.join(30), ta.join(30)
    finally:
        event.remove(engine, "after_cursor_execute", hold_b)
    winners = [v for v in outcome.values() if isinstance(v, int)]
    assert len(winners) == 1 and sum(isinstance(v, Conflict) for v in outcome.values()) == 1, outcome
    with session_scope(settings) as s:
        from service.store import Round
        assert s.scalar(select(func.count()).select_from(Round).where(Round.project_id == pid)) == 1


@pytest.mark.slow
def test_concurrent_round_starts_across_two_server_processes_only_one_wins(pg_url, tmp_path):
    """Two `camloop serve` processes on one PostgreSQL database; 8 clients start round 1 at once."""
    import redis as redis_lib

    from tests.worker_proc import (REDIS_URL, cleanup_queues, free_port, start_server, unique_prefix, wait_for,
                                   worker_env)

    root = tmp_path / "data"
    root.mkdir()
    write_digits(root, 6, "pool")
    prefix = unique_prefix("race")
    env = worker_env(CAMLOOP_DATA_DIR=str(root), CAMLOOP_QUEUE_PREFIX=prefix, REDIS_URL=REDIS_URL,
                     DATABASE_URL=pg_url, CAMLOOP_API_KEYS=ENGINEER_KEY)
    ports = [free_port(), free_port()]
    procs = []
    clients = [httpx.Client(base_url=f"http://127.0.0.1:{p}", headers={"Authorization": f"Bearer {ENGINEER_KEY}"},
                            timeout=60) for p in ports]
    try:
        for i, (cl, port) in enumerate(zip(clients, ports)):
            # One after the other: two processes migrating one fresh database at once is the
            # separate bug of test_two_processes_migrating_a_fresh_database_at_once_both_succeed.
            procs.append(start_server(env, tmp_path / f"server{i}.log", port))
            wait_for(lambda: _healthy(cl), timeout=120, what="serve", proc=procs[-1], log=tmp_path / f"server{i}.log")
        pid = new_project(clients[0])
        assert clients[0].post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}).status_code == 202
        barrier, codes = threading.Barrier(8), []

        def start(cl):
            barrier.wait()
            codes.append(no_5xx(cl.post(f"/api/v1/projects/{pid}/rounds")).status_code)

        threads = [threading.Thread(target=start, args=(clients[i % 2],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rounds = clients[1].get(f"/api/v1/projects/{pid}/rounds").json()["rounds"]
        assert sorted(codes) == [202] + [409] * 7, (codes, rounds)
        assert [r["number"] for r in rounds] == [1]
    finally:
        for cl in clients:
            cl.close()
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
        cleanup_queues(redis_lib.Redis.from_url(REDIS_URL), prefix)


def _healthy(cl) -> bool:
    try:
        return cl.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


_MIGRATOR = """
import sys, time
from pathlib import Path
from service.store import migrate
from service.settings import Settings

url, mine, other, data = sys.argv[1:5]
real = migrate.command.upgrade

def together(cfg, rev):  # both processes enter Alembic's upgrade at the same moment (5 s at most)
    Path(mine).touch()
    deadline = time.monotonic() + 5
    while not Path(other).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return real(cfg, rev)

migrate.command.upgrade = together
migrate.upgrade_head(Settings(data_dir=data, database_url=url))
"""


def test_two_processes_migrating_a_fresh_database_at_once_both_succeed(tmp_path):
    """Two `camloop serve` starting together (compose with two API replicas), made deterministic:
    both processes enter Alembic's upgrade at the same moment (a file barrier; with a lock taken
    before it, the second waits for the lock instead and the first's barrier times out)."""
    import subprocess
    import sys
    import uuid

    import psycopg

    admin = "host=127.0.0.1 port=5432 dbname=test user="
    user = next(u for u in ("root", "postgres") if _can_connect(admin + u))
    name = f"camloop_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin + user, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://{user}@127.0.0.1:5432/{name}"
    a, b = tmp_path / "a.ready", tmp_path / "b.ready"
    try:
        procs = [subprocess.Popen([sys.executable, "-c", _MIGRATOR, url, str(x), str(y), str(tmp_path)],
                                  cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for x, y in ((a, b), (b, a))]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        failed = [next((ln for ln in reversed(o.splitlines()) if "Error" in ln), o[-300:])
                  for p, o in zip(procs, outs) if p.returncode != 0]
        assert failed == [], failed
    finally:
        with psycopg.connect(admin + user, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _can_connect(dsn: str) -> bool:
    import psycopg

    try:
        psycopg.connect(dsn, connect_timeout=5).close()
        return True
    except psycopg.OperationalError:
        return False
