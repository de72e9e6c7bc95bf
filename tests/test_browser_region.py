"""An expert draws the right region in a real browser (issue 25): in Label Studio's labeling stream,
headless Chromium, the expert picks the class, ticks "the model looked at the wrong region", takes
the rectangle tool, drags a rectangle over the object on the image with the mouse and submits;
camloop stores the rectangle in pixels of the file, close to what was drawn, and offers it to the
next round's counterexamples (the plug-in's flagged_regions).

The task is a crafted round (as tests/test_browser_guess.py's): a 40×30 photo — a red mark in the
top-left corner, the object a pale square in the middle — and a Grad-CAM map of the guess that
looks at the mark, so the expert sees what the checkbox is for. Screenshots are saved under the
test's tmp folder (drawn.png: the rectangle on the image before submitting)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select

from engine import contracts as c
from engine.imageio import decode_image
from service.core import paths
from service.core.projects import create_project
from service.labelstudio import config as cfg
from service.labelstudio import ledger
from service.labelstudio.wrong_region import flagged_items
from service.store import Item, ModelVersion, QueueEntry, Round
from service.store.db import session_scope
from tests.browser import (LOAD_ERROR, NO_MORE, body_text, chromium, click_choice, console,  # noqa: F401
                           pictures, sign_up, submit, task_on_screen)
from tests.labelstudio_server import label_studio  # noqa: F401  (session fixture)
from tests.test_labelstudio_store import CLASSES, env  # noqa: F401  (module fixture)

pytestmark = [pytest.mark.labelstudio, pytest.mark.browser]

W, H = 40, 30                 # the file's size: not square, so x and y scale differently
OBJECT = (14, 8, 30, 24)      # where the object is, [x0, y0, x1, y1] in pixels of the file
TOLERANCE = 1                 # pixels of the file the stored box may be off (a mouse lands on screen pixels)


def _photo() -> np.ndarray:
    im = np.zeros((H, W, 3), np.uint8)
    im[...] = (40, 90, 160)
    im[:6, :6] = (230, 30, 30)                     # the shortcut: a mark in the corner
    x0, y0, x1, y1 = OBJECT
    im[y0:y1, x0:x1] = (235, 225, 200)             # the object
    return im


def _round_with_a_map(st, name: str) -> tuple[int, int]:
    """A project whose round 1 queues one photo, with a model's guess and its Grad-CAM map (on the
    mark, not the object). Returns (project, item)."""
    folder = st.data_dir / name
    folder.mkdir(parents=True)
    path = folder / "0.png"
    Image.fromarray(_photo()).save(path)
    with session_scope(st) as s:
        project = create_project(s, name, CLASSES, {"guess": {"threshold": 0.5, "hidden_share": 0.0},
                                                    "feedback": {"counterexamples": 2}})
        item = Item(project_id=project.id, uri=f"{name}/0.png", sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                    split="pool", status="queued", cache_shard=0, cache_index=0)
        mv = ModelVersion(project_id=project.id, round=1, checkpoint_path="(a crafted round: no checkpoint)",
                          metrics={})
        rnd = Round(project_id=project.id, number=1, state="labeling", progress={"stage": "labeling"})
        s.add_all([item, mv, rnd])
        s.flush()
        rnd.model_version_id = mv.id
        s.add(QueueEntry(round_id=rnd.id, item_id=item.id, rank=0, pred="cat",
                         scores={"least_confidence": 0.1, "margin": 0.5, "p_pred": 0.9}))
        pid, item_id = project.id, item.id
    # The decoded cache copy and the round's score shard with the map (hot in the top-left corner).
    cache = paths.cache_file(st, pid, 0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, decode_image(str(path), size=32, channels=3)[None])
    cam = np.zeros((4, 4), np.float16)
    cam[0, 0], cam[0, 1], cam[1, 0] = 1.0, 0.6, 0.6
    files = paths.round_files(st, pid, 1)
    files.dir.mkdir(parents=True, exist_ok=True)
    np.savez(files.score_file(0), **{c.SCORE_ITEM_IDS: np.asarray([item_id]), c.SCORE_CAM: cam[None],
                                     c.SCORE_PRED: np.asarray([0])})
    return pid, item_id


def _rectangle_tool(driver):
    """The image's rectangle tool in the editor's tool bar (its tooltip says "Rectangle")."""
    found = driver.execute_script("""
      const all = Array.from(document.querySelectorAll('[aria-label], [title], [data-testid], .lsf-tool'));
      return all.filter(e => /rect/i.test((e.getAttribute('aria-label') || '') + ' ' + (e.getAttribute('title') || '')
                                         + ' ' + (e.getAttribute('data-testid') || '')) && !/3.?point/i.test(
                                         (e.getAttribute('aria-label') || '') + (e.getAttribute('title') || '')));""")
    return found[0] if found else None


def _drag(driver, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Press the mouse at `start`, move in steps (as a hand does), release at `end`: viewport pixels."""
    actions = ActionChains(driver)
    builder = ActionBuilder(driver)
    mouse = builder.pointer_action
    mouse.move_to_location(int(start[0]), int(start[1]))
    mouse.pointer_down()
    for k in range(1, 6):
        mouse.move_to_location(int(start[0] + (end[0] - start[0]) * k / 5),
                               int(start[1] + (end[1] - start[1]) * k / 5))
    mouse.pointer_up()
    builder.perform()
    actions.reset_actions()


