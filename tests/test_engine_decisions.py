"""engine/decisions.py: what a round decides, as the engine writes it."""
from __future__ import annotations


def test_the_exclusion_reason_names_the_rounds_it_read():
    """What the engine writes into the class's reason (engine/decisions.py): round 1 was a
    cold start (no model, no evidence), rounds 2-4 were evaluated; the reason used to say
    "rounds 0-2", positions in the rule's window."""
    from engine.config import ExclusionConfig
    from engine.decisions import Evidence, decide_exclusion

    cfg = ExclusionConfig(enabled=True, rule="threshold", exclude_after=2, patience=2, exclude_below=0.5, min_gain=0.01)
    status = {"a": "active", "b": "active", "c": "active"}

    def ev(r, a):
        return Evidence(r, {"a": a, "b": 9, "c": 9}, {"a": 10, "b": 10, "c": 10}, "val")

    d = decide_exclusion(cfg, [ev(2, 1), ev(3, 1), ev(4, 1)], 4, status)
    assert d["a"].excluded and "rounds 2-4" in d["a"].reason, d["a"].reason
    # Re-included at round 5: judged on rounds 5-7 only, and the reason says so.
    d = decide_exclusion(cfg, [ev(r, 1) for r in range(2, 8)], 7, status, reincluded_at={"a": 5})
    assert d["a"].excluded and "rounds 5-7" in d["a"].reason, d["a"].reason
    # A round without evidence of the class is skipped in the window's numbering too.
    hist = [ev(2, 1), Evidence(3, {"b": 9, "c": 9}, {"b": 10, "c": 10}, "val"), ev(4, 1), ev(5, 1), ev(6, 1)]
    d = decide_exclusion(cfg, hist, 6, status)
    assert d["a"].excluded and "rounds 4-6" in d["a"].reason, d["a"].reason
