"""The in-process loop's bookkeeping on digits with the small CNN (a few epochs: seconds on 2 cores)."""
import numpy as np

from workers.loop import SimulationConfig, run_simulation


def test_excluded_classes_leave_selection_and_stay_reported():
    # A rule every class fails (accuracy < 1.01, gain < 1.0 over one round) from round 1: all but
    # the two best classes are excluded then, deterministically, whatever the model learned.
    cfg = SimulationConfig(dataset="digits", strategy="entropy", initial=150, budget=60, rounds=2, epochs=5,
                           exclude_after=1, exclude_below=1.01, exclusion_patience=1, exclusion_min_gain=1.0)
    seen = []
    out = run_simulation(cfg, progress=seen.append)
    r0, r1, r2 = out["rounds"]
    assert [r["round"] for r in seen] == [0, 1, 2]
    assert r0["excluded"] == [] and len(r1["excluded"]) == 8
    assert all(e["reason"] for e in r1["excluded"])
    gone = {e["class"] for e in r1["excluded"]}
    # Round 1 trained before the decision; round 2 trained and reported with those classes out.
    assert all(pc["status"] == "active" for pc in r1["per_class"].values())
    assert {c for c, pc in r2["per_class"].items() if pc["status"] == "excluded"} == gone
    assert all(r2["per_class"][c]["accuracy"] == 0.0 for c in gone)  # the head no longer answers them
    assert set(r2["per_class"]) == set(out["config"]["classes"])  # still reported
    # Selection left the excluded classes out (by the round-1 model's prediction): most of the 60
    # new labels are of the two active classes, though those are only ~20 % of the pool. Without
    # the gatekeeper, entropy picks mostly excluded-class images (they fit no active class).
    active = [c for c in out["config"]["classes"] if c not in gone]
    new_active = sum(r2["per_class"][c]["labeled"] - r1["per_class"][c]["labeled"] for c in active)
    new_gone = sum(r2["per_class"][c]["labeled"] - r1["per_class"][c]["labeled"] for c in gone)
    assert new_active + new_gone == 60 and new_active > new_gone
    assert r2["accuracy"] <= 2 * max(r2["per_class"][c]["support"] for c in active) / out["config"]["test_size"] + 1e-9
    assert r2["accuracy_active"] >= r2["accuracy"]


def test_random_labels_grow_by_budget_and_stop_when_the_pool_is_empty():
    cfg = SimulationConfig(dataset="digits", strategy="random", initial=1000, budget=200, rounds=3, epochs=1,
                           exclusion=False, pool_limit=1200)
    out = run_simulation(cfg)
    assert out["config"]["pool_size"] <= 1200
    labeled = [r["labeled"] for r in out["rounds"]]
    assert labeled[:2] == [1000, min(1200, out["config"]["pool_size"])]
    assert len(labeled) == 2  # round 2 found the pool empty and the loop stopped
    assert np.isfinite([r["accuracy"] for r in out["rounds"]]).all()


def test_val_limit_subsamples_validation_stratified():
    full = run_simulation(SimulationConfig(dataset="digits", strategy="random", initial=100, rounds=0, epochs=1,
                                           exclusion=False))
    small = run_simulation(SimulationConfig(dataset="digits", strategy="random", initial=100, rounds=0, epochs=1,
                                            exclusion=False, val_limit=100))
    assert full["config"]["val_size"] > 300
    assert 95 <= small["config"]["val_size"] <= 105
    assert small["config"]["val_limit"] == 100 and small["config"]["test_size"] == full["config"]["test_size"]
