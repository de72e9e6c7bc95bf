"""service/core/items.py: registering images, and what ingest makes of bad ones (the API over
TestClient with its lifespan, SQLite and PostgreSQL, real Redis, jobs run by a real rq worker)."""
from __future__ import annotations

import time

import numpy as np

from tests.conftest import run_jobs, write_digits
from tests.test_engine_imageio import handmade_png

CLASSES = [str(i) for i in range(10)]
FAST = {"epochs": 1, "budget": 5, "reserve": 0, "mc_samples": 2, "hflip": False, "pretrained": False}


def _project(c, classes=CLASSES, name=None) -> int:
    r = c.post("/api/v1/projects", json={"name": name or f"small-{time.monotonic_ns()}", "classes": classes,
                                         "config": FAST})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _items(c, pid) -> dict:
    return {it["uri"]: it for it in c.get(f"/api/v1/projects/{pid}/items", params={"limit": 1000}).json()["items"]}


def _wait_quarantined(c, settings, pid, uri):
    """Run the ingest jobs; the reconciler applies their results (a bound, not a timing check)."""
    deadline = time.monotonic() + 60
    while True:
        run_jobs(settings, ("ingest",))
        items = _items(c, pid)
        if items[uri]["status"] == "quarantined" or time.monotonic() > deadline:
            return items
        time.sleep(0.2)


def test_file_names_with_a_newline_are_refused_at_registration_naming_them(api):
    c, settings = api
    pid = _project(c)
    write_digits(settings.data_dir, 3, "pool")
    (settings.data_dir / "pool" / "two\nlines.png").write_bytes((settings.data_dir / "pool" / "00000.png").read_bytes())
    r = c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"})
    assert r.status_code == 400 and "'pool/two\\nlines.png'" in r.json()["detail"], r.text
    assert "rename" in r.json()["detail"] and _items(c, pid) == {}  # nothing of the folder registered
    r = c.post(f"/api/v1/projects/{pid}/items", json={"items": [{"uri": "pool/two\nlines.png"}]})
    assert r.status_code == 400 and "newline" in r.json()["detail"], r.text
    (settings.data_dir / "pool" / "two\nlines.png").rename(settings.data_dir / "pool" / "two lines.png")
    r = c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pool"})
    assert r.status_code == 202 and r.json()["registered"] == 3, r.text  # renamed: same content as 00000.png


def test_an_empty_folder_is_refused_at_registration_and_a_round_needs_pool_images(api):
    c, settings = api
    pid = _project(c)
    (settings.data_dir / "empty" / "sub").mkdir(parents=True)
    (settings.data_dir / "empty" / "notes.txt").write_text("not an image")
    r = c.post(f"/api/v1/projects/{pid}/items", json={"folder": "empty"})
    assert r.status_code == 400 and "holds no image files" in r.json()["detail"] and ".png" in r.json()["detail"]
    r = c.post(f"/api/v1/projects/{pid}/rounds")
    assert r.status_code == 422 and "no pool images" in r.json()["detail"] and "register a folder" in r.json()["detail"]
    assert c.get(f"/api/v1/projects/{pid}/rounds").json()["rounds"] == []  # nothing started, nothing closed


def test_a_png_cut_after_half_its_rows_is_quarantined_at_ingest_with_the_reason(api):
    img = (np.arange(40 * 30) % 251 + 1).astype(np.uint8).reshape(30, 40)  # no black pixel anywhere
    half = handmade_png(img, 0.5)
    c, settings = api
    pid = _project(c)
    (settings.data_dir / "pngs").mkdir()
    (settings.data_dir / "pngs" / "half.png").write_bytes(half)
    (settings.data_dir / "pngs" / "whole.png").write_bytes(handmade_png(img))
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "pngs"}).status_code == 202
    items = _wait_quarantined(c, settings, pid, "pngs/half.png")
    assert items["pngs/half.png"]["status"] == "quarantined", items
    assert items["pngs/half.png"]["reason"].startswith("truncated: the pixel data ends after")
    assert items["pngs/whole.png"]["status"] == "unlabeled"
