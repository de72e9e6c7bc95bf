"""Probes of issue 19, each a case that was answered wrong, now answered right over the real app
(TestClient with its lifespan; SQLite and PostgreSQL where the store is involved) or the real
`camloop serve`. docs/reliability.md lists the classes of probes, their counts and the answers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy import select

from service.labelstudio import config as lscfg
from service.labelstudio import ledger
from service.labelstudio.webhook import SECRET_HEADER, project_id_of, project_secret, webhook_key
from service.store import Item, Label, QueueEntry, Round
from service.store.db import session_scope
from tests.conftest import DASHBOARD_KEY, ENGINEER_KEY, cli_text, make_settings, write_digits

REPO = Path(__file__).resolve().parents[1]
SECRET = "probe-webhook-secret-3f9a"
SIGNING_KEY = "probe-signing-key"
HOOK = "/api/v1/webhooks/label-studio"


@pytest.fixture
def app(tmp_path, db_url, queue_prefix):
    from fastapi.testclient import TestClient

    from service.api import create_app

    root = tmp_path / "data"
    root.mkdir()
    settings = make_settings(root, db_url, queue_prefix, label_studio_webhook_secret=SecretStr(SECRET),
                             url_signing_key=SecretStr(SIGNING_KEY))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {ENGINEER_KEY}"
        yield client, settings


def _project(c, name: str, classes=("cat", "dog", "bird")) -> int:
    r = c.post("/api/v1/projects", json={"name": f"{name}-{time.monotonic_ns()}", "classes": list(classes),
                                         "config": {"pretrained": False}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


# ------------------------------------------------------------------ 1. auth switched off beside keys

def test_auth_disabled_together_with_keys_is_refused_at_settings_load(tmp_path):
    from service.settings import Settings

    for keys in ({"api_keys": "k1"}, {"dashboard_keys": "d1"}, {"api_keys": "k1", "dashboard_keys": "d1"}):
        with pytest.raises(ValidationError, match="CAMLOOP_AUTH_DISABLED=true and CAMLOOP_API_KEYS"):
            Settings(data_dir=tmp_path, auth_disabled=True, **keys)
    assert Settings(data_dir=tmp_path, auth_disabled=True).auth_disabled  # alone: a local trial
    assert Settings(data_dir=tmp_path, api_keys=" , ").split_keys(Settings(api_keys=" , ").api_keys) == frozenset()


def test_camloop_serve_refuses_auth_disabled_with_keys_with_a_clear_message(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CAMLOOP_DATA_DIR": str(tmp_path / "data"),
           "CAMLOOP_AUTH_DISABLED": "true", "CAMLOOP_API_KEYS": "some-key", "REDIS_URL": "redis://127.0.0.1:6379/0"}
    p = subprocess.run([sys.executable, "-c", "from service.cli import app; app()", "serve", "--port", "1"],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "settings are refused" in p.stderr and "CAMLOOP_AUTH_DISABLED" in p.stderr
    assert "Traceback" not in p.stderr and "some-key" not in p.stdout + p.stderr


def test_serve_warns_loudly_when_auth_is_disabled_and_more_on_a_non_loopback_host(tmp_path):
    from service.cli.server import startup_warnings
    from service.settings import Settings

    off = Settings(data_dir=tmp_path, auth_disabled=True)
    local, public = startup_warnings(off, "127.0.0.1"), startup_warnings(off, "0.0.0.0")
    assert any("CAMLOOP_AUTH_DISABLED=true" in w and "loopback" in w for w in local)
    assert any("ANYONE WHO REACHES THIS PORT" in w for w in public)
    keyed = Settings(data_dir=tmp_path, api_keys="k")
    assert startup_warnings(keyed, "127.0.0.1") == []
    assert any("CAMLOOP_METRICS_REQUIRE_KEY" in w for w in startup_warnings(keyed, "0.0.0.0"))
    assert not any("METRICS" in w for w in startup_warnings(
        Settings(data_dir=tmp_path, api_keys="k", metrics_require_key=True), "0.0.0.0"))


# ------------------------------------------------------------------ 4. who did what

def test_changed_by_is_a_keyed_hmac_not_a_guessable_sha256_prefix_of_the_key(app):
    c, settings = app
    pid = _project(c, "who")
    r = c.post(f"/api/v1/projects/{pid}/classes/cat/exclude", json={})
    assert r.status_code == 200, r.text
    shown = next(x for x in r.json()["classes"] if x["name"] == "cat")["changed_by"]
    plain = "key:" + hashlib.sha256(ENGINEER_KEY.encode()).hexdigest()[:10]
    assert shown.startswith("key:") and len(shown) == 14 and shown != plain
    # Read-only keys see it; it is stable for the server and says nothing without its secret.
    again = c.get(f"/api/v1/projects/{pid}", headers={"Authorization": f"Bearer {DASHBOARD_KEY}"}).json()
    assert next(x for x in again["classes"] if x["name"] == "cat")["changed_by"] == shown


def test_who_on_post_labels_cannot_pose_as_label_studio_or_another_key(app):
    c, settings = app
    pid = _project(c, "pose")
    write_digits(settings.data_dir, 2, "pose")
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pose"}).status_code == 202
    items = [i["id"] for i in c.get(f"/api/v1/projects/{pid}/items").json()["items"]]
    r = c.post(f"/api/v1/projects/{pid}/labels", json={"labels": [
        {"item_id": items[0], "class": "cat", "client_id": "a", "who": "label-studio agreed (cat×3)"},
        {"item_id": items[1], "class": "dog", "client_id": "b"}]})
    assert r.status_code == 201, r.text
    posed, plain = r.json()["labels"]
    assert plain["who"].startswith("key:") and len(plain["who"]) == 14
    assert posed["who"] == f"{plain['who']} as label-studio agreed (cat×3)"
    with session_scope(settings) as s:
        assert not s.scalars(select(Label.who).where(Label.project_id == pid, Label.who.like("label-studio%"))).all()


# ------------------------------------------------------------------ 5. /metrics behind a key

def test_metrics_needs_a_key_when_camloop_metrics_require_key_is_set(tmp_path, queue_prefix):
    from fastapi.testclient import TestClient

    from service.api import create_app

    for required in (False, True):
        root = tmp_path / f"d{int(required)}"
        root.mkdir()
        settings = make_settings(root, f"sqlite:///{root / 'c.db'}", queue_prefix, metrics_require_key=required)
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            c.post("/api/v1/projects", json={"name": "m", "classes": ["secret-class", "b"]},
                   headers={"Authorization": f"Bearer {ENGINEER_KEY}"})
            bare = c.get("/metrics")
            if required:
                assert bare.status_code == 401 and "secret-class" not in bare.text
                assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
            else:
                assert bare.status_code == 200
            for key in (ENGINEER_KEY, DASHBOARD_KEY):
                r = c.get("/metrics", headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200 and "camloop_" in r.text


# ------------------------------------------------------------------ 6. lenient input

def test_force_is_a_strict_boolean_and_yes_does_not_abandon_a_batch(app):
    c, settings = app
    pid = _project(c, "force")
    for bad in ("yes", "true", 1, "on", None):
        r = c.post(f"/api/v1/projects/{pid}/rounds", json={"force": bad})
        assert r.status_code == 422, (bad, r.text)
        r = c.post(f"/api/v1/projects/{pid}/rounds", json={"train_only": bad})
        assert r.status_code == 422, (bad, r.text)
    assert c.get(f"/api/v1/projects/{pid}/rounds").json()["rounds"] == []


def test_post_projects_refuses_unknown_top_level_keys_as_patch_does(app):
    c, _ = app
    r = c.post("/api/v1/projects", json={"name": "extra", "classes": ["a", "b"], "confg": {"budget": 3}})
    assert r.status_code == 422 and "confg" in r.text
    # Nothing was made: the name is still free.
    assert c.post("/api/v1/projects", json={"name": "extra", "classes": ["a", "b"]}).status_code == 201


def test_empty_registration_body_is_a_422_not_a_202_that_registers_nothing(app):
    c, _ = app
    pid = _project(c, "empty")
    for body in ({}, {"items": []}, {"split": "pool"}):
        r = c.post(f"/api/v1/projects/{pid}/items", json=body)
        assert r.status_code == 422 and "nothing to register" in r.text, (body, r.text)


@pytest.mark.parametrize("name,classes,why", [
    ("   ", ["a", "b"], "blank"),
    ("nul\x00name", ["a", "b"], "control character"),
    ("ok", ["a", "\t"], "blank"),
    ("ok", ["a", "b\x00"], "control character"),
    ("ok", ["a", "line\nbreak"], "control character"),
    ("ok", ["a", "a "], "equal but for spaces"),
    ("ok", [" a", "a", "b"], "equal but for spaces"),
])
def test_blank_control_character_and_space_twin_names_are_refused(app, name, classes, why):
    c, _ = app
    r = c.post("/api/v1/projects", json={"name": name, "classes": classes})
    assert r.status_code == 422 and why in r.json()["detail"], r.text


def test_ls_project_id_is_bounded_to_a_32_bit_id(app):
    c, _ = app
    for bad in (2**70, 2**31, 0, -1):
        r = c.post("/api/v1/projects", json={"name": f"ls{bad}", "classes": ["a", "b"],
                                             "config": {"ls_project_id": bad}})
        assert r.status_code == 422 and "ls_project_id" in r.text, (bad, r.text)
    pid = _project(c, "lsp")
    r = c.patch(f"/api/v1/projects/{pid}", json={"config": {"ls_project_id": 2**70}})
    assert r.status_code == 422, r.text


def test_a_path_component_over_255_bytes_is_a_422_and_no_traceback_logs_the_path(app, caplog):
    c, _ = app
    pid = _project(c, "long")
    long = "x" * 300
    for body in ({"folder": long}, {"folder": f"a/{long}/b"}, {"items": [{"uri": f"{long}.png"}]},
                 {"items": [{"uri": "é" * 200 + ".png"}]}):  # 400 bytes in UTF-8
        caplog.clear()
        r = c.post(f"/api/v1/projects/{pid}/items", json=body)
        assert r.status_code == 422 and "over the 255" in r.text, (body, r.text)
        assert "Traceback" not in caplog.text and long not in caplog.text


# ------------------------------------------------------------------ 7. state files

def test_state_files_are_created_readable_by_their_owner_only(tmp_path):
    from service.runtime import redis_server
    from service.settings import Settings
    from service.store.migrate import upgrade_head

    old = os.umask(0o022)  # the usual default: files 0644 unless made private
    try:
        st = Settings(data_dir=tmp_path / "photos", api_keys="k")
        upgrade_head(st)
        db = st.state_path / "camloop.db"
        state = st.state_path
        url = redis_server.start_embedded(state, own=True)
        import redis

        conn = redis.Redis.from_url(url)
        conn.set("probe", "1")
        conn.save()
    finally:
        os.umask(old)
        redis_server.shutdown_embedded()
    for f in [db, *state.glob("camloop.db-*"), state / "redis.rdb"]:
        if f.exists():
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, (f, oct(f.stat().st_mode))
    assert (state / "redis.rdb").exists() and db.exists()


def test_a_database_file_an_older_camloop_made_world_readable_is_made_private(tmp_path):
    from service.settings import Settings
    from service.store import db as store_db
    from service.store.migrate import upgrade_head

    st = Settings(data_dir=tmp_path / "old", state_dir=tmp_path / "old-state", api_keys="k")
    st.state_path.mkdir(parents=True)
    path = st.state_path / "camloop.db"
    path.write_bytes(b"")
    path.chmod(0o644)
    upgrade_head(st)
    store_db.dispose_engines()
    store_db._engines.pop(st.database_url_effective, None)  # a fresh start of the server
    path.chmod(0o644)
    store_db.get_engine(st)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ------------------------------------------------------------------ 2. and 3. the webhook

def _link(settings, pid: int, ls_pid: int, n_items: int) -> list[int]:
    """camloop project `pid` connected to Label Studio project `ls_pid`, round 1 labeling n queued items."""
    with session_scope(settings) as s:
        ledger.set_link(s, pid, ls_pid, None, 1)
        items = []
        for i in range(n_items):
            it = Item(project_id=pid, uri=f"p{pid}/{i}.png", sha256=f"{pid:08d}{i:056d}", split="pool", status="queued")
            s.add(it)
            items.append(it)
        rnd = Round(project_id=pid, number=1, state="labeling", progress={"stage": "labeling"})
        s.add(rnd)
        s.flush()
        for rank, it in enumerate(items):
            s.add(QueueEntry(round_id=rnd.id, item_id=it.id, rank=rank, pred="cat", scores={}))
        s.flush()
        return [it.id for it in items]


def _annotation(ann_id: int, ls_pid: int, item_id: int, label: str, task_id: int = 1, annotator: int = 7) -> dict:
    return {"action": "ANNOTATION_CREATED", "project": {"id": ls_pid},
            "annotation": {"id": ann_id, "task": task_id, "project": ls_pid, "completed_by": annotator,
                           "result": [{"from_name": lscfg.CLASS_FROM, "to_name": "image", "type": "choices",
                                       "value": {"choices": [label]}}]},
            "task": {"id": task_id, "project": ls_pid, "data": {lscfg.ITEM_ID: item_id, lscfg.ROUND: 1}}}


def _secret_for(ls_pid: int | None) -> str:
    """The webhook secret of a Label Studio project on the probes' server (the configured one for a
    payload that names no project)."""
    return SECRET if ls_pid is None else project_secret(webhook_key(SIGNING_KEY.encode(), SECRET), ls_pid)


def _hook(c, payload, secret: str | None = None) -> "object":
    body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    if secret is None:
        secret = _secret_for(project_id_of(payload) if isinstance(payload, dict) else None)
    return c.post(HOOK, content=body, headers={SECRET_HEADER: secret, "Content-Type": "application/json"})


def _ledger_rows(settings, *pids: int) -> dict[int, tuple]:
    """The ledger's rows of these projects (a PostgreSQL database is shared by a test session)."""
    with session_scope(settings) as s:
        return {r.annotation_id: (r.project_id, r.item_id, r.label) for r in s.execute(
            select(ledger.annotations).where(ledger.annotations.c.project_id.in_(pids)))}


