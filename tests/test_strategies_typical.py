"""strategies.typical: TypiClust's first batch on blobs whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from strategies.typical import kmeans, typical_first_batch, typicality


def _blobs(sizes, seed=0, spread=0.3, d=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (len(sizes), d))
    x = np.concatenate([c + rng.normal(0, spread, (s, d)) for c, s in zip(centres, sizes)])
    y = np.repeat(np.arange(len(sizes)), sizes)
    return x, y, centres


def test_one_typical_point_per_mode():
    sizes = [400, 200, 100, 50, 25]
    x, y, centres = _blobs(sizes)
    picks = typical_first_batch(x, 5, np.random.default_rng(0), normalise=False)
    assert sorted(y[picks]) == [0, 1, 2, 3, 4]  # every mode, where random would likely miss the small ones
    assert list(y[picks]) == [0, 1, 2, 3, 4]  # largest cluster first
    # Typical = near the dense centre: each pick is closer to its centre than 90 % of its blob.
    for p in picks:
        member = np.flatnonzero(y == y[p])
        dist = np.linalg.norm(x[member] - centres[y[p]], axis=1)
        assert np.linalg.norm(x[p] - centres[y[p]]) <= np.quantile(dist, 0.1)


def test_outliers_and_tiny_clusters_are_not_picked():
    x, y, _ = _blobs([300, 300, 300], seed=1)
    far = np.random.default_rng(2).normal(60, 1, (3, x.shape[1]))  # 3 outliers, a cluster of their own
    x2 = np.concatenate([x, far])
    picks = typical_first_batch(x2, 3, np.random.default_rng(0), normalise=False)
    assert picks.max() < len(x) and sorted(y[picks]) == [0, 1, 2]


def test_labeled_points_cover_their_cluster_and_are_never_returned():
    x, y, _ = _blobs([200, 200, 200, 200], seed=3)
    labeled = np.flatnonzero(y == 0)[:2]
    picks = typical_first_batch(x, 3, np.random.default_rng(1), labeled=labeled, normalise=False)
    assert not set(picks) & set(labeled)
    assert sorted(y[picks]) == [1, 2, 3]


def test_seeded_sizes_and_edges():
    x, _, _ = _blobs([50, 50], seed=4)
    a = typical_first_batch(x, 10, np.random.default_rng(7))
    b = typical_first_batch(x, 10, np.random.default_rng(7))
    assert np.array_equal(a, b) and len(set(a)) == 10
    assert typical_first_batch(x, 0, np.random.default_rng(0)).size == 0
    everything = typical_first_batch(x, 500, np.random.default_rng(0))
    assert sorted(everything) == list(range(100))  # budget above the pool: the whole pool once
    with pytest.raises(ValueError, match="NaN"):
        typical_first_batch(np.full((4, 2), np.nan), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="budget"):
        typical_first_batch(x, -1, np.random.default_rng(0))


def test_kmeans_and_typicality_basics():
    x, y, _ = _blobs([100, 100, 100], seed=5)
    assign, centres = kmeans(x, 3, np.random.default_rng(0))
    # The clustering recovers the blobs (up to relabeling).
    assert all(len(set(assign[y == c])) == 1 for c in range(3)) and len(set(assign)) == 3
    t = typicality(np.array([[0.0], [0.1], [0.2], [5.0]]), k_neighbors=2)
    assert t.argmax() == 1 and t.argmin() == 3
