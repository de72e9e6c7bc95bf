"""Issue 12's rules for config and rounds, over HTTP (TestClient with the app's lifespan: the
reconciler thread runs) on SQLite and PostgreSQL, real Redis, ingest drained by a real rq worker.

  * every wrong type, range or unknown key in a project's config is a 422 naming the field,
    when the project is created and when its config is PATCHed — never a 500, never a config
    stored that wedges a round later;
  * the backstop: an error inside the round engine moves the round to `failed` with the reason,
    once (one log record, not one per reconciler tick), and `retry` works after the fix.
"""
from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy import update

from service.store import Project
from service.store.db import session_scope
from tests.conftest import run_jobs, write_digits

CLASSES = [str(i) for i in range(10)]
FAST = {"epochs": 1, "budget": 6, "reserve": 0, "mc_samples": 2, "hflip": False, "pretrained": False}

# (what the client sends in `config`, the field the answer must name). The list first.
BAD_CONFIGS = [
    ({"exclusion": {"patience": 0}}, "exclusion.patience"),
    ({"exclusion": {"bogus": 1}}, "exclusion.bogus"),
    ({"epochs": "x"}, "epochs"),
    ({"seed": "x"}, "seed"),
    ({"budget": "abc"}, "budget"),
    ({"budget": None}, "budget"),
    ({"budget": []}, "budget"),
    ({"budget": {}}, "budget"),
    ({"budget": 2.5}, "budget"),
    ({"budget": "7"}, "budget"),
    ({"budget": True}, "budget"),
    ({"exclusion": "yes"}, "exclusion"),
    # and their neighbours: ranges, unknown keys at the top, nested sections, enums
    ({"budget": 0}, "budget"),
    ({"epochs": -1}, "epochs"),
    ({"reserve": -5}, "reserve"),
    ({"exclusion": {"exclude_below": 1.5}}, "exclusion.exclude_below"),
    ({"exclusion": {"exclude_below": "0.5"}}, "exclusion.exclude_below"),
    ({"exclusion": {"enabled": "yes"}}, "exclusion.enabled"),
    ({"exclusion": {"min_active": 1}}, "exclusion.min_active"),
    ({"holdout": {"fraction": -0.1}}, "holdout.fraction"),
    ({"holdout": []}, "holdout"),
    ({"channels": 2}, "channels"),
    ({"strategy": "nope"}, "strategy"),
    ({"model": "nope"}, "model"),
    ({"auto_next_round": "yes"}, "auto_next_round"),
    ({"budjet": 10}, "budjet"),
    # a switched section's settings without its switch, the section off: they would never act
    ({"exclusion": {"exclude_after": 2}}, "exclusion.enabled"),
    ({"relabel": {"share": 0.2}}, "relabel.enabled"),
]


def _new(c, **cfg):
    return c.post("/api/v1/projects", json={"name": f"rules-{time.monotonic_ns()}", "classes": CLASSES,
                                            "config": {**FAST, **cfg}})


def _names_field(answer: dict, field: str) -> bool:
    """The 422 names the field: FastAPI's validation list (loc) or our message (`a.b: ...`)."""
    detail = answer.get("detail")
    if isinstance(detail, list):
        return any(".".join(str(p) for p in e.get("loc", [])[2:]) == field or
                   ".".join(str(p) for p in e.get("loc", [])[2:]).startswith(field + ".") for e in detail)
    return f"{field}:" in str(detail) or f"{field} " in str(detail)


@pytest.mark.parametrize("cfg,field", BAD_CONFIGS, ids=[f"{f}={c}" for c, f in BAD_CONFIGS])
def test_wrong_config_is_a_422_naming_the_field_at_creation_and_at_patch(api, cfg, field):
    c, _ = api
    r = _new(c, **cfg)
    assert r.status_code == 422, f"creation with {cfg}: {r.status_code} {r.text}"
    assert _names_field(r.json(), field), f"creation with {cfg} does not name {field}: {r.text}"

    ok = _new(c)
    assert ok.status_code == 201, ok.text
    pid, before = ok.json()["id"], ok.json()["config"]
    r = c.patch(f"/api/v1/projects/{pid}", json={"config": cfg})
    assert r.status_code == 422, f"PATCH with {cfg}: {r.status_code} {r.text}"
    assert _names_field(r.json(), field), f"PATCH with {cfg} does not name {field}: {r.text}"
    assert c.get(f"/api/v1/projects/{pid}").json()["config"] == before  # nothing of it stored


