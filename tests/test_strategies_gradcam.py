"""Grad-CAM map statistics on maps whose answers are known by construction."""
import math

import numpy as np
import pytest
import torch

from strategies.gradcam_scores import CAM_SCORE_KEYS, cam_mask, cam_scores


def test_focused_map_scores_lower_than_diffuse_map():
    focused = torch.zeros(8, 8)
    focused[2:4, 2:4] = 1.0
    diffuse = torch.full((8, 8), 0.6)
    s = cam_scores(torch.stack([focused, diffuse]))
    assert set(s) == set(CAM_SCORE_KEYS)
    assert s["cam_mask_mean"].tolist() == pytest.approx([0.0, 0.4])  # 1 - mean inside mask
    assert s["cam_mask_area"].tolist() == pytest.approx([4 / 64, 1.0])
    assert s["cam_entropy"].tolist() == pytest.approx([math.log(4) / math.log(64), 1.0])
    assert s["cam_score"][0] < s["cam_score"][1]


def test_entropy_and_mask_against_numpy():
    rng = np.random.default_rng(3)
    maps = rng.uniform(0, 1, size=(5, 6, 7))
    s = cam_scores(torch.tensor(maps), threshold=0.4)
    m = maps >= 0.4
    np.testing.assert_array_equal(cam_mask(torch.tensor(maps), 0.4).numpy(), m)
    for i in range(5):
        q = maps[i].ravel() / maps[i].sum()
        assert s["cam_entropy"][i].item() == pytest.approx(-(q * np.log(q)).sum() / np.log(42))
        assert s["cam_mask_mean"][i].item() == pytest.approx(1 - maps[i][m[i]].mean())
        assert s["cam_mask_area"][i].item() == pytest.approx(m[i].mean())


def test_top2_overlap_is_iou_and_disagreement_is_member_std():
    a = torch.zeros(4, 4)
    a[:, :2] = 1  # left half
    b = torch.zeros(4, 4)
    b[:, 1:3] = 1  # middle half: IoU with left half = 4 / 12
    top2 = torch.stack([torch.stack([a, b]), torch.stack([a, a])])
    members = torch.stack([torch.stack([a, a]), torch.stack([b, a])])  # item 0 disagrees, item 1 not
    s = cam_scores(torch.stack([a, a]), top2_maps=top2, member_maps=members)
    assert s["cam_top2_overlap"].tolist() == pytest.approx([4 / 12, 1.0])
    # pixels where a != b (8 of 16) have std 0.5 across two members; x2 scaling -> 8/16.
    assert s["cam_disagreement"].tolist() == pytest.approx([0.5, 0.0])
    parts = ["cam_mask_mean", "cam_mask_area", "cam_entropy", "cam_top2_overlap", "cam_disagreement"]
    expected = torch.stack([s[k] for k in parts]).mean(0)
    assert torch.allclose(s["cam_score"], expected)


def test_dark_map_and_errors():
    s = cam_scores(torch.zeros(1, 5, 5))
    assert s["cam_mask_mean"].item() == 1.0 and s["cam_mask_area"].item() == 0.0
    assert s["cam_entropy"].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="NaN"):
        cam_scores(torch.full((1, 3, 3), float("nan")))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cam_scores(torch.full((1, 3, 3), 2.0))
    with pytest.raises(ValueError, match="top2_maps"):
        cam_scores(torch.rand(2, 3, 3), top2_maps=torch.rand(2, 3, 3, 3))
    assert cam_scores(torch.zeros(0, 3, 3))["cam_score"].shape == (0,)