def _item(settings, iid: int) -> tuple:
    with session_scope(settings) as s:
        it = s.get(Item, iid)
        return it.status, it.label


def test_webhook_of_ls_project_a_naming_an_item_of_project_b_stores_and_changes_nothing(app):
    c, settings = app
    pa, pb = _project(c, "lsA"), _project(c, "lsB")
    _link(settings, pa, 9101, 1)
    b_items = _link(settings, pb, 9202, 1)
    a1, a2 = 100_000 + pb * 10 + 1, 100_000 + pb * 10 + 2  # unique in a PostgreSQL database shared by the session
    r = _hook(c, _annotation(a1, 9202, b_items[0], "cat"))
    assert r.status_code == 200 and r.json()["labeled"] == [b_items[0]], r.text
    before_ledger, before_item = _ledger_rows(settings, pa, pb), _item(settings, b_items[0])
    assert before_item == ("labeled", "cat")
    # A's vote on B's item: refused, nothing stored (no tie later, no retraction).
    r = _hook(c, _annotation(a2, 9101, b_items[0], "dog", annotator=8))
    assert r.status_code == 422 and "not in camloop project" in r.json()["detail"], r.text
    # A's webhook reusing B's annotation id: refused too.
    r = _hook(c, _annotation(a1, 9101, b_items[0], "dog"))
    assert r.status_code == 422, r.text
    # A's deletion of B's annotation: A has no such annotation; B's stays.
    r = _hook(c, {"action": "ANNOTATIONS_DELETED", "project": {"id": 9101}, "annotations": [{"id": a1}]})
    assert r.status_code == 200 and r.json()["deleted"] == 0, r.text
    assert _ledger_rows(settings, pa, pb) == before_ledger and _item(settings, b_items[0]) == before_item
    # B's own deletion still works: its label is taken back.
    r = _hook(c, {"action": "ANNOTATIONS_DELETED", "project": {"id": 9202}, "annotations": [{"id": a1}]})
    assert r.status_code == 200 and r.json()["deleted"] == 1, r.text
    assert _item(settings, b_items[0])[1] is None