def test_patch_changes_the_config_between_rounds_and_merges_sections(api):
    c, _ = api
    pid = _new(c, exclusion={"enabled": True, "patience": 3}).json()["id"]
    r = c.patch(f"/api/v1/projects/{pid}", json={"config": {"budget": 9, "exclusion": {"exclude_after": 4}}})
    assert r.status_code == 200, r.text
    cfg = r.json()["config"]
    assert cfg["budget"] == 9 and cfg["exclusion"]["exclude_after"] == 4
    assert cfg["exclusion"]["patience"] == 3 and cfg["exclusion"]["enabled"] is True  # merged, not replaced


def test_a_switched_sections_settings_stay_with_the_switch_said(api):
    """`"enabled": false` beside the settings keeps them, off on purpose; a patch of the settings
    alone is read against the project's switch (on: accepted; off: a 422 naming it)."""
    c, _ = api
    r = _new(c, exclusion={"enabled": False, "exclude_after": 5}, relabel={"enabled": False, "share": 0.3})
    assert r.status_code == 201, r.text
    pid, cfg = r.json()["id"], r.json()["config"]
    assert (cfg["exclusion"]["enabled"], cfg["exclusion"]["exclude_after"]) == (False, 5)
    assert (cfg["relabel"]["enabled"], cfg["relabel"]["share"]) == (False, 0.3)
    r = c.patch(f"/api/v1/projects/{pid}", json={"config": {"exclusion": {"patience": 4}}})
    assert r.status_code == 422 and "exclusion.enabled" in r.json()["detail"], r.text
    r = c.patch(f"/api/v1/projects/{pid}", json={"config": {"exclusion": {"enabled": True}}})
    assert r.status_code == 200, r.text
    r = c.patch(f"/api/v1/projects/{pid}", json={"config": {"exclusion": {"patience": 4}}})
    assert r.status_code == 200 and r.json()["config"]["exclusion"]["patience"] == 4, r.text


def test_an_error_inside_the_round_engine_fails_the_round_once_and_retry_works_after_the_fix(api, caplog):
    """A project config that the engine cannot read: written straight into the store, as a config
    stored by an older camloop (before configs were validated) would be, while round 1 waits for
    its images to be decoded. The reconciler meets it on every tick; the round must fail once,
    with the reason, and a PATCH that fixes the config lets `retry` finish the round."""
    c, settings = api
    pid = _new(c).json()["id"]
    write_digits(settings.data_dir, 20, "pool", seed=3)
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}).status_code == 202
    r = c.post(f"/api/v1/projects/{pid}/rounds")
    assert r.status_code == 202 and r.json()["state"] == "created", r.text  # waits for ingest: no worker yet

    caplog.set_level(logging.INFO, logger="camloop.rounds")
    with session_scope(settings) as s:
        s.execute(update(Project).where(Project.id == pid).values(
            config={**FAST, "exclusion": {"patience": 0, "unknown_key": 1}}))
    deadline = time.monotonic() + 30
    while c.get(f"/api/v1/projects/{pid}/rounds/1").json()["state"] != "failed":
        assert time.monotonic() < deadline, "the round never failed"
        time.sleep(0.1)
    time.sleep(20 * settings.reconcile_interval_s)  # twenty more reconciler ticks see the failed round
    rnd = c.get(f"/api/v1/projects/{pid}/rounds/1").json()
    assert rnd["state"] == "failed" and rnd["progress"]["failed_stage"] == "created"
    assert "exclusion.patience" in rnd["error"] and "unknown_key" in rnd["error"], rnd["error"]
    mine = [r for r in caplog.records if r.name == "camloop.rounds" and f"project {pid} round 1" in r.getMessage()]
    assert len(mine) == 1 and "failed in created" in mine[0].getMessage(), [r.getMessage() for r in mine]

    # Retry before the fix: refused, saying what to fix (the round stays failed, nothing started).
    r = c.post(f"/api/v1/projects/{pid}/rounds/1/retry")
    assert r.status_code == 422 and "PATCH" in r.json()["detail"] and "exclusion" in r.json()["detail"], r.text
    # A new round while one failed: a failed round is not working, but the config is still bad.
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 422
    # The project is still readable, saying what is wrong.
    r = c.get(f"/api/v1/projects/{pid}")
    assert r.status_code == 200 and "exclusion.patience" in r.json()["warnings"][0], r.text
    # The fix: PATCH merges over the stored config; a key this version does not know is dropped
    # from it (and said so), else it could never be taken out and the config never fixed.
    # (`enabled` said: the rule is off, and settings of a rule left off without it are refused.)
    r = c.patch(f"/api/v1/projects/{pid}", json={"config": {"exclusion": {"enabled": False, "patience": 2}}})
    assert r.status_code == 200, r.text
    assert r.json()["config"]["exclusion"]["patience"] == 2 and "exclusion.unknown_key" in r.json()["warnings"][0]
    # The patch itself stays strict: an unknown key sent now is refused.
    assert c.patch(f"/api/v1/projects/{pid}", json={"config": {"exclusion": {"unknown_key": 1}}}).status_code == 422
    r = c.post(f"/api/v1/projects/{pid}/rounds/1/retry")
    assert r.status_code == 202 and r.json()["attempt"] == 1, r.text
    run_jobs(settings, ("ingest",))
    deadline = time.monotonic() + 60
    while (rnd := c.get(f"/api/v1/projects/{pid}/rounds/1").json())["state"] != "labeling":
        assert rnd["state"] != "failed" and time.monotonic() < deadline, rnd
        time.sleep(0.1)
    assert rnd["error"] is None and rnd["progress"]["queued"] == FAST["budget"]


