"""regions.json beside a folder's images (engine.regions): read by `camloop simulate --folder`
(mapped onto the decoded pixels) and by folder registration (stored per item); bad JSON, a box
outside its image or empty, and a path that is no image of the folder are errors naming the entry."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from engine.datasets import load_folder_splits
from engine.regions import read_regions, to_decoded

runner = CliRunner()


def _folder(root, w=40, h=20, per_class=4):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.full((h, w, 3), 40 * i + (100 if c == "b" else 0), np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


BAD = [
    ("{not json", "not valid JSON"),
    ('["a/0.png"]', "must be a JSON object"),
    ('{"a/0.png": [0, 0, 41, 10]}', "entry 'a/0.png': the box [0, 0, 41, 10] is outside the 40×20 image"),
    ('{"a/0.png": [5, 5, 5, 10]}', "entry 'a/0.png': the box [5, 5, 5, 10] is outside the 40×20 image or empty"),
    ('{"a/0.png": [0, 0, 10]}', "entry 'a/0.png': the box must be four integers"),
    ('{"a/0.png": [0, 0, 1.5, 10]}', "entry 'a/0.png': the box must be four integers"),
    ('{"c/9.png": [0, 0, 10, 10]}', "entry 'c/9.png': no such image in the folder"),
    ('{"../x.png": [0, 0, 10, 10]}', "entry '../x.png': no such image in the folder"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_regions_are_errors_naming_the_entry(tmp_path, text, message):
    root = _folder(tmp_path / "f")
    (root / "regions.json").write_text(text)
    with pytest.raises(ValueError, match="regions.json") as e:
        load_folder_splits(root, size=16, channels=3)
    assert message in str(e.value)


def test_no_regions_file_no_regions_and_good_boxes_map_to_the_decoded_pixels(tmp_path):
    root = _folder(tmp_path / "f")
    pool, val, test, uris = load_folder_splits(root, size=16, channels=3)
    assert pool.regions is None and read_regions(root) == {}
    (root / "regions.json").write_text(json.dumps({"a/0.png": [0, 0, 40, 20], "b/1.png": [10, 4, 20, 12]}))
    assert read_regions(root) == {"a/0.png": (0, 0, 40, 20), "b/1.png": (10, 4, 20, 12)}
    pool, val, test, uris = load_folder_splits(root, size=16, channels=3)
    every = {}
    for d in (pool, val, test):
        for p, r in zip(d.paths, d.regions):
            every[p.split("/f/")[1]] = r.tolist()
    # 40×20 letterboxed to 16: scale 0.4, the image 16×8 at top 4.
    assert every["a/0.png"] == [0, 4, 16, 12]
    assert every["b/1.png"] == list(to_decoded((10, 4, 20, 12), 40, 20, 16)) == [4, 5, 8, 9]
    assert every["a/1.png"] == [-1, -1, -1, -1]


def test_simulate_folder_refuses_a_bad_regions_file_before_training(tmp_path):
    from service.cli import app

    root = _folder(tmp_path / "f")
    (root / "regions.json").write_text('{"a/0.png": [0, 0, 99, 10]}')
    r = runner.invoke(app, ["simulate", "--folder", str(root), "--out", str(tmp_path / "o.json")])
    assert r.exit_code == 2 and "a/0.png" in r.output and "outside" in r.output, r.output
    assert not (tmp_path / "o.json").exists()


def _project(c) -> int:
    r = c.post("/api/v1/projects", json={"name": f"regions-{time.monotonic_ns()}", "classes": ["a", "b"],
                                         "config": {"pretrained": False}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_folder_registration_stores_regions_and_refuses_bad_ones_naming_the_entry(api):
    c, settings = api
    pid = _project(c)
    root = _folder(settings.data_dir / "photos")
    (root / "regions.json").write_text('{"a/0.png": [0, 0, 10, 30]}')
    r = c.post(f"/api/v1/projects/{pid}/items", json={"folder": "photos"})
    assert r.status_code == 400 and "'a/0.png'" in r.json()["detail"] and "outside the 40×20" in r.json()["detail"]
    assert "nothing registered" in r.json()["detail"]
    (root / "regions.json").write_text('{"a/7.png": [0, 0, 10, 10]}')
    r = c.post(f"/api/v1/projects/{pid}/items", json={"folder": "photos"})
    assert r.status_code == 400 and "'a/7.png'" in r.json()["detail"] and "no such image" in r.json()["detail"]
    (root / "regions.json").write_text("{oops")
    r = c.post(f"/api/v1/projects/{pid}/items", json={"folder": "photos"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    (root / "regions.json").write_text('{"a/0.png": [1, 2, 30, 18]}')
    r = c.post(f"/api/v1/projects/{pid}/items", json={"folder": "photos"})
    assert r.status_code == 202, r.text
    items = {it["uri"]: it for it in c.get(f"/api/v1/projects/{pid}/items", params={"limit": 100}).json()["items"]}
    assert items["photos/a/0.png"]["region"] == [1, 2, 30, 18]
    assert items["photos/a/1.png"]["region"] is None