def test_each_label_studio_project_has_its_own_webhook_secret(app, caplog):
    """A webhook signed with Label Studio project A's secret that names project B is 403 and stores
    nothing; B's own secret works; the shared secret of old is refused with a log line."""
    c, settings = app
    pa, pb = _project(c, "keyA"), _project(c, "keyB")
    ls_a, ls_b = 60_000 + pa * 10, 60_000 + pb * 10 + 1  # unique in a PostgreSQL database shared by the session
    _link(settings, pa, ls_a, 1)
    b_item = _link(settings, pb, ls_b, 1)[0]
    assert _secret_for(ls_a) != _secret_for(ls_b) and SECRET not in (_secret_for(ls_a), _secret_for(ls_b))
    ann = 200_000 + pb * 10
    vote = _annotation(ann, ls_b, b_item, "cat")
    for secret in (_secret_for(ls_a), SECRET, _secret_for(ls_b)[:-1], _secret_for(ls_b).upper()):
        with caplog.at_level(logging.WARNING, logger="camloop.labelstudio"):
            r = _hook(c, vote, secret=secret)
        assert r.status_code == 403 and secret not in r.text, (secret, r.text)
        assert _ledger_rows(settings, pa, pb) == {} and _item(settings, b_item) == ("queued", None)
    # The shared secret of old: refused, and the log says why and what heals it.
    assert any("old shared secret" in m and str(ls_b) in m for m in caplog.messages), caplog.messages
    assert not any(SECRET in m for m in caplog.messages)
    # A's secret on a deletion naming B: refused too.
    r = _hook(c, {"action": "ANNOTATIONS_DELETED", "project": {"id": ls_b}, "annotations": [{"id": ann}]},
              secret=_secret_for(ls_a))
    assert r.status_code == 403, r.text
    # No header at all: 401.
    assert c.post(HOOK, content=json.dumps(vote)).status_code == 401
    # B's own secret: stored and labeled.
    r = _hook(c, vote)
    assert r.status_code == 200 and r.json()["labeled"] == [b_item], r.text
    assert _item(settings, b_item) == ("labeled", "cat")
    # And B's secret naming A is refused just the same.
    r = _hook(c, {"action": "ANNOTATIONS_DELETED", "project": {"id": ls_a}, "annotations": [{"id": ann}]},
              secret=_secret_for(ls_b))
    assert r.status_code == 403 and _item(settings, b_item) == ("labeled", "cat"), r.text


