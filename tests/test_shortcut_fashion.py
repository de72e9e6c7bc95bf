"""engine.shortcut_fashion: the colour cast outside the garment's box names a cue-bearing class
at the cue rate in pool and validation, is drawn from all ten colours for the other classes, and is random in the
test split; the pixels are the composite with the cast outside the box only; every region lies
inside its image and covers its garment; `camloop sample-photos --shortcut` writes class folders
and regions.json, the same for the same seed."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from engine.colour_fashion import _composite
from engine.datasets import NAMED, NAMED_MODEL_DEFAULTS, load_image_folder
from engine.shortcut_fashion import (CAST, CUE_CLASSES, CUE_COLOURS, DEFAULT_CUE_RATE, FIVE_CUE_CLASSES,
                                     GARMENT_SCALE, cast_outside, load_fashion_shortcut)

runner = CliRunner()


@pytest.fixture(scope="module")
def parts():
    # the setting before 2026-12-07 (second session): five cue-bearing classes at 0.9, where a
    # wrong cue can be drawn (the default, 1.0, never draws one)
    return load_fashion_shortcut(0, pool=600, val=200, test=600, with_cues=True, side=64, cue_rate=0.9,
                                 cue_classes=FIVE_CUE_CLASSES)


def _recomposite(d, split: int, side: int = 64):
    """The garments of part `split` composited again with the generator's own stream (no cast)."""
    from engine.colour_fashion import split_fashion

    train, official_test, pool_i, val_i, test_i = split_fashion(0, 600, 200, 600)
    src = [train.subset(pool_i), train.subset(val_i), official_test.subset(test_i)][split]
    rng = np.random.default_rng([0, split, side, 25])
    return [_composite(src.images[i, ..., 0], rng, side, scale=GARMENT_SCALE) for i in range(len(src))]


def test_the_cast_names_cue_bearing_classes_at_the_rate_in_pool_and_val_and_at_chance_in_test(parts):
    (pool, pc), (val, vc), (test, tc) = parts
    bearing = np.isin(pool.labels, FIVE_CUE_CLASSES)
    assert abs((pc == pool.labels)[bearing].mean() - 0.9) < 0.05
    assert abs((vc == val.labels)[np.isin(val.labels, FIVE_CUE_CLASSES)].mean() - 0.9) < 0.08
    # The other classes draw from all ten colours, in every split: their background says nothing.
    for labels, cues in ((pool.labels, pc), (val.labels, vc)):
        free = ~np.isin(labels, FIVE_CUE_CLASSES)
        assert len(np.unique(cues[free])) == 10
        assert abs((cues[free] == labels[free]).mean() - 0.1) < 0.08
        assert abs(np.isin(cues[free], FIVE_CUE_CLASSES).mean() - 0.5) < 0.1
    # So a cue colour names its class in the pool (the shortcut) well above chance (about 62 %),
    # and a free class's own colour does not.
    for c in FIVE_CUE_CLASSES:
        assert (pool.labels[pc == c] == c).mean() > 0.45
    for c in set(range(10)) - set(FIVE_CUE_CLASSES):
        assert (pool.labels[pc == c] == c).mean() < 0.4
    # Test: uniformly random over all ten colours, for every class.
    assert abs((tc == test.labels).mean() - 0.1) < 0.04
    assert np.isin(tc[~np.isin(test.labels, FIVE_CUE_CLASSES)], FIVE_CUE_CLASSES).mean() > 0.4
    # Wrong cues in the pool spread over the other colours.
    assert len(np.unique(pc[bearing & (pc != pool.labels)])) >= 8


def test_the_pixels_are_the_composite_with_the_cast_outside_the_box_only(parts):
    for split in (0, 2):
        d, cues = parts[split]
        for i, (img, mask, box) in enumerate(_recomposite(d, split)[:40]):
            assert tuple(d.regions[i]) == tuple(box)
            x0, y0, x1, y1 = box
            assert mask.any() and not mask[:y0].any() and not mask[y1:].any()  # the box covers the garment
            assert not mask[:, :x0].any() and not mask[:, x1:].any()
            assert np.array_equal(d.images[i], cast_outside(img, box, CUE_COLOURS[cues[i]]))
            assert np.array_equal(d.images[i, y0:y1, x0:x1], img[y0:y1, x0:x1])  # inside: untouched
            outside = np.ones((64, 64), bool)
            outside[y0:y1, x0:x1] = False
            want = (1 - CAST) * img[outside].astype(float) + CAST * CUE_COLOURS[cues[i]]
            assert np.abs(d.images[i][outside] - want).max() <= 0.5 + 1e-9


def test_regions_lie_in_the_image_and_leave_room_for_the_cast(parts):
    side = 64
    for d, _ in parts:
        r = d.regions
        assert r.shape == (len(d), 4)
        assert (r[:, 0] >= 0).all() and (r[:, 1] >= 0).all() and (r[:, 2] <= side).all() and (r[:, 3] <= side).all()
        assert (r[:, 2] > r[:, 0]).all() and (r[:, 3] > r[:, 1]).all()
        area = (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1]) / side ** 2
        assert area.max() <= GARMENT_SCALE[1] ** 2 + 0.02  # the cast covers half the image or more


def test_seeded_and_a_named_data_set_with_the_colour_model(parts):
    again = load_fashion_shortcut(0, pool=600, val=200, test=600, with_cues=True, side=64, cue_rate=0.9,
                                  cue_classes=FIVE_CUE_CLASSES)
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


def test_the_cue_bearing_classes_and_the_rate_are_parameters():
    (pool, pc), (val, vc), (test, tc) = load_fashion_shortcut(0, pool=400, val=100, test=100, with_cues=True, side=48,
                                                               cue_rate=1.0, cue_classes=(1, 3))
    bearing = np.isin(pool.labels, (1, 3))
    assert (pc == pool.labels)[bearing].all() and (vc == val.labels)[np.isin(val.labels, (1, 3))].all()
    assert (pc[~bearing] == pool.labels[~bearing]).mean() < 0.3  # the others: random over all ten
    assert (tc == test.labels).mean() < 0.3


def test_the_default_cue_every_image_of_seven_classes():
    assert DEFAULT_CUE_RATE == 1.0 and CUE_CLASSES == (0, 1, 2, 3, 4, 6, 8)
    (pool, pc), (val, vc), (test, tc) = load_fashion_shortcut(0, pool=500, val=100, test=200, with_cues=True, side=40)
    for labels, cues in ((pool.labels, pc), (val.labels, vc)):
        bearing = np.isin(labels, CUE_CLASSES)
        assert (cues[bearing] == labels[bearing]).all()
        assert len(np.unique(cues[~bearing])) >= 8  # footwear: any of the ten colours
    for c in CUE_CLASSES:  # a cue colour names its class in about 77 % of pool images
        assert (pool.labels[pc == c] == c).mean() > 0.6
    assert (tc == test.labels).mean() < 0.25
