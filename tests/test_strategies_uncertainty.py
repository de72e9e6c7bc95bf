"""Uncertainty and committee scores against textbook formulas written out independently in numpy,
and BALD against baal's implementation on the same samples."""
import math

import numpy as np
import pytest
import torch
from baal.active.heuristics import BALD as BaalBALD
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from strategies import committee, uncertainty


def _softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _h(p):
    # Textbook entropy with 0 log 0 = 0, one item at a time.
    return -sum(x * math.log(x) for x in p if x > 0)


logits2 = arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(2, 7)), elements=st.floats(-8, 8))
logits3 = arrays(np.float64, st.tuples(st.integers(2, 5), st.integers(1, 6), st.integers(2, 6)), elements=st.floats(-8, 8))


@settings(max_examples=60, deadline=None)
@given(logits2)
def test_single_model_scores_match_formulas(z):
    p = _softmax(z)
    lc = uncertainty.least_confidence(torch.tensor(p)).numpy()
    mg = uncertainty.margin(torch.tensor(p)).numpy()
    en = uncertainty.entropy(torch.tensor(p)).numpy()
    for i, row in enumerate(p):
        s = sorted(row, reverse=True)
        assert lc[i] == pytest.approx(1 - s[0], abs=1e-9)
        assert mg[i] == pytest.approx(1 - (s[0] - s[1]), abs=1e-9)
        assert en[i] == pytest.approx(_h(row), abs=1e-9)


def test_known_values():
    p = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]], dtype=torch.float64)
    assert uncertainty.entropy(p).tolist() == pytest.approx([0.0, math.log(3), math.log(2)])
    assert uncertainty.margin(p).tolist() == pytest.approx([0.0, 1.0, 1.0])
    assert uncertainty.least_confidence(p).tolist() == pytest.approx([0.0, 2 / 3, 0.5])


@settings(max_examples=60, deadline=None)
@given(logits3)
def test_committee_scores_match_formulas(z):
    p = _softmax(z)  # (M, N, C)
    m, n, c = p.shape
    ve = committee.vote_entropy(torch.tensor(p)).numpy()
    kl = committee.mean_kl_to_consensus(torch.tensor(p)).numpy()
    bd = committee.bald(torch.tensor(p)).numpy()
    for i in range(n):
        votes = [int(np.argmax(p[j, i])) for j in range(m)]
        shares = [votes.count(k) / m for k in range(c)]
        assert ve[i] == pytest.approx(_h(shares), abs=1e-9)
        mean = [sum(p[j, i, k] for j in range(m)) / m for k in range(c)]
        kls = [sum(p[j, i, k] * math.log(p[j, i, k] / mean[k]) for k in range(c) if p[j, i, k] > 0) for j in range(m)]
        assert kl[i] == pytest.approx(sum(kls) / m, abs=1e-9)
        assert bd[i] == pytest.approx(_h(mean) - sum(_h(p[j, i]) for j in range(m)) / m, abs=1e-9)


def test_bald_matches_baal_on_the_same_samples():
    rng = np.random.default_rng(7)
    # MC samples with sharp and flat members, so some items disagree a lot and some not at all.
    z = rng.normal(size=(20, 300, 10)) * rng.uniform(0.1, 6, size=(1, 300, 1))
    p = _softmax(z)
    ours = committee.bald(torch.tensor(p)).numpy()
    # baal expects (items, classes, iterations).
    theirs = BaalBALD().get_uncertainties(np.transpose(p, (1, 2, 0)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)
    assert ours.std() > 0.01  # the comparison is over varied values, not all zeros


def test_agreeing_committee_scores_zero():
    p = torch.tensor(_softmax(np.random.default_rng(1).normal(size=(1, 5, 4))))
    same = p.expand(4, 5, 4)
    assert committee.bald(same).abs().max() < 1e-7
    assert committee.mean_kl_to_consensus(same).abs().max() < 1e-7
    assert committee.vote_entropy(same).abs().max() == 0


def test_nan_and_shape_errors_and_empty():
    bad = torch.tensor([[0.5, float("nan")]])
    for fn in (uncertainty.entropy, uncertainty.margin, uncertainty.least_confidence):
        with pytest.raises(ValueError, match="NaN"):
            fn(bad)
    with pytest.raises(ValueError, match="NaN"):
        committee.bald(bad[None])
    with pytest.raises(ValueError, match="axes"):
        committee.bald(torch.ones(3, 2))
    empty = torch.zeros(0, 4)
    assert uncertainty.entropy(empty).shape == (0,)
    assert uncertainty.margin(empty).shape == (0,)
    assert committee.vote_entropy(torch.zeros(3, 0, 4)).shape == (0,)