def test_webhook_fields_of_the_wrong_type_are_422_not_500(app):
    c, settings = app
    pid = _project(c, "types")
    items = _link(settings, pid, 9303, 1)
    good = _annotation(100_000 + pid * 10, 9303, items[0], "cat")
    cases = [("annotation", "task", "x"), ("annotation", "task", [1]), ("annotation", "project", "x"),
             ("annotation", "project", {"a": 1}), ("annotation", "completed_by", "bob"),
             ("annotation", "completed_by", [1]), ("annotation", "id", "x"), ("annotation", "id", 2**70),
             ("annotation", "task", 2**70), ("task", "data", "text"), ("task", "data", [1, 2])]
    for where, key, value in cases:
        payload = json.loads(json.dumps(good))
        payload[where][key] = value
        r = _hook(c, payload)
        assert r.status_code == 422, (where, key, value, r.status_code, r.text)
    for rnd in ("one", [1], 2**70):
        payload = json.loads(json.dumps(good))
        payload["task"]["data"][lscfg.ROUND] = rnd
        assert _hook(c, payload).status_code == 422, rnd
    for project in ("x", 2**70, True):
        payload = json.loads(json.dumps(good))
        payload["project"] = {"id": project}
        payload["annotation"]["project"] = payload["task"]["project"] = project
        assert _hook(c, payload).status_code in (404, 422), project
    for ids in ([{"id": "x"}], [{"id": [1]}], [{"id": 2**70}], [{}], ["x"]):
        r = _hook(c, {"action": "ANNOTATIONS_DELETED", "project": {"id": 9303}, "annotations": ids})
        assert r.status_code == 400, (ids, r.text)
    assert _ledger_rows(settings, pid) == {}


