"""Wrong labels found and decided (issue 23), the pure parts: the round's calibration, cleanlab's
suspects, which of them are asked again, how votes decide, and simulated experts who err."""
from __future__ import annotations

import numpy as np
import pytest

from engine.calibration import MIN_EVIDENCE, calibrated, log_probs, round_calibration
from engine.relabel import decide, max_second_opinions, second_opinion_picks
from strategies.calibration import expected_calibration_error
from workers.label_issues import find_issues, fold_ids
from workers.noisy_oracle import LabelBook, NoisyOracle, confusable_targets


def _overconfident(n=600, c=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(c, size=n)
    z = rng.normal(size=(n, c))
    z[np.arange(n), y] += 1.0
    p = np.exp(4 * z)  # the logits of a right-ish model, scaled up: over-confident
    return p / p.sum(axis=1, keepdims=True), y


def test_round_calibration_fits_on_the_evidence_and_lowers_the_error_on_unseen_test_images():
    p, y = _overconfident()
    out = round_calibration(p[:300], y[:300], p[300:], y[300:])
    assert out["temperature"] > 2  # the logits were scaled by 4: T brings them back
    assert out["evidence"]["ece_after"] < out["evidence"]["ece_before"] / 2
    assert out["test"]["ece_after"] < out["test"]["ece_before"] / 2
    # The calibrated probabilities are softmax(log p / T), and the guess does not change.
    q = calibrated(p, out["temperature"])
    assert np.array_equal(q.argmax(1), p.argmax(1))
    assert out["test"]["ece_after"] == pytest.approx(expected_calibration_error(q[300:], y[300:]))


def test_too_little_evidence_keeps_the_models_own_probabilities():
    p, y = _overconfident(n=MIN_EVIDENCE - 1)
    out = round_calibration(p, y)
    assert out["temperature"] == 1.0 and "not fitted" in out["note"] and out["test"] is None
    assert round_calibration(np.zeros((0, 3)), np.zeros(0, np.int64))["evidence"] is None


def test_an_excluded_class_keeps_probability_zero_and_its_images_are_not_calibrated_on():
    p, y = _overconfident()
    p[:, 3] = 0.0  # masked out of the head
    p /= p.sum(axis=1, keepdims=True)
    z = log_probs(p)
    assert np.isneginf(z[:, 3]).all() and np.isfinite(z[:, :3]).all()
    out = round_calibration(p, y)
    assert out["fitted_on"] == int((y != 3).sum())
    assert (calibrated(p, out["temperature"])[:, 3] == 0).all()


def _noisy(n=400, c=5, flip=0.15, seed=1):
    """Labels with a known share flipped, and probabilities of a decent out-of-fold model."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(c, size=n)
    z = rng.normal(size=(n, c))
    z[np.arange(n), truth] += 3.0
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    given = truth.copy()
    wrong = rng.random(n) < flip
    given[wrong] = (truth[wrong] + rng.integers(1, c, size=wrong.sum())) % c
    return given, p, wrong


def test_cleanlab_finds_most_flipped_labels_and_few_right_ones():
    given, p, wrong = _noisy()
    issue, quality = find_issues(given, p)
    assert issue[wrong].mean() > 0.8 and issue[~wrong].mean() < 0.05
    assert quality[wrong].mean() < quality[~wrong].mean()


def test_classes_without_labels_or_probability_are_left_out_of_what_cleanlab_sees():
    given, p, wrong = _noisy()
    p = np.hstack([p, np.zeros((len(p), 1))])  # a sixth class: excluded, nobody labeled it
    issue, _ = find_issues(given, p)
    assert issue[wrong].mean() > 0.8
    one_class = find_issues(np.zeros(10, np.int64), np.full((10, 2), 0.5))
    assert not one_class[0].any()


def test_folds_are_stratified_and_cover_every_image():
    labels = np.repeat(np.arange(3), [10, 7, 2])
    f = fold_ids(labels, 3, seed=0)
    assert set(f) == {0, 1, 2}
    for c in range(3):
        counts = np.bincount(f[labels == c], minlength=3)
        assert counts.max() - counts.min() <= 1


def test_picks_are_the_most_suspicious_that_may_be_asked_at_most_the_share_of_the_budget():
    issues = {"item_ids": np.array([10, 11, 12, 13, 14]), "labels": np.array([0, 1, 0, 1, 0]),
              "pred_probs": np.array([[0.1, 0.9]] * 5), "quality": np.array([0.3, 0.05, 0.9, 0.1, 0.2]),
              "issue": np.array([True, True, False, True, True])}
    assert max_second_opinions(0.1, 25) == 2
    picks = second_opinion_picks(issues, 2)
    assert [p.item_id for p in picks] == [11, 13] and picks[0].suggested == 1
    assert [p.item_id for p in second_opinion_picks(issues, 3, lambda i: i != 13)] == [11, 14, 10]
    assert second_opinion_picks(issues, 0) == []


def test_votes_decide_by_majority_and_a_tie_by_the_out_of_fold_probabilities_where_allowed():
    idx = {"a": 0, "b": 1, "c": 2}
    assert decide(["a", "a"], None, idx).status == "agreed"
    assert decide(["a", "b", "b"], None, idx).label == "b"
    tie = decide(["a", "b"], [0.2, 0.7, 0.1], idx)
    assert (tie.label, tie.status) == ("b", "tie-broken")
    assert decide(["a", "b"], [0.2, 0.7, 0.1], idx, tie_break="review").label is None
    # A class excluded since (no probability): the model cannot weigh it; a person decides.
    excluded = decide(["a", "c"], [0.6, 0.4, 0.0], idx)
    assert (excluded.label, excluded.status) == (None, "tie")
    assert decide([], None, idx).status == "none"


def test_simulated_experts_err_at_the_rate_asked_independently_and_reproducibly():
    truth = np.arange(2000) % 10
    o = NoisyOracle(truth, 10, 0.1, "uniform", seed=3)
    first = np.array([o.answer(i, 0) for i in range(2000)])
    second = np.array([o.answer(i, 1) for i in range(2000)])
    assert 0.08 < (first != truth).mean() < 0.12 and 0.08 < (second != truth).mean() < 0.12
    assert ((first != truth) & (second != truth)).mean() < 0.03  # independent: ~1 %
    assert all(o.answer(i, 0) == first[i] for i in range(50))
    flip = confusable_targets(np.array([[5, 3, 1], [0, 5, 0], [4, 0, 5]]))
    assert flip.tolist() == [1, 2, 0]  # row 1 has no confusion: the next class
    c = NoisyOracle(truth % 3, 3, 1.0, "confusable", flip_to=flip, seed=0)
    assert [c.answer(i, 0) for i in range(3)] == [1, 2, 0]
    with pytest.raises(ValueError, match="flip_to"):
        NoisyOracle(truth, 10, 0.1, "confusable")


def test_the_book_records_a_wrong_label_found_fixed_and_a_right_one_broken():
    truth = np.zeros(4, np.int64)
    o = NoisyOracle(truth, 2, 0.0)
    book = LabelBook(o)
    book.first_answers([0, 1], 0)
    book.given[0] = 1  # expert 0 erred on image 0
    book.votes[0] = [1]
    book.second_opinion(0, 1, lambda v: v[-1])
    assert (book.found, book.fixed) == ({0: 1}, {0: 1})
    book.second_opinion(1, 2, lambda v: 1)  # a wrong decision on a right label
    assert book.broken == {1: 2}
    assert book.round_summary(np.array([True, True, False, False]))["wrong_now"] == 1


def test_a_simulation_with_experts_who_err_finds_fixes_and_records_wrong_labels(tmp_path):
    """`camloop simulate --oracle-noise 0.2 --noise-kind confusable --relabel` on digits, tiny: every
    round is calibrated (temperature, ECE before and after), the train job writes the label
    issues, second opinions are asked (at most share × budget) and the JSON says which labels
    were wrong, found and fixed."""
    import json

    from engine.config import SimulationConfig
    from workers.simulate import run_simulation

    cfg = SimulationConfig(dataset="digits", initial=100, budget=40, rounds=2, epochs=2, mc_samples=2, threads=1,
                           oracle_noise=0.2, noise_kind="confusable", relabel={"enabled": True, "share": 0.25})
    out = run_simulation(cfg, work_dir=tmp_path)
    json.dumps(out)  # the JSON it writes
    noise = out["label_noise"]
    assert noise["noise_kind"] == "confusable" and len(noise["flip_to"]) == 10
    acq = [r for r in out["rounds"] if "selected" in r]
    for r in out["rounds"]:
        assert r["calibration"]["temperature"] > 0 and r["calibration"]["evidence"]["ece_after"] >= 0
    assert all(r["label_issues"]["checked"] > 0 for r in acq) and "label_issues" not in out["rounds"][-1]
    assert all(len(r["second_opinions"]) <= 10 for r in acq) and sum(len(r["second_opinions"]) for r in acq) > 0
    assert all(0 <= p <= 1 and ok in (0, 1) for r in acq for p, ok in r["guesses"])
    wrong = [x for x in noise["labels"] if x["votes"][0] != x["truth"]]
    assert wrong and all(x["made_round"] is not None for x in wrong)
    found = [x for x in noise["labels"] if x["found_round"] is not None]
    assert found and all(len(x["votes"]) >= 2 for x in found)
    assert all(x["label_now"] == x["truth"] for x in noise["labels"] if x["fixed_round"] is not None)
    last = out["rounds"][-1]["label_noise"]
    assert last["fixed"] <= last["found"] <= last["second_opinions"]
