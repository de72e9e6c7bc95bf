"""A round's decisions, once: what `camloop simulate`, the benchmarks and the service all run.

A round r (1, 2, …) of a project:

    training set   every labeled pool image of an active class, minus the held-out evidence;
                   "new" = labeled since the previous model was trained (duplicated ×k)
    train + eval   one model, seeded by round_seed(seed, r); per-class counts on the evidence
    exclusion      the rule reads the evidence of every evaluated round (by round number)
    score          the unlabeled pool, with the gatekeepers of earlier exclusions
    select         class budget from the evidence (never from missing evidence), then the batch
                   and the reserve (engine.selection)

Round 1 of a project with no labels trains nothing: its batch is a random sample (cold start).

Pure functions over arrays and small records, numpy only: the API process runs them, and so
does the simulation driver. I/O (the store, files, jobs) stays with the callers.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from engine.config import ExclusionConfig, HoldoutConfig, ProjectConfig


def round_seed(seed: int, number: int) -> int:
    """The seed of round `number`: model init, training order, MC-dropout masks, selection."""
    return int(seed) * 1000 + int(number)


def train_batch_size(config: ProjectConfig, n_train: int) -> int:
    """The configured batch, or one sized to the labeled set: early rounds hold ~100 labels, and
    at 128 an epoch would be one step; aim for >= ~10 steps an epoch, 16..128 a batch."""
    if config.batch_size:
        return int(config.batch_size)
    return int(min(128, max(16, int(n_train) // 10)))


def initial_labeled(n_pool: int, k: int, seed: int) -> np.ndarray:
    """Pool positions labeled before round 1 (the demo's seeds, a simulation's first labels)."""
    rng = np.random.default_rng(int(seed))
    return np.sort(rng.choice(int(n_pool), size=min(int(k), int(n_pool)), replace=False))


def cold_start_order(n_unlabeled: int, seed: int, number: int) -> np.ndarray:
    """With nothing labeled there is no model to rank by: a random order of the unlabeled pool."""
    return np.random.default_rng(round_seed(seed, number)).permutation(int(n_unlabeled))


def new_label_mask(train_ids: Sequence[int], previous_train_ids: Sequence[int] | None) -> np.ndarray:
    """True for the training images labeled since the previous model trained.

    No previous model (round 1, or a cold start's first training): nothing is "new" — the first
    labels are a random sample, not answers to a queue, and are not duplicated."""
    ids = np.asarray(train_ids, np.int64)
    if previous_train_ids is None:
        return np.zeros(ids.size, bool)
    return ~np.isin(ids, np.asarray(list(previous_train_ids), np.int64))


def _unit_hash(seed: int, ids: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) per id, fixed by (seed, id): splitmix64."""
    with np.errstate(over="ignore"):
        z = np.asarray(ids, np.uint64) + np.uint64((int(seed) * 0x9E3779B97F4A7C15) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def holdout_mask(item_ids: Sequence[int], labels: Sequence[int], n_classes: int, config: HoldoutConfig,
                 seed: int) -> np.ndarray:
    """Labeled pool images held out as evidence when no validation split is registered.

    An image is held out when the hash of (seed, id) falls under `fraction`, so the choice does
    not change as labels accumulate; a class with fewer held out than `min_per_class` gets its
    lowest-hash images added, never more than half of its labels (the rest must train)."""
    ids = np.asarray(item_ids, np.int64)
    y = np.asarray(labels, np.int64)
    u = _unit_hash(seed, ids)
    held = u < config.fraction
    for c in range(int(n_classes)):
        members = np.flatnonzero(y == c)
        want = min(int(config.min_per_class), members.size // 2)
        have = int(held[members].sum())
        if have < want:
            free = members[~held[members]]
            held[free[np.argsort(u[free], kind="stable")[: want - have]]] = True
    return held


# ----------------------------------------------------------------------------- evidence

@dataclass(frozen=True)
class Evidence:
    """Per-class counts on the held-out evidence of one evaluated round."""
    round: int
    correct: dict[str, int]
    total: dict[str, int]
    source: str  # "val" | "holdout" | "none" | "control" | "control+holdout" (engine.control)
    control_classes: tuple[str, ...] = ()  # classes whose counts are pooled control labels
    control_rounds: tuple[int, ...] = ()   # the rounds those control labels came from

    def accuracy(self, name: str) -> float | None:
        n = self.total.get(name, 0)
        return self.correct.get(name, 0) / n if n else None


def evidence_of(number: int, metrics: Mapping, class_names: Sequence[str]) -> Evidence:
    """The evidence a train job's metrics hold (per-class `correct` and `support` counts)."""
    ev = metrics.get("evidence") or {}
    pc = ev.get("per_class") or {}
    correct, total = {}, {}
    for n in class_names:
        row = pc.get(n) or {}
        total[n] = int(row.get("support") or 0)
        c = row.get("correct")
        if c is None and row.get("accuracy") is not None:  # metrics written before counts were kept
            c = round(float(row["accuracy"]) * total[n])
        correct[n] = int(c or 0)
    return Evidence(int(number), correct, total, str(metrics.get("evidence_source") or ("val" if pc else "none")))


def evidence_accuracy(evidence: Evidence | None, class_names: Sequence[str]) -> list[float | None]:
    if evidence is None:
        return [None] * len(class_names)
    return [evidence.accuracy(n) for n in class_names]


# ----------------------------------------------------------------------------- exclusion

@dataclass(frozen=True)
class ExclusionDecision:
    excluded: bool
    reason: str
    judged: bool  # False: no evidence (or too few rounds) to judge the class on


def decide_exclusion(config: ExclusionConfig, history: Sequence[Evidence], number: int,
                     status: Mapping[str, str], reincluded_at: Mapping[str, int] | None = None
                     ) -> dict[str, ExclusionDecision]:
    """The rule's decisions after round `number`'s evaluation, from the evidence of every
    evaluated round up to it (by round number: a round that trained no model has none).

    `config.rule` picks the rule (strategies.exclusion): "evidence" reads the held-out counts,
    "threshold" their accuracies. A class with no held-out images in a round is not judged on
    it: an accuracy that does not exist is never read as 0."""
    from strategies.exclusion import EvidenceRule, ExclusionRule

    if not config.enabled:
        return {c: ExclusionDecision(s == "excluded", "", False) for c, s in status.items()}
    reincluded_at = dict(reincluded_at or {})
    rounds = [e for e in history if e.round <= number]
    out: dict[str, ExclusionDecision] = {}
    counts: dict[str, list[tuple[int, int, int]]] = {}  # (round, correct, total) of each evaluated round
    judgeable: dict[str, str] = {}
    for c, s in status.items():
        if s == "excluded":
            judgeable[c] = s
            counts[c] = []
            continue
        since = reincluded_at.get(c, 0)
        accs = [e.accuracy(c) for e in rounds if e.round >= since]
        if not accs or any(a is None for a in accs[-(config.patience + 1):]):
            out[c] = ExclusionDecision(False, "not judged yet: no held-out images of this class"
                                       if not any(a is not None for a in accs) else
                                       "not judged yet: a recent round had no held-out images of this class", False)
            continue
        counts[c] = [(e.round, int(e.correct.get(c, 0)), int(e.total[c])) for e in rounds
                     if e.round >= since and e.total.get(c, 0) > 0]
        judgeable[c] = s
    # The rules count their window in evaluated rounds; "from round exclude_after on" is checked
    # here, on round numbers.
    if number < config.exclude_after:
        decisions = {c: (s == "excluded", "") for c, s in judgeable.items()}
    elif config.rule == "evidence":
        rule = EvidenceRule(patience=config.patience, confidence=config.confidence,
                            chance_margin=config.chance_margin, min_rise=config.min_rise, min_active=config.min_active)
        # Re-inclusion is applied above (only rounds >= since are passed); the rule adds the words.
        decisions = rule.decide(counts, status, {c: r for c, r in reincluded_at.items() if c in counts})
    else:
        rule = ExclusionRule(exclude_after=0, exclude_below=config.exclude_below,
                             patience=config.patience, min_gain=config.min_gain, min_active=config.min_active)
        hist = {c: [k / n for _, k, n in v] for c, v in counts.items()}
        decisions = {c: (ex, _round_numbers(reason, [r for r, _, _ in counts.get(c, [])])) for c, (ex, reason) in
                     rule.decide(hist, max(len(v) for v in hist.values()) - 1 if hist else 0, status).items()}
    # Every class of `status` goes to the rule (the chance line and min_active count the active
    # classes not judged yet too); only the judged ones take its decision.
    for c, (excluded, reason) in decisions.items():
        if c not in judgeable:
            continue
        out[c] = ExclusionDecision(bool(excluded), reason, True)
    return out


def _round_numbers(reason: str, numbers: list[int]) -> str:
    """The rule counts its window in positions of the history it was given ("rounds 0-2"); the
    reason a person reads names the rounds themselves ("rounds 2-4"). Positions the history
    does not have are left as they are."""
    import re

    def to_rounds(m: re.Match) -> str:
        a, b = int(m.group(2)), int(m.group(3))
        if 0 <= a < len(numbers) and 0 <= b < len(numbers):
            return f"{m.group(1)}{numbers[a]}-{numbers[b]}"
        return m.group(0)

    return re.sub(r"(\brounds )(\d+)-(\d+)", to_rounds, reason)


# ----------------------------------------------------------------------------- class budget

def class_quota(budget: int, accuracy: Sequence[float | None], active: np.ndarray, available: np.ndarray,
                cam_per_class: np.ndarray | None = None, wrong_region: np.ndarray | None = None) -> np.ndarray:
    """Labels per class for this round's batch (strategies.budget), from the evidence.

    A class with no evidence gets the mean need of the classes that have some (or an even share
    when none has): the budget is never moved by an accuracy nobody measured. wrong_region: the
    experts' wrong-region rate per guessed class (strategies.budget.wrong_region_rate), None
    without votes: a class whose guesses they often flag needs more labels."""
    from strategies.budget import allocate_budget, class_need

    active = np.asarray(active, bool)
    acc = np.array([np.nan if a is None else float(a) for a in accuracy], np.float64)
    known = ~np.isnan(acc) & active
    fill = float(acc[known].mean()) if known.any() else 0.5
    acc = np.where(np.isnan(acc), fill, acc)
    need = class_need(cam_per_class, acc, active, wrong_region=wrong_region)
    return allocate_budget(int(budget), need, active, available=np.asarray(available, np.int64))


def stop_reason(n_unlabeled: int, active: Sequence[bool]) -> str | None:
    """Why no batch can be made, or None."""
    if n_unlabeled == 0:
        return "no unlabeled pool images left"
    if sum(bool(a) for a in active) < 2:
        return "fewer than two active classes"
    return None


# ----------------------------------------------------------------------------- when to stop

def stop_set_positions(pool_ids: Sequence[int], previous_ids: Sequence[int] | None, size: int,
                       seed: int) -> np.ndarray:
    """Positions in `pool_ids` (every decoded pool image, labeled or not, by id) of the round's
    stop set: the images every trained model predicts on, for the kappa between successive
    models. Fixed once chosen (Bloodgood & Vijay-Shanker keep it whether or not its images get
    labeled later): the previous model's stop set when there is one (those of its images still
    in the pool), else a seeded random sample of `size`."""
    from strategies.stopping import choose_stop_set

    ids = np.asarray(pool_ids, np.int64)
    if previous_ids is not None and len(previous_ids):
        return np.flatnonzero(np.isin(ids, np.asarray(previous_ids, np.int64)))
    if size <= 0 or ids.size == 0:
        return np.zeros(0, np.int64)
    # Its own stream of the seed: not the initial labels' sample (initial_labeled uses the seed itself).
    return choose_stop_set(ids.size, int(size), np.random.default_rng([int(seed), 0x5709]))


def stopping_signal(config, rounds: Sequence[Mapping], labeled_now: int | None = None) -> dict:
    """The stopping signal after the rounds so far (strategies.stopping), as the metrics show it.

    config: a StoppingConfig. rounds: oldest first, one per trained model: {"round", "labels"
    (labeled pool images it was trained with), "accuracy" (its evidence accuracy: the held-out
    images the engine trusts, never the test split), "stop_set": {"item_ids", "pred"} or None}.
    Predictions are compared on the stop-set images every such round predicted (the same set,
    unless images were quarantined since). labeled_now: labels spent so far (default: the last
    round's)."""
    from strategies.stopping import AccuracyPlateau, BudgetSpent, StabilisingPredictions, cohens_kappa

    with_set = [r for r in rounds if (r.get("stop_set") or {}).get("item_ids")]
    common = None
    for r in with_set:
        ids = set(int(i) for i in r["stop_set"]["item_ids"])
        common = ids if common is None else common & ids
    common_ids = np.asarray(sorted(common or ()), np.int64)
    history = []
    for r in rounds:
        entry = {"labels": r.get("labels"), "val_accuracy": r.get("accuracy")}
        ss = r.get("stop_set") or {}
        if ss.get("item_ids") and common_ids.size:
            order = np.argsort(np.asarray(ss["item_ids"], np.int64), kind="stable")
            ids_sorted = np.asarray(ss["item_ids"], np.int64)[order]
            pred_sorted = np.asarray(ss["pred"], np.int64)[order]
            entry["stop_set_pred"] = pred_sorted[np.searchsorted(ids_sorted, common_ids)]
        history.append(entry)
    preds = [(r.get("round"), h["stop_set_pred"]) for r, h in zip(rounds, history) if "stop_set_pred" in h]
    kappas = [{"rounds": [a, b], "kappa": round(cohens_kappa(p, q), 6)}
              for (a, p), (b, q) in zip(preds, preds[1:])]
    stable, why_stable = StabilisingPredictions(config.kappa, config.window).should_stop(history) \
        if common_ids.size else (False, "no stop set: stopping.stop_set_size is 0 or no model predicted on one yet")
    if config.plateau_gain is not None:
        plateaued, why_plateau = AccuracyPlateau(config.plateau_gain, config.plateau_patience).should_stop(history)
    else:
        plateaued, why_plateau = False, "accuracy plateau not used (stopping.plateau_gain is none)"
    labels = labeled_now if labeled_now is not None else (history[-1]["labels"] if history else 0)
    if config.max_labels is not None:
        spent, why_budget = BudgetSpent(config.max_labels).should_stop([{"labels": int(labels or 0)}])
    else:
        spent, why_budget = False, f"{int(labels or 0)} labels spent; no label budget set (stopping.max_labels)"
    reasons = [(stable, why_stable), (plateaued, why_plateau), (spent, why_budget)]
    suggest = any(s for s, _ in reasons)
    return {"kappa": kappas[-1]["kappa"] if kappas else None, "kappas": kappas, "kappa_threshold": config.kappa,
            "window": config.window, "stop_set_size": int(common_ids.size),
            "predictions_stable": bool(stable), "accuracy_plateaued": bool(plateaued),
            "labels": int(labels or 0), "max_labels": config.max_labels, "budget_spent": bool(spent),
            "suggest_stop": bool(suggest),
            "reason": "; ".join(w for s, w in reasons if s) if suggest else "; ".join(w for _, w in reasons)}
