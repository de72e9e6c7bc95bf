"""The bridge wired into camloop's real store and app, against a real Label Studio 1.23.2.

camloop's app (create_app, which mounts the Label Studio routes) runs under uvicorn on a free port so Label
Studio's webhooks really cross HTTP; it can be stopped ("camloop down") while experts keep
labeling, and Label Studio itself is killed and restarted mid-round. Expert answers are
created through Label Studio's own API (POST /api/tasks/{id}/annotations/) on behalf of
users created through its API. The store is checked directly: items' labels, the
append-only labels table, the bridge's ledger.
"""
from __future__ import annotations

import hashlib
import io
import threading
import time

import httpx
import pytest
import uvicorn
from PIL import Image
from sqlalchemy import func, select

from service.api.app import create_app
from service.store.db import session_scope
from service.labelstudio import config as cfg
from service.labelstudio import ledger
from service.labelstudio.plugin import LabelStudioPlugin
from service.labelstudio.routes import FILES_PREFIX, WEBHOOK_PATH
from service.labelstudio.webhook import SECRET_HEADER
from service.store.migrate import upgrade_head
from service.core.projects import create_project
from service.settings import Settings
from service.core.signing import UrlSigner
from service.store import Item, Label, QueueEntry, Round
from tests.labelstudio_server import free_port, label_studio  # noqa: F401  (session fixture)

SECRET = "hook-secret-for-tests"
API_KEY = "engineer-key-for-tests"
CLASSES = ["cat", "dog", "bird"]


class App:
    """camloop's API in a thread; stop() and start() again on the same port = a camloop restart."""

    def __init__(self, settings: Settings, port: int):
        self.settings, self.port = settings, port
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        # The tests poll explicitly (interval 0 = no poller thread), to see each pass's counts.
        app = create_app(self.settings.model_copy(update={"label_studio_poll_interval_s": 0}), reconcile=False)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "camloop app did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


# Every guess pre-selected and none hidden (the queue's probabilities are 0.65–0.9): what these
# tests check is the bridge; the guess modes have their own tests (test_labelstudio_trust.py).
PRESELECT_ALL = {"guess": {"threshold": 0.5, "hidden_share": 0.0}}


def _make_project(settings: Settings, name: str, n: int, config: dict | None = None) -> tuple[int, list[int]]:
    """A camloop project whose round 1 is in `labeling` with n queued items (rank = list order)."""
    img_dir = settings.data_dir / name
    img_dir.mkdir(parents=True)
    with session_scope(settings) as s:
        project = create_project(s, name, CLASSES, PRESELECT_ALL if config is None else config)
        items = []
        for i in range(n):
            data = _png((30 * i % 256, 0, 255 - 30 * i % 256))
            (img_dir / f"{i}.png").write_bytes(data)
            it = Item(project_id=project.id, uri=f"{name}/{i}.png", sha256=hashlib.sha256(data).hexdigest(),
                      split="pool", status="queued")
            s.add(it)
            items.append(it)
        rnd = Round(project_id=project.id, number=1, state="labeling", progress={"stage": "labeling"})
        s.add(rnd)
        s.flush()
        # Priority order deliberately differs from id order: the LS queue must follow rank.
        ranked = items[::-1]
        for rank, it in enumerate(ranked):
            s.add(QueueEntry(round_id=rnd.id, item_id=it.id, rank=rank, pred=CLASSES[rank % 3],
                             scores={"least_confidence": round(0.1 + 0.05 * rank, 4), "margin": 0.5}))
        return project.id, [it.id for it in ranked]


