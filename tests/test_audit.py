"""The audit of the lift (issue 22): the pure math (strategies.audit), the shadow plan
(engine.plan.shadow_spec) and the simulate JSON carrying the audit each round."""
import math

import numpy as np
import pytest

from strategies.audit import (NOT_PAYING_OFF, PAYING_OFF, TOO_EARLY, AuditRules, PowerLaw, audit, fit_power_law,
                              judge, random_labels_needed, wilson)

TRUE = PowerLaw(0.9, 2.0, 0.5)
SIZES = np.array([50, 100, 200, 400, 800])


def test_fit_recovers_a_known_power_law_from_exact_points():
    f = fit_power_law(SIZES, TRUE(SIZES), [10**6] * len(SIZES))
    assert f.a == pytest.approx(0.9, abs=0.01) and f.c == pytest.approx(0.5, rel=0.1)
    # and its inversion: the labels random needs for 85 %: (2 / 0.05)^2 = 1600
    assert TRUE.labels_for(0.85) == pytest.approx(1600)
    assert f.labels_for(0.85) == pytest.approx(1600, rel=0.1)


def test_inversion_edges():
    assert TRUE.labels_for(0.95) == math.inf          # above the ceiling: never
    assert PowerLaw(0.8, 0.0, 0.5).labels_for(0.7) == 0.0  # a flat curve already there
    assert TRUE.labels_for(float(TRUE(123))) == pytest.approx(123)


def test_bootstrap_interval_covers_the_truth_on_noisy_points():
    # 40 projects with binomially noisy points on 1,000 images: the 95 % interval of the labels
    # random needs for the accuracy it has at 1,000 labels covers 1,000 in nearly all of them.
    rng = np.random.default_rng(1)
    target = float(TRUE(1000))
    covered = 0
    for k in range(40):
        correct = rng.binomial(1000, TRUE(SIZES))
        inv = random_labels_needed(SIZES, correct, [1000] * len(SIZES), target, 10**6, reps=300, seed=k)
        covered += (inv.low or 0) <= 1000 <= (inv.high if inv.high is not None else math.inf)
    assert covered >= 34


def test_fit_is_vectorised_and_fast_enough_for_a_request():
    import time
    t = time.perf_counter()
    random_labels_needed(SIZES, (TRUE(SIZES) * 1000).astype(int), [1000] * 5, 0.85, 1000)
    assert time.perf_counter() - t < 0.5


def _points(curve, sizes, n=2000, rng=None):
    acc = curve(np.asarray(sizes))
    c = rng.binomial(n, acc) if rng is not None else np.round(acc * n).astype(int)
    return [{"labels": int(s), "correct": int(k), "n": n} for s, k in zip(sizes, c)]


def test_verdict_paying_off_when_the_model_is_far_above_the_random_curve():
    # 1,000 labels, an accuracy random gets only at (2 / 0.03)^2 ≈ 4,444; random curve to 800 labels.
    # The gain is claimed only because even a curve that never saturates (log-linear) needs more.
    a = audit(_points(TRUE, [100, 200, 400, 600, 800], n=5000), 1000, {"correct": 4350, "n": 5000, "on": "val"},
              rounds=5, random_labels=800)
    assert a["verdict"] == PAYING_OFF
    need = a["random_would_need"]
    assert need["low"] > 1000 and need["labels"] == pytest.approx(4444, rel=0.3)
    assert a["labels_saved"]["labels"] == need["labels"] - 1000 and a["labels_saved"]["low"] > 0
    assert "paying off" in a["advice"]
    assert [p["labels"] for p in a["random_curve"]] == [100, 200, 400, 600, 800]
    lo, hi = a["accuracy_now"]["low"], a["accuracy_now"]["high"]
    assert lo < 0.87 < hi and a["accuracy_now"]["on"] == "val"


