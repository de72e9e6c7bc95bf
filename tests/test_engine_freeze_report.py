"""workers.freeze_report: the depth rule, and the report over real image files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.colour_fashion import export_folder, load_fashion_colour
from engine.datasets import load_image_folder
from workers.freeze_report import freeze_report, recommend_depth
from engine.model_specs import get_spec
from workers.models import build_model


def test_recommend_depth_rule():
    # Passing: ≥ 0.2 + 0.2 and ≥ 0.8 × 0.7 = 0.56, so blocks 1 and 2; the deepest, 2 → freeze 0..2.
    assert recommend_depth([0.5, 0.6, 0.7, 0.1, 0.1], 0.2, 5) == (3, [False, True, True, False, False])
    # 0.5 is within 80 % of the best (0.6) and 0.2 above chance: blocks 0, 1, 3 pass.
    k, passes = recommend_depth([0.5, 0.6, 0.2, 0.55, 0.1], 0.1, 5)
    assert k == 4 and passes == [True, True, False, True, False]
    # All pass: the last block still trains.
    assert recommend_depth([0.9] * 4, 0.1, 4)[0] == 3
    # Nothing clearly above chance: fine-tune everything.
    assert recommend_depth([0.3, 0.35, 0.3], 0.2, 3)[0] == 0
    with pytest.raises(ValueError, match="one rate per block"):
        recommend_depth([0.5], 0.1, 3)


@pytest.fixture(scope="module")
def colour():
    (pool, masks), _, _ = load_fashion_colour(1, pool=120, val=10, test=10, with_masks=True)
    return pool, masks


def test_report_with_object_masks(colour, tmp_path):
    pool, masks = colour
    spec = get_spec("efficientnet-lite0")
    m = build_model("efficientnet-lite0", 10, input_size=64)
    r = freeze_report(m, pool.images, pool.labels, masks=masks, fit_head=True, max_images=16,
                      block_names=spec.block_names, out_png=tmp_path / "freeze.png", show=4)
    assert len(r.blocks) == spec.num_blocks and r.images == 16
    assert [b.name for b in r.blocks] == list(spec.block_names)
    assert 0 < r.chance < 0.6 and "pointing game" in r.measure
    for b in r.blocks:
        assert 0 <= b.localisation_rate <= 1 and 0 <= b.energy_in_object <= 1 and 0 <= b.flip_iou <= 1
    # The recommendation is the stated rule applied to the reported numbers.
    k, passes = recommend_depth([b.localisation_rate for b in r.blocks], r.chance, spec.num_blocks)
    assert r.recommended_frozen_blocks == k and [b.passes for b in r.blocks] == passes
    # Some block of ImageNet features finds the garment clearly more often than chance does.
    assert max(b.localisation_rate for b in r.blocks) > r.chance + 0.2
    img = Image.open(r.figure)
    assert img.size == (170 + 4 * 96, spec.num_blocks * 96)
    # Deterministic: the same sample and maps.
    again = freeze_report(m, pool.images, pool.labels, masks=masks, fit_head=True, max_images=16)
    assert [b.localisation_rate for b in again.blocks] == [b.localisation_rate for b in r.blocks]


def test_report_over_a_folder_of_jpegs_without_masks(colour, tmp_path):
    pool, _ = colour
    export_folder(pool, tmp_path / "photos", limit_per_class=3)
    data, bad = load_image_folder(tmp_path / "photos", size=64, channels=3)
    assert not bad
    m = build_model("efficientnet-lite0", data.num_classes, input_size=64)
    r = freeze_report(m, data.images, data.labels, fit_head=True, max_images=12, out_png=tmp_path / "f.png")
    assert r.chance == 0.0 and "flip consistency" in r.measure
    assert 0 <= r.recommended_frozen_blocks < len(m.features)
    assert all(0 <= b.localisation_rate <= 1 for b in r.blocks)
    assert (tmp_path / "f.png").stat().st_size > 10_000
    d = r.as_dict()
    assert d["recommended_frozen_blocks"] == r.recommended_frozen_blocks and len(d["blocks"]) == 9
