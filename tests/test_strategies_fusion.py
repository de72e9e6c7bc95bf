"""Rank fusion: ranks, ties, weights, errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from strategies.fusion import fuse_ranks, rank_normalise


def test_ranks_with_ties():
    np.testing.assert_allclose(rank_normalise([10.0, -1.0, 3.0, 3.0, 7.0]), [1.0, 0.0, 0.375, 0.375, 0.75])
    assert rank_normalise([5.0]).tolist() == [1.0]
    assert rank_normalise([]).shape == (0,)


@settings(max_examples=80, deadline=None)
@given(arrays(np.float64, st.integers(2, 40), elements=st.integers(-5, 5).map(float)))
def test_rank_normalise_matches_brute_force_average_rank(x):
    r = rank_normalise(x)
    n = len(x)
    for i in range(n):
        below = sum(1 for v in x if v < x[i])
        equal = sum(1 for v in x if v == x[i])
        assert r[i] == pytest.approx((below + (equal - 1) / 2) / (n - 1))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(2, 40), elements=st.floats(-1e6, 1e6), unique=True))
def test_rank_normalise_without_ties_is_the_sorted_position(x):
    # the fast path (no tie bookkeeping) must agree with the definition too
    r = rank_normalise(x)
    n = len(x)
    for i in range(n):
        assert r[i] == pytest.approx(sum(1 for v in x if v < x[i]) / (n - 1))


def test_fusion_is_weighted_mean_of_ranks_and_scale_free():
    a = np.array([0.1, 0.2, 0.3, 0.4])
    b = np.array([400.0, 300.0, 200.0, 100.0])  # opposite order, huge scale
    np.testing.assert_allclose(fuse_ranks({"a": a, "b": b}, {"a": 1, "b": 1}), [0.5] * 4)
    np.testing.assert_allclose(fuse_ranks({"a": a, "b": b}, {"a": 3, "b": 1}), 0.75 * rank_normalise(a) + 0.25 * rank_normalise(b))
    # A zero weight drops the column (even a missing one).
    np.testing.assert_allclose(fuse_ranks({"a": a}, {"a": 1, "z": 0}), rank_normalise(a))


def test_fusion_errors():
    with pytest.raises(ValueError, match="missing"):
        fuse_ranks({"a": np.ones(3)}, {"b": 1})
    with pytest.raises(ValueError, match="NaN"):
        fuse_ranks({"a": np.array([1.0, np.nan])}, {"a": 1})
    with pytest.raises(ValueError, match=">= 0"):
        fuse_ranks({"a": np.ones(3)}, {"a": -1})
    with pytest.raises(ValueError, match="shape"):
        fuse_ranks({"a": np.ones(3), "b": np.ones(4)}, {"a": 1, "b": 1})
    with pytest.raises(ValueError, match="non-zero"):
        fuse_ranks({"a": np.ones(3)}, {})