@pytest.fixture(scope="module")
def env(label_studio, tmp_path_factory):
    url, token = label_studio
    data = tmp_path_factory.mktemp("camloop-data")
    port = free_port()
    settings = Settings(data_dir=data, label_studio_url=url, label_studio_token=token,
                        label_studio_webhook_secret=SECRET, public_base_url=f"http://127.0.0.1:{port}",
                        url_signing_key="test-signing-key", label_studio_poll_interval_s=3600,
                        api_keys=API_KEY)
    upgrade_head(settings)
    app = App(settings, port)
    app.start()
    ls = httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=30)
    users = []
    for i in range(3):
        r = ls.post("/api/users/", json={"email": f"expert{i}-{port}@camloop.test", "username": f"expert{i}-{port}",
                                         "first_name": f"Expert {i}", "password": "not-used-here-1"})
        assert r.status_code == 201, r.text
        users.append(r.json()["id"])
    # The bridge as the tests call it: a plug-in of its own on the app's store and settings.
    yield dict(settings=settings, app=app, ls=ls, users=users, server=label_studio, bridge=LabelStudioPlugin(settings))
    app.stop()
    ls.close()


def ls_tasks(env, ls_pid: int) -> list[dict]:
    r = env["ls"].get("/api/tasks", params={"project": ls_pid, "fields": "all", "page_size": 100})
    assert r.status_code == 200, r.text
    return r.json()["tasks"]


def annotate(env, task_id: int, label: str | None, user: int, *, wrong=False, skip=False) -> int:
    """What the labeling UI posts when an expert submits (or skips) a task."""
    result = []
    if label is not None:
        result.append({"from_name": cfg.CLASS_FROM, "to_name": cfg.IMAGE, "type": "choices", "value": {"choices": [label]}})
    if wrong:
        result.append({"from_name": cfg.WRONG_FROM, "to_name": cfg.HEATMAP, "type": "choices",
                       "value": {"choices": [cfg.WRONG_VALUE]}})
    r = env["ls"].post(f"/api/tasks/{task_id}/annotations/",
                       json={"result": result, "was_cancelled": skip, "completed_by": user, "lead_time": 4.2})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def item_state(env, item_id: int) -> tuple[str | None, str]:
    with session_scope(env["settings"]) as s:
        it = s.get(Item, item_id)
        return it.label, it.status


def n_labels(env, item_id: int) -> int:
    with session_scope(env["settings"]) as s:
        return s.scalar(select(func.count()).select_from(Label).where(Label.item_id == item_id))


def n_ledger(env, project_id: int) -> int:
    with session_scope(env["settings"]) as s:
        return s.scalar(select(func.count()).select_from(ledger.annotations)
                        .where(ledger.annotations.c.project_id == project_id))


