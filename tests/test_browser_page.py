"""The project page as a person opens it (issue 22): a real `camloop serve` and `camloop worker`
(bench/load_annotators.py's stack, SQLite), a project with one trained round and half of its
batch answered, opened in headless Chromium by a signed link (no key in the browser).

Every <img> loads (naturalWidth > 0), the console has no errors (a Content-Security-Policy
violation is one), and the figures on the page are GET /metrics's: accuracy, labels, per class.
Screenshots: page-top.png and page-full.png under the test's tmp folder (CAMLOOP_SHOTS=dir
copies them there too)."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from tests.browser import chromium, console  # noqa: F401  (fixture)
from tests.bench_module import load_bench

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CLASSES = [str(i) for i in range(10)]


def _bench():
    return load_bench("load_annotators")


@pytest.fixture
def stack(tmp_path):
    bench = _bench()
    st = bench.start_stack("sqlite", tmp_path / "stack")
    try:
        yield st, bench
    finally:
        st.close()


def _project(st, bench) -> tuple[httpx.Client, int, dict[str, str]]:
    from tests.conftest import write_digits

    c = httpx.Client(base_url=st.url, headers={"Authorization": f"Bearer {bench.ENGINEER}"}, timeout=60)
    pool = write_digits(st.root, 160, "pool", seed=3)
    val = write_digits(st.root, 80, "val", seed=3, offset=160)
    r = c.post("/api/v1/projects", json={"name": "page-digits", "classes": CLASSES, "config": {
        "epochs": 3, "budget": 16, "reserve": 4, "mc_samples": 2, "hflip": False, "pretrained": False,
        "exclusion": {"enabled": False}}})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    items = [{"uri": u, "split": "val", "label": y} for u, y in val] + \
            [{"uri": u, "split": "pool", "label": y} for u, y in pool[:60]]
    assert c.post(f"/api/v1/projects/{pid}/items", json={"items": items}).status_code == 202
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"}).status_code == 202
    return c, pid, dict(pool)


def _wait(c, pid, n, state, limit=300):
    deadline = time.monotonic() + limit
    while True:
        rnd = c.get(f"/api/v1/projects/{pid}/rounds/{n}").json()
        assert rnd["state"] != "failed", rnd
        if rnd["state"] == state:
            return rnd
        assert time.monotonic() < deadline, rnd
        time.sleep(0.5)


def test_the_project_page_in_a_browser(stack, chromium, tmp_path):  # noqa: F811
    st, bench = stack
    c, pid, truth = _project(st, bench)
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    _wait(c, pid, 1, "labeling")
    queue = c.get(f"/api/v1/projects/{pid}/queue").json()["items"]
    batch = [q for q in queue if not q["reserve"]]
    half = batch[: len(batch) // 2]
    labels = [{"item_id": q["item_id"], "class": truth[q["uri"]], "client_id": f"gt-{q['item_id']}"} for q in half]
    assert c.post(f"/api/v1/projects/{pid}/labels", json={"labels": labels}).status_code == 201
    time.sleep(1.0)  # the page and a dashboard's metrics may be one reconciler tick stale

    link = c.post(f"/api/v1/projects/{pid}/page/link", params={"ttl_s": 3600}).json()
    parts = urlsplit(link["url"])
    assert parts.path == f"/api/v1/projects/{pid}/page"
    driver = chromium
    driver.get(f"{st.url}{parts.path}?{parts.query}")
    driver.execute_script("document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
    deadline = time.monotonic() + 60
    while True:  # every picture fetched (the grid is lazy: scroll it into view first)
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        imgs = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        if imgs and all(done for _, done, _ in imgs):
            break
        assert time.monotonic() < deadline, imgs
        time.sleep(0.3)
    assert len(imgs) == len(batch), imgs
    broken = [src for src, _, w in imgs if not w]
    assert not broken, f"{broken}\n{console(driver)}"
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors

    dash = {"Authorization": f"Bearer {bench.DASHBOARD}"}
    m = httpx.get(f"{st.url}/api/v1/projects/{pid}/metrics", headers=dash, timeout=30).json()
    text = driver.execute_script("return document.body.innerText")
    shown = lambda sel: driver.execute_script(f"return document.querySelector('{sel}').textContent")  # noqa: E731
    assert shown("#accuracy") == f"{m['accuracy']:.3f}"
    assert shown("#labeled") == str(m["labeled"]) == str(60 + len(half))
    assert shown("#round") == "1" and shown("#round-state") == "labeling"
    assert shown("#queue-answered") == str(len(half)) and shown("#queue-batch") == str(len(batch))
    per_class = driver.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('[data-class]'))"
        ".map(e => [e.getAttribute('data-class'), e.textContent]))")
    for name, pc in m["per_class"].items():
        assert per_class[name].split()[0] == ("—" if pc["accuracy"] is None else f"{pc['accuracy']:.3f}"), name
    assert "guess:" in text and "answer:" in text and "Not yet" in text  # no audit or control yet
    assert driver.execute_script("return document.querySelector('meta[http-equiv=refresh]') !== null")

    driver.execute_script("window.scrollTo(0, 0)")
    shots = [tmp_path / "page-top.png", tmp_path / "page-full.png"]
    driver.save_screenshot(str(shots[0]))
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, min(int(height) + 40, 12000))
    driver.save_screenshot(str(shots[1]))
    if os.environ.get("CAMLOOP_SHOTS"):
        for s in shots:
            shutil.copy(s, Path(os.environ["CAMLOOP_SHOTS"]) / s.name)
    assert np.asarray([s.stat().st_size for s in shots]).min() > 10_000
    c.close()