# ------------------------------------------------------------------ starting a round

def _serve(tmp_path, db_url: str, prefix: str):
    """`camloop serve` in a subprocess (uvicorn's thread pool: real concurrent requests)."""
    import httpx

    from tests.conftest import ENGINEER_KEY
    from tests.worker_proc import REDIS_URL, free_port, start_server, wait_for, worker_env

    env = worker_env(CAMLOOP_DATA_DIR=str(tmp_path / "data"), CAMLOOP_QUEUE_PREFIX=prefix, REDIS_URL=REDIS_URL,
                     DATABASE_URL=db_url, CAMLOOP_API_KEYS=ENGINEER_KEY)
    port = free_port()
    proc = start_server(env, tmp_path / "server.log", port)

    def up():
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, timeout=120, what="camloop serve", proc=proc, log=tmp_path / "server.log")
    return proc, f"http://127.0.0.1:{port}/api/v1"


def test_twenty_concurrent_round_starts_on_a_cold_start_project(db_url, tmp_path, queue_prefix):
    """Issue 12: 20 concurrent POSTs on a cold-start project gave 10 × 202 and closed rounds 1-9
    unlabeled. A cold start reaches `labeling` inside the POST, so every later start meets a batch
    being labeled: without force it must be refused, not close it."""
    import threading

    import httpx

    from tests.conftest import ENGINEER_KEY, make_settings

    (tmp_path / "data").mkdir()
    write_digits(tmp_path / "data", 30, "pool", seed=5)
    proc, base = _serve(tmp_path, db_url, queue_prefix)
    clients = [httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ENGINEER_KEY}"}, timeout=60)
               for _ in range(20)]
    try:
        c = clients[0]
        pids = []
        for _ in range(2):
            r = c.post("/projects", json={"name": f"cold-{time.monotonic_ns()}", "classes": CLASSES, "config": FAST})
            assert r.status_code == 201, r.text
            pids.append(r.json()["id"])
            assert c.post(f"/projects/{pids[-1]}/items", json={"folder": "pool"}).status_code == 202
        run_jobs(make_settings(tmp_path / "data", db_url, queue_prefix), ("ingest",))

        def burst(pid: int, key: str | None) -> list[httpx.Response]:
            barrier, out = threading.Barrier(20), []

            def one(cl):
                barrier.wait()
                out.append(cl.post(f"/projects/{pid}/rounds", headers={"Idempotency-Key": key} if key else {}))

            threads = [threading.Thread(target=one, args=(cl,)) for cl in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert all(r.status_code < 500 for r in out), [r.text for r in out if r.status_code >= 500]
            return out

        # 20 different clients, no key: one round starts, the other 19 are told why not.
        answers = burst(pids[0], None)
        assert sorted(r.status_code for r in answers) == [202] + [409] * 19, [(r.status_code, r.text) for r in answers]
        assert all("being labeled" in r.json()["detail"] or "still" in r.json()["detail"]
                   for r in answers if r.status_code == 409)
        # 20 retries of one client (one Idempotency-Key): one round, and every answer is that round.
        answers = burst(pids[1], "client-7-attempt")
        assert sorted(r.status_code for r in answers) == [200] * 19 + [202], \
            [(r.status_code, r.json().get("created"), r.json().get("state")) for r in answers]
        assert {r.json()["number"] for r in answers} == {1}
        # The same client retries once more after a lost answer, later: still round 1.
        r = c.post(f"/projects/{pids[1]}/rounds", headers={"Idempotency-Key": "client-7-attempt"})
        assert r.status_code == 200 and r.json()["number"] == 1 and r.json()["created"] is False

        for pid in pids:
            rounds = c.get(f"/projects/{pid}/rounds").json()["rounds"]
            assert [(x["number"], x["state"]) for x in rounds] == [(1, "labeling")], rounds
            assert rounds[0]["progress"]["queued"] == FAST["budget"] and "abandoned" not in rounds[0]["progress"]
            assert len(c.get(f"/projects/{pid}/queue").json()["items"]) == FAST["budget"]
        # An explicit force closes the batch being labeled and says how many images went back.
        r = c.post(f"/projects/{pids[0]}/rounds", json={"force": True})
        assert r.status_code == 202 and r.json()["number"] == 2, r.text
        first = c.get(f"/projects/{pids[0]}/rounds/1").json()
        assert first["state"] == "closed" and first["progress"]["abandoned"] == FAST["budget"]
    finally:
        for cl in clients:
            cl.close()
        proc.terminate()
        proc.wait(timeout=30)


def test_class_names_with_a_slash_can_be_excluded_and_included(api):
    c, _ = api
    names = ["cat/kitten", "dog", "a/b/c"]
    r = c.post("/api/v1/projects", json={"name": f"slash-{time.monotonic_ns()}", "classes": names, "config": FAST})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = c.post(f"/api/v1/projects/{pid}/classes/cat/kitten/exclude", json={"reason": "blurry"})
    assert r.status_code == 200, r.text
    assert {x["name"]: x["status"] for x in r.json()["classes"]}["cat/kitten"] == "excluded"
    r = c.post(f"/api/v1/projects/{pid}/classes/cat/kitten/include", json={})
    assert r.status_code == 200 and {x["name"]: x["status"] for x in r.json()["classes"]}["cat/kitten"] == "active"
    assert c.post(f"/api/v1/projects/{pid}/classes/a/b/c/exclude", json={}).status_code == 200
    assert c.post(f"/api/v1/projects/{pid}/classes/cat/exclude", json={}).status_code == 404  # a prefix is not a class


def test_a_round_with_nothing_left_to_queue_says_so(api):
    """Every pool image labeled at registration: the round trains and closes nothing silently —
    its progress says why nothing was queued."""
    c, settings = api
    pid = _new(c).json()["id"]
    files = write_digits(settings.data_dir, 20, "pool", seed=2)
    items = [{"uri": u, "split": "pool", "label": y} for u, y in files]
    assert c.post(f"/api/v1/projects/{pid}/items", json={"items": items}).status_code == 202
    run_jobs(settings, ("ingest",))
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    run_jobs(settings, ("train", "score"))
    deadline = time.monotonic() + 120
    while (rnd := c.get(f"/api/v1/projects/{pid}/rounds/1").json())["state"] not in ("labeling", "closed"):
        assert rnd["state"] != "failed" and time.monotonic() < deadline, rnd
        run_jobs(settings, ("train", "score"))
        time.sleep(0.2)
    assert rnd["progress"]["queued"] == 0
    assert rnd["progress"]["note"].startswith("nothing to queue"), rnd["progress"]
