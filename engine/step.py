"""A round's decisions in their one order: what the service's handlers and `camloop simulate` both call.

The callers gather a round's facts (the service from its store and files, the simulation from
arrays) into the small records below and act on the answers (the service writes them to the
store and enqueues jobs, the simulation runs the jobs in-process); neither calls the decisions
one by one, so neither can order them differently.

    training(config, project_id, TrainingFacts) -> TrainingPlan
        the training set and the held-out evidence, then the train manifest (seeds, batch size,
        what is new, the counterexamples of the flagged images it trains on and their attribution
        penalty (config.feedback.penalty); with config.semi, the
        unlabeled images pseudo-labels may come from: engine.semi)
    after_training(config, project_id, TrainedFacts) -> ScorePlan
        the exclusion rule on the evidence of every evaluated round (re-included classes judged
        from their re-inclusion on; without a validation split, the pooled control labels first:
        engine.control), the classes active now, the gatekeepers of the classes not
        active, then the score manifest of the unlabeled pool
    select(config, SelectionFacts) -> Selection
        the batch and the reserve: a random cold start, a typical first batch, or, from the
        score files, the class quota from the evidence (the control labels first without a
        validation split) and the experts' wrong-region votes, the candidates (what was labeled
        meanwhile and what a gatekeeper kept out are not), the batch with its control slice
        (config.control: drawn uniformly, at seeded places), then the reserve (engine.selection);
        config.selection says whether the ranked picks are the top of the fused score or a
        seeded draw from it (stochastic batch acquisition)

Pure: no store, no jobs, no torch; the score files are the only thing read.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from engine import attribution_penalty, counterexamples
from engine.audit import curve_key, measured_sizes
from engine.config import FeedbackConfig, ProjectConfig
from engine.contracts import Gatekeeper, ImageRefs, RoundFiles, ScoreManifest, TrainManifest
from engine.control import history_with_control, with_control
from engine.decisions import Evidence, ExclusionDecision, decide_exclusion, evidence_accuracy
from engine.plan import (TrainedModel, TrainingSplit, gatekeepers, score_manifest, shadow_spec, split_training,
                         train_manifest)
from engine.selection import Selection, cold_start, select_from_scores, typical_from_scores
from engine.semi import semi_spec

ACTIVE, EXCLUDED = "active", "excluded"


# ----------------------------------------------------------------------------- training

@dataclass(frozen=True)
class TrainingFacts:
    """What round `number` trains on."""
    number: int
    class_names: Sequence[str]
    active: Sequence[bool]                 # the classes the model is trained on
    labeled: ImageRefs                     # the labeled pool images, with their labels
    val: ImageRefs                         # a registered validation split (empty: hold out labeled images)
    test: ImageRefs
    previous_train_ids: Sequence[int] | None  # the images the previous model saw (None: no previous model)
    files: RoundFiles
    stop_set: ImageRefs | None = None
    trunk_dir: str | None = None
    # The audit's random labels (a random first batch, the control slice; None: no shadow learner
    # this round) and what earlier rounds' shadow models measured.
    random_ids: Sequence[int] | None = None
    shadow_history: Sequence[Mapping | None] = ()   # earlier rounds' metrics["shadow"]
    # Explanatory feedback (config.feedback): the labeled images experts flagged "the model looked
    # at the wrong region" whose object region is known, item id → the box in pixels of the
    # decoded image; the ones the round trains on get counterexamples (engine.counterexamples).
    flagged: Mapping[int, Sequence[int]] = field(default_factory=dict)
    # … and the labeled images the background-swap test's feedback covers (config.feedback
    # swap_suspects and swap_scope; item id → box): not empty, they and the flagged ones get
    # `swap_copies` shuffle copies.
    swap_covered: Mapping[int, Sequence[int]] = field(default_factory=dict)
    # … and the bare votes: flagged labeled images with no known region, item id → the box (decoded
    # pixels) of the peak cell of the Grad-CAM map the expert judged (engine.counterexamples.peak_box);
    # with config feedback.bare peak they get copies with that box's inside randomised.
    bare: Mapping[int, Sequence[int]] = field(default_factory=dict)
    # The unlabeled pool images (config.semi: the candidates for pseudo-labels; None: none given).
    unlabeled: ImageRefs | None = None
    # Labeled images whose label two or more experts agreed on (config relabel.prune never
    # leaves them out of training).
    confirmed: Sequence[int] = ()


@dataclass(frozen=True)
class TrainingPlan:
    split: TrainingSplit
    manifest: TrainManifest


def feedback_copies(feedback: FeedbackConfig, flagged: Mapping[int, Sequence[int]],
                    swap_covered: Mapping[int, Sequence[int]],
                    bare: Mapping[int, Sequence[int]] | None = None) -> tuple[dict, dict, int, str]:
    """(images → box whose outside is randomised, bare votes → wrong box whose inside is
    randomised, copies, fill) of a round's counterexamples: the experts' flagged images with
    `counterexamples` copies in `fill`, and with `feedback.bare` peak the bare votes (not among
    the others: a known region wins); while the background-swap test's feedback acts
    (`swap_covered` not empty), its images and the flagged ones with `swap_copies` `shuffle`
    copies — the measured setting (docs/benchmarks.md), one K for every image of the round."""
    images = {**swap_covered, **flagged}
    wrong = ({int(i): b for i, b in (bare or {}).items() if int(i) not in images}
             if feedback.bare == "peak" else {})
    if swap_covered:
        return images, wrong, feedback.swap_copies, "shuffle"
    return images, wrong, feedback.counterexamples, feedback.fill


def training(config: ProjectConfig, project_id: int, facts: TrainingFacts) -> TrainingPlan:
    names = list(facts.class_names)
    split = split_training(facts.labeled, facts.val, config, len(names))
    manifest = train_manifest(config, project_id, facts.number, names, facts.active, split, facts.test,
                              facts.previous_train_ids, facts.files, facts.stop_set, facts.trunk_dir)
    if facts.random_ids is not None:
        shadow = shadow_spec(config, split, facts.random_ids,
                             measured_sizes(facts.shadow_history, curve_key(manifest)))
        if shadow is not None:
            manifest = manifest.model_copy(update={"shadow": shadow})
    if (manifest.relabel_prune or manifest.relabel_folds) and facts.confirmed:
        # Labels two experts agreed on: never pruned, never asked again (workers.label_issues).
        manifest = manifest.model_copy(update={"relabel_confirmed": sorted(int(i) for i in facts.confirmed)})
    images, wrong, copies, fill = feedback_copies(config.feedback, facts.flagged, facts.swap_covered, facts.bare)
    counter = counterexamples.plan(split.train, images, facts.active, copies, fill, config.seed, wrong)
    if counter is not None:
        manifest = manifest.model_copy(update={"counterexamples": counter})
    penalty = attribution_penalty.plan(split.train, images, facts.active, config.feedback.penalty,
                                       config.feedback.penalty_at)
    if penalty is not None:
        manifest = manifest.model_copy(update={"penalty": penalty})
    # Pseudo-labels (engine.semi) join the job's training set only: the split, the shadow's random
    # labels and everything counted from them stay the labels alone.
    semi = semi_spec(config, facts.unlabeled, facts.number)
    if semi is not None:
        manifest = manifest.model_copy(update={"semi": semi})
    return TrainingPlan(split, manifest)


# ----------------------------------------------------------------------------- after training

@dataclass(frozen=True)
class TrainedFacts:
    """Round `number`'s model is trained and evaluated: what the rest of the round is decided on."""
    number: int
    class_names: Sequence[str]
    status: Mapping[str, str]              # each class's status before this round's decision
    history: Sequence[Evidence]            # the evidence of every evaluated round, this one's included
    models: Sequence[TrainedModel]         # every trained model, this round's included (the gatekeepers)
    scorer: str                            # the checkpoint that scores the pool (the new model, or one pinned / kept)
    pool: ImageRefs                        # the unlabeled pool: what is scored
    files: RoundFiles
    shard_size: int
    reincluded_at: Mapping[str, int] = field(default_factory=dict)  # class → the round an engineer re-included it
    trunk_dir: str | None = None
    control: Sequence[Mapping] = ()        # each earlier round's control estimate (strategies.audit.control_estimate)