def test_a_deeply_nested_webhook_body_is_a_400_not_a_recursion_error(app):
    c, _ = app
    for depth in (100_000, 1_000_000):
        r = _hook(c, "[" * depth + "]" * depth)
        assert r.status_code == 400, r.text
        r = _hook(c, '{"action": "ANNOTATION_CREATED", "annotation": ' + '{"a": ' * depth + "1" + "}" * depth + "}")
        assert r.status_code == 400, r.text


# ------------------------------------------------------------------ 8. the webhook off the event loop

def test_healthz_answers_while_a_burst_of_webhooks_is_processed(tmp_path, queue_prefix):
    """Each webhook holds the store for a while (a slow handler stands for a slow database); with
    the handler off the event loop, /healthz answers meanwhile. On the loop, /healthz waited for
    every webhook before it: here, 8 × 0.5 s."""
    import httpx
    import uvicorn

    from service.api import create_app
    from service.labelstudio.plugin import LabelStudioPlugin
    from service.runtime.host import free_port

    slow_s, burst = 0.5, 8
    real = LabelStudioPlugin.handle_webhook

    def slow(self, body, headers):
        time.sleep(slow_s)  # the database's time, on whatever thread runs the handler
        return real(self, body, headers)

    root = tmp_path / "data"
    root.mkdir()
    settings = make_settings(root, f"sqlite:///{tmp_path / 'c.db'}", queue_prefix,
                             label_studio_webhook_secret=SecretStr(SECRET))
    LabelStudioPlugin.handle_webhook = slow
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, reconcile=False), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        posted: list[int] = []

        def post():
            r = httpx.post(base + HOOK, content=b'{"action": "PROJECT_UPDATED"}', headers={SECRET_HEADER: SECRET},
                           timeout=60)
            posted.append(r.status_code)

        senders = [threading.Thread(target=post) for _ in range(burst)]
        for t in senders:
            t.start()
        time.sleep(slow_s / 2)  # the burst is in the handlers now
        t0 = time.monotonic()
        assert httpx.get(base + "/healthz", timeout=60).status_code == 200
        waited = time.monotonic() - t0
        for t in senders:
            t.join(timeout=60)
        assert posted == [200] * burst
        # Generous: on the event loop /healthz waited for the whole burst (≥ burst × slow_s = 4 s).
        assert waited < burst * slow_s / 2, waited
    finally:
        LabelStudioPlugin.handle_webhook = real
        server.should_exit = True
        thread.join(timeout=15)


