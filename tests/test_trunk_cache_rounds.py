"""Rounds on a cached frozen trunk: the train and score jobs, as the service and `camloop simulate`
run them, read the project's trunk cache when the project has pretrained frozen blocks.

What a user relies on: the pool's trunk pass happens once (the first scoring) and later rounds
compute nothing for it again; scores from the cache agree with scores from pixels (the cache is
float16, so to that rounding); a project without frozen blocks, or with the cache turned off,
runs on pixels as before.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import coloured_squares
from workers import jobs
from engine import contracts as c
from engine import plan
from engine.config import ProjectConfig

S, C, N_POOL, N_VAL = 64, 3, 48, 12
NAMES = ["red", "green", "blue"]


def _images(n, seed):
    labels = np.arange(n) % C  # the class is the square's colour channel
    return coloured_squares(labels, S, np.random.default_rng(seed)), labels


def _refs(folder: Path, name: str, images, labels, first_id: int) -> c.ImageRefs:
    path = folder / f"{name}.npy"
    np.save(path, images)
    n = len(images)
    return c.ImageRefs.build(range(first_id, first_id + n), [path] * n, range(n), labels)


def _config(**kw) -> ProjectConfig:
    return ProjectConfig(**{"model": "efficientnet-lite0", "image_size": S, "channels": 3, "frozen_blocks": 7,
                            "epochs": 1, "mc_samples": 2, "budget": 6, "reserve": 0, **kw})


def _clean_rows(trunk: Path) -> int:
    return sum(len(np.load(f, mmap_mode="r")) for f in trunk.glob("*/clean/*.npy"))


@pytest.fixture
def project(tmp_path):
    layout = c.Layout(tmp_path / "artifacts")
    cache = layout.cache_dir(0)
    cache.mkdir(parents=True)
    pool_x, pool_y = _images(N_POOL, 0)
    val_x, val_y = _images(N_VAL, 1)
    return {"layout": layout, "pool": _refs(cache, "pool", pool_x, pool_y, 0),
            "val": _refs(cache, "val", val_x, val_y, N_POOL)}


def _train(cfg, p, number, labeled: np.ndarray, previous=None):
    files = p["layout"].round_files(0, number)
    files.dir.mkdir(parents=True)
    split = plan.split_training(p["pool"].take(np.flatnonzero(labeled)), p["val"], cfg, C)
    m = plan.train_manifest(cfg, 0, number, NAMES, [True] * C, split, c.ImageRefs(), previous, files,
                            trunk_dir=plan.trunk_cache(cfg, p["layout"], 0))
    c.write_manifest(files.train_manifest, m)
    jobs.train_round(str(files.train_manifest))
    return files, m


def _score(cfg, p, files, labeled: np.ndarray, trunk_dir, name="score.json"):
    m = plan.score_manifest(cfg, 0, 1, NAMES, [True] * C, str(files.checkpoint),
                            p["pool"].take(np.flatnonzero(~labeled)), 10_000, [], files, trunk_dir)
    out = files.dir / name.replace(".json", "")
    m = m.model_copy(update={"out_dir": str(out)})
    out.mkdir()
    c.write_manifest(out / name, m)
    jobs.score_shard(str(out / name), 0)
    return np.load(c.RoundFiles(out).score_file(0))


def test_rounds_train_and_score_from_the_trunk_cache_and_pass_the_pool_once(project, monkeypatch):
    monkeypatch.setattr(jobs, "DEVICE", "cpu")
    cfg = _config()
    trunk = plan.trunk_cache(cfg, project["layout"], 0)
    assert trunk == str(project["layout"].trunk_dir(0))
    labeled = np.zeros(N_POOL, bool)
    labeled[:12] = True
    files, m = _train(cfg, project, 1, labeled)
    assert m.trunk_cache == trunk
    # The train job cached the training images and the evidence (the validation split), nothing else.
    assert _clean_rows(Path(trunk)) == 12 + N_VAL
    cached = _score(cfg, project, files, labeled, trunk)
    assert _clean_rows(Path(trunk)) == N_POOL + N_VAL  # the pool's trunk pass: once, here
    # The same checkpoint scored from pixels: the same answers, to the float16 cache's rounding.
    pixels = _score(cfg, project, files, labeled, None, name="pixels.json")
    assert list(cached[c.SCORE_ITEM_IDS]) == list(pixels[c.SCORE_ITEM_IDS])
    np.testing.assert_allclose(cached[c.SCORE_PROBS], pixels[c.SCORE_PROBS], atol=2e-2)
    assert (cached[c.SCORE_PRED] == pixels[c.SCORE_PRED]).mean() >= 0.9
    assert c.SCORE_CAM in cached.files and cached[c.SCORE_CAM].shape == pixels[c.SCORE_CAM].shape
    cam_c, cam_p = cached[c.SCORE_CAM].astype(np.float32), pixels[c.SCORE_CAM].astype(np.float32)
    corr = np.corrcoef(cam_c.reshape(len(cam_c), -1).ravel(), cam_p.reshape(len(cam_p), -1).ravel())[0, 1]
    assert corr > 0.95, f"Grad-CAM from the cache differs from Grad-CAM on pixels (r = {corr:.3f})"

    # Round 2: six more labels. Training and scoring compute no trunk output again.
    chunks = sorted(p.name for p in Path(trunk).glob("*/clean/*.npy"))
    labeled[12:18] = True
    files2, _ = _train(cfg, project, 2, labeled, previous=m.train.item_ids)
    _score(cfg, project, files2, labeled, trunk)
    assert sorted(p.name for p in Path(trunk).glob("*/clean/*.npy")) == chunks


def test_projects_without_frozen_pretrained_blocks_run_on_pixels(project):
    layout = project["layout"]
    assert plan.trunk_cache(_config(trunk_cache=False), layout, 0) is None
    assert plan.trunk_cache(_config(frozen_blocks=0), layout, 0) is None
    assert plan.trunk_cache(ProjectConfig(), layout, 0) is None  # the small CNN: nothing pretrained to freeze
    with pytest.raises(ValueError, match="frozen"):
        _config(pretrained=False)  # frozen random blocks are refused, so no cache of them either


def test_counterexamples_train_from_the_trunk_cache_and_are_computed_once(project, monkeypatch):
    """Explanatory feedback on a cached trunk (issue 25): the train job makes the flagged images'
    copies (engine.counterexamples), caches their trunk output beside the labels', and the next
    round's copies are the same images (seeded by item), so nothing is computed for them again."""
    from engine.counterexamples import plan as plan_counterexamples

    monkeypatch.setattr(jobs, "DEVICE", "cpu")
    cfg = _config(feedback={"counterexamples": 2})
    trunk = Path(plan.trunk_cache(cfg, project["layout"], 0))
    labeled = np.zeros(N_POOL, bool)
    labeled[:12] = True
    flagged = {0: [10, 10, 40, 40], 4: [0, 0, 32, 64]}   # item id → box in decoded pixels
    chunks = None
    for number in (1, 2):
        files = project["layout"].round_files(0, number)
        files.dir.mkdir(parents=True)
        split = plan.split_training(project["pool"].take(np.flatnonzero(labeled)), project["val"], cfg, C)
        m = plan.train_manifest(cfg, 0, number, NAMES, [True] * C, split, c.ImageRefs(), None, files,
                                trunk_dir=str(trunk))
        spec = plan_counterexamples(m.train, flagged, [True] * C, 2, "noise", cfg.seed)
        assert spec is not None and spec.sources.item_ids == [0, 4]
        c.write_manifest(files.train_manifest, m.model_copy(update={"counterexamples": spec}))
        jobs.train_round(str(files.train_manifest))
        tr = json.loads(files.metrics.read_text())["train"]
        assert tr["counterexamples"] == 4 and tr["n_train"] == tr["n_labeled"] == 12  # copies are no labels
        if chunks is None:
            assert _clean_rows(trunk) == 12 + N_VAL + 4  # the labels, the evidence, the four copies
            chunks = sorted(p.name for p in trunk.glob("*/clean/*.npy"))
        else:
            assert sorted(p.name for p in trunk.glob("*/clean/*.npy")) == chunks  # nothing new
