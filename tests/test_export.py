"""Issue 21: the labeled data set, exported over the real service (TestClient, real Redis, SQLite
and PostgreSQL; rounds driven by a real rq worker in this process).

  * imagefolder loads as it is in torchvision's ImageFolder and in Hugging Face
    `datasets.load_dataset("imagefolder", data_dir=…)`; jsonl and csv say, per labeled image, who
    labeled it and when, where the label came from, why the image was picked and what the model
    guessed; excluded classes and quarantined images are marked, not dropped;
  * an export is a snapshot: labels made (and a round run) while it streams are wholly out;
  * bad input: an unknown format (422 listing the formats), nothing labeled (409), another
    project's export (404), a disk that fills during the export (nothing that looks complete).
"""
from __future__ import annotations

import csv
import io
import json
import os
import resource
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from service.cli.takeaway import ExportError, export_to
from service.core import export as export_svc
from service.store import Item
from service.store.db import session_scope
from tests.conftest import label_queue, round_reaches
from tests.takeaway import CLASSES, new_project, register, run_round


class Api:
    """The CLI's client shape (base URL /api/v1) over the TestClient."""

    def __init__(self, c):
        self.c = c

    def stream(self, method, url, **kw):
        return self.c.stream(method, "/api/v1" + url, **kw)


@pytest.fixture
def labeled(api):
    """A project after two labeled rounds (a random first batch, then the strategy's), a class
    excluded, a quarantined labeled image, val and test splits."""
    c, settings = api
    pid = new_project(c, budget=12)
    (settings.data_dir / "val").mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "val" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    r = c.post(f"/api/v1/projects/{pid}/items", json={"items": [{"uri": "val/broken.png", "split": "val",
                                                                  "label": "3"}]})
    assert r.status_code == 202
    truth = register(c, settings, pid, pool=50, val=20, test=10)
    run_round(c, settings, pid, 1, truth)
    run_round(c, settings, pid, 2, truth)
    assert c.post(f"/api/v1/projects/{pid}/classes/9/exclude", json={"reason": "no photos of it"}).status_code == 200
    return c, settings, pid, truth


def _jsonl(c, pid) -> list[dict]:
    r = c.get(f"/api/v1/projects/{pid}/export", params={"format": "jsonl"})
    assert r.status_code == 200, r.text
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert int(r.headers["X-Camloop-Export-Rows"]) == len(rows)
    return rows


def test_jsonl_and_csv_say_who_when_why_and_what_the_model_guessed(labeled):
    c, settings, pid, truth = labeled
    rows = _jsonl(c, pid)
    # Every labeled image once: 24 pool labels, 20 + 10 registered val/test labels, the broken one.
    assert len(rows) == 24 + 20 + 10 + 1 == len({r["item_id"] for r in rows})
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    assert [len(v) for v in by_split.values()] == [24, 21, 10]
    for r in rows:
        assert r["class"] == truth.get(r["uri"], "3") and r["class_index"] == CLASSES.index(r["class"])
        assert r["labeled_at"] and r["source"]
        # Pool labels have their label row (who, which); held-out splits' come with the registration.
        assert (r["who"] and r["label_id"]) if r["split"] == "train" else r["source"] == "registration"
    first = [r for r in by_split["train"] if r["picked_round"] == 1]
    second = [r for r in by_split["train"] if r["picked_round"] == 2]
    assert len(first) == len(second) == 12
    assert {r["picked_by"] for r in first} == {"first batch: random"}
    assert {r["picked_by"] for r in second} == {"strategy: hybrid"}
    assert all(r["source"] == "api" and r["label_round"] in (1, 2) for r in first + second)
    # The model's guess and its probability when the expert was shown the image (not in round 1: no model).
    assert all(r["model_guess"] is None and r["guess_model_version"] is None for r in first)
    assert all(r["model_guess"] in CLASSES and 0 < r["model_probability"] <= 1 and r["guess_model_version"] == 1
               for r in second)
    assert {r["picked_by"] for r in by_split["val"]} == {"registration: labeled when registered"}
    assert {r["source"] for r in by_split["val"] + by_split["test"]} == {"registration"}
    # Marked, not dropped: the excluded class and the quarantined image.
    nines = [r for r in rows if r["class"] == "9"]
    assert nines and {r["class_status"] for r in nines} == {"excluded"}
    broken = [r for r in rows if r["uri"] == "val/broken.png"]
    assert len(broken) == 1 and broken[0]["quarantined"] and broken[0]["quarantine_reason"]
    assert all(not r["quarantined"] for r in rows if r is not broken[0])

    r = c.get(f"/api/v1/projects/{pid}/export", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert list(table[0]) == list(export_svc.COLUMNS)
    assert [int(t["item_id"]) for t in table] == [x["item_id"] for x in rows]
    assert {t["class_status"] for t in table if t["class"] == "9"} == {"excluded"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the store does not matter here: one is enough
def test_imagefolder_loads_in_torchvision_and_in_hugging_face_datasets(labeled, tmp_path):
    c, settings, pid, truth = labeled
    out = tmp_path / "export"
    done = export_to(Api(c), pid, "imagefolder", out)
    assert done == {"path": str(out), "rows": 55, "images": 54, "quarantined": 1, "missing": 0}
    meta = json.loads((out / "export.json").read_text())
    assert [cl["name"] for cl in meta["classes"]] == CLASSES
    assert {cl["name"]: cl["status"] for cl in meta["classes"]}["9"] == "excluded"
    assert meta["quarantined"][0]["uri"] == "val/broken.png" and meta["quarantined"][0]["quarantine_reason"]
    assert not list(out.parent.glob(".export.partial-*"))

    from torchvision.datasets import ImageFolder

    train = ImageFolder(str(out / "train"))
    assert len(train) == 24
    names = {train.classes[y] for _, y in train.samples}
    for path, y in train.samples:  # each file under its class: the label the expert gave
        assert truth[f"pool/{Path(path).name.split('-', 1)[1]}"] == train.classes[y]
    assert names <= set(CLASSES)
    img, _ = train[0]
    assert img.size == (8, 8)
    assert len(ImageFolder(str(out / "val"))) == 20 and len(ImageFolder(str(out / "test"))) == 10

    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "hf-cache"))
    assert {k: len(v) for k, v in ds.items()} == {"train": 24, "validation": 20, "test": 10}
    feats = ds["train"].features["label"]
    assert set(feats.names) <= set(CLASSES)
    got = sorted(feats.names[y] for y in ds["train"]["label"])
    assert got == sorted(train.classes[y] for _, y in train.samples)


