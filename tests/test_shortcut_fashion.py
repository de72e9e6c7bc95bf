"""engine.shortcut_fashion: the corner mark names the class at the cue rate in pool and
validation and at chance in the test split; every region lies inside its image, covers its garment
and misses the mark; `camloop sample-photos --shortcut` writes class folders and regions.json,
the same for the same seed."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from engine.colour_fashion import _composite
from engine.datasets import NAMED, NAMED_MODEL_DEFAULTS, load_image_folder
from engine.shortcut_fashion import CUE_COLOURS, GARMENT_SCALE, load_fashion_shortcut, mark_side

runner = CliRunner()


@pytest.fixture(scope="module")
def parts():
    return load_fashion_shortcut(0, pool=600, val=200, test=600, with_cues=True, side=64)


def _mark_class(images: np.ndarray) -> np.ndarray:
    m = mark_side(images.shape[1])
    corner = images[:, :m, :m].reshape(len(images), -1, 3).mean(1)
    return np.argmin(((corner[:, None, :] - CUE_COLOURS[None].astype(float)) ** 2).sum(-1), axis=1)


def test_the_cue_names_the_class_at_the_rate_in_pool_and_val_and_at_chance_in_test(parts):
    (pool, pc), (val, vc), (test, tc) = parts
    assert abs((pc == pool.labels).mean() - 0.9) < 0.04
    assert abs((vc == val.labels).mean() - 0.9) < 0.06
    assert abs((tc == test.labels).mean() - 0.1) < 0.04
    # The pixels carry it: the corner's colour is the cue's.
    for d, cues in ((pool, pc), (test, tc)):
        assert (_mark_class(d.images) == cues).all()
    # Wrong cues in the pool spread over the other classes.
    wrong = pc[pc != pool.labels]
    assert len(np.unique(wrong)) >= 8


def test_regions_lie_in_the_image_cover_the_garment_and_miss_the_mark(parts):
    side, m = 64, mark_side(64)
    for d, _ in parts:
        r = d.regions
        assert r.shape == (len(d), 4)
        assert (r[:, 0] >= 0).all() and (r[:, 1] >= 0).all() and (r[:, 2] <= side).all() and (r[:, 3] <= side).all()
        assert (r[:, 2] > r[:, 0]).all() and (r[:, 3] > r[:, 1]).all()
        assert ((r[:, 0] >= m) | (r[:, 1] >= m)).all()  # off the top-left mark
    # Covering: the colour generator's own mask (garment pixels) lies inside the box it returns.
    from engine.fashion_mnist import load_fashion_mnist

    train, _ = load_fashion_mnist()
    rng = np.random.default_rng(0)
    for i in range(30):
        _, mask, (x0, y0, x1, y1) = _composite(train.images[i, ..., 0], rng, 64, avoid=m, scale=GARMENT_SCALE)
        assert mask.any() and not mask[:y0].any() and not mask[y1:].any()
        assert not mask[:, :x0].any() and not mask[:, x1:].any()


def test_seeded_and_a_named_data_set_with_the_colour_model(parts):
    again = load_fashion_shortcut(0, pool=600, val=200, test=600, with_cues=True, side=64)
    for (a, ca), (b, cb) in zip(parts, again):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.regions, b.regions)
        assert np.array_equal(ca, cb)
    assert "fashion-shortcut" in NAMED
    assert NAMED_MODEL_DEFAULTS["fashion-shortcut"]["model"] == "efficientnet-lite0"
    # subset keeps the regions with their images
    (pool, _), _, _ = parts
    sub = pool.subset([3, 1])
    assert np.array_equal(sub.regions, pool.regions[[3, 1]])


def _digest(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_sample_photos_shortcut_writes_class_folders_and_regions(tmp_path):
    from service.cli import app

    r = runner.invoke(app, ["sample-photos", str(tmp_path / "a"), "--per-class", "3", "--side", "96", "--shortcut"])
    assert r.exit_code == 0, r.output
    assert "regions.json" in r.output
    regions = json.loads((tmp_path / "a" / "regions.json").read_text())
    files = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.jpg"))
    assert sorted(regions) == files and len(files) == 30
    for rel, (x0, y0, x1, y1) in regions.items():
        with Image.open(tmp_path / "a" / rel) as im:
            assert im.size == (96, 96)
        assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
    data, bad = load_image_folder(tmp_path / "a", size=96, channels=3)
    assert not bad and len(data) == 30  # regions.json beside the class folders is no class
    runner.invoke(app, ["sample-photos", str(tmp_path / "b"), "--per-class", "3", "--side", "96", "--shortcut"])
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    r = runner.invoke(app, ["sample-photos", str(tmp_path / "c"), "--shortcut", "--cue-rate", "2"])
    assert r.exit_code == 2 and "cue_rate must be in [0, 1]" in r.output


def test_simulate_gives_the_named_shortcut_set_the_colour_model_unless_set():
    from engine.config import SimulationConfig
    from workers.simulate import model_from_images

    cfg, choice = model_from_images(SimulationConfig(dataset="fashion-shortcut"))
    assert (cfg.model, cfg.image_size, cfg.channels, cfg.pretrained, cfg.frozen_blocks) == \
        ("efficientnet-lite0", 96, 3, True, 7)
    assert choice["chosen"]["model"] == "efficientnet-lite0"
    cfg, _ = model_from_images(SimulationConfig(dataset="fashion-shortcut", image_size=64))
    assert cfg.image_size == 64 and cfg.model == "efficientnet-lite0"
    cfg, choice = model_from_images(SimulationConfig(dataset="fashion-colour"))
    assert choice is None  # the other named sets keep their defaults
