"""Selection: quotas, exclusion, priority order, random, edge cases."""
import numpy as np
import pytest

from strategies.selection import select


def _pool(n=600, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"u": rng.random(n), "v": rng.random(n)}, rng.integers(0, c, n), rng.normal(size=(n, 6))


def test_quotas_are_met_per_predicted_class_and_order_is_priority():
    cols, pred, emb = _pool()
    quota = np.array([5, 0, 10, 3])
    for e in (None, emb):
        idx = select(cols, {"u": 1, "v": 2}, pred, e, 18, quota, None, np.random.default_rng(0))
        assert np.bincount(pred[idx], minlength=4).tolist() == [5, 0, 10, 3]
        fused = (np.argsort(np.argsort(cols["u"])) + 2 * np.argsort(np.argsort(cols["v"]))) / 3
        assert list(fused[idx]) == sorted(fused[idx], reverse=True)
        assert len(set(idx.tolist())) == 18


def test_without_diversity_takes_the_top_of_each_class():
    cols, pred, _ = _pool()
    idx = select(cols, {"u": 1}, pred, None, 6, np.array([3, 3, 0, 0]), None, None)
    for c in (0, 1):
        best = np.flatnonzero(pred == c)[np.argsort(-cols["u"][pred == c])[:3]]
        assert set(idx[pred[idx] == c].tolist()) == set(best.tolist())


def test_excluded_classes_are_left_out_and_short_quotas_refilled():
    cols, pred, emb = _pool()
    excluded = np.array([False, True, False, False])
    idx = select(cols, {"u": 1}, pred, emb, 40, np.array([10, 10, 10, 10]), excluded, None)
    assert len(idx) == 40 and not (pred[idx] == 1).any()
    # No quotas: the global top among allowed classes.
    idx = select(cols, {"u": 1}, pred, None, 20, None, excluded, None)
    allowed = np.flatnonzero(pred != 1)
    assert set(idx.tolist()) == set(allowed[np.argsort(-cols["u"][allowed])[:20]].tolist())


def test_edge_cases():
    cols, pred, emb = _pool(n=30)
    assert select(cols, {"u": 1}, pred, emb, 100, None, None, None).size == 30  # budget > pool
    assert select(cols, {"u": 1}, pred, emb, 5, None, np.ones(4, bool), None).size == 0  # all excluded
    empty = {"u": np.zeros(0)}
    assert select(empty, {"u": 1}, np.zeros(0, int), np.zeros((0, 6)), 5, None, None, None).size == 0
    with pytest.raises(ValueError, match="NaN"):
        select({"u": np.r_[np.nan, cols["u"][1:]]}, {"u": 1}, pred, None, 5, None, None, None)


def test_random_is_seeded_and_uniformish():
    cols, pred, _ = _pool(n=1000)
    a = select(cols, {}, pred, None, 100, None, None, np.random.default_rng(5))
    b = select(cols, {}, pred, None, 100, None, None, np.random.default_rng(5))
    assert a.tolist() == b.tolist()
    # Not the top of any score column: random ignores scores.
    assert np.mean(cols["u"][a]) < 0.7
    with pytest.raises(ValueError, match="rng"):
        select(cols, {}, pred, None, 10, None, None, None)
