"""What an expert sees of the model's guess, in a real browser (issue 23): a task of each guess
mode and a second-opinion task, in Label Studio's labeling stream, in headless Chromium.

  pre-selected  the header names the guess, its probability and "pre-selected", the class is ticked
  shown         the header names the guess and says it is not pre-selected; nothing is ticked
  hidden        the header says the guess is hidden; nothing is ticked; the right-hand picture
                is the image again (no Grad-CAM map)
  second opinion  no earlier answer and no guess anywhere on the page; nothing ticked

Screenshots of each task are saved under the test's tmp folder (tasks-*.png)."""
from __future__ import annotations

import numpy as np
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from service.core import paths
from service.labelstudio import config as cfg
from service.labelstudio.second_opinion import SECOND, on_labeling
from service.store import Round
from service.store.db import session_scope
from tests.browser import (LOAD_ERROR, NO_MORE, body_text, chromium, click_choice, console,  # noqa: F401
                           pictures, sign_up, submit, task_on_screen)
from tests.labelstudio_server import label_studio  # noqa: F401  (session fixture)
from tests.test_labelstudio_store import CLASSES, _make_project, annotate, env, ls_tasks  # noqa: F401

pytestmark = [pytest.mark.labelstudio, pytest.mark.browser]


def _ticked(driver) -> list[str]:
    return [c for c in CLASSES if driver.find_element(
        By.XPATH, f"//input[@type='radio' and @name='{c}']").is_selected()]


def test_an_expert_sees_each_guess_mode_and_a_blind_second_opinion(env, chromium, tmp_path):  # noqa: F811
    st, u = env["settings"], env["users"]
    # Probabilities 0.9, 0.85, 0.8 by rank; threshold 0.87: rank 0 pre-selected, the others shown;
    # the control hides rank 2 (share 1 would hide all: the control is drawn per image, so a
    # second project shows a hidden task).
    pid, ranked = _make_project(st, "browser-modes", 2, {"guess": {"threshold": 0.87, "hidden_share": 0.0},
                                                         "relabel": {"enabled": True, "share": 1.0}, "budget": 2})
    hid, hidden_ranked = _make_project(st, "browser-hidden", 1, {"guess": {"mode": "hidden"}})
    env["bridge"].push_round(pid, 1)
    env["bridge"].push_round(hid, 1)
    ls_pid, ls_hidden = env["bridge"].connect_project(pid), env["bridge"].connect_project(hid)
    tasks = sorted(ls_tasks(env, ls_pid), key=lambda t: t["id"])
    # Two experts labeled round 1 (another expert first, so the browser's expert is "another expert").
    annotate(env, tasks[0]["id"], "cat", u[1])
    annotate(env, tasks[1]["id"], "dog", u[2])
    env["bridge"].poll_project(pid)
    with session_scope(st) as s:
        s.execute(Round.__table__.update().where(Round.project_id == pid).values(state="closed"))
        s.add(Round(project_id=pid, number=2, state="labeling"))
    f = paths.round_files(st, pid, 2).label_issues
    f.parent.mkdir(parents=True, exist_ok=True)
    first = tasks[0]["data"][cfg.ITEM_ID]
    np.savez(f, item_ids=np.asarray([first]), labels=np.asarray([0]), pred_probs=np.asarray([[0.2, 0.7, 0.1]],
                                                                                               np.float32),
             quality=np.asarray([0.05]), issue=np.asarray([True]), source=np.zeros(1, np.int8))
    on_labeling(env["bridge"], pid, 2)
    second = [t for t in ls_tasks(env, ls_pid) if SECOND in t["data"]]
    assert len(second) == 1 and second[0]["data"][cfg.ITEM_ID] == first

    driver = chromium
    # An invited expert signs up (as in tests/test_browser_expert.py): not one of round 1's experts.
    sign_up(driver, st.label_studio_url, env["ls"].get("/api/invite").json()["token"],
            f"guess-expert-{env['app'].port}@camloop.test", "a-Person's-password-1")
    shots = tmp_path / "screens"
    shots.mkdir()

    def next_task(done, map_drawn=False):
        tid = WebDriverWait(driver, 120, poll_frequency=0.3).until(lambda d: task_on_screen(d, done),
                                                                    message="no task showed")
        assert tid != NO_MORE, console(driver)
        if not map_drawn:  # the image twice: both pictures load
            assert LOAD_ERROR not in body_text(driver), console(driver)
        # Else the right-hand picture is a Grad-CAM map, which this crafted queue (no model was
        # trained) has none of: its load error is expected here; tests/test_browser_expert.py
        # shows real maps.
        done.append(tid)
        return tid

    def header() -> str:
        return driver.find_element(By.XPATH, "//*[starts-with(normalize-space(text()), \"Model's guess:\")]").text

    # The first project's stream: the second opinion (round 1's tasks are answered), as expert 0.
    driver.get(f"{st.label_studio_url}/projects/{ls_pid}/data?labeling=1")
    done: list[int] = []
    tid = next_task(done)
    assert tid == second[0]["id"]
    text = body_text(driver)
    assert header().startswith("Model's guess: hidden: a second opinion")
    assert "cat" not in header() and _ticked(driver) == []  # no first answer, no guess
    image, right = pictures(driver)[:2]
    assert image["natural"] == right["natural"]  # the image again, no map
    assert "Expert 1" not in text  # nothing of the first expert on the page
    driver.save_screenshot(str(shots / "task-second-opinion.png"))
    click_choice(driver, "radio", "dog")
    submit(driver)
    WebDriverWait(driver, 120).until(lambda d: NO_MORE in body_text(d), message="the stream did not end")

    # Pre-selected and shown: a fresh project's batch, as expert 0.
    pid2, ranked2 = _make_project(st, "browser-modes-2", 2, {"guess": {"threshold": 0.87, "hidden_share": 0.0}})
    env["bridge"].push_round(pid2, 1)
    ls_pid2 = env["bridge"].connect_project(pid2)
    by_task = {t["id"]: t for t in ls_tasks(env, ls_pid2)}
    driver.get(f"{st.label_studio_url}/projects/{ls_pid2}/data?labeling=1")
    done = []
    seen = {}
    for _ in range(2):
        tid = next_task(done, map_drawn=True)
        t = by_task[tid]
        rank = t["data"][cfg.RANK]
        seen[rank] = (header(), _ticked(driver))
        driver.save_screenshot(str(shots / f"task-{'preselected' if rank == 0 else 'shown'}.png"))
        click_choice(driver, "radio", CLASSES[0])
        submit(driver)
    assert seen[0] == ("Model's guess: cat, 90 %, pre-selected: change it if it is wrong", ["cat"])
    assert seen[1] == ("Model's guess: dog, 85 %, not pre-selected (under 87 %): choose the class yourself", [])

    # Hidden (blind labeling).
    driver.get(f"{st.label_studio_url}/projects/{ls_hidden}/data?labeling=1")
    next_task([])
    assert header() == ("Model's guess: hidden (blind labeling): choose the class yourself (the right-hand "
                        "picture repeats the image)")
    assert _ticked(driver) == []
    image, right = pictures(driver)[:2]
    assert image["natural"] == right["natural"]
    driver.save_screenshot(str(shots / "task-hidden.png"))
    print(f"screenshots: {shots}")