def test_a_gain_that_rests_on_the_curve_shape_alone_is_not_claimed():
    # Random points that rise steeply and an accuracy near the power law's ceiling: the power law
    # says random needs far more, a log-linear curve through the same points says fewer.
    pts = [{"labels": 15, "correct": 36, "n": 360}, {"labels": 30, "correct": 134, "n": 360},
           {"labels": 60, "correct": 235, "n": 360}, {"labels": 90, "correct": 330, "n": 360}]
    a = audit(pts, 140, {"correct": 338, "n": 360, "on": "val"}, rounds=4, random_labels=90)
    assert a["verdict"] == NOT_PAYING_OFF and a["random_would_need"]["low"] < 140


def test_verdict_not_paying_off_when_random_is_as_good():
    # The model has exactly the accuracy random has at its labels: no gain to show.
    rng = np.random.default_rng(0)
    acc = float(TRUE(1000))
    a = audit(_points(TRUE, [100, 200, 300, 400, 500], rng=rng), 1000,
              {"correct": int(round(acc * 2000)), "n": 2000, "on": "val"}, rounds=5, random_labels=500)
    assert a["verdict"] == NOT_PAYING_OFF
    assert a["labels_saved"]["low"] <= 0
    assert "strategy: random" in a["advice"]


def test_verdict_not_paying_off_and_behind_when_worse_than_random():
    a = audit(_points(TRUE, [100, 200, 400, 800, 1600]), 2000, {"correct": 1560, "n": 2000, "on": "val"},
              rounds=6, random_labels=1600)
    assert a["verdict"] == NOT_PAYING_OFF and a["labels_saved"]["high"] < 0
    assert "behind random" in a["advice"]


def test_too_early_before_enough_rounds_or_points():
    pts = _points(TRUE, [50, 100, 200])
    now = {"correct": 1500, "n": 2000, "on": "val"}
    assert audit(pts, 400, now, rounds=2, random_labels=200)["verdict"] == TOO_EARLY
    early = audit(pts[:2], 400, now, rounds=5, random_labels=200)
    assert early["verdict"] == TOO_EARLY and "sizes" in early["advice"] and early["random_would_need"] is None
    assert audit(pts, 400, now, rounds=5, random_labels=200, rules=AuditRules(min_random_labels=500))[
        "verdict"] == TOO_EARLY


def test_points_of_one_size_are_pooled_and_reset_is_reported():
    pts = [{"labels": 100, "correct": 700, "n": 1000}, {"labels": 100, "correct": 720, "n": 1000}]
    a = audit(pts, 300, {"correct": 800, "n": 1000, "on": "val"}, rounds=3, random_labels=100, reset_at_round=4)
    assert a["random_curve"] == [{"labels": 100, "accuracy": 0.71, "low": pytest.approx(wilson(1420, 2000)[0]),
                                  "high": pytest.approx(wilson(1420, 2000)[1]), "n": 2000}]
    assert a["reset_at_round"] == 4


def test_judge_unbounded_interval():
    v, advice = judge({"labels": None, "low": 500, "high": None}, 1000)
    assert v == PAYING_OFF and "+∞" in advice
    v, _ = judge({"labels": None, "low": None, "high": None}, 1000)
    assert v == NOT_PAYING_OFF


