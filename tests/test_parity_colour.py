"""Parity on colour photos: the service and `camloop simulate --folder` on the same sample photos
(`camloop sample-photos`) choose the same model from them (pretrained EfficientNet-Lite0, the
frozen trunk cached), select the same images in every round and report the same accuracy.

tests/test_parity.py holds it for digits through the demo and a real worker process; here both
run in this process with one torch thread (the service's jobs by an rq SimpleWorker), small
enough to take about a minute: 60 pool photos, two rounds of 6, one epoch."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from engine.colour_fashion import sample_photos
from engine.config import SimulationConfig
from engine.decisions import initial_labeled
from engine.model_choice import folder_image_paths
from service.store import ModelVersion, QueueEntry, Round
from service.store.db import session_scope
from tests.conftest import round_reaches

pytestmark = pytest.mark.slow

SPLITS = {"pool": (6, 0), "val": (2, 1), "test": (2, 2)}  # photos per class, seed
RUN = dict(initial=12, budget=6, rounds=2, epochs=1, seed=0, mc_samples=2, first_batch="random", reserve=3)


@pytest.fixture
def photos(settings):
    root = settings.data_dir / "photos"
    for split, (per_class, seed) in SPLITS.items():
        sample_photos(root / split, per_class=per_class, seed=seed, side=64)
    return root


# One store is enough: parity is about the engine (the store only holds what both decided).
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_service_and_simulate_agree_on_colour_photos(api, photos, tmp_path):
    import torch

    c, settings = api
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sim = _simulate(photos, tmp_path)
        service = _service(c, settings, photos)
    finally:
        torch.set_num_threads(threads)

    chosen = sim["model_choice"]["chosen"]
    assert chosen["model"] == "efficientnet-lite0" and chosen["channels"] == 3 and chosen["frozen_blocks"] > 0
    assert service["config"] == chosen
    assert [r["round"] for r in sim["rounds"]] == [1, 2, 3]
    for number, r in enumerate(sim["rounds"], 1):
        assert service["selected"].get(number, []) == r.get("selected", []), f"round {number} picked other images"
        assert service["reserve"].get(number, []) == r.get("reserve", []), f"round {number} reserved other images"
        assert service["accuracy"][number] == r["accuracy_active"], number
    assert [len(r.get("selected", [])) for r in sim["rounds"]] == [6, 6, 0]


def _simulate(photos, tmp_path) -> dict:
    from workers.simulate import run_simulation

    return run_simulation(SimulationConfig(dataset=None, folder=str(photos), threads=1, **RUN), work_dir=tmp_path)


def _service(c, settings, photos) -> dict:
    classes = (photos / "pool" / "classes.txt").read_text().split() if (photos / "pool" / "classes.txt").is_file() \
        else sorted(p.name for p in (photos / "pool").iterdir() if p.is_dir())
    config = {k: v for k, v in RUN.items() if k not in ("initial", "rounds")}
    r = c.post("/api/v1/projects", json={"name": f"colour-parity-{time.monotonic_ns()}", "classes": classes,
                                         "config": config})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    # The pool in the order simulate reads it (sorted paths), the first labels simulate draws.
    items = {split: sorted(p.relative_to(photos).as_posix() for p in folder_image_paths(photos / split))
             for split in SPLITS}
    seeded = {items["pool"][k] for k in initial_labeled(len(items["pool"]), RUN["initial"], RUN["seed"])}
    truth = {u: u.split("/")[1] for us in items.values() for u in us}
    payload = [{"uri": f"photos/{u}", "split": split, "label": truth[u] if split != "pool" or u in seeded else None}
               for split, us in items.items() for u in us]
    assert c.post(f"/api/v1/projects/{pid}/items", json={"items": payload}).status_code in (200, 201, 202)
    chosen = c.get(f"/api/v1/projects/{pid}").json()["model_choice"]

    for number in range(1, RUN["rounds"] + 1):
        assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
        round_reaches(c, settings, pid, number, "labeling")
        queue = c.get(f"/api/v1/projects/{pid}/queue", params={"round": number}).json()["items"]
        labels = [{"item_id": q["item_id"], "class": truth[q["uri"].removeprefix("photos/")],
                   "client_id": f"gt-{q['item_id']}"} for q in queue if not q.get("reserve")]
        assert c.post(f"/api/v1/projects/{pid}/labels", json={"labels": labels}).status_code == 201
        round_reaches(c, settings, pid, number, "closed")
    assert c.post(f"/api/v1/projects/{pid}/rounds", json={"train_only": True}).status_code == 202
    round_reaches(c, settings, pid, RUN["rounds"] + 1, "closed")

    selected, reserve, accuracy = {}, {}, {}
    with session_scope(settings) as s:
        for rnd in s.scalars(select(Round).where(Round.project_id == pid).order_by(Round.number)):
            rows = s.execute(select(QueueEntry.reserve, QueueEntry.rank, QueueEntry.item_id)
                             .where(QueueEntry.round_id == rnd.id).order_by(QueueEntry.rank)).all()
            uris = _uris(s, [iid for _, _, iid in rows])
            if rows:
                selected[rnd.number] = [uris[iid] for res, _, iid in rows if not res]
                reserve[rnd.number] = [uris[iid] for res, _, iid in rows if res]
        for mv in s.scalars(select(ModelVersion).where(ModelVersion.project_id == pid)):
            accuracy[mv.round] = float(mv.metrics["test"]["accuracy"])
    return {"config": {k: chosen[k] for k in ("model", "image_size", "channels", "pretrained", "frozen_blocks")},
            "selected": selected, "reserve": reserve, "accuracy": accuracy}


def _uris(s, ids) -> dict[int, str]:
    from service.store import Item

    rows = s.execute(select(Item.id, Item.uri).where(Item.id.in_(ids))).all() if ids else []
    return {iid: uri.removeprefix("photos/") for iid, uri in rows}