def test_round_batch_pushed_in_priority_order_with_predictions_and_signed_media(env):
    st = env["settings"]
    pid, ranked = _make_project(st, "order", 6)
    ls_pid = env["bridge"].connect_project(pid)
    assert env["bridge"].connect_project(pid) == ls_pid  # attach again: same project, webhook not doubled
    hooks = env["ls"].get("/api/webhooks/", params={"project": ls_pid}).json()
    assert [h["url"] for h in hooks] == [f"{env['app'].url}{WEBHOOK_PATH}"]
    assert hooks[0]["headers"] == {SECRET_HEADER: env["bridge"].webhook_secret(ls_pid)}  # its own, not SECRET
    project = env["ls"].get(f"/api/projects/{ls_pid}").json()
    assert project["sampling"] == "Sequential sampling" and project["maximum_annotations"] == 1
    assert project["label_config"] == cfg.labeling_config(CLASSES)

    # The labeling hook, a sync and a retry racing: the batch is imported once.
    results, barrier = [], threading.Barrier(6)

    def push():
        barrier.wait()
        results.append(env["bridge"].push_round(pid, 1))

    threads = [threading.Thread(target=push) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mapping = results[0]
    assert len(results) == 6 and all(r == mapping for r in results)
    assert env["bridge"].push_round(pid, 1) == mapping  # a retried hook imports nothing twice
    tasks = ls_tasks(env, ls_pid)
    assert len(tasks) == 6
    tasks.sort(key=lambda t: t["id"])
    assert [t["data"][cfg.ITEM_ID] for t in tasks] == ranked  # ascending task id = camloop's priority
    assert [mapping[i] for i in ranked] == [t["id"] for t in tasks]
    for rank, t in enumerate(tasks):
        (pred,) = t["predictions"]
        p = 1 - (0.1 + 0.05 * rank)
        assert pred["model_version"] == cfg.MODEL_VERSION and pred["score"] == pytest.approx(p)
        assert pred["result"][0]["value"]["choices"] == [CLASSES[rank % 3]]
        assert t["data"][cfg.RANK] == rank and t["data"][cfg.ROUND] == 1
        # What the expert reads: the guess and its probability, nothing internal.
        assert t["data"][cfg.GUESS] == f"{CLASSES[rank % 3]}, {round(100 * p)} %, pre-selected: change it if it is wrong"
    assert env["ls"].get(f"/api/projects/{ls_pid}").json()["model_version"] == cfg.MODEL_VERSION
    # What the first expert to open the project is served: the top of camloop's queue.
    nxt = env["ls"].get(f"/api/projects/{ls_pid}/next")
    assert nxt.status_code == 200 and nxt.json()["id"] == tasks[0]["id"]

    # The image URL in the task works from a browser with no camloop key, and only as signed.
    img_url = tasks[0]["data"][cfg.IMAGE]
    r = httpx.get(img_url)
    # The 8-pixel file as the expert is shown it: each pixel a 28 × 28 block (224 px, the overlay's size).
    shown = Image.open(io.BytesIO(r.content))
    assert r.status_code == 200 and shown.size == (224, 224)
    assert shown.resize((8, 8), Image.NEAREST).tobytes() == Image.open(st.data_dir / "order/5.png").convert("RGB").tobytes()
    assert httpx.get(img_url.replace("sig=", "sig=0")).status_code == 403
    assert httpx.get(img_url.split("?")[0]).status_code == 403
    assert httpx.get(img_url.replace("order/5.png", "order/4.png")).status_code == 403
    signer = UrlSigner.from_settings(st)
    assert httpx.get(signer.sign(f"{FILES_PREFIX}/order/5.png", ttl_s=-1)).status_code == 403  # expired
    (st.data_dir.parent / "outside.txt").write_text("secret")
    r = httpx.get(signer.sign(f"{FILES_PREFIX}/../outside.txt"))
    assert r.status_code in (400, 404) and "secret" not in r.text
    (st.data_dir / "order/4.png").unlink()  # an image removed after it was queued
    r = httpx.get(tasks[1]["data"][cfg.IMAGE])
    assert r.status_code == 404 and "no longer exists" in r.json()["detail"]
    # The heatmap URL is signed too; with no scoring run yet it says why there is none.
    r = httpx.get(tasks[0]["data"][cfg.HEATMAP])
    assert r.status_code == 404 and "item" in r.json()["detail"]
    assert httpx.get(tasks[0]["data"][cfg.HEATMAP].replace("sig=", "sig=1")).status_code == 403


def _vote(ls_pid: int, task_id: int, item_id: int, ann_id: int, user: int, label: str = "cat") -> dict:
    """A webhook body as Label Studio sends it for a new annotation."""
    return {"action": "ANNOTATION_CREATED", "project": {"id": ls_pid},
            "annotation": {"id": ann_id, "task": task_id, "project": ls_pid, "completed_by": user,
                           "result": [{"from_name": cfg.CLASS_FROM, "to_name": cfg.IMAGE, "type": "choices",
                                       "value": {"choices": [label]}}]},
            "task": {"id": task_id, "project": ls_pid, "data": {cfg.ITEM_ID: item_id, cfg.ROUND: 1}}}


def test_each_label_studio_project_has_its_own_webhook_secret_and_an_old_shared_one_is_rekeyed_at_poll(env):
    st, app, ls = env["settings"], env["app"], env["ls"]
    u1 = env["users"][0]
    pa, _ = _make_project(st, "keyA", 1)
    pb, ranked = _make_project(st, "keyB", 3)
    ls_a, ls_b = env["bridge"].connect_project(pa), env["bridge"].connect_project(pb)
    secret_a, secret_b = env["bridge"].webhook_secret(ls_a), env["bridge"].webhook_secret(ls_b)
    assert len({secret_a, secret_b, SECRET}) == 3
    hook_b = ls.get("/api/webhooks/", params={"project": ls_b}).json()
    assert [h["headers"] for h in hook_b] == [{SECRET_HEADER: secret_b}]
    assert [h["headers"] for h in ls.get("/api/webhooks/", params={"project": ls_a}).json()] == \
        [{SECRET_HEADER: secret_a}]
    mapping = env["bridge"].push_round(pb, 1)
    t = [mapping[i] for i in ranked]

    # Whoever read A's webhook forges an answer for B: refused, nothing stored.
    url = f"{app.url}{WEBHOOK_PATH}"
    forged = _vote(ls_b, t[0], ranked[0], 987_654_321, u1)
    for secret in (secret_a, SECRET):
        r = httpx.post(url, json=forged, headers={SECRET_HEADER: secret})
        assert r.status_code == 403 and secret not in r.text, r.text
    assert n_ledger(env, pb) == 0 and item_state(env, ranked[0]) == (None, "queued")

    # B's own webhook, posted by Label Studio as the expert answers: counted at once.
    annotate(env, t[0], "cat", u1)
    assert item_state(env, ranked[0]) == ("cat", "labeled") and n_ledger(env, pb) == 1

    # An installation from before: B's webhook still carries the shared secret. Its deliveries
    # are refused (the answer waits for the poll) ...
    r = ls.patch(f"/api/webhooks/{hook_b[0]['id']}/", json={"headers": {SECRET_HEADER: SECRET}})
    assert r.status_code == 200, r.text
    annotate(env, t[1], "dog", u1)
    assert item_state(env, ranked[1]) == (None, "queued") and n_ledger(env, pb) == 1
    # ... until the upgraded camloop's first poll re-keys the webhook and recovers the answer.
    upgraded = LabelStudioPlugin(st)
    res = upgraded.poll_project(pb)
    assert res["created"] == 1 and item_state(env, ranked[1]) == ("dog", "labeled")
    after = ls.get("/api/webhooks/", params={"project": ls_b}).json()
    assert [(h["id"], h["headers"]) for h in after] == [(hook_b[0]["id"], {SECRET_HEADER: secret_b})]
    upgraded.poll_project(pb)  # idempotent: still the one webhook, same secret
    assert ls.get("/api/webhooks/", params={"project": ls_b}).json() == after
    # From then on the webhook is live again.
    annotate(env, t[2], "bird", u1)
    assert item_state(env, ranked[2]) == ("bird", "labeled") and n_ledger(env, pb) == 3
    # A webhook put back by hand after this process re-keyed it: an engineer's sync puts it right.
    assert ls.patch(f"/api/webhooks/{hook_b[0]['id']}/", json={"headers": {SECRET_HEADER: SECRET}}).status_code == 200
    upgraded.sync_project(pb)
    assert [h["headers"] for h in ls.get("/api/webhooks/", params={"project": ls_b}).json()] == \
        [{SECRET_HEADER: secret_b}]


def test_creating_a_project_over_rest_creates_or_attaches_its_label_studio_project(env):
    api = httpx.Client(base_url=env["app"].url + "/api/v1", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    r = api.post("/projects", json={"name": "rest-made", "classes": CLASSES})
    assert r.status_code == 201 and r.json()["warnings"] == [], r.text
    pid = r.json()["id"]
    with session_scope(env["settings"]) as s:
        ls_pid = ledger.get_link(s, pid).ls_project_id
    made = env["ls"].get(f"/api/projects/{ls_pid}").json()
    assert made["title"] == "camloop: rest-made" and made["label_config"] == cfg.labeling_config(CLASSES)
    # A project someone already made in Label Studio is attached by id instead of a new one made.
    theirs = env["ls"].post("/api/projects/", json={"title": "made by hand"}).json()["id"]
    r = api.post("/projects", json={"name": "rest-attached", "classes": CLASSES, "config": {"ls_project_id": theirs}})
    assert r.status_code == 201 and r.json()["warnings"] == [], r.text
    with session_scope(env["settings"]) as s:
        assert ledger.get_link(s, r.json()["id"]).ls_project_id == theirs
    assert env["ls"].get(f"/api/projects/{theirs}").json()["label_config"] == cfg.labeling_config(CLASSES)


def test_webhook_and_poll_into_the_store_nothing_lost_nothing_twice(env):
    st, app = env["settings"], env["app"]
    u1, u2, _ = env["users"]
    pid, ranked = _make_project(st, "flow", 8)
    ls_pid = env["bridge"].connect_project(pid)
    mapping = env["bridge"].push_round(pid, 1)
    t = [mapping[i] for i in ranked]

    # Live webhook: the store has the label as soon as Label Studio answered the expert.
    a0 = annotate(env, t[0], "cat", u1, wrong=True)
    assert item_state(env, ranked[0]) == ("cat", "labeled") and n_labels(env, ranked[0]) == 1
    # The poll sees the same annotation: counted once.
    res = env["bridge"].poll_project(pid)
    assert (res["created"], res["updated"], res["deleted"]) == (0, 0, 0) and res["unchanged"] == 1
    assert n_labels(env, ranked[0]) == 1
    # An edit replaces the vote (the labels table keeps the history, the item takes the new label).
    r = env["ls"].patch(f"/api/annotations/{a0}/", json={"result": [
        {"from_name": cfg.CLASS_FROM, "to_name": cfg.IMAGE, "type": "choices", "value": {"choices": ["dog"]}}]})
    assert r.status_code == 200, r.text
    assert item_state(env, ranked[0]) == ("dog", "labeled") and n_labels(env, ranked[0]) == 2

    # Webhook requests that are not Label Studio's are refused, with a reason.
    hook = f"{app.url}{WEBHOOK_PATH}"
    assert httpx.post(hook, content=b"{}").status_code == 401
    assert httpx.post(hook, content=b"{}", headers={SECRET_HEADER: "guess"}).status_code == 403
    r = httpx.post(hook, content=b"{oops", headers={SECRET_HEADER: SECRET})
    assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]

    # A class that is not in the project (Label Studio accepts it): stored for review, not a label.
    annotate(env, t[1], "zebra", u1)
    assert item_state(env, ranked[1]) == (None, "queued")
    assert n_ledger(env, pid) == 2

    # camloop goes down; experts keep working: a new answer, a skip, an edit, a delete.
    app.stop()
    annotate(env, t[2], "bird", u1)
    annotate(env, t[3], None, u1, skip=True)
    a4 = annotate(env, t[4], "cat", u2)
    r = env["ls"].patch(f"/api/annotations/{a4}/", json={"result": [
        {"from_name": cfg.CLASS_FROM, "to_name": cfg.IMAGE, "type": "choices", "value": {"choices": ["bird"]}}]})
    assert r.status_code == 200
    assert env["ls"].delete(f"/api/annotations/{a0}/").status_code == 204
    app.start()  # camloop restarts; the missed webhooks are gone for good
    assert item_state(env, ranked[2]) == (None, "queued") and item_state(env, ranked[0]) == ("dog", "labeled")

    res = env["bridge"].poll_project(pid)
    assert (res["created"], res["deleted"]) == (3, 1), res
    assert item_state(env, ranked[0]) == (None, "queued")      # its only vote was deleted: taken back
    assert item_state(env, ranked[2]) == ("bird", "labeled")
    assert item_state(env, ranked[3]) == (None, "skipped")     # skipped: recorded, no label, not re-queued
    assert item_state(env, ranked[4]) == ("bird", "labeled")   # the edited answer, once
    assert n_labels(env, ranked[4]) == 1
    assert any("zebra" in p for p in res["problems"])
    # A second poll finds nothing new: every annotation counted exactly once.
    again = env["bridge"].poll_project(pid)
    assert (again["created"], again["updated"], again["deleted"]) == (0, 0, 0)
    assert again["unchanged"] == n_ledger(env, pid) == 4  # zebra, bird, skip, cat→bird
    with session_scope(st) as s:
        # item 0: cat then dog (history kept); items 2 and 4: bird each
        assert s.scalar(select(func.count()).select_from(Label).where(Label.project_id == pid)) == 4
    rv = env["bridge"].review(pid)
    assert {r["item_id"]: r["status"] for r in rv["review"]} == {ranked[1]: "unusable"}


def test_kill_and_restart_label_studio_and_camloop_mid_round(env):
    st, app, server = env["settings"], env["app"], env["server"]
    u1, u2, _ = env["users"]
    pid, ranked = _make_project(st, "restart", 4)
    env["bridge"].connect_project(pid)
    mapping = env["bridge"].push_round(pid, 1)
    t = [mapping[i] for i in ranked]
    annotate(env, t[0], "dog", u1)                       # delivered by webhook
    assert item_state(env, ranked[0]) == ("dog", "labeled")

    server.kill()                                        # Label Studio crashes mid-round
    with pytest.raises(Exception):
        env["bridge"].poll_project(pid)                            # the poll fails loudly, and deletes nothing
    assert item_state(env, ranked[0]) == ("dog", "labeled")
    app.stop()                                           # and camloop goes down too
    server.start()                                       # Label Studio comes back on the same data
    annotate(env, t[1], "cat", u2)                       # answered while camloop is still down
    app.start()
    res = env["bridge"].poll_project(pid)
    assert (res["created"], res["updated"], res["deleted"], res["unchanged"]) == (1, 0, 0, 1)
    assert item_state(env, ranked[1]) == ("cat", "labeled")
    annotate(env, t[2], "bird", u1)                      # webhooks flow again after both restarts
    assert item_state(env, ranked[2]) == ("bird", "labeled")
    assert env["bridge"].poll_project(pid)["created"] == 0
    assert n_ledger(env, pid) == 3 and all(n_labels(env, i) == 1 for i in ranked[:3])
    # The batch is not fully labeled yet: one task is still open in Label Studio.
    assert env["bridge"].poll_project(pid)["open_tasks"] == 1


def test_three_experts_majority_tie_and_per_class_agreement(env):
    st = env["settings"]
    u = env["users"]
    pid, ranked = _make_project(st, "panel", 4)
    ls_pid = env["bridge"].connect_project(pid, maximum_annotations=3)
    assert env["ls"].get(f"/api/projects/{ls_pid}").json()["maximum_annotations"] == 3
    mapping = env["bridge"].push_round(pid, 1)
    t = [mapping[i] for i in ranked]
    votes = {0: ["cat", "cat", "dog"], 1: ["cat", "dog", "bird"], 2: ["dog", "dog", "dog"], 3: ["bird", "bird", None]}
    for k, labels in votes.items():
        for j, lab in enumerate(labels):
            annotate(env, t[k], lab, u[j], skip=lab is None, wrong=(k == 2 and j == 0))
            if j == 0:  # one expert of three is not a label yet
                assert item_state(env, ranked[k]) == (None, "queued")
    assert item_state(env, ranked[0]) == ("cat", "labeled")   # majority 2:1, flagged for review
    assert item_state(env, ranked[1]) == (None, "queued")     # three-way tie: no label until someone decides
    assert item_state(env, ranked[2]) == ("dog", "labeled")   # unanimous
    assert item_state(env, ranked[3]) == ("bird", "labeled")  # 2 votes + 1 skip
    rv = env["bridge"].review(pid)
    assert {r["item_id"]: r["status"] for r in rv["review"]} == {ranked[0]: "majority", ranked[1]: "tie"}
    ag = rv["agreement"]
    assert ag["items_with_overlap"] == 4
    # per item observed agreement: 1/3, 0, 1, 1 → 7/12
    assert ag["percent_agreement"] == pytest.approx(7 / 12)
    # cat: Σ n(n−1) = 2 + 0, Σ n(N−1) = 2·2 + 1·2 → 2/6; dog: (0 + 0 + 6) / (1·2 + 1·2 + 3·2) = 6/10
    assert ag["per_class"]["cat"]["percent_agreement"] == pytest.approx(2 / 6)
    assert ag["per_class"]["dog"]["percent_agreement"] == pytest.approx(6 / 10)
    assert ag["per_class"]["bird"]["percent_agreement"] == pytest.approx(2 / 4)  # (0 + 2) / (1·2 + 2·1)
    assert ag["per_class"]["dog"]["wrong_region_rate"] == pytest.approx(1 / 5)
    assert ag["fleiss_kappa"] is not None and len(ag["pairs"]) == 3
    # The poll agrees with what the webhooks delivered.
    res = env["bridge"].poll_project(pid)
    assert (res["created"], res["updated"], res["deleted"], res["unchanged"]) == (0, 0, 0, 12)
    assert res["open_tasks"] == 0


def test_wrong_region_votes_are_filed_under_the_class_the_model_guessed(env):
    """The checkbox judges the Grad-CAM map beside the image, the map of the model's guess: the
    votes count under the guessed class, with the experts' answers beside them, whatever the
    experts answered. Real annotations through Label Studio, read back by webhook and poll."""
    from service.core.metrics import project_metrics

    st, u = env["settings"], env["users"]
    pid, ranked = _make_project(st, "wrongregion", 6)   # guesses by rank: cat, dog, bird, cat, dog, bird
    env["bridge"].connect_project(pid, maximum_annotations=2)
    mapping = env["bridge"].push_round(pid, 1)
    t = [mapping[i] for i in ranked]
    # (expert 0's answer, wrong region?), (expert 1's answer, wrong region?) per rank
    answers = {0: [("dog", True), ("dog", True)],      # guessed cat, it is a dog, the map was wrong
               1: [("dog", False), ("dog", True)],     # guessed dog, right, one expert disliked the map
               2: [("cat", True), (None, False)],      # guessed bird; a skip counts nothing
               3: [("cat", False), ("cat", False)],
               4: [("bird", True), ("bird", False)],
               5: [("bird", False), ("bird", False)]}
    for k, votes in answers.items():
        for j, (label, wrong) in enumerate(votes):
            annotate(env, t[k], label, u[j], wrong=wrong, skip=label is None)
    assert env["bridge"].poll_project(pid)["created"] == 0  # the webhooks brought every one
    with session_scope(st) as s:
        from service.store import Project
        pc = project_metrics(s, s.get(Project, pid))["per_class"]
    assert {c: (pc[c]["guessed_votes"], pc[c]["wrong_region_votes"]) for c in CLASSES} == {
        "cat": (4, 2), "dog": (4, 2), "bird": (3, 1)}
    assert pc["cat"]["wrong_region_by_expert_class"] == {"dog": 2}
    assert pc["dog"]["wrong_region_by_expert_class"] == {"dog": 1, "bird": 1}
    assert pc["bird"]["wrong_region_by_expert_class"] == {"cat": 1}
    assert pc["cat"]["wrong_region_rate"] == pytest.approx(2 / 4)
    # expert_votes stay what they were: answers of that class.
    assert {c: pc[c]["expert_votes"] for c in CLASSES} == {"cat": 3, "dog": 4, "bird": 4}


def test_the_experts_are_told_between_batches_and_the_note_goes_when_the_batch_arrives(env):
    from service.labelstudio.announce import preparing_text

    st = env["settings"]
    pid, _ = _make_project(st, "told", 2)
    ls_pid = env["bridge"].connect_project(pid)
    own = "<p>Count a 7 with a bar as a 7.</p>"
    env["ls"].patch(f"/api/projects/{ls_pid}", json={"expert_instruction": own})
    note = preparing_text(1, 40, 100)
    assert env["bridge"].announce(pid, note) and env["bridge"].announce(pid, note)  # again: nothing new
    project = env["ls"].get(f"/api/projects/{ls_pid}").json()
    assert project["expert_instruction"].count(note) == 1 and own in project["expert_instruction"]
    assert project["show_instruction"] is True  # the labeling stream opens with it
    env["bridge"].push_round(pid, 1)  # the batch is imported: the note goes, the engineer's text stays
    assert env["ls"].get(f"/api/projects/{ls_pid}").json()["expert_instruction"] == own
    # Never raises: an unconnected project, an unreachable Label Studio.
    assert env["bridge"].announce(999_999, note) is False
    down = st.model_copy(update={"label_studio_url": f"http://127.0.0.1:{free_port()}"})
    assert LabelStudioPlugin(down).announce(pid, note) is False
    with pytest.raises(ValueError, match="at most"):
        env["bridge"].announce(pid, "x" * 5000)


def test_withdrawing_a_round_takes_only_untouched_tasks_out_of_label_studio(env):

    st, u = env["settings"], env["users"]
    pid, ranked = _make_project(st, "withdraw", 3)
    assert env["bridge"].withdraw_open_tasks(pid, 1) == []  # not connected yet: nothing to take out
    mapping = env["bridge"].push_round(pid, 1)
    annotate(env, mapping[ranked[0]], "cat", u[0])
    assert env["bridge"].withdraw_open_tasks(pid, 1) == sorted(ranked[1:])
    ls_pid = env["bridge"].connect_project(pid)
    assert [t["data"][cfg.ITEM_ID] for t in ls_tasks(env, ls_pid)] == [ranked[0]]
    assert item_state(env, ranked[0]) == ("cat", "labeled")  # the expert's answer is untouched


def test_the_next_batch_replaces_the_reserve_left_open_in_label_studio(env):
    """Round 1's batch and reserve are in Label Studio; the expert answered the batch and one
    reserve task while round 2 trained. When round 2's batch is committed (the store returns the
    untouched reserve to the pool) the labeling hook takes those untouched tasks out of Label
    Studio and imports round 2's; the answered reserve task stays."""
    from service.rounds.lifecycle import withdraw_reserves

    st, u = env["settings"], env["users"]
    pid, ranked = _make_project(st, "reserve", 5)
    with session_scope(st) as s:  # ranks 3 and 4 are the reserve, after the batch of three
        s.execute(QueueEntry.__table__.update().where(QueueEntry.item_id.in_(ranked[3:])).values(reserve=True))
    mapping = env["bridge"].push_round(pid, 1)
    for iid in ranked[:4]:
        annotate(env, mapping[iid], "cat", u[0])
    env["bridge"].poll_project(pid)
    with session_scope(st) as s:
        r1 = s.scalar(select(Round).where(Round.project_id == pid, Round.number == 1))
        r1.state = "closed"
        data = _png((1, 2, 3))
        (st.data_dir / "reserve" / "new.png").write_bytes(data)
        new = Item(project_id=pid, uri="reserve/new.png", sha256=hashlib.sha256(data).hexdigest(), split="pool",
                   status="queued")
        r2 = Round(project_id=pid, number=2, state="labeling", progress={"stage": "labeling"})
        s.add_all([new, r2])
        s.flush()
        s.add(QueueEntry(round_id=r2.id, item_id=new.id, rank=0, pred="dog", scores={"p_pred": 0.6}))
        assert withdraw_reserves(s, r2) == 1  # the untouched reserve image is back in the pool
        new_id = new.id
    env["bridge"].batch_ready(pid, 2)  # the labeling hook
    ls_pid = env["bridge"].connect_project(pid)
    in_ls = sorted(t["data"][cfg.ITEM_ID] for t in ls_tasks(env, ls_pid))
    assert in_ls == sorted(ranked[:4] + [new_id])  # ranked[4], the untouched reserve, is gone
    assert item_state(env, ranked[4]) == (None, "unlabeled") and item_state(env, ranked[3]) == ("cat", "labeled")