def test_shadow_spec_sizes_and_evaluation():
    from engine.config import ProjectConfig
    from engine.contracts import ImageRefs
    from engine.plan import split_training

    cfg = ProjectConfig()
    labeled = ImageRefs.build(range(200), ["x.npy"] * 200, range(200), [i % 10 for i in range(200)])
    val = ImageRefs.build(range(1000, 1100), ["v.npy"] * 100, range(100), [i % 10 for i in range(100)])
    from engine.plan import shadow_spec

    spec = shadow_spec(cfg, split_training(labeled, val, cfg, 10), random_ids=range(80))
    assert spec.sizes == [20, 40, 80] and len(spec.train) == 80 and len(spec.eval) == 0
    assert set(spec.train.item_ids) == set(range(80)) and spec.train.item_ids[:20] != list(range(20))
    assert shadow_spec(cfg, split_training(labeled, val, cfg, 10), range(80), measured=[20, 40]).sizes == [80]
    # Then a new size only once the random labels grew by a quarter; the round's model is still measured.
    assert shadow_spec(cfg, split_training(labeled, val, cfg, 10), range(90), measured=[20, 40, 80]).sizes == []
    assert shadow_spec(cfg, split_training(labeled, val, cfg, 10), range(100), measured=[20, 40, 80]).sizes == [100]
    # No validation split: the random labels held out are the audit's evidence, and never train.
    split = split_training(labeled, ImageRefs(), cfg, 10)
    spec = shadow_spec(cfg, split, random_ids=range(120))
    assert len(spec.eval) > 0 and not set(spec.eval.item_ids) & set(spec.train.item_ids)
    assert set(spec.eval.item_ids) <= set(split.evidence.item_ids) and set(spec.eval.item_ids) < set(range(120))
    assert shadow_spec(ProjectConfig(audit={"enabled": False}), split, range(120)) is None
    assert shadow_spec(cfg, split, random_ids=range(5)) is None


def test_simulate_json_carries_the_audit_each_round():
    from engine.config import SimulationConfig
    from workers.simulate import run_simulation

    out = run_simulation(SimulationConfig(dataset="digits", strategy="margin", first_batch="random", initial=120,
                                          budget=40, rounds=2, epochs=2, pool_limit=600, threads=1, mc_samples=2,
                                          stopping={"stop_set_size": 50}, audit={"min_rounds": 2}))
    audits = [r["audit"] for r in out["rounds"]]
    assert all(a is not None for a in audits)
    first = audits[0]
    assert first["labels_now"] == 120 and first["random_labels"] == 120 and first["verdict"] == TOO_EARLY
    assert [p["labels"] for p in first["random_curve"]] == [30, 60, 120]
    assert first["accuracy_now"]["on"] == "val"
    # Round 1's model trained on the random first batch only: it is the curve's last point.
    assert first["random_curve"][-1]["accuracy"] == pytest.approx(first["accuracy_now"]["value"])
    last = audits[-1]
    assert last["labels_now"] == 200 and last["verdict"] in (PAYING_OFF, NOT_PAYING_OFF)
    assert last["random_would_need"] is not None and last["advice"]
    for k in ("labels_now", "random_labels", "accuracy_now", "random_curve", "random_would_need", "labels_saved",
              "verdict", "advice", "reset_at_round"):
        assert k in last


def test_the_audit_resets_when_the_curve_changes_and_not_when_the_strategy_does():
    from engine.audit import round_audit
    from engine.config import ProjectConfig

    def shadow(key, sizes, acc_now):
        return {"on": "val", "key": key, "random_labels": max(sizes),
                "points": [{"labels": s, "correct": int(TRUE(s) * 2000), "n": 2000} for s in sizes],
                "current": {"correct": int(acc_now * 2000), "n": 2000}}

    same = [shadow("k1", [50, 100, 200], 0.76), shadow("k1", [250], 0.8), shadow("k1", [320], 0.82)]
    cfg = ProjectConfig(strategy="entropy")  # the strategy is not part of the curve
    a = round_audit(cfg, same, rounds=3, labels_now=900, random_labels=320)
    assert a["reset_at_round"] is None and len(a["random_curve"]) == 5 and a["verdict"] != TOO_EARLY
    # Round 3 trained another network (an exclusion, new settings): its curve starts again.
    changed = same[:2] + [shadow("k2", [80, 160, 320], 0.82)]
    b = round_audit(cfg, changed, rounds=3, labels_now=900, random_labels=320, round_numbers=[2, 3, 4])
    assert b["reset_at_round"] == 4 and [p["labels"] for p in b["random_curve"]] == [80, 160, 320]
    assert b["verdict"] == TOO_EARLY  # one round on the new curve
    assert round_audit(ProjectConfig(audit={"enabled": False}), same, rounds=3, labels_now=900,
                       random_labels=320) is None
