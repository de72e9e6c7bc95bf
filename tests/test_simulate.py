"""The simulation driver (workers.simulate) on digits with the small CNN: the service's round
code in one process (a few epochs: seconds on 2 cores)."""
import numpy as np

from engine.config import SimulationConfig
from workers.simulate import run_simulation


def test_excluded_classes_leave_selection_and_stay_reported():
    # A rule every class fails unless it is perfect on the evidence (accuracy < 1.0, gain < 1.0
    # over one round) from round 2, the first with a window of two evaluations: the imperfect
    # classes are excluded then, down to the two best (min_active).
    cfg = SimulationConfig(dataset="digits", strategy="entropy", initial=150, budget=60, reserve=0, rounds=2, epochs=5,
                           exclusion={"enabled": True, "rule": "threshold", "exclude_after": 1, "exclude_below": 1.0, "patience": 1,
                                      "min_gain": 1.0})
    seen = []
    out = run_simulation(cfg, progress=seen.append)
    r1, r2, r3 = out["rounds"]
    assert [r["round"] for r in seen] == [1, 2, 3]
    assert r1["excluded"] == [] and 2 <= len(r2["excluded"]) <= 8
    assert all(e["reason"] for e in r2["excluded"])
    gone = {e["class"] for e in r2["excluded"]}
    # Round 2 trained before the decision; round 3 trained and reported with those classes out.
    assert all(pc["status"] == "active" for pc in r2["per_class"].values())
    assert {c for c, pc in r3["per_class"].items() if pc["status"] == "excluded"} == gone
    assert all(r3["per_class"][c]["accuracy"] == 0.0 for c in gone)  # the head no longer answers them
    assert set(r3["per_class"]) == set(out["config"]["classes"])  # still reported
    # Selection left the excluded classes out (by the round-2 model's prediction, the gatekeeper):
    # their share of the 60 new labels is under their share of the pool. Without the gatekeeper,
    # entropy picks almost only excluded-class images (they fit no active class): 58 of 60 when
    # this was written, against 13 of 60 with it.
    active = [c for c in out["config"]["classes"] if c not in gone]
    new_active = sum(r3["per_class"][c]["labeled"] - r2["per_class"][c]["labeled"] for c in active)
    new_gone = sum(r3["per_class"][c]["labeled"] - r2["per_class"][c]["labeled"] for c in gone)
    assert new_active + new_gone == 60 and new_gone / 60 < len(gone) / 10
    assert r2["kept_out_as_excluded"] > 0
    # Over all test images an excluded class's count as wrong: at most the active classes' share.
    assert r3["accuracy"] <= sum(r3["per_class"][c]["support"] for c in active) / out["config"]["test_size"] + 1e-9
    assert r3["accuracy_active"] >= r3["accuracy"]


def test_random_labels_grow_by_budget_and_stop_when_the_pool_is_empty():
    cfg = SimulationConfig(dataset="digits", strategy="random", initial=1000, budget=200, rounds=3, epochs=1,
                           pool_limit=1200)
    out = run_simulation(cfg)
    n = out["config"]["pool_size"]
    assert n <= 1200
    labeled = [r["labeled"] for r in out["rounds"]]
    assert labeled[:2] == [1000, min(1200, n)]
    # Round 2 queued what was left (nothing): the run stops after it, the last record selects nothing.
    assert len(labeled) == 2 and out["rounds"][-1]["selected"] == []
    assert len(out["rounds"][0]["selected"]) == n - 1000
    assert np.isfinite([r["accuracy"] for r in out["rounds"]]).all()


def test_rounds_are_numbered_as_the_service_numbers_them():
    out = run_simulation(SimulationConfig(dataset="digits", strategy="margin", initial=100, budget=40, rounds=2,
                                          epochs=1, pool_limit=600, threads=1))
    assert [r["round"] for r in out["rounds"]] == [1, 2, 3]
    assert [r["labeled"] for r in out["rounds"]] == [100, 140, 180]
    assert [len(r["selected"]) for r in out["rounds"][:2]] == [40, 40] and "selected" not in out["rounds"][2]
    picked = out["rounds"][0]["selected"] + out["rounds"][1]["selected"]
    assert len(set(picked)) == 80 and all(u.startswith("pool/") for u in picked)
    assert out["config"]["torch_threads"] == 1 and out["config"]["hflip"] is False  # digits: no mirroring


def test_val_limit_subsamples_validation_stratified():
    full = run_simulation(SimulationConfig(dataset="digits", strategy="random", initial=100, rounds=0, epochs=1))
    small = run_simulation(SimulationConfig(dataset="digits", strategy="random", initial=100, rounds=0, epochs=1,
                                            val_limit=100))
    assert full["config"]["val_size"] > 300
    assert 95 <= small["config"]["val_size"] <= 105
    assert small["config"]["val_limit"] == 100 and small["config"]["test_size"] == full["config"]["test_size"]


def test_dropquery_rounds_run_with_the_small_cnn():
    # selection.mode dropquery end to end on the small model (plan → score job's passes →
    # selection): every model-ranked round reports its candidates and no fallback note.
    out = run_simulation(SimulationConfig(dataset="digits", strategy="hybrid", initial=100, budget=40, rounds=2,
                                          epochs=1, pool_limit=600, threads=1,
                                          selection={"mode": "dropquery", "passes": 3, "dropout": 0.75}))
    assert [r["labeled"] for r in out["rounds"]] == [100, 140, 180]
    ranked = [r for r in out["rounds"] if r.get("selected")]
    assert ranked and all(isinstance(r["dropquery_candidates"], int) for r in ranked)
    assert not any("selection_note" in r for r in out["rounds"])
    assert all(len(set(r["selected"])) == len(r["selected"]) == 40 for r in ranked)