@dataclass(frozen=True)
class ScorePlan:
    decisions: dict[str, ExclusionDecision]
    newly_excluded: list[str]              # excluded by the rule this round, in class order
    not_judged: dict[str, str]             # active classes the rule could not judge, and why
    status: dict[str, str]                 # each class's status after this round's decision
    gatekeepers: list[Gatekeeper]
    manifest: ScoreManifest

    @property
    def active(self) -> list[bool]:
        return [s == ACTIVE for s in self.status.values()]


def after_training(config: ProjectConfig, project_id: int, facts: TrainedFacts) -> ScorePlan:
    names = list(facts.class_names)
    before = {n: str(facts.status[n]) for n in names}
    history = history_with_control(facts.history, facts.control, config.control, names)
    decisions = decide_exclusion(config.exclusion, history, facts.number, before, facts.reincluded_at)
    newly, not_judged = [], {}
    for n in names:
        d = decisions.get(n)
        if d is None or before[n] != ACTIVE:
            continue
        if d.excluded:
            newly.append(n)
        elif not d.judged and config.exclusion.enabled:
            not_judged[n] = d.reason
    status = {n: EXCLUDED if n in newly else before[n] for n in names}
    active = [status[n] == ACTIVE for n in names]
    keepers = gatekeepers(facts.models, active)
    manifest = score_manifest(config, project_id, facts.number, names, active, facts.scorer, facts.pool,
                              facts.shard_size, keepers, facts.files, facts.trunk_dir)
    return ScorePlan(decisions, newly, not_judged, status, keepers, manifest)


