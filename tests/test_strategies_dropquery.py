"""strategies.dropquery: the candidate rule and the nearest-to-centre pick on hand-made examples
whose answer is known, and the k-means use checked against scikit-learn called directly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from strategies.dropquery import (cluster_centre_picks, disagreement, dropquery_pick, is_candidate,
                                  nearest_to_centres, select_dropquery)


def test_disagreement_is_the_share_of_passes_that_change_the_guess():
    pred = np.array([0, 1, 2, 0])
    passes = np.array([[0, 1, 1, 2],
                       [1, 1, 2, 2],
                       [0, 2, 1, 2]])
    share = disagreement(pred, passes)
    np.testing.assert_allclose(share, [1 / 3, 1 / 3, 2 / 3, 1.0])
    # "At least half": 2 of 3 passes is a candidate, 1 of 3 is not.
    assert is_candidate(share).tolist() == [False, False, True, True]
    # The same on torch tensors (workers.scoring calls it on the device).
    t = disagreement(torch.as_tensor(pred), torch.as_tensor(passes))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), share)


def test_exactly_half_of_an_even_number_of_passes_is_a_candidate():
    pred = np.array([0, 0, 0])
    passes = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])  # 2, 1, 0 of 4 differ
    share = disagreement(pred, passes)
    np.testing.assert_allclose(share, [0.5, 0.25, 0.0])
    assert is_candidate(share).tolist() == [True, False, False]


def test_disagreement_checks_shapes():
    with pytest.raises(ValueError, match="pass_preds"):
        disagreement(np.zeros(3, int), np.zeros((2, 4), int))
    with pytest.raises(ValueError, match="pass"):
        disagreement(np.zeros(3, int), np.zeros((0, 3), int))
    with pytest.raises(ValueError, match="NaN"):
        is_candidate(np.array([0.5, np.nan]))


def test_nearest_to_centres_takes_each_clusters_own_nearest_member():
    x = np.array([[0.0, 0.0], [2.0, 0.0], [0.9, 0.0], [10.0, 0.0], [11.0, 0.0]])
    labels = np.array([0, 0, 0, 1, 1])
    centres = np.array([[1.0, 0.0], [10.4, 0.0], [50.0, 0.0]])  # centre 2 has no members: nothing
    assert nearest_to_centres(x, labels, centres).tolist() == [2, 3]
    # A point nearer to a centre but assigned elsewhere is not that centre's pick.
    assert nearest_to_centres(x, np.array([0, 0, 1, 1, 1]), centres[:2]).tolist() == [0, 3]


def _blobs():
    # Three blobs whose centre point is their mean: k-means with k = 3 finds them and the pick of
    # each is that centre point (indices 0, 5, 10); blobs A and B have 5 points, C has 3.
    plus = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], float)
    a, b = plus, plus + [20, 20]
    c = np.array([[-20, 20], [-19, 20], [-21, 20]], float)
    return np.vstack([a, b, c])


def test_cluster_centre_picks_on_a_hand_made_example():
    x = _blobs()
    picks = cluster_centre_picks(x, 3, random_state=0)
    assert sorted(picks.tolist()) == [0, 5, 10]
    assert picks[-1] == 10  # the smallest cluster last
    # k ≥ n: every point, no clustering; k = 0: nothing.
    assert cluster_centre_picks(x[:4], 4).tolist() == [0, 1, 2, 3]
    assert cluster_centre_picks(x, 0).size == 0


@pytest.mark.parametrize("seed", [0, 3, 17])
def test_cluster_centre_picks_equal_scikit_learn_used_directly(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 6))
    k = 9
    km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x)
    want = []
    for j in range(k):
        members = np.flatnonzero(km.labels_ == j)
        want.append(members[np.argmin(((x[members] - km.cluster_centers_[j]) ** 2).sum(1))])
    sizes = np.bincount(km.labels_, minlength=k)
    want = np.array(want)[np.argsort(-sizes, kind="stable")]
    np.testing.assert_array_equal(cluster_centre_picks(x, k, random_state=seed), want)


def test_fewer_distinct_points_than_clusters_gives_fewer_picks():
    x = np.array([[0.0, 0.0]] * 4 + [[5.0, 5.0]] * 4)
    picks = cluster_centre_picks(x, 3, random_state=0)
    assert len(picks) == 2 and len(set(picks.tolist())) == 2
    assert {int(p) < 4 for p in picks} == {True, False}


def test_dropquery_pick_fills_from_the_fallback_when_candidates_are_few():
    x = _blobs()
    cand = np.zeros(13, bool)
    cand[[1, 6]] = True                      # two candidates, four picks
    fallback = np.arange(13, dtype=float)    # the fill takes the highest scores: 12, 11
    picks = dropquery_pick(x, cand, 4, fallback)
    assert picks[:2].tolist() == [1, 6] and picks[2:].tolist() == [12, 11]
    # With enough candidates only candidates are picked: one per blob.
    cand[:] = True
    assert sorted(dropquery_pick(x, cand, 3, fallback).tolist()) == [0, 5, 10]
    # The embeddings of the candidates only are read.
    seen = []

    def emb(rows):
        seen.append(rows.copy())
        return x[rows]

    cand[:] = False
    cand[[0, 1, 5, 6, 10]] = True
    dropquery_pick(emb, cand, 2, fallback)
    assert len(seen) == 1 and seen[0].tolist() == [0, 1, 5, 6, 10]


def test_dropquery_pick_subsamples_very_many_candidates():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    seen = []
    picks = dropquery_pick(lambda r: seen.append(r) or x[r], np.ones(500, bool), 5, np.zeros(500), 1,
                           max_clustered=50, rng=np.random.default_rng(2))
    assert len(seen[0]) == 50 and len(picks) == 5 and set(picks.tolist()) <= set(seen[0].tolist())
    with pytest.raises(ValueError, match="rng"):
        dropquery_pick(x, np.ones(500, bool), 5, np.zeros(500), max_clustered=50)


def test_select_dropquery_keeps_the_class_quotas_and_orders_candidates_first():
    x = _blobs()
    # Class 0: blob A and C; class 1: blob B. Candidates: blob A, B entirely; nothing of C.
    pred = np.array([0] * 5 + [1] * 5 + [0] * 3)
    share = np.array([1.0] * 10 + [0.0] * 3)
    fused = np.linspace(0, 1, 13)
    rng = np.random.default_rng(0)
    out = select_dropquery(share, fused, pred, x, 3, class_quota=[2, 1], rng=rng)
    assert len(out) == 3 and len(set(out.tolist())) == 3
    assert np.bincount(pred[out], minlength=2).tolist() == [2, 1]
    # Class 1's quota of 1: one cluster of blob B, its centre point (index 5).
    assert 5 in out.tolist()
    # Class 0's 2 picks: two clusters of blob A's five candidates (C has no candidates).
    assert all(i < 5 for i in out.tolist() if pred[i] == 0)
    # Quota 3 for class 1 but only class 0 eligible beyond: the unfilled budget goes to the rest.
    eligible = np.ones(13, bool)
    eligible[[6, 7, 8, 9]] = False           # class 1 keeps only index 5
    out = select_dropquery(share, fused, pred, x, 4, class_quota=[1, 3], eligible=eligible,
                           rng=np.random.default_rng(0))
    assert len(out) == 4 and not set(out.tolist()) & {6, 7, 8, 9}
    # Queue order: candidates (by fused score) before fill picks (by fused score).
    share2 = np.array([1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    out = select_dropquery(share2, fused, pred, x, 3, rng=np.random.default_rng(0))
    assert out.tolist() == [0, 12, 11]
    with pytest.raises(ValueError, match="rng"):
        select_dropquery(share, fused, pred, x, 3)
