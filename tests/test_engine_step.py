"""engine.step: a round's decisions in their one order, on small fake facts (no store, no torch).

The service's handlers and `camloop simulate` both call these three functions; what they
decide end to end is tests/test_parity.py's; here each step is checked on its own."""
from __future__ import annotations

import numpy as np

from engine import contracts as c
from engine import step
from engine.config import ProjectConfig
from engine.decisions import Evidence, evidence_accuracy, round_seed
from engine.plan import TrainedModel
from engine.selection import cold_start, select_from_scores
from tests.score_files import synthetic_score_file

NAMES = ["a", "b", "c", "d"]


def _refs(ids, labels=None, path="pool.npy"):
    ids = list(ids)
    return c.ImageRefs.build(ids, [path] * len(ids), range(len(ids)), labels)


def _evidence(number: int, correct_d: int = 0, total: int = 50) -> Evidence:
    correct = {"a": 45, "b": 44, "c": 46, "d": correct_d}
    return Evidence(number, correct, {n: total for n in NAMES}, "val")


def _facts(tmp_path, number=3, status=None, reincluded=None, history=None, pool=range(100, 130)):
    return step.TrainedFacts(
        number=number, class_names=NAMES, status=status or {n: "active" for n in NAMES},
        history=history if history is not None else [_evidence(r) for r in range(1, number + 1)],
        models=[TrainedModel(r, f"ckpt{r}.pt", [True] * 4) for r in range(1, number + 1)],
        scorer=f"ckpt{number}.pt", pool=_refs(pool), files=c.RoundFiles(tmp_path / f"round_{number}"),
        shard_size=10, reincluded_at=reincluded or {})


EXCLUDING = ProjectConfig.model_validate({"exclusion": {"enabled": True}, "seed": 3})


# ----------------------------------------------------------------------------- training

def test_training_holds_out_evidence_without_a_validation_split(tmp_path):
    labels = [i % 4 for i in range(200)]
    facts = step.TrainingFacts(number=2, class_names=NAMES, active=[True] * 4, labeled=_refs(range(200), labels),
                               val=c.ImageRefs(), test=_refs(range(500, 520), [0] * 20, "test.npy"),
                               previous_train_ids=list(range(150)), files=c.RoundFiles(tmp_path))
    plan = step.training(EXCLUDING, 7, facts)
    assert plan.split.source == "holdout" and len(plan.split.evidence) > 0
    assert sorted(plan.split.train.item_ids + plan.split.evidence.item_ids) == list(range(200))
    m = plan.manifest
    assert m.project_id == 7 and m.round == 2 and m.evidence_source == "holdout"
    assert m.train.item_ids == plan.split.train.item_ids
    # New = labeled since the previous model: ids 150..199 among the training images.
    assert [i for i, new in zip(m.train.item_ids, m.is_new) if new] == [i for i in m.train.item_ids if i >= 150]
    assert m.settings.seed == round_seed(3, 2)


def test_training_reads_a_registered_validation_split(tmp_path):
    facts = step.TrainingFacts(number=1, class_names=NAMES, active=[True, True, False, True],
                               labeled=_refs(range(40), [i % 4 for i in range(40)]),
                               val=_refs(range(900, 920), [i % 4 for i in range(20)], "val.npy"),
                               test=c.ImageRefs(), previous_train_ids=None, files=c.RoundFiles(tmp_path))
    plan = step.training(ProjectConfig(), 0, facts)
    assert plan.split.source == "val" and plan.split.evidence.item_ids == list(range(900, 920))
    assert len(plan.split.train) == 40 and not any(plan.manifest.is_new)
    assert plan.manifest.active == [True, True, False, True]


# ----------------------------------------------------------------------------- after training

def test_a_hopeless_class_is_excluded_then_kept_out_by_a_gatekeeper(tmp_path):
    plan = step.after_training(EXCLUDING, 5, _facts(tmp_path))
    assert plan.newly_excluded == ["d"] and plan.decisions["d"].excluded and plan.decisions["d"].judged
    assert plan.status == {"a": "active", "b": "active", "c": "active", "d": "excluded"}
    assert plan.active == [True, True, True, False]
    # The latest model that still trained "d" keeps its images out of the batch.
    assert [(g.round, g.checkpoint, g.excluded) for g in plan.gatekeepers] == [(3, "ckpt3.pt", [False] * 3 + [True])]
    m = plan.manifest
    assert m.project_id == 5 and m.round == 3 and m.checkpoint == "ckpt3.pt" and m.active == plan.active
    assert m.gatekeepers == plan.gatekeepers
    assert sorted(m.shards) == ["0", "1", "2"] and sum(len(s) for s in m.shards.values()) == 30
    assert m.seed == round_seed(3, 3) and m.mc_samples == EXCLUDING.mc_samples


def test_too_early_disabled_or_already_excluded_changes_nothing(tmp_path):
    # Round 2 is before exclude_after (3): nobody is judged on the window yet.
    early = step.after_training(EXCLUDING, 0, _facts(tmp_path, number=2))
    assert early.newly_excluded == [] and all(early.active) and early.gatekeepers == []
    # The rule off: nothing excluded, and nothing reported as not judged.
    off = step.after_training(ProjectConfig(), 0, _facts(tmp_path))
    assert off.newly_excluded == [] and off.not_judged == {} and all(off.active)
    # An engineer excluded "b" earlier: it stays excluded, is not "newly" excluded, and has a gatekeeper.
    status = {"a": "active", "b": "excluded", "c": "active", "d": "active"}
    plan = step.after_training(EXCLUDING, 0, _facts(tmp_path, status=status))
    assert plan.newly_excluded == ["d"] and plan.status["b"] == "excluded"
    assert plan.active == [True, False, True, False]
    assert plan.gatekeepers[0].excluded == [False, True, False, True]


