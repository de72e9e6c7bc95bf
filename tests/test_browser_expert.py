"""An expert labels a camloop round in Label Studio in a real browser, by clicking, as a person does.

Real everything: `camloop serve` and `camloop worker` in subprocesses (machine Redis, SQLite),
the shared Label Studio 1.23.2 of the test session, headless Chromium driven by Selenium. The
expert signs up through the organisation's invite link and opens the labeling stream of a round
whose batch carries the model's guesses and Grad-CAM overlays (round 1, trained on seeded
labels). For every task the test checks what the person sees — both pictures loaded (which
needs CORS on camloop's signed routes: Label Studio's page and the API are different origins),
at the same size, a whole multiple of the image's pixels, the guess with its probability in
the header — then picks a class and sometimes "wrong region" by clicking, and submits. At the
end camloop's store must hold exactly the clicked labels, the wrong-region votes filed under
the class the model guessed, and the expert must be told about the next batch.
"""
from __future__ import annotations

import sqlite3

import httpx
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from service.labelstudio import config as cfg
from tests.browser import (LOAD_ERROR, NO_MORE, body_text, chromium, click_choice, console,  # noqa: F401 (fixture)
                           pictures, sign_up, submit, task_on_screen)
from tests.labelstudio_server import label_studio  # noqa: F401  (session fixture)
from tests.labelstudio_stack import served_stack, stack_logs
from tests.worker_proc import digits_arrays, wait_for, write_pngs

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio, pytest.mark.browser]

KEY = "browser-engineer-key"
SECRET = "browser-webhook-secret"
BUDGET = 4
SEEDED = 40


def _ok(r: httpx.Response, *codes: int) -> dict:
    assert r.status_code in (codes or (200,)), f"{r.request.method} {r.request.url} → {r.status_code}: {r.text}"
    return r.json()


@pytest.fixture
def stack(label_studio, tmp_path):  # noqa: F811
    """camloop serve + one worker, configured for the session's Label Studio. No CAMLOOP_CORS_ORIGINS:
    the default (Label Studio's own origin) must be what lets the browser read the images."""
    with served_stack(label_studio, tmp_path, name="browser", key=KEY, secret=SECRET) as st:
        yield st


def _round_in(stack, pid: int, n: int, states: tuple[str, ...]) -> dict:
    def reached():
        rnd = _ok(stack["api"].get(f"/projects/{pid}/rounds/{n}"))
        if rnd["state"] == "failed":
            raise AssertionError(f"round {n} failed: {rnd['error']}\n{stack_logs(stack)}")
        return rnd if rnd["state"] in states else None

    return wait_for(reached, timeout=600, interval=0.5, what=f"round {n} in {states}", proc=stack["server"],
                    log=stack["log"])


def _project_with_a_round_to_label(stack) -> tuple[int, int, dict[str, str], list[dict]]:
    """A digits project whose round 1 (a model trained on SEEDED labels) waits in Label Studio.
    Returns (camloop project, Label Studio project, truth by uri, the round's queue)."""
    api, ls, root = stack["api"], stack["ls"], stack["root"]
    images, labels = digits_arrays(200, seed=5)
    truth = {}
    for sub, sl in (("pool", slice(0, 160)), ("val", slice(160, 200))):
        for uri, y in write_pngs(root, images[sl], labels[sl], sub=sub):
            truth[uri] = str(y)
    name = f"browser-{stack['port']}"
    pid = _ok(api.post("/projects", json={"name": name, "classes": [str(i) for i in range(10)], "config": {
        "budget": BUDGET, "reserve": 0, "epochs": 4, "mc_samples": 2, "hflip": False, "pretrained": False,
        # Every guess pre-selected, none hidden: this test is about the stream, the pictures and
        # the store; the guess modes have tests/test_browser_guess.py.
        "guess": {"threshold": 0.0, "hidden_share": 0.0}}}), 201)["id"]
    seeded = [u for u in truth if u.startswith("pool/")][:SEEDED]
    items = [{"uri": u, "split": "val", "label": y} for u, y in truth.items() if u.startswith("val/")]
    items += [{"uri": u, "split": "pool", "label": truth[u]} for u in seeded]
    _ok(api.post(f"/projects/{pid}/items", json={"items": items}), 202)
    _ok(api.post(f"/projects/{pid}/items", json={"folder": "pool"}), 202)
    _ok(api.post(f"/projects/{pid}/rounds"), 202)
    _round_in(stack, pid, 1, ("labeling",))
    queue = _ok(api.get(f"/projects/{pid}/queue"))["items"]
    assert len(queue) == BUDGET and all(q["predicted"] and 0 < q["scores"]["p_pred"] <= 1 for q in queue)
    projects = ls.get("/api/projects/", params={"page_size": 1000}).json()
    projects = projects["results"] if isinstance(projects, dict) else projects
    ls_pid = next(p["id"] for p in projects if p["title"] == f"camloop: {name}")

    def imported():
        r = ls.get("/api/tasks", params={"project": ls_pid, "page_size": 100})
        return r.status_code == 200 and len(r.json()["tasks"]) == BUDGET

    wait_for(imported, timeout=120, what="the batch in Label Studio", log=stack["log"])
    return pid, ls_pid, truth, queue