# ----------------------------------------------------------------------------- selection

class Ranking(StrEnum):
    """How the pool was ranked for a selection."""
    SCORES = "scores"      # a trained model scored it (score files with guesses)
    TYPICAL = "typical"    # nothing labeled: the pretrained model embedded it (TypiClust)
    RANDOM = "random"      # nothing labeled and no pretrained model: a random sample


@dataclass(frozen=True)
class SelectionFacts:
    number: int
    class_names: Sequence[str]
    active: Sequence[bool]
    ranked_by: Ranking = Ranking.SCORES
    score_files: Sequence[Path | str] = ()  # the round's score files in shard order (SCORES, TYPICAL)
    evidence: Evidence | None = None       # the evidence of the round's model (SCORES; None: not measured)
    unlabeled_ids: Sequence[int] = ()      # the unlabeled pool in a fixed order (RANDOM)
    drop_ids: np.ndarray | None = None     # scored images no longer candidates (labeled, queued meanwhile)
    wrong_region_votes: tuple[np.ndarray, np.ndarray] | None = None  # (flagged, reviewed) per guessed class
    budget: int | None = None              # None: the config's budget
    reserve: int | None = None             # None: the config's reserve_size
    control: Sequence[Mapping] = ()        # earlier rounds' control estimates (the evidence without a validation split)


def select(config: ProjectConfig, facts: SelectionFacts) -> Selection:
    budget = config.budget if facts.budget is None else int(facts.budget)
    reserve = config.reserve_size if facts.reserve is None else int(facts.reserve)
    files = [Path(f) for f in facts.score_files]
    if facts.ranked_by == Ranking.RANDOM:
        return cold_start(facts.unlabeled_ids, budget, reserve, config.seed, facts.number)
    if facts.ranked_by == Ranking.TYPICAL:
        return typical_from_scores(files, budget, reserve, config.seed, facts.number, facts.drop_ids)
    names = list(facts.class_names)
    n_control, note = config.control.count(budget)
    sel = select_from_scores(files, config.strategy, names, facts.active, budget, reserve,
                             evidence_accuracy(with_control(facts.evidence, facts.control, facts.number,
                                                            config.control, names), names), config.seed, facts.number, facts.drop_ids,
                             facts.wrong_region_votes, n_control,
                             (config.selection.mode, config.selection.beta), config.selection.calibrated_scores)
    sel.control_note = note
    return sel
