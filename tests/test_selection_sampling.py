"""Stochastic batch acquisition in a round's selection (config.selection, engine.selection):
the draw composes with the class budget, k-center, the reserve and the control slice; it is
seeded by the project's seed and the round; topk stays today's selection. Pure: no torch."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from engine import contracts as c
from engine.config import ProjectConfig
from engine.selection import select_from_scores
from strategies.stochastic import sampling_probs
from tests.score_files import synthetic_score_file
from tests.selection_step import NAMES, select_step



def _select(files, mode="softrank", beta=1.0, **kw):
    return select_step(files, {"mode": mode, "beta": beta}, **kw)


def _ids(picks):
    return [p.item_id for p in picks]


def test_the_config_is_strict_and_topk_by_default():
    cfg = ProjectConfig()
    assert (cfg.selection.mode, cfg.selection.beta, cfg.selection.calibrated_scores) == ("topk", 1.0, False)
    ok = ProjectConfig.model_validate({"selection": {"mode": "softmax", "beta": 20}})
    assert ok.selection.beta == 20.0
    for bad in ({"mode": "gumbel"}, {"beta": -1}, {"beta": "1"}, {"beta": True}, {"beta": 1e7},
                {"calibrated_scores": "yes"}, {"calibrated_scores": 1}, {"temperature": 2}):
        with pytest.raises(ValidationError):
            ProjectConfig.model_validate({"selection": bad})
    assert "topk" in ProjectConfig.model_json_schema()["$defs"]["SelectionConfig"]["properties"]["mode"]["description"]


def test_topk_is_todays_selection(tmp_path):
    f = [synthetic_score_file(tmp_path / "s.npz", range(1, 2001), p_guess=True)]
    for strategy in ("entropy", "hybrid"):
        plain = select_from_scores(f, strategy, NAMES, [True] * 4, 40, 10, [None] * 4, 4, 2, n_control=5)
        via = _select(f, mode="topk", strategy=strategy)
        assert _ids(via.batch) == _ids(plain.batch) and _ids(via.reserve) == _ids(plain.reserve)
        assert min(_ids(via.reserve)) > 1800  # top-k: only the highest ids


def test_a_draw_composes_with_quota_kcenter_reserve_and_control(tmp_path):
    gated = np.zeros(2000, bool)
    gated[1900:1950] = True
    f = [synthetic_score_file(tmp_path / "s.npz", range(1, 2001), gated=gated, p_guess=True)]
    drop = np.arange(1990, 2001)  # labeled meanwhile
    acc = [0.9, 0.5, 0.7, 0.8]    # class b is the weakest: the budget favours it
    sel = _select(f, drop=drop, accuracy=acc)
    top = _select(f, mode="topk", drop=drop, accuracy=acc)
    assert len(sel.batch) == 40 and len(sel.reserve) == 10 and sel.n_control == 5
    ids = _ids(sel.batch + sel.reserve)
    assert len(set(ids)) == len(ids)
    assert not set(ids) & set(drop.tolist()) and not any(1901 <= i <= 1950 for i in ids)
    # The class budget is the same with or without the draw: the same quota, met by the ranked picks.
    assert sel.quota == top.quota and sum(sel.quota) == 40 and sel.quota[1] == max(sel.quota)
    ranked = [p for p in sel.batch if not p.control]
    per_class = np.bincount([NAMES.index(p.pred) for p in ranked], minlength=4)
    top_per_class = np.bincount([NAMES.index(p.pred) for p in top.batch if not p.control], minlength=4)
    assert per_class.tolist() == top_per_class.tolist()
    # A draw, not the top: ranked picks reach below the top-k's lowest, yet lean to high scores.
    ranked_ids = np.array([p.item_id for p in ranked])
    assert ranked_ids.min() < min(p.item_id for p in top.batch if not p.control)
    assert np.median(ranked_ids) > 1000
    # Seeded: the same round draws the same batch; another round or another project seed, another.
    again = _select(f, drop=drop, accuracy=acc)
    assert [(p.item_id, p.control) for p in again.batch] == [(p.item_id, p.control) for p in sel.batch]
    assert _ids(again.reserve) == _ids(sel.reserve)
    assert set(_ids(_select(f, number=3, drop=drop, accuracy=acc).batch)) != set(_ids(sel.batch))
    assert set(_ids(_select(f, seed=5, drop=drop, accuracy=acc).batch)) != set(_ids(sel.batch))


def test_the_draw_leaves_the_control_slices_stream_alone(tmp_path):
    # The control slice draws from what the ranked picks left, with its own stream: the ranked
    # picks of a draw with control are the draw's without control, less the lowest-ranked.
    f = [synthetic_score_file(tmp_path / "s.npz", range(1, 1001), p_guess=True)]
    plain = _select(f, share=0, strategy="entropy")
    ctl = _select(f, strategy="entropy")
    assert [p.item_id for p in ctl.batch if not p.control] == _ids(plain.batch)[:35]
    assert _ids(ctl.reserve) == _ids(plain.reserve)


def test_excluded_classes_are_never_drawn(tmp_path):
    f = [synthetic_score_file(tmp_path / "s.npz", range(1, 801), p_guess=True)]
    for number in range(1, 6):
        sel = _select(f, number=number, active=(True, False, True, True), share=0, mode="softmax", beta=2.0)
        assert len(sel.batch) == 40 and all(p.pred != "b" for p in sel.batch + sel.reserve)


@pytest.mark.parametrize("strategy", ["entropy", "hybrid"])
def test_a_large_beta_is_top_k(tmp_path, strategy):
    f = [synthetic_score_file(tmp_path / "s.npz", range(1, 1001), p_guess=True)]
    top = _select(f, mode="topk", strategy=strategy)
    for mode in ("softrank", "power", "softmax"):
        big = _select(f, mode=mode, beta=1e6, strategy=strategy)
        assert _ids(big.batch) == _ids(top.batch) and _ids(big.reserve) == _ids(top.reserve)


def test_one_pick_a_round_follows_the_softrank_weights(tmp_path):
    # 20 candidates, one pick a round, no quota, no k-center, no control: over 2,000 rounds (the
    # round seeds the draw) each item is picked with probability ∝ 1 / its rank.
    f = [synthetic_score_file(tmp_path / "s.npz", range(1, 21), p_guess=True)]
    p = sampling_probs(np.arange(1, 21, dtype=float), "softrank", 1.0)
    n = 2000
    picks = [_select(f, number=k, strategy="entropy", budget=1, reserve=0, share=0).batch[0].item_id
             for k in range(1, n + 1)]
    freq = np.bincount(picks, minlength=21)[1:] / n
    se = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(freq - p) <= 4.5 * se), (freq, p)


def test_the_guess_own_probability_is_read_from_probs_when_the_scores_are_calibrated(tmp_path):
    path = synthetic_score_file(tmp_path / "s.npz", range(1, 201), p_guess=True)
    probs = np.load(path)[c.SCORE_PROBS]
    sel = select_from_scores([path], "entropy", NAMES, [True] * 4, 10, 0, [None] * 4, 0, 2, scores_calibrated=True)
    plain = select_from_scores([path], "entropy", NAMES, [True] * 4, 10, 0, [None] * 4, 0, 2)
    for a, b in zip(sel.batch, plain.batch):
        assert a.item_id == b.item_id
        assert a.scores["p_pred_uncalibrated"] == pytest.approx(float(probs[a.item_id - 1].max()), abs=1e-6)
        # Without calibrated scores, 1 − least_confidence is the model's own probability.
        assert b.scores["p_pred_uncalibrated"] == pytest.approx(1 - b.item_id / 200, abs=1e-6)
        assert a.scores["p_pred"] == b.scores["p_pred"]