def test_a_reincluded_class_is_judged_from_its_reinclusion_on(tmp_path):
    # An engineer re-included "d" at round 3: rounds 1-2 no longer count, one round is no window.
    plan = step.after_training(EXCLUDING, 0, _facts(tmp_path, reincluded={"d": 3}))
    assert plan.newly_excluded == [] and plan.status["d"] == "active" and not plan.decisions["d"].excluded
    # Three more hopeless rounds after it and the rule excludes it again.
    history = [_evidence(r) for r in range(1, 7)]
    again = step.after_training(EXCLUDING, 0, _facts(tmp_path, number=6, reincluded={"d": 3}, history=history))
    assert again.newly_excluded == ["d"]


def test_a_class_without_evidence_is_reported_not_judged(tmp_path):
    history = [Evidence(r, {**_evidence(r).correct, "c": 0}, {**_evidence(r).total, "c": 0}, "holdout")
               for r in range(1, 4)]
    plan = step.after_training(EXCLUDING, 0, _facts(tmp_path, history=history))
    assert "c" in plan.not_judged and "no held-out images" in plan.not_judged["c"]
    assert plan.status["c"] == "active" and plan.newly_excluded == ["d"]


# ----------------------------------------------------------------------------- selection

def _score_file(path, ids, classes=4, seed=0, gated=None):
    return synthetic_score_file(path, ids, seed=seed, gated=gated, classes=classes, columns="random")


CONFIG = ProjectConfig.model_validate({"budget": 20, "reserve": 6, "seed": 4, "strategy": "hybrid"})


def test_select_from_scores_in_the_service_order(tmp_path):
    files = [_score_file(tmp_path / "scores_00000.npz", range(1, 201), seed=1),
             _score_file(tmp_path / "scores_00001.npz", range(201, 401), seed=2)]
    ev = Evidence(2, {"a": 9, "b": 5, "c": 8, "d": 2}, {n: 10 for n in NAMES}, "val")
    active = [True, True, True, False]
    drop = np.arange(1, 60, 2)
    votes = (np.array([0, 6, 0, 0]), np.array([10, 10, 10, 10]))
    sel = step.select(CONFIG, step.SelectionFacts(2, NAMES, active, step.Ranking.SCORES, files, evidence=ev,
                                                  drop_ids=drop, wrong_region_votes=votes))
    # The control slice: 10 % of 20 is under control.min_per_round (5), so 5 of the batch.
    direct = select_from_scores(files, "hybrid", NAMES, active, 20, 6, evidence_accuracy(ev, NAMES), 4, 2, drop, votes,
                                n_control=5)
    assert [(p.item_id, p.pred, p.control) for p in sel.batch] == [(p.item_id, p.pred, p.control) for p in direct.batch]
    assert sel.n_control == 5 and sum(p.control for p in sel.batch) == 5
    assert [p.item_id for p in sel.reserve] == [p.item_id for p in direct.reserve]
    assert sel.quota == direct.quota and sum(sel.quota) == 20 and sel.quota[3] == 0
    picked = {p.item_id for p in sel.batch + sel.reserve}
    assert len(sel.batch) == 20 and len(sel.reserve) == 6 and len(picked) == 26
    assert not picked & set(drop.tolist())                      # labeled meanwhile: not candidates
    # An excluded class is never ranked into the queue (the score job's guesses are over active
    # classes only, so a control pick never guesses it either; these fake scores do).
    assert all(p.pred != "d" for p in sel.batch + sel.reserve if not p.control)
    # The votes reach the quota: "b" gets more of the batch with them than without.
    plain = step.select(CONFIG, step.SelectionFacts(2, NAMES, active, step.Ranking.SCORES, files, evidence=ev,
                                                    drop_ids=drop))
    assert sel.quota[1] > plain.quota[1]


def test_select_keeps_gated_images_out_and_counts_them(tmp_path):
    gated = np.zeros(100, bool)
    gated[:30] = True
    f = _score_file(tmp_path / "scores_00000.npz", range(100), gated=gated)
    sel = step.select(CONFIG, step.SelectionFacts(3, NAMES, [True] * 4, step.Ranking.SCORES, [f],
                                                  evidence=_evidence(3, 20)))
    assert sel.gated == 30 and all(p.item_id >= 30 for p in sel.batch + sel.reserve)


def test_cold_starts(tmp_path):
    ids = list(range(10, 90))
    rnd = step.select(CONFIG, step.SelectionFacts(1, NAMES, [True] * 4, step.Ranking.RANDOM, unlabeled_ids=ids))
    expected = cold_start(ids, 20, 6, 4, 1)
    assert [p.item_id for p in rnd.batch] == [p.item_id for p in expected.batch]
    assert len(rnd.reserve) == 6 and all(p.pred is None for p in rnd.batch)
    f = _score_file(tmp_path / "scores_00000.npz", range(300))
    typical = step.select(CONFIG, step.SelectionFacts(1, NAMES, [True] * 4, step.Ranking.TYPICAL, [f],
                                                      drop_ids=np.arange(100), budget=12, reserve=0))
    assert len(typical.batch) == 12 and typical.reserve == []
    assert all(p.item_id >= 100 and p.pred is None for p in typical.batch)


def test_no_score_files_select_nothing():
    sel = step.select(CONFIG, step.SelectionFacts(2, NAMES, [True] * 4, step.Ranking.SCORES, []))
    assert sel.batch == [] and sel.reserve == []