def test_an_expert_draws_the_right_region_and_camloop_stores_it_in_file_pixels(env, chromium, tmp_path):  # noqa: F811
    st = env["settings"]
    pid, item_id = _round_with_a_map(st, "browser-region")
    env["bridge"].push_round(pid, 1)
    ls_pid = env["bridge"].connect_project(pid)
    assert env["ls"].get(f"/api/projects/{ls_pid}").json()["label_config"] == cfg.labeling_config(CLASSES)

    driver = chromium
    sign_up(driver, st.label_studio_url, env["ls"].get("/api/invite").json()["token"],
            f"region-expert-{env['app'].port}@camloop.test", "a-Person's-password-1")
    shots = tmp_path / "screens"
    shots.mkdir()

    driver.get(f"{st.label_studio_url}/projects/{ls_pid}/data?labeling=1")
    tid = WebDriverWait(driver, 120, poll_frequency=0.3).until(lambda d: task_on_screen(d, []),
                                                                message="the task never showed")
    assert tid != NO_MORE, console(driver)
    assert LOAD_ERROR not in body_text(driver), console(driver)  # the image and its map
    driver.save_screenshot(str(shots / "task.png"))
    assert "Draw where it should have looked" in body_text(driver)

    click_choice(driver, "radio", "cat")
    click_choice(driver, "checkbox", cfg.WRONG_VALUE)
    tool = _rectangle_tool(driver)
    if tool is None:
        (shots / "page.html").write_text(driver.page_source)
        raise AssertionError(f"no rectangle tool on the page (its HTML: {shots / 'page.html'})")
    tool.click()
    image = pictures(driver)[0]
    scale_x, scale_y = image["shown"][0] / W, image["shown"][1] / H
    x0, y0, x1, y1 = OBJECT
    # Into each corner's file pixel a little, as a hand would land: the box rounds outwards.
    start = (image["left"] + (x0 + 0.3) * scale_x, image["top"] + (y0 + 0.3) * scale_y)
    end = (image["left"] + (x1 - 0.3) * scale_x, image["top"] + (y1 - 0.3) * scale_y)
    _drag(driver, start, end)
    driver.save_screenshot(str(shots / "drawn.png"))
    drawn = driver.execute_script("""
      const a = window.Htx && window.Htx.annotationStore && window.Htx.annotationStore.selected;
      return a ? a.serializeAnnotation().filter(r => r.type === 'rectangle').map(r => r.value) : null;""")
    assert drawn and len(drawn) == 1, (drawn, console(driver))
    submit(driver)
    WebDriverWait(driver, 120).until(lambda d: NO_MORE in body_text(d), message="the stream did not end")

    # The webhook delivered it (the poll would have, too).
    def stored():
        with session_scope(st) as s:
            return s.execute(select(ledger.annotations).where(ledger.annotations.c.project_id == pid)).first()

    row = WebDriverWait(driver, 60, poll_frequency=0.5).until(lambda d: stored(), message="no annotation stored")
    assert row.label == "cat" and row.wrong_region and row.region_problem is None, row
    assert row.region is not None and all(abs(a - b) <= TOLERANCE for a, b in zip(row.region, OBJECT)), \
        (row.region, OBJECT, drawn)
    with session_scope(st) as s:
        assert flagged_items(s, pid) == {item_id: row.region}  # what the next round trains counterexamples of
    print(f"drawn {drawn} → stored {row.region} (object {OBJECT}); screenshots: {shots}")
