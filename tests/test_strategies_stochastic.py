"""Stochastic batch acquisition (strategies.stochastic) against the textbook: Gumbel-top-k is a
draw without replacement with probabilities ∝ the mode's weights."""
import itertools

import numpy as np
import pytest

from strategies.diversity import top_k
from strategies.stochastic import (descending_ranks, gumbel_keys, log_weights, sample_without_replacement,
                                   sampling_probs)

SCORES = np.array([0.9, 0.5, 0.3, 0.2, 0.05, 0.6])


def _weights(mode, beta, s=SCORES):
    if mode == "power":
        return s ** beta
    if mode == "softmax":
        return np.exp(beta * s)
    r = np.array([1 + (s > x).sum() for x in s], float)  # 1-based rank, highest first
    return r ** -beta


@pytest.mark.parametrize("mode,beta", [("power", 1.0), ("power", 2.0), ("softrank", 1.0), ("softmax", 3.0)])
def test_probabilities_are_the_papers_normalised_weights(mode, beta):
    w = _weights(mode, beta)
    assert np.allclose(sampling_probs(SCORES, mode, beta), w / w.sum())


@pytest.mark.parametrize("mode,beta", [("power", 1.0), ("softrank", 1.0), ("softmax", 3.0)])
def test_one_item_draws_follow_the_weights(mode, beta):
    # 40,000 seeded one-item draws: each frequency within 4.5 standard errors of p_i.
    p = sampling_probs(SCORES, mode, beta)
    n = 40_000
    rng = np.random.default_rng(7)
    keys = np.stack([gumbel_keys(SCORES, mode, beta, rng) for _ in range(n)])
    freq = np.bincount(keys.argmax(axis=1), minlength=SCORES.size) / n
    se = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(freq - p) <= 4.5 * se), (freq, p)


def test_two_item_draws_have_the_inclusion_probabilities_of_sampling_without_replacement():
    # P(i in a 2-item draw) = p_i + sum_{j != i} p_j p_i / (1 - p_j): the sequential definition.
    p = sampling_probs(SCORES, "softrank", 1.0)
    exact = np.array([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(p.size) if j != i) for i in range(p.size)])
    n = 30_000
    rng = np.random.default_rng(11)
    counts = np.zeros(SCORES.size)
    for _ in range(n):
        counts[sample_without_replacement(SCORES, 2, "softrank", 1.0, rng)] += 1
    freq = counts / n
    se = np.sqrt(exact * (1 - exact) / n)
    assert np.all(np.abs(freq - exact) <= 4.5 * se), (freq, exact)
    assert np.isclose(exact.sum(), 2.0)


def test_a_draw_never_repeats_an_item_and_keeps_draw_order():
    rng = np.random.default_rng(0)
    s = rng.random(500)
    idx = sample_without_replacement(s, 120, "softrank", 1.0, rng)
    assert idx.size == 120 and np.unique(idx).size == 120
    assert sample_without_replacement(s, 900, "power", 1.0, rng).size == 500


@pytest.mark.parametrize("mode", ["power", "softrank", "softmax"])
def test_large_beta_is_top_k(mode):
    rng = np.random.default_rng(3)
    s = rng.random(300)
    for seed in range(5):
        got = sample_without_replacement(s, 20, mode, 1e6, np.random.default_rng(seed))
        assert got.tolist() == top_k(s, 20).tolist()


def test_beta_zero_is_uniform():
    p = sampling_probs(SCORES, "softrank", 0.0)
    assert np.allclose(p, 1 / SCORES.size)


def test_topk_mode_is_the_scores_and_draws_nothing():
    s = np.array([0.1, 0.7, 0.4])
    assert np.array_equal(gumbel_keys(s, "topk", 1.0, None), s)
    assert sample_without_replacement(s, 2, "topk", 1.0, None).tolist() == [1, 2]


def test_same_seed_same_draw_other_seed_other_draw():
    s = np.random.default_rng(0).random(1000)
    a = sample_without_replacement(s, 50, "softrank", 1.0, np.random.default_rng(5))
    b = sample_without_replacement(s, 50, "softrank", 1.0, np.random.default_rng(5))
    c = sample_without_replacement(s, 50, "softrank", 1.0, np.random.default_rng(6))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_zero_weight_items_come_last_and_keys_stay_finite():
    s = np.array([0.0, 0.4, 0.0, 0.8])
    for seed in range(20):
        keys = gumbel_keys(s, "power", 1.0, np.random.default_rng(seed))
        assert np.isfinite(keys).all()
        assert set(top_k(keys, 2).tolist()) == {1, 3}


def test_ranks_and_bad_input():
    assert descending_ranks([0.2, 0.9, 0.2, 0.5]).tolist() == [3, 1, 3, 2]
    with pytest.raises(ValueError, match="power sampling needs scores >= 0"):
        log_weights([-0.1, 0.3], "power", 1.0)
    with pytest.raises(ValueError, match="unknown sampling mode"):
        log_weights([0.1], "boltzmann", 1.0)
    with pytest.raises(ValueError, match="beta"):
        log_weights([0.1], "softmax", -1.0)
    with pytest.raises(ValueError, match="NaN"):
        log_weights([np.nan, 0.1], "softrank", 1.0)
    with pytest.raises(ValueError, match="needs an rng"):
        gumbel_keys([0.1, 0.2], "softrank", 1.0, None)


def test_exhaustive_small_pool_matches_the_sequential_probabilities():
    # Every ordered 2-item draw of 3 items: frequency of (i, j) = p_i * p_j / (1 - p_i).
    s = np.array([0.7, 0.2, 0.1])
    p = sampling_probs(s, "power", 1.0)
    rng = np.random.default_rng(21)
    n = 30_000
    counts = {}
    for _ in range(n):
        i, j = sample_without_replacement(s, 2, "power", 1.0, rng).tolist()
        counts[(i, j)] = counts.get((i, j), 0) + 1
    for i, j in itertools.permutations(range(3), 2):
        exact = p[i] * p[j] / (1 - p[i])
        se = np.sqrt(exact * (1 - exact) / n)
        assert abs(counts.get((i, j), 0) / n - exact) <= 4.5 * se