def test_an_export_is_a_snapshot_while_labels_come_and_a_round_runs(labeled, monkeypatch):
    c, settings, pid, truth = labeled
    monkeypatch.setattr(export_svc, "PAGE", 5)  # many pages: the race lands between two of them
    before = _jsonl(c, pid)
    from service.core import export_formats  # noqa: F401

    ex = export_svc.start(settings, pid, "jsonl")
    first = next(ex.body)
    # Meanwhile: round 3 runs to labeling (queue entries, items queued) and its batch is labeled.
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    round_reaches(c, settings, pid, 3, "labeling")
    new = label_queue(c, pid, truth)
    rest = b"".join(ex.body)
    raced = [json.loads(line) for line in (first + rest).decode().splitlines()]
    assert ex.rows == len(raced) == len(before)
    assert raced == before  # wholly out: not one of the new labels, nor a queue entry of round 3
    after = _jsonl(c, pid)
    assert len(after) == len(before) + len(new)
    assert {r["picked_round"] for r in after} >= {1, 2, 3}


def test_bad_export_requests(api, labeled):
    c, settings, pid, _ = labeled
    r = c.get(f"/api/v1/projects/{pid}/export", params={"format": "parquet"})
    assert r.status_code == 422
    for fmt in ("imagefolder", "jsonl", "csv", "label-studio"):
        assert fmt in r.json()["detail"]
    empty = new_project(c, name="empty")
    r = c.get(f"/api/v1/projects/{empty}/export", params={"format": "jsonl"})
    assert r.status_code == 409 and "no labeled images" in r.json()["detail"]
    assert c.get("/api/v1/projects/999999/export").status_code == 404
    with pytest.raises(ExportError, match="409"):
        export_to(Api(c), empty, "csv", settings.data_dir / "nothing")
    assert not (settings.data_dir / "nothing" / "labels.csv").exists()


def _small_disk(folder: Path, kib: int):
    """A folder on a small tmpfs (the disk that fills), or None where this machine cannot mount one."""
    where = folder / "small-disk"
    where.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)], capture_output=True)
    return where if r.returncode == 0 else None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the store does not matter here: one is enough
def test_a_disk_that_fills_during_an_export_leaves_nothing_that_looks_complete(labeled, tmp_path):
    c, settings, pid, _ = labeled
    # Big enough images that the tree does not fit in the space left.
    from PIL import Image
    import numpy as np

    with session_scope(settings) as s:
        uris = [it.uri for it in s.query(Item).filter(Item.project_id == pid, Item.label.is_not(None)).limit(30)]
    rng = np.random.default_rng(0)
    for u in uris:
        if u.endswith(".png") and "broken" not in u:
            Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), mode="L").save(settings.data_dir / u)
    for fmt, room in (("imagefolder", 48), ("jsonl", 16)):
        disk = _small_disk(tmp_path / fmt, room + 8 if fmt == "jsonl" else room)
        limit = None
        if disk is None:  # no mount here: the same failure from the file-size limit (EFBIG, not ENOSPC)
            disk, limit = tmp_path / fmt / "limited", room * 1024
            disk.mkdir()
        out = disk / ("tree" if fmt == "imagefolder" else "files")
        old = resource.getrlimit(resource.RLIMIT_FSIZE)
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        try:
            if limit:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
            elif fmt == "jsonl":  # the rows (~30 KiB) would fit in 24 KiB less what this takes
                (disk / "filler").write_bytes(b"\0" * 8 * 1024)
            with pytest.raises(ExportError, match="nothing at"):
                export_to(Api(c), pid, fmt, out)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old)
            signal.signal(signal.SIGXFSZ, old_handler)
            left = sorted(p.name for p in disk.iterdir())
            if not limit:
                subprocess.run(["umount", str(disk)], check=False)
        assert left in ([], ["filler"]), (fmt, left)  # no partial file or folder, nothing at the destination
        # With room, the same export completes.
        ok = tmp_path / f"roomy-{uuid.uuid4().hex[:6]}"
        assert export_to(Api(c), pid, fmt, ok)["rows"] == 55
        assert os.path.exists(ok / ("export.json" if fmt == "imagefolder" else "labels.jsonl"))
