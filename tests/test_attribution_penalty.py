"""The attribution penalty of explanatory feedback (config feedback.penalty, issue 25): which
images it acts on (engine.attribution_penalty, through engine.step), the term itself
(workers.attribution: the share of the input-gradient energy outside an image's box) and that
training with it moves a model's attention off a shortcut outside the box."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import step
from engine.attribution_penalty import plan
from engine.config import ProjectConfig
from engine.contracts import ImageRefs, PenaltySpec
from workers.attribution import Penalty, normalised_boxes, outside_share, outside_weights


def _refs(ids, labels):
    ids = list(ids)
    return ImageRefs(files=["x.npy"], file=[0] * len(ids), row=list(range(len(ids))), item_ids=ids,
                     labels=list(labels))


def test_outside_weights_are_the_cells_share_outside_the_box():
    whole = outside_weights(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), 3, 3)
    assert torch.allclose(whole, torch.zeros(1, 3, 3), atol=1e-6)
    left = outside_weights(torch.tensor([[0.0, 0.0, 0.5, 1.0]]), 2, 2)
    assert torch.allclose(left, torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]), atol=1e-6)
    # A box over the middle third of a 3 × 3 grid's columns and half of its middle row.
    mid = outside_weights(torch.tensor([[1 / 3, 1 / 3, 2 / 3, 0.5]]), 3, 3)
    want = torch.ones(3, 3)
    want[1, 1] = 0.5
    assert torch.allclose(mid[0], want, atol=1e-6)


def test_outside_share_is_zero_for_a_model_that_reads_only_inside_and_one_for_one_that_reads_outside():
    x = torch.randn(4, 2, 2, 2, requires_grad=True)
    right = torch.zeros(2, 2, 2)
    right[:, :, 1] = 1.0                        # reads the right column only
    logits = torch.stack([(x * right).sum((1, 2, 3)), -(x * right).sum((1, 2, 3)), torch.zeros(4)], 1)
    rows = torch.tensor([True, True, False, True])
    active = torch.tensor([True, True, True])
    inside_right = torch.tensor([[0.5, 0.0, 1.0, 1.0]] * 3)
    inside_left = torch.tensor([[0.0, 0.0, 0.5, 1.0]] * 3)
    assert float(outside_share(x, logits, rows, inside_right, active).detach()) == pytest.approx(0.0, abs=1e-6)
    assert float(outside_share(x, logits, rows, inside_left, active).detach()) == pytest.approx(1.0, abs=1e-6)
    # An excluded class (−inf logit) is left out of Σ log p, not a NaN.
    masked = logits + torch.tensor([0.0, 0.0, float("-inf")])
    v = outside_share(x, masked, rows, inside_left, torch.tensor([True, True, False]))
    assert torch.isfinite(v) and float(v.detach()) == pytest.approx(1.0, abs=1e-6)
    assert v.requires_grad                      # a loss term: differentiable


def test_normalised_boxes_mark_the_rows_without_a_box():
    b = normalised_boxes(3, [2], [[8, 0, 16, 32]], 32, 16)
    assert np.isnan(b[:2]).all() and b[2].tolist() == [0.5, 0.0, 1.0, 1.0]
    p = Penalty(b, 2.0)
    assert len(p) == 1 and len(p.extended(5).boxes) == 5 and len(p.extended(5)) == 1


def test_the_plan_covers_the_flagged_images_the_round_trains_on_with_an_active_class():
    train = _refs([10, 11, 12, 13], [0, 1, 1, 0])
    boxes = {11: [1, 1, 5, 5], 13: [0, 2, 4, 6], 99: [0, 0, 3, 3]}   # 99: not trained on (held out)
    spec = plan(train, boxes, [True, True], 0.5)
    assert spec.item_ids == [11, 13] and spec.boxes == [[1, 1, 5, 5], [0, 2, 4, 6]] and spec.weight == 0.5
    assert plan(train, boxes, [True, False], 0.5).item_ids == [13]    # class 1 excluded
    assert plan(train, boxes, [True, True], 0.0) is None              # off
    assert plan(train, {}, [True, True], 1.0) is None
    with pytest.raises(ValueError, match="x0 < x1"):
        PenaltySpec(item_ids=[1], boxes=[[5, 0, 5, 4]], weight=1.0)
    with pytest.raises(ValueError):
        PenaltySpec(item_ids=[1], boxes=[[0, 0, 5, 4]], weight=0.0)


def _shortcut_data(n, seed, cue_agrees):
    """8×8 one-channel images: the class is a bar inside the box (rows 2–5, columns 2–5:
    vertical for 0, horizontal for 1, faint); a bright corner pixel outside the box names the
    class too when `cue_agrees`, else it is random."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    for i, c in enumerate(y):
        if c == 0:
            x[i, 0, 2:6, 3] += 1.0
        else:
            x[i, 0, 3, 2:6] += 1.0
        cue = c if cue_agrees else rng.integers(0, 2)
        x[i, 0, 0, 0 if cue == 0 else 7] += 3.0
    return torch.from_numpy(x), torch.from_numpy(y)


