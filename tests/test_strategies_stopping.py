"""strategies.stopping: kappa against sklearn's, and each criterion on histories with a known answer."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from strategies.stopping import (AccuracyPlateau, AnyOf, BudgetSpent, StabilisingPredictions, choose_stop_set,
                                 cohens_kappa, from_config, successive_kappas)


def test_kappa_matches_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, 300)
        b = np.where(rng.random(300) < 0.7, a, rng.integers(0, 5, 300))
        assert cohens_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert cohens_kappa([1, 1, 1], [1, 1, 1]) == 1.0
    assert cohens_kappa([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="one length"):
        cohens_kappa([0, 1], [0])


def _rounds(n, flip_rates, rng):
    """Stop-set predictions drifting by `flip_rates[i]` of the items from round to round."""
    pred = rng.integers(0, 10, n)
    out = [{"labels": 100, "stop_set_pred": pred.copy()}]
    for i, f in enumerate(flip_rates):
        flip = rng.random(n) < f
        pred = np.where(flip, rng.integers(0, 10, n), pred)
        out.append({"labels": 100 * (i + 2), "stop_set_pred": pred.copy()})
    return out


def test_stabilising_predictions_stops_only_after_window_of_high_kappa():
    rng = np.random.default_rng(1)
    crit = StabilisingPredictions(kappa=0.99, window=3)
    hist = _rounds(2000, [0.3, 0.2, 0.1, 0.002, 0.002, 0.002], rng)
    ks = successive_kappas(hist)
    assert ks[0] < 0.8 and min(ks[-3:]) > 0.99
    decisions = [crit.should_stop(hist[:i])[0] for i in range(1, len(hist) + 1)]
    assert decisions == [False] * 6 + [True]  # the third stable comparison in a row
    stop, reason = crit.should_stop(hist)
    assert "stable" in reason
    # One unstable comparison in the window keeps it going.
    hist2 = _rounds(2000, [0.002, 0.002, 0.2, 0.002, 0.002], np.random.default_rng(2))
    assert not crit.should_stop(hist2)[0]


def test_accuracy_plateau():
    crit = AccuracyPlateau(min_gain=0.005, patience=2)
    rising = [{"val_accuracy": a} for a in (0.60, 0.70, 0.75, 0.78)]
    assert not crit.should_stop(rising)[0]
    flat = rising + [{"val_accuracy": 0.782}, {"val_accuracy": 0.781}]
    stop, reason = crit.should_stop(flat)
    assert stop and "plateau" in reason
    assert not crit.should_stop(flat[:2])[0]  # too few rounds to tell
    assert not crit.should_stop(rising + [{"val_accuracy": float("nan")}])[0]  # NaN rounds ignored


def test_budget_and_any_of_and_config():
    hist = [{"labels": 400, "val_accuracy": 0.5}, {"labels": 500, "val_accuracy": 0.6}]
    assert BudgetSpent(500).should_stop(hist) == (True, "label budget spent: 500 of 500")
    assert not BudgetSpent(501).should_stop(hist)[0]
    crit = from_config({"kappa": 0.99, "plateau_gain": 0.01, "max_labels": 1000})
    assert isinstance(crit, AnyOf) and len(crit.criteria) == 3
    stop, reason = crit.should_stop(hist)
    assert not stop and "500 of 1000" in reason
    assert from_config({"max_labels": 500}).should_stop(hist)[0]
    assert from_config(None) is None and from_config({}) is None
    with pytest.raises(ValueError, match="unknown stopping"):
        from_config({"kapa": 0.9})


def test_stop_set_is_fixed_by_the_rng():
    a = choose_stop_set(10_000, 2000, np.random.default_rng(3))
    assert a.size == 2000 and np.array_equal(a, choose_stop_set(10_000, 2000, np.random.default_rng(3)))
    assert choose_stop_set(10, 2000, np.random.default_rng(0)).tolist() == list(range(10))
