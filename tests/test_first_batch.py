"""A representative first batch (issue 13): with `first_batch: typical` and a pretrained model,
round 1 of a project with no labels embeds the pool with the pretrained weights (score jobs in
the worker) and queues TypiClust's picks (strategies.typical) instead of a random sample; over
colour JPEG files, real Redis, PostgreSQL/SQLite and an RQ worker."""
from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from service.core import paths
from strategies.typical import typical_first_batch
from tests.conftest import round_reaches, run_jobs
from engine.colour_fashion import load_fashion_colour
from engine.config import ProjectConfig
from engine.decisions import cold_start_order, round_seed
from engine.contracts import SCORE_EMBEDDING, SCORE_ITEM_IDS

BUDGET = 8


@pytest.fixture(scope="module")
def garments():
    (pool, _), _, _ = load_fashion_colour(2, pool=80, val=10, test=10, with_masks=True)
    return pool


def _project(c, settings, pool, **cfg) -> int:
    (settings.data_dir / "photos").mkdir(exist_ok=True)
    for i, img in enumerate(pool.images):
        Image.fromarray(img).save(settings.data_dir / "photos" / f"{i:03d}.jpg", quality=92)
    r = c.post("/api/v1/projects", json={"name": f"first-{time.monotonic_ns()}", "classes": list(pool.class_names),
                                         "config": {"model": "efficientnet-lite0", "image_size": 64, "channels": 3,
                                                    "pretrained": True, "budget": BUDGET, "reserve": 2,
                                                    "mc_samples": 2, **cfg}})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    assert c.post(f"/api/v1/projects/{pid}/items", json={"folder": "photos"}).status_code == 202
    run_jobs(settings, ("ingest",))
    return pid


def test_round_one_queues_typical_images_of_the_pretrained_embeddings(api, garments):
    c, settings = api
    pid = _project(c, settings, garments)  # first_batch left out: auto, so typical for this pretrained model
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    rnd = round_reaches(c, settings, pid, 1, "labeling")
    assert rnd["progress"]["cold_start"] is True and rnd["progress"]["first_batch"] == "typical"
    assert [j["kind"] for j in rnd["jobs"]] == ["score"] and rnd["model_version_id"] is None  # nothing trained
    queue = c.get(f"/api/v1/projects/{pid}/queue").json()["items"]
    batch = [e["item_id"] for e in queue if not e.get("reserve")]
    assert len(batch) == BUDGET and all(e["predicted"] is None for e in queue)  # no guesses: the head is untrained
    # Exactly TypiClust's picks on the pretrained embeddings the worker wrote.
    shard = np.load(paths.round_dir(settings, pid, 1) / "scores_00000.npz")
    ids, emb = shard[SCORE_ITEM_IDS], shard[SCORE_EMBEDDING].astype(np.float64)
    assert len(ids) == len(garments) and emb.shape[1] == 1280  # Lite0's pooled ImageNet features
    picks = typical_first_batch(emb, BUDGET + 2, np.random.default_rng(round_seed(0, 1)))
    assert [e["item_id"] for e in queue] == ids[picks].tolist()
    # Not the random sample a cold start would have queued.
    random_batch = ids[cold_start_order(len(ids), 0, 1)[:BUDGET]].tolist()
    assert set(batch) != set(random_batch)
    # Representative: the picks sit in denser places of the embedding than a random sample's images.
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    d = np.sqrt(np.maximum(((e[:, None] - e[None]) ** 2).sum(-1), 0))
    np.fill_diagonal(d, np.inf)
    knn = np.sort(d, axis=1)[:, :10].mean(1)
    pos = {int(i): k for k, i in enumerate(ids)}
    assert knn[[pos[i] for i in batch]].mean() < knn[[pos[i] for i in random_batch]].mean()


def test_random_when_asked_and_for_a_model_without_weights(api, garments):
    c, settings = api
    pid = _project(c, settings, garments, first_batch="random")
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    rnd = round_reaches(c, settings, pid, 1, "labeling")
    assert rnd["jobs"] == [] and "first_batch" not in rnd["progress"]
    # The default (auto): typical for a model that starts from pretrained weights, random otherwise.
    assert ProjectConfig().first_batch == "auto" and not ProjectConfig().typical_first_batch()  # small-cnn
    assert ProjectConfig(model="efficientnet-lite0", image_size=64, channels=3).typical_first_batch()
    assert not ProjectConfig(first_batch="typical").typical_first_batch()  # small-cnn: no pretrained weights
    assert not ProjectConfig(model="efficientnet-lite0", image_size=64, channels=3, pretrained=False,
                             first_batch="auto").typical_first_batch()