def _fit(weight: float) -> tuple[float, float]:
    """(outside share of the trained model's input gradients on fresh images, accuracy where the
    corner cue is random) after training a tiny CNN with the penalty at `weight`."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 64, 2))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    x, y = _shortcut_data(256, 1, True)
    box = torch.tensor([[2 / 8, 2 / 8, 6 / 8, 6 / 8]]).repeat(32, 1)
    for _ in range(60):
        for s in range(0, 256, 32):
            xb = x[s:s + 32].clone().requires_grad_(True)
            logits = net(xb)
            loss = torch.nn.functional.cross_entropy(logits, y[s:s + 32])
            loss = loss + weight * outside_share(xb, logits, torch.ones(32, dtype=torch.bool), box,
                                                 torch.ones(2, dtype=torch.bool))
            opt.zero_grad()
            loss.backward()
            opt.step()
    xt, yt = _shortcut_data(256, 2, False)
    xt.requires_grad_(True)
    logits = net(xt)
    share = float(outside_share(xt, logits, torch.ones(256, dtype=torch.bool), box.repeat(8, 1),
                                torch.ones(2, dtype=torch.bool)).detach())
    return share, float((logits.argmax(1) == yt).float().mean())


def test_training_with_the_penalty_moves_the_model_off_a_shortcut_outside_the_box():
    share_off, acc_off = _fit(0.0)
    share_on, acc_on = _fit(10.0)
    assert share_on < share_off / 2, (share_on, share_off)
    assert acc_on > acc_off + 0.1, (acc_on, acc_off)


def test_step_training_plans_the_penalty_beside_the_counterexamples(tmp_path):
    from engine.contracts import RoundFiles

    cfg = ProjectConfig.model_validate({"feedback": {"penalty": 2.0, "counterexamples": 2, "swap_suspects": False},
                                        "model": "small-cnn", "pretrained": False, "frozen_blocks": 0})
    labeled = _refs(range(1, 41), [i % 2 for i in range(40)])
    val = _refs(range(100, 110), [i % 2 for i in range(10)])
    facts = step.TrainingFacts(number=2, class_names=["a", "b"], active=[True, True], labeled=labeled, val=val,
                               test=ImageRefs(), previous_train_ids=None, files=RoundFiles(str(tmp_path)),
                               flagged={3: [0, 0, 4, 4], 4: [1, 1, 5, 5]})
    m = step.training(cfg, 1, facts).manifest
    assert m.penalty.item_ids == [3, 4] and m.penalty.weight == 2.0
    assert m.counterexamples.sources.item_ids == [3, 4]
    off = ProjectConfig.model_validate({**cfg.model_dump(), "feedback": {"penalty": 0.0, "swap_suspects": False}})
    assert step.training(off, 1, facts).manifest.penalty is None


def test_the_penalty_at_the_pixels_from_the_trunk_cache_equals_the_penalty_on_pixels(tmp_path):
    # penalty_at "pixels" on the cache runs the penalised rows through the frozen trunk: the
    # same training as on pixels (where the penalty is at the pixels anyway), epoch by epoch —
    # and "trained" on the cache is another one (the cached output is the input there).
    from tests.test_engine_trunk_cache import _data, _model
    from workers.train import TrainConfig, train_model
    from workers.trunk_cache import TrunkCache, train_from_cache

    train, dig = _data(40, 1)
    val, vdig = _data(12, 2)
    is_new = np.zeros(len(train), bool)
    side = train.images.shape[1]
    boxes = normalised_boxes(len(train), range(0, 40, 3), [[8, 8, side - 8, side - 8]] * 14, side, side)
    # lr 0: the same weights at every step, so the epochs' mean shares compare the penalty's
    # inputs alone (with steps taken, Adam turns the last-bit differences of the trunk's batches
    # into ±lr moves of weights with ~0 gradients: tests/test_engine_trunk_cache.py).
    cfg = TrainConfig(epochs=2, augment=False, seed=5, min_steps_per_epoch=4, patience=10, lr=0.0)
    full, cached, coarse = _model(3), _model(3), _model(3)
    r_full = train_model(full, train, is_new, val, None, cfg, penalty=Penalty(boxes, 5.0, "pixels"))
    r_cache = train_from_cache(cached, TrunkCache(tmp_path, cached, dtype=torch.float32), train, dig, is_new, val,
                               vdig, None, cfg, penalty=Penalty(boxes, 5.0, "pixels"))
    r_coarse = train_from_cache(coarse, TrunkCache(tmp_path, coarse, dtype=torch.float32), train, dig, is_new, val,
                                vdig, None, cfg, penalty=Penalty(boxes, 5.0, "trained"))
    share = [h["attribution_outside"] for h in r_full.history]
    assert all(0.0 < v < 1.0 for v in share)
    np.testing.assert_allclose([h["attribution_outside"] for h in r_cache.history], share, atol=1e-5)
    np.testing.assert_allclose([h["train_loss"] for h in r_cache.history],
                               [h["train_loss"] for h in r_full.history], atol=1e-5)
    assert abs(r_coarse.history[0]["attribution_outside"] - share[0]) > 1e-3
