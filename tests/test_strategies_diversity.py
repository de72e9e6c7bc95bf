"""k-center greedy: each pick is the max-min-distance point (brute force), the 2-approximation of
the k-center objective holds against the exhaustive optimum on tiny data, and diverse_top spreads."""
import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from strategies.diversity import diverse_top, k_center_greedy, top_k

points = st.integers(3, 8).flatmap(
    lambda n: arrays(np.float64, (n, 2), elements=st.floats(-10, 10), unique=False)
)


def _radius(x, centers):
    return max(min(np.linalg.norm(p - x[c]) for c in centers) for p in x)


@settings(max_examples=80, deadline=None)
@given(points, st.integers(1, 4))
def test_each_pick_is_the_farthest_point(x, k):
    picks = k_center_greedy(x, k)
    k = min(k, len(x))
    assert len(picks) == k == len(set(picks.tolist()))
    assert picks[0] == 0
    for i in range(1, k):
        d = [min(np.linalg.norm(p - x[c]) for c in picks[:i]) for p in x]
        assert min(np.linalg.norm(x[picks[i]] - x[c]) for c in picks[:i]) >= max(d) - 1e-4


@settings(max_examples=60, deadline=None)
@given(points, st.integers(1, 3))
def test_greedy_radius_within_twice_the_optimum(x, k):
    k = min(k, len(x))
    greedy = _radius(x, k_center_greedy(x, k))
    best = min(_radius(x, c) for c in itertools.combinations(range(len(x)), k))
    assert greedy <= 2 * best + 1e-4


def test_already_selected_are_not_picked_again_and_count():
    x = np.array([[0.0, 0], [0.1, 0], [10, 0], [10.1, 0], [5, 5]])
    picks = k_center_greedy(x, 2, already_selected=[0])
    assert 0 not in picks.tolist()
    assert picks[0] == 3  # farthest from point 0
    assert k_center_greedy(x, 10, already_selected=[0, 1]).size == 3
    assert k_center_greedy(np.zeros((0, 2)), 3).size == 0


def test_diverse_top_avoids_near_duplicates_that_top_k_would_take():
    rng = np.random.default_rng(0)
    # 50 near-copies of one image with the best scores, 50 spread images slightly below.
    dup = np.zeros((50, 8)) + rng.normal(scale=1e-3, size=(50, 8))
    spread = rng.normal(size=(50, 8)) * 5
    emb = np.vstack([dup, spread])
    scores = np.r_[np.linspace(1.0, 0.9, 50), np.linspace(0.89, 0.5, 50)]
    assert set(top_k(scores, 5).tolist()) <= set(range(50))
    chosen = diverse_top(scores, emb, 5, candidates_factor=20)
    assert chosen[0] == 0  # the best item is kept
    assert sum(1 for i in chosen if i < 50) == 1
    assert list(scores[chosen]) == sorted(scores[chosen], reverse=True)