# ------------------------------------------------------------------ 10. camloop simulate takes no nonsense

def _simulate(*args: str):
    from typer.testing import CliRunner

    from service.cli import app as cli

    return CliRunner().invoke(cli, ["simulate", "--model", "small-cnn", *args])


def _png(path: Path, value: int = 0) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)


def test_simulate_on_a_camloop_demo_folder_names_images_dataset_instead(tmp_path):
    demo = tmp_path / "camloop-demo"
    for sub in ("artifacts", "logs", "report"):
        _png(demo / sub / "x.png")
    _png(demo / "images" / "digits" / "pool" / "0" / "a.png")
    out = tmp_path / "x.json"
    res = _simulate("--folder", str(demo), "--out", str(out))
    assert res.exit_code == 2 and "is a camloop folder" in cli_text(res.output), res.output
    assert "images/digits" in res.output.replace("\n", "").replace(" ", "").replace("│", "") or \
        str(demo / "images" / "digits") in res.output, res.output
    assert not out.exists()


def test_simulate_on_class_folders_of_under_two_images_each_is_refused(tmp_path):
    folder = tmp_path / "thin"
    for c in ("a", "b", "c"):
        _png(folder / c / "only.png")
    res = _simulate("--folder", str(folder), "--out", str(tmp_path / "x.json"))
    assert res.exit_code == 2 and "under two images each" in cli_text(res.output), res.output


def test_simulate_exclusion_options_without_exclusion_are_refused(tmp_path):
    out = tmp_path / "x.json"
    for args in (("--exclude-after", "2"), ("--exclude-below", "0.3"), ("--exclusion-rule", "threshold")):
        res = _simulate("--dataset", "digits", "--no-exclusion", *args, "--out", str(out))
        assert res.exit_code == 2 and "act only with --exclusion" in cli_text(res.output), (args, res.output)
        res = _simulate("--dataset", "digits", *args, "--out", str(out))  # the default: off
        assert res.exit_code == 2 and "act only with --exclusion" in cli_text(res.output), (args, res.output)
    assert not out.exists()


def test_simulate_prints_one_line_per_round_when_stdout_is_not_a_terminal(tmp_path):
    out = tmp_path / "x.json"
    res = _simulate("--dataset", "digits", "--strategy", "random", "--epochs", "1", "--initial", "100",
                    "--budget", "50", "--rounds", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("round ")]
    assert [ln.split(":")[0] for ln in lines] == ["round 1/2", "round 2/2"], res.output
    assert "test accuracy" in lines[0] and out.exists()
