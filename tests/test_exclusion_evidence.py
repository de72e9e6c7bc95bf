"""Issue 15: the evidence-based exclusion rule (strategies.exclusion.EvidenceRule, through
engine.decisions.decide_exclusion), the old threshold rule's float fix, and excluded
classes kept out of the queue (bounded balancing: tests/test_balance_bound.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from strategies.exclusion import EvidenceRule, ExclusionRule, binomial_variance, weighted_slope, wilson_interval
from engine.config import ExclusionConfig, ProjectConfig
from engine.decisions import Evidence, decide_exclusion

Z95 = 1.959963984540054  # two-sided 95 %
Z90 = 1.6448536269514722  # two-sided 90 %


def _wilson_textbook(k: int, n: int, z: float) -> tuple[float, float]:
    # Wilson (1927), as Newcombe (1998) writes it: (2np + z² ± z·sqrt(z² + 4npq)) / (2(n + z²)).
    p, q = k / n, 1 - k / n
    root = z * math.sqrt(z * z + 4 * n * p * q)
    return (2 * n * p + z * z - root) / (2 * (n + z * z)), (2 * n * p + z * z + root) / (2 * (n + z * z))


# ------------------------------------------------------------------ the statistics

@pytest.mark.parametrize("k,n,lo,hi", [
    (0, 10, 0.0, 0.2775),      # the usual 0/10 example
    (81, 263, 0.2553, 0.3662),  # Newcombe (1998), table I, example (a)
    (15, 148, 0.0624, 0.1605),  # example (b)
    (0, 20, 0.0, 0.1611),       # example (c)
    (1, 29, 0.0061, 0.1718),    # example (d)
])
def test_wilson_interval_matches_published_values(k, n, lo, hi):
    got = wilson_interval(k, n, 0.95)
    assert got == pytest.approx((lo, hi), abs=5e-5)
    assert got == pytest.approx(_wilson_textbook(k, n, Z95), abs=1e-12)


def test_wilson_interval_other_confidence_and_errors():
    for k, n in [(3, 40), (0, 5), (2, 5), (97, 100), (100, 100)]:
        lo, hi = wilson_interval(k, n, 0.9)
        tlo, thi = _wilson_textbook(k, n, Z90)
        assert lo == pytest.approx(max(0.0, tlo), abs=1e-12) and hi == pytest.approx(min(1.0, thi), abs=1e-12)
    with pytest.raises(ValueError):
        wilson_interval(3, 0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


@pytest.mark.parametrize("rounds,correct,total", [
    ([2, 3, 4], [3, 4, 3], [40, 40, 40]),
    ([2, 3, 4], [28, 33, 38], [100, 100, 100]),
    ([1, 3, 4, 7], [0, 5, 2, 9], [10, 50, 20, 60]),  # a skipped round, unequal counts, a 0/n
])
def test_slope_and_its_standard_error_equal_numpy_weighted_polyfit(rounds, correct, total):
    x = np.asarray(rounds, float)
    y = np.asarray(correct, float) / np.asarray(total)
    pt = (np.asarray(correct) + 1) / (np.asarray(total) + 2)
    sd = np.sqrt(pt * (1 - pt) / np.asarray(total))
    coef, cov = np.polyfit(x, y, 1, w=1 / sd, cov="unscaled")
    slope, se = weighted_slope(rounds, correct, total)
    assert slope == pytest.approx(coef[0], rel=1e-9, abs=1e-12)
    assert se == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-9)
    assert binomial_variance(0, 10) == pytest.approx((1 / 12) * (11 / 12) / 10)


# ------------------------------------------------------------------ the rule

CLASSES = [f"c{i}" for i in range(10)]


def _history(special: dict[str, list[tuple[int, int]]], rounds=(2, 3, 4), good=(85, 100)):
    """(round, correct, total) per class: every class `good`, except those in `special`."""
    return {c: [(r, *special.get(c, [good] * len(rounds))[i]) for i, r in enumerate(rounds)] for c in CLASSES}


def _status(excluded=()):
    return {c: "excluded" if c in excluded else "active" for c in CLASSES}


def test_a_hopeless_class_is_excluded_with_the_numbers_in_its_reason():
    h = _history({"c9": [(2, 80), (3, 80), (2, 80)]})
    out = EvidenceRule(patience=2, confidence=0.9).decide(h, _status())
    assert out["c9"][0] is True
    assert [c for c, (ex, _) in out.items() if ex] == ["c9"]
    reason = out["c9"][1]
    upper = wilson_interval(3, 80, 0.9)[1]  # the window's highest
    slope, se = weighted_slope([2, 3, 4], [2, 3, 2], [80, 80, 80])
    assert "2/80 = 0.03" in reason and "90% upper bound" in reason and f"{upper:.3f}" in reason
    assert "chance 0.100" in reason and "10 active classes" in reason
    assert f"{slope:+.4f}/round" in reason and f"± {se:.4f}" in reason and "rounds 2-4" in reason
    assert "2/80 → 3/80 → 2/80" in reason and f"upper bound at most {upper:.3f}" in reason
    # 3/40 is not enough evidence among ten classes: its 90 % upper bound is 0.17.
    h = _history({"c9": [(3, 40), (4, 40), (3, 40)]})
    assert EvidenceRule().decide(h, _status())["c9"] == (False, "")


def test_a_slow_learner_stays():
    # Shirt-like: 0.28 → 0.33 → 0.38 on 100 held-out images, among 11 classes (chance 0.09).
    h = _history({"c9": [(28, 100), (33, 100), (38, 100)]})
    h["hopeless"] = [(2, 2, 100), (3, 1, 100), (4, 2, 100)]
    status = {**_status(), "hopeless": "active"}
    out = EvidenceRule().decide(h, status)
    assert out["c9"] == (False, "")
    assert out["hopeless"][0] is True and "chance 0.091" in out["hopeless"][1]
    # Had it stalled at 0.28, the threshold rule would have excluded it; the evidence rule keeps it.
    flat = {**h, "c9": [(2, 28, 100), (3, 28, 100), (4, 28, 100)]}
    assert ExclusionRule(exclude_after=0).decide({c: [k / n for _, k, n in v] for c, v in flat.items()}, 2,
                                                 status)["c9"][0] is True
    assert EvidenceRule().decide(flat, status)["c9"][0] is False  # 0.29 is three times chance


def test_a_rising_class_near_chance_stays_and_the_same_counts_flat_go():
    # Accuracy under chance by the interval (a), but rising clearly (b): kept.
    rising = _history({"c9": [(5, 500), (20, 500), (35, 500)]})
    assert wilson_interval(35, 500, 0.9)[1] <= 0.1
    out = EvidenceRule().decide(rising, _status())
    assert out["c9"][0] is False
    flat = _history({"c9": [(35, 500), (34, 500), (35, 500)]})
    assert EvidenceRule().decide(flat, _status())["c9"][0] is True


def test_a_class_that_collapsed_inside_the_window_stays():
    # Seen in bench/exclusion_balancing.py on 3-epoch models: Shirt 31/60 → 6/60 → 0/60. Some
    # model of the window learned it; the latest forgot it. Not hopeless.
    h = _history({"c9": [(31, 60), (6, 60), (0, 60)]}, good=(50, 60))
    assert EvidenceRule().decide(h, _status())["c9"] == (False, "")
    # Had it been at chance in every round of the window, out.
    h = _history({"c9": [(1, 60), (0, 60), (0, 60)]}, good=(50, 60))
    assert EvidenceRule().decide(h, _status())["c9"][0] is True


def test_a_class_an_earlier_model_learned_stays():
    # Seen in the smoke run on 3-epoch models: Coat 39/60, then 0/60, 1/60, 0/60. The window
    # alone (rounds 2-4) looks hopeless; round 1 showed the class can be learned.
    h = _history({"c9": [(39, 60), (0, 60), (1, 60), (0, 60)]}, rounds=(1, 2, 3, 4), good=(50, 60))
    assert wilson_interval(39, 60, 0.9)[0] > 0.1
    assert EvidenceRule().decide(h, _status())["c9"] == (False, "")
    # Re-included at round 2: round 1 no longer counts, and the window is what it has.
    assert EvidenceRule().decide(h, _status(), {"c9": 2})["c9"][0] is True


def test_little_evidence_is_not_enough():
    # 0.45 on 5 held-out images, and even 0/5: the interval reaches far above chance.
    for counts in ([(2, 5), (2, 5), (2, 5)], [(0, 5), (0, 5), (0, 5)]):
        h = _history({"c9": counts})
        assert wilson_interval(counts[-1][0], 5, 0.9)[1] > 0.1
        assert EvidenceRule().decide(h, _status())["c9"] == (False, ""), counts
    # The threshold rule excluded 0/5 on that: a fixed line reads no sample size.
    h = {c: [k / n for _, k, n in v] for c, v in _history({"c9": [(0, 5)] * 3}).items()}
    assert ExclusionRule(exclude_after=0).decide(h, 2, _status())["c9"][0] is True


def test_min_active_is_honoured_worst_first():
    bad = {c: [(0, 100), (1, 100), (0, 100)] for c in CLASSES[:8]}
    bad["c3"] = [(5, 100), (5, 100), (5, 100)]  # the least bad of them
    out = EvidenceRule(min_active=3).decide(_history(bad), _status())
    gone = [c for c, (ex, _) in out.items() if ex]
    assert len(gone) == 7 and "c3" not in gone
    assert "only 3 classes are active" in out["c3"][1]
    # Already excluded classes stay so and do not count as active.
    out = EvidenceRule(min_active=3).decide(_history(bad), _status(excluded=CLASSES[:6]))
    assert all(out[c][0] for c in CLASSES[:6])
    # Four active (chance 0.25): c6 and c7 qualify, one may go.
    assert sorted(c for c in CLASSES[6:] if out[c][0]) in (["c6"], ["c7"])
    kept = "c7" if out["c6"][0] else "c6"
    assert "only 3 classes are active" in out[kept][1] and "chance 0.250" in out[kept][1]


def test_not_judged_before_a_full_window():
    h = _history({"c9": [(0, 100), (0, 100)]}, rounds=(2, 3))
    assert EvidenceRule(patience=2).decide(h, _status())["c9"] == (False, "")
    assert EvidenceRule(patience=1).decide(h, _status())["c9"][0] is True


def test_reinclusion_needs_a_fresh_window_and_the_rule_never_reincludes():
    rounds = tuple(range(2, 9))
    stuck = {"c9": [(1, 100)] * len(rounds)}
    h = _history(stuck, rounds=rounds)
    rule = EvidenceRule()
    # Re-included at round 6: rounds 6 and 7 are not a window yet …
    for upto in (6, 7):
        cut = {c: [t for t in v if t[0] <= upto] for c, v in h.items()}
        assert rule.decide(cut, _status(), {"c9": 6})["c9"][0] is False, upto
    # … rounds 6-8 are: still stuck, so out again, and the reason says why.
    out = rule.decide(h, _status(), {"c9": 6})
    assert out["c9"][0] is True and "rounds 6-8" in out["c9"][1] and "re-included it at round 6" in out["c9"][1]
    # An excluded class stays excluded whatever its evidence.
    good = _history({}, rounds=rounds)
    assert rule.decide(good, _status(excluded=["c9"]))["c9"][0] is True


# ------------------------------------------------------------------ through the engine

def _ev(r, special, total=100, good=85, names=CLASSES):
    return Evidence(r, {c: special.get(c, good) for c in names}, {c: total for c in names}, "val")


def test_decide_exclusion_uses_the_evidence_rule_by_default():
    assert ExclusionConfig().rule == "evidence"
    cfg = ExclusionConfig(enabled=True, exclude_after=2, patience=2)
    hist = [_ev(2, {"c9": 2}), _ev(3, {"c9": 1}), _ev(4, {"c9": 2})]
    d = decide_exclusion(cfg, hist, 4, _status())
    assert d["c9"].excluded and d["c9"].judged and "2/100" in d["c9"].reason and "rounds 2-4" in d["c9"].reason
    assert not any(d[c].excluded for c in CLASSES[:9])
    assert not decide_exclusion(cfg, hist[:2], 3, _status())["c9"].excluded  # no window yet
    # Re-included at round 5: judged on rounds 5-7 only.
    hist += [_ev(r, {"c9": 2}) for r in (5, 6, 7)]
    assert not decide_exclusion(cfg, hist[:5], 6, _status(), {"c9": 5})["c9"].excluded
    d = decide_exclusion(cfg, hist, 7, _status(), {"c9": 5})
    assert d["c9"].excluded and "rounds 5-7" in d["c9"].reason and "re-included it at round 5" in d["c9"].reason
    # A class not judged (no held-out images) still counts as active for chance and min_active.
    hole = [Evidence(r, {c: 85 for c in CLASSES[:9]} | {"c9": 2}, {c: 100 for c in CLASSES[:9]} | {"c9": 100}, "val")
            for r in (2, 3, 4)]
    for e in hole:
        e.total["c0"] = 0
    d = decide_exclusion(cfg, hole, 4, _status())
    assert not d["c0"].judged and d["c9"].excluded and "10 active classes" in d["c9"].reason


def test_threshold_rule_counts_a_one_image_gain():
    # Issue 15: 0.28 → 0.29 on 100 images is a gain of 0.01 and keeps the class under min_gain 0.01.
    cfg = ExclusionConfig(enabled=True, rule="threshold", exclude_after=2, patience=2, exclude_below=0.5, min_gain=0.01)
    for first in range(0, 49):
        hist = [_ev(2, {"c9": first}), _ev(3, {"c9": first}), _ev(4, {"c9": first + 1})]
        assert not decide_exclusion(cfg, hist, 4, _status())["c9"].excluded, first
    hist = [_ev(2, {"c9": 28}), _ev(3, {"c9": 28}), _ev(4, {"c9": 28})]
    d = decide_exclusion(cfg, hist, 4, _status())["c9"]
    assert d.excluded and "gained +0.0000" in d.reason and "less than the 0.010" in d.reason
    assert "rounds 2-4" in d.reason and "0.280 → 0.280 → 0.280" in d.reason


def test_exclusion_config_fields_are_strict_and_old_keys_stay_valid():
    old = ExclusionConfig(enabled=True, exclude_after=2, exclude_below=0.3, patience=1, min_gain=0.02, min_active=3)
    assert old.rule == "evidence" and old.exclude_below == 0.3
    for bad in ({"rule": "fancy"}, {"confidence": 1.0}, {"confidence": "0.9"}, {"chance_margin": 0.0},
                {"min_rise": -0.1}, {"min_rise": True}):
        with pytest.raises(ValidationError):
            ExclusionConfig(**bad)
    assert ProjectConfig(exclusion={"rule": "threshold"}).exclusion.rule == "threshold"


# ------------------------------------------------------------------ excluded classes leave the queue

def test_images_a_gatekeeper_recognises_as_an_excluded_class_never_reach_the_queue(tmp_path):
    """decide → gatekeepers → select, as the service and simulate run them: the scoring job marks
    the images a model that still knew the excluded class predicts as it (`gated`, workers.jobs),
    and selection keeps them out even when they rank first — they fit no active class, so an
    uncertainty ranking favours them."""
    from engine import contracts as c
    from engine import plan
    from engine.selection import select_from_scores

    names = ["a", "b", "hopeless"]
    cfg = ExclusionConfig(enabled=True, exclude_after=2, patience=2)
    hist = [Evidence(r, {"a": 90, "b": 88, "hopeless": 1}, {n: 100 for n in names}, "val") for r in (2, 3, 4)]
    d = decide_exclusion(cfg, hist, 4, {n: "active" for n in names})
    assert d["hopeless"].excluded and not d["a"].excluded
    active = [not d[n].excluded for n in names]
    keepers = plan.gatekeepers([plan.TrainedModel(r, f"m{r}.pt", [True] * 3) for r in (2, 3, 4)], active)
    assert [(g.round, g.excluded) for g in keepers] == [(4, [False, False, True])]

    rng = np.random.default_rng(0)
    n = 200
    gated = np.zeros(n, bool)
    gated[:40] = True  # what round 4's model calls "hopeless"
    entropy = rng.random(n).astype(np.float32)
    entropy[:40] += 10.0  # ranked first by any uncertainty
    path = tmp_path / "scores_0.npz"
    np.savez(path, **{c.SCORE_ITEM_IDS: np.arange(1000, 1000 + n), c.SCORE_PRED: rng.integers(0, 2, n),
                      c.SCORE_GATED: gated, c.SCORE_COLUMN_PREFIX + "entropy": entropy,
                      c.SCORE_COLUMN_PREFIX + "least_confidence": entropy, c.SCORE_COLUMN_PREFIX + "margin": entropy})
    sel = select_from_scores([path], "entropy", names, active, budget=30, reserve=20,
                             accuracy=[0.9, 0.88, 0.01], seed=0, number=5)
    picked = [p.item_id for p in sel.batch + sel.reserve]
    assert len(sel.batch) == 30 and len(sel.reserve) == 20
    assert not set(picked) & set(range(1000, 1040))
    assert sel.gated == 40
    # Without the gatekeeper's column the same ranking queues them first.
    np.savez(path, **{c.SCORE_ITEM_IDS: np.arange(1000, 1000 + n), c.SCORE_PRED: rng.integers(0, 2, n),
                      c.SCORE_COLUMN_PREFIX + "entropy": entropy, c.SCORE_COLUMN_PREFIX + "least_confidence": entropy,
                      c.SCORE_COLUMN_PREFIX + "margin": entropy})
    sel = select_from_scores([path], "entropy", names, active, 30, 20, [0.9, 0.88, 0.01], 0, 5)
    assert {p.item_id for p in sel.batch} <= set(range(1000, 1040))