def _sign_up(driver, stack, email: str, password: str) -> None:
    """What an invited expert does: open the invite link, fill in the form, land logged in."""
    sign_up(driver, stack["ls_url"], _ok(stack["ls"].get("/api/invite"))["token"], email, password)
    who = driver.execute_script("return fetch('/api/current-user/whoami').then(r => r.json())")
    assert who.get("email") == email, who


def test_an_expert_labels_a_round_by_clicking_in_a_real_browser(stack, chromium, tmp_path):  # noqa: F811
    api, ls = stack["api"], stack["ls"]
    pid, ls_pid, truth, queue = _project_with_a_round_to_label(stack)
    by_item = {q["item_id"]: q for q in queue}
    tasks = ls.get("/api/tasks", params={"project": ls_pid, "page_size": 100}).json()["tasks"]
    item_of_task = {t["id"]: int(t["data"][cfg.ITEM_ID]) for t in tasks}
    file_px = {i: Image.open(stack["root"] / q["uri"]).size for i, q in by_item.items()}

    driver = chromium
    _sign_up(driver, stack, f"expert-{stack['port']}@camloop.test", "a-Person's-password-1")
    driver.get(f"{stack['ls_url']}/projects/{ls_pid}/data?labeling=1")  # "Label All Tasks"

    shots, done = tmp_path / "screens", []
    shots.mkdir()
    chosen: dict[int, str] = {}
    wrong: set[int] = set()
    for k in range(BUDGET):
        tid = WebDriverWait(driver, 120, poll_frequency=0.3).until(lambda d: task_on_screen(d, done),
                                                                    message=f"task {k + 1} never showed")
        assert tid != NO_MORE, f"the stream ended after {k} of {BUDGET} tasks"
        body = body_text(driver)
        assert LOAD_ERROR not in body, f"task {tid}: a picture did not load\n{body[:500]}\n{console(driver)}"
        done.append(tid)
        item = item_of_task[tid]
        q = by_item[item]
        # The header: the guess with its probability, no internal words (rounds, model versions).
        header = driver.find_element(By.XPATH, "//*[starts-with(normalize-space(text()), \"Model's guess:\")]").text
        assert header == (f"Model's guess: {q['predicted']}, {round(100 * q['scores']['p_pred'])} %, pre-selected: "
                          "change it if it is wrong"), header
        assert "round" not in header.lower()
        # Both pictures: loaded, the same size on screen, side by side, each pixel of the file
        # a whole number of screen pixels (no stretching, so nothing to smooth).
        image, overlay = pictures(driver)[:2]
        w, h = file_px[item]
        assert image["natural"] == overlay["natural"], (image, overlay)
        assert image["natural"][0] % w == 0 and image["natural"][1] % h == 0 and image["natural"][0] // w >= 2
        assert image["shown"] == overlay["shown"] == [float(image["natural"][0]), float(image["natural"][1])]
        assert image["top"] == overlay["top"] and overlay["left"] >= image["left"] + image["shown"][0]
        # The expert's answers: the truth, except one deliberately different class; the wrong
        # region ticked on every other task.
        answer = truth[q["uri"]] if k != 1 else str((int(truth[q["uri"]]) + 1) % 10)
        click_choice(driver, "radio", answer)
        if k % 2 == 0:
            click_choice(driver, "checkbox", cfg.WRONG_VALUE)
            wrong.add(item)
        chosen[item] = answer
        driver.save_screenshot(str(shots / f"task-{k + 1}.png"))
        submit(driver)
    WebDriverWait(driver, 120).until(lambda d: NO_MORE in body_text(d), message="the stream did not end")

    # The data manager's thumbnails (plain <img crossorigin> of the signed URLs) load too.
    driver.get(f"{stack['ls_url']}/projects/{ls_pid}/data")
    api_url = f"http://127.0.0.1:{stack['port']}/"
    thumbs = ("return Array.from(document.images).filter(i => i.src.startsWith(arguments[0]))"
              ".map(i => i.complete ? i.naturalWidth : -1)")
    WebDriverWait(driver, 120).until(lambda d: len(d.execute_script(thumbs, api_url)) == 2 * BUDGET
                                    and -1 not in d.execute_script(thumbs, api_url),
                                    message="the data manager's thumbnails did not all load or fail")
    assert all(w > 0 for w in driver.execute_script(thumbs, api_url)), console(driver)
    driver.save_screenshot(str(shots / "data-manager.png"))

    # camloop's store holds exactly what was clicked (webhooks, or the poll behind them).
    _round_in(stack, pid, 1, ("closed",))
    db = sqlite3.connect(stack["root"].parent / "data-state" / "camloop.db")  # the state folder beside the data
    try:
        stored = dict(db.execute("SELECT item_id, class_name FROM labels WHERE source = 'label-studio'").fetchall())
    finally:
        db.close()
    assert stored == chosen
    listed = {it["id"]: it for it in _ok(api.get(f"/projects/{pid}/items",
                                                 params={"split": "pool", "limit": 1000}))["items"]}
    assert all((listed[i]["status"], listed[i]["label"]) == ("labeled", c) for i, c in chosen.items())
    # "Wrong region" is filed under the class the model guessed (the map the expert judged),
    # with the expert's class beside it.
    m = _ok(api.get(f"/projects/{pid}/metrics"))["per_class"]
    for cls, row in m.items():
        mine = [i for i in chosen if by_item[i]["predicted"] == cls]
        assert row["guessed_votes"] == len(mine), cls
        assert row["wrong_region_votes"] == sum(i in wrong for i in mine), cls
        expected_split: dict[str, int] = {}
        for i in mine:
            if i in wrong:
                expected_split[chosen[i]] = expected_split.get(chosen[i], 0) + 1
        assert row["wrong_region_by_expert_class"] == expected_split, cls
        assert row["expert_votes"] == sum(c == cls for c in chosen.values()), cls

    # Between batches the expert is told what happens, in the instructions the stream opens with.
    from service.labelstudio.announce import preparing_text
    from service.labelstudio.plugin import LabelStudioPlugin
    from service.settings import Settings

    settings = Settings(data_dir=stack["root"], label_studio_url=stack["ls_url"],
                        label_studio_token=stack["token"])
    note = preparing_text(2, SEEDED + BUDGET, 150)
    bridge = LabelStudioPlugin(settings)
    assert bridge.announce(pid, note) and bridge.announce(pid, note)  # the second writes nothing new
    driver.get(f"{stack['ls_url']}/projects/{ls_pid}/data?labeling=1")
    WebDriverWait(driver, 120).until(lambda d: note in body_text(d), message="the note is not shown")
    assert body_text(driver).count(note) == 1
    # Behind the instructions: the empty stream (the page's text, hidden parts included).
    WebDriverWait(driver, 30).until(lambda d: NO_MORE in d.execute_script("return document.body.textContent"))
    driver.save_screenshot(str(shots / "between-batches.png"))
    assert bridge.announce(pid, None)
    assert ls.get(f"/api/projects/{ls_pid}").json()["expert_instruction"] == ""
