"""Exclusion rule scenarios, including an engineer bringing a class back."""
import pytest

from strategies.exclusion import ExclusionRule

rule = ExclusionRule(exclude_after=3, exclude_below=0.5, patience=2, min_gain=0.01)
GOOD = [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]


def _active(*names):
    return {n: "active" for n in names}


def test_stuck_class_is_excluded_with_reason():
    h = {"bad": [0.2, 0.3, 0.3, 0.3], "good": GOOD[:4], "ok": GOOD[:4]}
    out = rule.decide(h, 3, _active("bad", "good", "ok"))
    assert out["bad"][0] is True
    assert "0.30" in out["bad"][1] and "0.50" in out["bad"][1] and "rounds 1-3" in out["bad"][1]
    assert out["good"] == (False, "") and out["ok"] == (False, "")


def test_not_before_exclude_after_nor_when_improving_or_above():
    stuck = [0.2, 0.2, 0.2, 0.2, 0.2]
    assert rule.decide({"a": stuck, "b": GOOD}, 2, _active("a", "b", "c"))["a"][0] is False
    improving = [0.1, 0.1, 0.2, 0.3, 0.4]
    assert rule.decide({"a": improving, "b": GOOD, "c": GOOD}, 4, _active("a", "b", "c"))["a"][0] is False
    touched = [0.2, 0.2, 0.55, 0.2, 0.2]  # above the bar inside the window
    assert rule.decide({"a": touched, "b": GOOD, "c": GOOD}, 3, _active("a", "b", "c"))["a"][0] is False
    assert rule.decide({"a": touched, "b": GOOD, "c": GOOD}, 4, _active("a", "b", "c"))["a"][0] is False
    # Only `round` counts, later entries are ignored.
    assert rule.decide({"a": stuck + [0.9], "b": GOOD, "c": GOOD}, 4, _active("a", "b", "c"))["a"][0] is True


def test_reincluded_class_needs_a_fresh_failing_window():
    stuck = [0.2] * 10
    others = {"b": GOOD + [0.9, 0.9], "c": GOOD + [0.9, 0.9]}
    # Excluded at round 3, re-included by an engineer at round 5 (status active again).
    status = _active("a", "b", "c")
    for rnd in (5, 6):
        out = rule.decide({"a": stuck, **others}, rnd, status, reincluded_at={"a": 5})
        assert out["a"][0] is False, rnd
    # Rounds 5, 6, 7 form a full fresh window: still stuck, so out again, with the reason saying so.
    out = rule.decide({"a": stuck, **others}, 7, status, reincluded_at={"a": 5})
    assert out["a"][0] is True and "re-included it at round 5" in out["a"][1]
    # ...but not if it improved after coming back.
    better = [0.2] * 5 + [0.2, 0.3, 0.45]
    assert rule.decide({"a": better, **others}, 7, status, reincluded_at={"a": 5})["a"][0] is False


def test_excluded_stays_excluded_and_min_active_is_kept():
    out = rule.decide({"a": GOOD}, 4, {"a": "excluded", "b": "active", "c": "active"})
    assert out["a"][0] is True  # the rule never brings a class back by itself
    stuck = [0.2, 0.2, 0.2, 0.2]
    out = rule.decide({"a": stuck, "b": [0.1] * 4, "c": [0.3] * 4}, 3, _active("a", "b", "c"))
    # Three would qualify; two must stay: only the worst (b) goes.
    assert [k for k, v in out.items() if v[0]] == ["b"]
    assert "only 2 classes are active" in out["a"][1]


def test_errors():
    with pytest.raises(ValueError, match="NaN"):
        rule.decide({"a": [0.1, float("nan"), 0.1, 0.1], "b": GOOD, "c": GOOD}, 3, _active("a", "b", "c"))
    with pytest.raises(ValueError, match="status"):
        rule.decide({}, 3, {"a": "maybe"})
    with pytest.raises(ValueError, match="patience"):
        ExclusionRule(patience=0)
