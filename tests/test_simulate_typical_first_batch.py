"""`camloop simulate --first-batch typical` on a folder of colour photos: the initial labels are
the project's cold start (TypiClust on the pretrained model's embeddings of the pool), computed
by the same score job, through the frozen-trunk cache; `random` keeps the seeded random sample.
"""
from __future__ import annotations

import numpy as np
import pytest

from strategies.typical import typical_first_batch
from engine.colour_fashion import sample_photos
from engine.config import SimulationConfig
from engine.decisions import initial_labeled, round_seed
from workers.models import build_model
from workers.scoring import score_images
from workers.simulate import load_data, run_simulation

INITIAL = 10


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos") / "photos"
    assert sample_photos(root, per_class=8, side=64) == 80
    return root


def _config(photos, first_batch, tmp) -> SimulationConfig:
    return SimulationConfig(dataset=None, folder=str(photos), model="efficientnet-lite0", image_size=64, channels=3,
                            frozen_blocks=7, first_batch=first_batch, initial=INITIAL, budget=5, rounds=0, epochs=1,
                            mc_samples=0, threads=2, trunk_cache_dir=str(tmp / "trunk"))


def test_typical_initial_labels_are_typiclust_picks_on_the_pretrained_embeddings(photos, tmp_path):
    cfg = _config(photos, "typical", tmp_path)
    out = run_simulation(cfg)
    assert out["first_batch"] == "typical" and len(out["initial_labels"]) == INITIAL
    assert out["rounds"][0]["labeled"] == INITIAL
    assert any((tmp_path / "trunk").rglob("*.npy"))  # the shared trunk cache was used and kept

    # The same picks from an independent embedding of the pool: the pretrained model on pixels.
    data = load_data(cfg)
    model = build_model("efficientnet-lite0", len(data.class_names), input_size=64, frozen_blocks=7, pretrained=True)
    emb = score_images(model, data.pool.images, mc_samples=0).embedding.astype(np.float64)
    picks = typical_first_batch(emb, INITIAL, np.random.default_rng(round_seed(cfg.seed, 1)))
    expected = {data.pool_uris[i] for i in picks}
    # The run embedded from the float16 cache; k-means on the rounded features may move a pick.
    assert len(expected & set(out["initial_labels"])) >= INITIAL - 2

    random = run_simulation(_config(photos, "random", tmp_path))
    assert random["first_batch"] == "random"
    assert random["initial_labels"] == [data.pool_uris[i] for i in initial_labeled(len(data.pool), INITIAL, 0)]
    assert set(random["initial_labels"]) != set(out["initial_labels"])
