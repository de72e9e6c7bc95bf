"""The random control slice (issue 22): Wilson intervals, the config, the draw in engine.selection,
and the evidence it gives without a validation split (engine.control). Pure: no store, no torch;
the service's path is tests/test_control_service.py's."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from engine import contracts as c
from engine import step
from engine.config import ControlConfig, ProjectConfig
from engine.control import with_control
from engine.decisions import Evidence
from engine.plan import TrainedModel
from engine.selection import control_slice, select_from_scores
from strategies.audit import control_estimate, pool_estimates, proportion, wilson
from tests.score_files import synthetic_score_file

NAMES = ["a", "b", "c", "d"]


# ----------------------------------------------------------------------------- Wilson

# statsmodels' proportion_confint(k, n, method="wilson") / scipy's binomtest(k, n).proportion_ci(method="wilson")
TEXTBOOK = [((8, 10), (0.4901624715366418, 0.9433178485456248)),
            ((0, 10), (0.0, 0.27753279986288926)),
            ((10, 10), (0.7224672001371109, 1.0)),
            ((1, 3), (0.06149194472039626, 0.7923403991979523)),
            ((45, 50), (0.7863976856252034, 0.9565242350681095))]


@pytest.mark.parametrize("counts,expected", TEXTBOOK)
def test_wilson_matches_the_textbook(counts, expected):
    lo, hi = wilson(*counts)
    assert lo == pytest.approx(expected[0], abs=1e-9) and hi == pytest.approx(expected[1], abs=1e-9)


def test_wilson_against_scipy_and_its_edges():
    from scipy.stats import binomtest

    for k, n, z, conf in [(3, 7, 1.959963984540054, 0.95), (17, 40, 1.6448536269514722, 0.9), (0, 1, 1.96, None)]:
        lo, hi = wilson(k, n, z)
        if conf:
            ci = binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
            assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-9)
        assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert wilson(0, 0) == (0.0, 1.0)  # no labels: nothing known
    assert proportion(0, 0)["accuracy"] is None
    with pytest.raises(ValueError):
        wilson(5, 3)
    with pytest.raises(ValueError):
        wilson(-1, 3)


def test_an_estimate_counts_per_true_class_and_leaves_unguessed_images_out():
    pairs = [("a", "a"), ("a", "b"), ("b", "b"), (None, "a"), ("a", "gone")]  # "gone": an unknown/excluded class
    e = control_estimate(pairs, NAMES, 3, model_version_id=7)
    assert (e["round"], e["model_version_id"], e["n"], e["correct"]) == (3, 7, 4, 2)
    assert e["per_class"]["a"] == proportion(1, 1) and e["per_class"]["b"]["n"] == 2
    assert e["per_class"]["gone"]["n"] == 1 and e["per_class"]["gone"]["correct"] == 0  # counted wrong
    assert e["per_class"]["d"]["n"] == 0 and e["per_class"]["d"]["accuracy"] is None
    pooled = pool_estimates([e, control_estimate([("c", "c")], NAMES, 4)], NAMES)
    assert pooled["n"] == 5 and pooled["correct"] == 3 and pooled["rounds"] == [3, 4]


# ----------------------------------------------------------------------------- config

def test_the_config_is_strict_and_documents_its_minimum():
    cfg = ProjectConfig()
    assert cfg.control.share == 0.1 and cfg.control.min_per_round == 5
    assert cfg.control.count(100) == (10, None)
    assert cfg.control.count(30) == (5, None)             # the minimum, not 3
    n, note = cfg.control.count(9)                         # under 2 × the minimum: none, and why
    assert n == 0 and "min_per_round" in note
    assert ControlConfig(share=0).count(100) == (0, None)  # off
    for bad in ({"share": "0.1"}, {"share": 1.5}, {"share": True}, {"min_per_round": 0}, {"min_per_round": 2.5},
                {"shares": 0.1}):
        with pytest.raises(ValidationError):
            ProjectConfig.model_validate({"control": bad})


# ----------------------------------------------------------------------------- the draw

def _select(files, number=2, share=0.1, budget=100, reserve=20, drop=None, seed=4, strategy="entropy"):
    cfg = ProjectConfig.model_validate({"budget": budget, "reserve": reserve, "seed": seed, "strategy": strategy,
                                        "control": {"share": share}})
    return step.select(cfg, step.SelectionFacts(number, NAMES, [True] * 4, step.Ranking.SCORES, files,
                                                drop_ids=drop))


def test_the_control_share_replaces_the_lowest_ranked_picks_and_keeps_the_reserve(tmp_path):
    f = [synthetic_score_file(tmp_path / "s0.npz", range(1, 2001))]
    plain, ctl = _select(f, share=0), _select(f)
    assert plain.n_control == 0 and not any(p.control for p in plain.batch)
    assert ctl.n_control == 10 and sum(p.control for p in ctl.batch) == 10 and len(ctl.batch) == 100
    ranked = [p.item_id for p in ctl.batch if not p.control]
    assert ranked == [p.item_id for p in plain.batch][:90]            # the 10 lowest-ranked gave way
    assert [p.item_id for p in ctl.reserve] == [p.item_id for p in plain.reserve]  # the reserve stays ranked
    ids = [p.item_id for p in ctl.batch + ctl.reserve]
    assert len(set(ids)) == len(ids)
    # The guesses and their probability come from the score file, as for a ranked pick.
    for p in ctl.batch:
        assert p.pred == NAMES[(p.item_id - 1) % 4] and "p_pred" in p.scores
    # Seeded: the same round draws the same; another round, others.
    again = _select(f)
    assert [(p.item_id, p.control) for p in again.batch] == [(p.item_id, p.control) for p in ctl.batch]
    other = _select(f, number=3)
    assert {p.item_id for p in other.batch if p.control} != {p.item_id for p in ctl.batch if p.control}


def test_control_picks_are_uniform_over_the_candidates_and_their_places_random(tmp_path):
    f = [synthetic_score_file(tmp_path / "s0.npz", range(1, 1001))]
    drop = np.arange(1, 1001, 10)          # labeled meanwhile: never candidates
    gated = np.zeros(1000, bool)
    gated[500:550] = True                  # a gatekeeper kept these out
    g = [synthetic_score_file(tmp_path / "s1.npz", range(1, 1001), gated=gated)]
    drawn, places = [], []
    for number in range(1, 301):
        sel = _select(g, number=number, budget=20, reserve=0, drop=drop)
        drawn += [p.item_id for p in sel.batch if p.control]
        places += [k for k, p in enumerate(sel.batch) if p.control]
    drawn = np.asarray(drawn)
    assert not np.isin(drawn, drop).any() and not ((drawn >= 501) & (drawn <= 550)).any()
    # The ranking only ever takes the top ids; the control's ids spread over the whole pool.
    ranked = {p.item_id for p in _select(g, budget=20, reserve=0, drop=drop).batch if not p.control}
    assert min(ranked) > 900
    counts = np.histogram(drawn, bins=10, range=(1, 1001))[0]
    # Candidates per decile of ids: 90 (10 dropped each), 45 where 50 are gated, 75 where the 15
    # ranked picks kept in the batch are (ids > 900).
    per = np.array([90] * 10)
    per[5], per[9] = 45, 75
    expected = len(drawn) * per / per.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9, (counts, chi2)     # chi-square, 9 dof, p = 0.001
    # Their places in the queue are uniform over the batch: the order does not give them away.
    pos = np.bincount(places, minlength=20)
    assert pos.min() > 0 and abs(np.mean(places) - 9.5) < 0.6, pos
    _ = f


def test_a_batch_too_small_for_the_control_gets_none_and_says_why(tmp_path):
    f = [synthetic_score_file(tmp_path / "s0.npz", range(1, 201))]
    sel = _select(f, budget=9, reserve=0)
    assert sel.n_control == 0 and not any(p.control for p in sel.batch) and len(sel.batch) == 9
    assert "min_per_round" in sel.control_note
    assert _select(f, budget=10, reserve=0).n_control == 5  # 2 × the minimum: the minimum


def test_the_control_never_outnumbers_the_candidates(tmp_path):
    order, is_control = control_slice(np.array([4, 3, 2]), np.array([1]), np.array([False] * 5), 2, 0, 1)
    assert sorted(order.tolist())[:1] == [0] or set(order.tolist()) <= {0, 2, 3, 4}
    assert is_control.sum() == 2 and 4 in order.tolist() and 1 not in order.tolist()
    # Nothing left to draw from: the batch shrinks to what is kept, never a duplicate.
    order, is_control = control_slice(np.array([0, 1, 2]), np.zeros(0, np.int64), np.array([False, False, False]), 2,
                                      0, 1)
    assert sorted(order.tolist()) == [0, 1, 2] and is_control.sum() == 2


def test_cold_starts_are_random_labels_without_a_guess():
    sel = step.select(ProjectConfig(budget=20, reserve=4), step.SelectionFacts(
        1, NAMES, [True] * 4, step.Ranking.RANDOM, unlabeled_ids=list(range(100))))
    assert all(p.control and p.pred is None for p in sel.batch + sel.reserve)
    assert control_estimate([(p.pred, "a") for p in sel.batch], NAMES, 1)["n"] == 0


def test_select_from_scores_without_control_is_unchanged(tmp_path):
    f = [synthetic_score_file(tmp_path / "s0.npz", range(1, 301))]
    a = select_from_scores(f, "entropy", NAMES, [True] * 4, 30, 5, [None] * 4, 1, 2)
    assert not any(p.control for p in a.batch) and a.n_control == 0


# ----------------------------------------------------------------------------- the evidence

CTL = ControlConfig(rounds=2, min_per_class=10)


def _est(number, per_class):  # {class: (correct, n)}
    pairs = []
    for cl, (k, n) in per_class.items():
        pairs += [(cl, cl)] * k + [("a" if cl != "a" else "b", cl)] * (n - k)
    return control_estimate(pairs, NAMES, number)


def test_control_replaces_held_out_labeled_evidence_per_class_only_when_enough():
    hold = Evidence(5, {n: 9 for n in NAMES}, {n: 10 for n in NAMES}, "holdout")
    ests = [_est(2, {"a": (0, 20)}), _est(3, {"b": (3, 6), "a": (5, 5)}), _est(4, {"b": (2, 6)}),
            _est(5, {"c": (0, 50)})]  # round 5's own control comes after its evidence: never read for it
    ev = with_control(hold, ests, 5, CTL, NAMES)
    # The last 2 rounds before 5 (3 and 4): "a" 5 labels (too few: held-out), "b" 12 (control).
    assert ev.source == "control+holdout" and ev.control_classes == ("b",) and ev.control_rounds == (3, 4)
    assert (ev.correct["b"], ev.total["b"]) == (5, 12) and (ev.correct["a"], ev.total["a"]) == (9, 10)
    assert (ev.correct["c"], ev.total["c"]) == (9, 10)
    # A validation split stands; no control labels: the held-out evidence as it was.
    val = Evidence(5, hold.correct, hold.total, "val")
    assert with_control(val, ests, 5, CTL, NAMES) is val
    assert with_control(hold, [], 5, CTL, NAMES) is hold
    # Every class with enough: "control"; nothing held out yet ("none") is replaced too.
    full = [_est(3, {n: (5, 10) for n in NAMES})]
    assert with_control(hold, full, 5, CTL, NAMES).source == "control"
    none = Evidence(5, {n: 0 for n in NAMES}, {n: 0 for n in NAMES}, "none")
    assert with_control(none, full, 5, CTL, NAMES).source == "control"


def test_the_exclusion_rule_and_the_budget_read_the_control_first(tmp_path):
    cfg = ProjectConfig.model_validate({"exclusion": {"enabled": True}, "seed": 3, "budget": 20, "reserve": 0,
                                        "control": {"rounds": 1, "min_per_class": 10}})
    # Held-out labeled images say "d" is learned (45/50); the control says the model never gets it.
    # (Round 1 has no control before it: its held-out images, where "d" did no better.)
    hist = [Evidence(r, {"a": 45, "b": 44, "c": 46, "d": 45 if r > 1 else 0}, {n: 50 for n in NAMES}, "holdout")
            for r in range(1, 6)]
    ests = [_est(r, {"a": (9, 10), "b": (9, 10), "c": (9, 10), "d": (0, 12)}) for r in range(1, 5)]

    def facts(control):
        return step.TrainedFacts(
            number=5, class_names=NAMES, status={n: "active" for n in NAMES}, history=hist,
            models=[TrainedModel(r, f"ckpt{r}.pt", [True] * 4) for r in range(1, 6)], scorer="ckpt5.pt",
            pool=c.ImageRefs.build(range(100, 130), ["p.npy"] * 30, range(30)), files=c.RoundFiles(tmp_path / "r5"),
            shard_size=10, control=control)

    assert step.after_training(cfg, 1, facts(())).newly_excluded == []
    assert step.after_training(cfg, 1, facts(ests)).newly_excluded == ["d"]
    # The class budget: "d" gets more of the batch when the control says it is not learned.
    f = [synthetic_score_file(tmp_path / "s.npz", range(1, 401))]
    cfg = cfg.model_copy(update={"strategy": "hybrid"})

    def quota(control):
        return step.select(cfg, step.SelectionFacts(5, NAMES, [True] * 4, step.Ranking.SCORES, f, evidence=hist[-1],
                                                    control=control)).quota

    assert quota(ests)[3] > quota(())[3]


def test_a_strategy_change_keeps_the_control_uniform_and_its_size(tmp_path):
    # The draw reads no score: whatever ranks the batch (even random), the control is the share
    # of the batch drawn from the candidates, and a config change applies from the next selection.
    f = [synthetic_score_file(tmp_path / "s0.npz", range(1, 1001))]
    for strategy in ("entropy", "margin", "random", "hybrid"):
        sel = _select(f, strategy=strategy, budget=40, reserve=10)
        assert sel.n_control == 5 and sum(p.control for p in sel.batch) == 5 and len(sel.batch) == 40
        ranked = {p.item_id for p in sel.batch if not p.control} | {p.item_id for p in sel.reserve}
        assert not ranked & {p.item_id for p in sel.batch if p.control}
    assert _select(f, budget=200, reserve=0).n_control == 20
