"""The manifests of a round's jobs, built the same way by the service and the simulation.

The callers only say which images are where (ImageRefs from the store, or from arrays); what
trains, what is new, what is held out as evidence, the seeds, the batch size and the
gatekeepers are decided here (with engine.decisions).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.config import ProjectConfig
from engine.contracts import (Gatekeeper, ImageRefs, Layout, ModelSpec, RoundFiles, ScoreManifest,
                                      ShadowSpec, TrainManifest, TrainSettings)
from engine.decisions import _unit_hash, holdout_mask, new_label_mask, round_seed, train_batch_size
from engine.relabel import resolved_ranking

# The smallest random-label set a shadow model trains on (a curve point below it says little).
SHADOW_MIN_LABELS = 10
# A new random-label size is measured once the random labels grew by this factor.
SHADOW_GROWTH = 1.25


def model_spec(config: ProjectConfig, class_names: Sequence[str]) -> ModelSpec:
    return ModelSpec(model=config.model, class_names=list(class_names), image_size=config.image_size,
                     channels=config.channels, pretrained=config.pretrained, frozen_blocks=config.frozen_blocks)


@dataclass
class TrainingSplit:
    train: ImageRefs
    evidence: ImageRefs
    source: str  # "val" | "holdout" | "none"


def split_training(labeled: ImageRefs, val: ImageRefs, config: ProjectConfig, n_classes: int) -> TrainingSplit:
    """Training images and the evidence per-class accuracy is read on.

    A registered validation split is the evidence. Without one, a stratified share of the labeled
    pool images is held out (HoldoutConfig) — they do not train — so that the exclusion rule and
    the class budget act on measured accuracy, never on a stand-in."""
    if len(val):
        return TrainingSplit(labeled, val, "val")
    held = holdout_mask(labeled.item_ids, labeled.labels, n_classes, config.holdout, config.seed)
    if not held.any():
        return TrainingSplit(labeled, ImageRefs(), "none")
    return TrainingSplit(labeled.take(np.flatnonzero(~held)), labeled.take(np.flatnonzero(held)), "holdout")


def trunk_cache(config: ProjectConfig, layout: Layout, project_id: int) -> str | None:
    """The folder a project's rounds cache their frozen trunk in, or None when they run on pixels."""
    return str(layout.trunk_dir(project_id)) if config.uses_trunk_cache() else None


def train_manifest(config: ProjectConfig, project_id: int, number: int, class_names: Sequence[str],
                   active: Sequence[bool], split: TrainingSplit, test: ImageRefs,
                   previous_train_ids: Sequence[int] | None, files: RoundFiles,
                   stop_set: ImageRefs | None = None, trunk_dir: str | None = None) -> TrainManifest:
    seed = round_seed(config.seed, number)
    return TrainManifest(
        project_id=project_id, round=number, net=model_spec(config, class_names), active=[bool(a) for a in active],
        train=split.train, is_new=new_label_mask(split.train.item_ids, previous_train_ids).tolist(),
        evidence=split.evidence, evidence_source=split.source, test=test,
        settings=TrainSettings(epochs=config.epochs, batch_size=train_batch_size(config, len(split.train)),
                               duplicate_new=config.duplicate_new, balance=config.balance,
                               balance_to=config.balance_to, balance_max_repeats=config.balance_max_repeats,
                               hflip=config.hflip,
                               seed=seed),
        out_dir=str(files.dir), stop_set=stop_set if stop_set is not None else ImageRefs(), trunk_cache=trunk_dir,
        relabel_folds=config.relabel.folds if config.relabel.enabled else 0,
        relabel_prune=config.relabel.enabled and config.relabel.prune, relabel_prune_max=config.relabel.prune_max,
        relabel_ranking=resolved_ranking(config.relabel.ranking, config.frozen_blocks), relabel_knn_k=config.relabel.knn_k)


@dataclass
class TrainedModel:
    """A model a round trained: what gatekeepers are made of."""
    round: int
    checkpoint: str
    active: list[bool]


def gatekeepers(models: Sequence[TrainedModel], active_now: Sequence[bool]) -> list[Gatekeeper]:
    """For every class not active now, the latest model that still trained it: it can recognise
    the class's images, which the current model (its head masks the class) cannot."""
    by_model: dict[int, list[int]] = {}
    ordered = sorted(models, key=lambda m: m.round)
    for c, on in enumerate(active_now):
        if on:
            continue
        knew = [k for k, m in enumerate(ordered) if m.active[c]]
        if knew:
            by_model.setdefault(knew[-1], []).append(c)
    out = []
    for k in sorted(by_model):
        m = ordered[k]
        out.append(Gatekeeper(checkpoint=m.checkpoint, round=m.round, active=list(m.active),
                              excluded=[c in by_model[k] for c in range(len(active_now))]))
    return out


def score_manifest(config: ProjectConfig, project_id: int, number: int, class_names: Sequence[str],
                   active: Sequence[bool], checkpoint: str | None, pool: ImageRefs, shard_size: int,
                   keepers: Sequence[Gatekeeper], files: RoundFiles, trunk_dir: str | None = None) -> ScoreManifest:
    """checkpoint None: embed the pool with the model as built from its pretrained weights (a
    typical first batch: no model trained yet, no committee needed)."""
    return ScoreManifest(
        project_id=project_id, round=number, net=model_spec(config, class_names), checkpoint=checkpoint,
        active=[bool(a) for a in active], mc_samples=config.mc_samples if checkpoint is not None else 0,
        seed=round_seed(config.seed, number), shards=pool.chunks(shard_size), gatekeepers=list(keepers),
        out_dir=str(files.dir), trunk_cache=trunk_dir, calibrated_scores=config.selection.calibrated_scores,
        **(dict(dropout_passes=config.selection.passes, dropout_rate=config.selection.dropout)
           if config.selection.mode == "dropquery" and checkpoint is not None else {}))


def shadow_spec(config: ProjectConfig, split: TrainingSplit, random_ids: Sequence[int],
                measured: Sequence[int] = ()) -> ShadowSpec | None:
    """What the audit's shadow learner trains this round (None: nothing new to measure).

    The random labels that train are those of the round's training set; with no validation split
    they are evaluated on the random labels of the held-out evidence (which the round's model did
    not train on either). Sizes: a quarter, a half and all of them the first time; then all of them
    once they number SHADOW_GROWTH × the largest size measured (the control slice grows them); with
    none left the spec still asks for the round's own model on the audit's evidence."""
    if not config.audit.enabled:
        return None
    rnd = np.asarray(list(random_ids), np.int64)
    pos = np.flatnonzero(np.isin(np.asarray(split.train.item_ids, np.int64), rnd))
    if pos.size < SHADOW_MIN_LABELS:
        return None
    train = split.train.take(pos)
    # A seeded shuffle: each prefix is a random sample of the random labels.
    order = np.argsort(_unit_hash(config.seed + 7919, np.asarray(train.item_ids, np.int64)), kind="stable")
    train = train.take(order)
    eval_refs = ImageRefs()
    if split.source != "val":
        held = np.flatnonzero(np.isin(np.asarray(split.evidence.item_ids, np.int64), rnd))
        if held.size == 0:
            return None
        eval_refs = split.evidence.take(held)
    n = len(train)
    done = {int(x) for x in measured}
    if done:
        # After the first measurement, a new size only once the random labels have grown by
        # SHADOW_GROWTH over the largest measured (geometric spacing: what a power law is fitted
        # on, and no second training every round for a handful of control labels).
        sizes = [n] if n >= SHADOW_GROWTH * max(done) else []
    else:
        sizes = sorted({s for s in (n // 4, n // 2, n) if s >= SHADOW_MIN_LABELS})
    # No new size: no training, but the round's model is still measured on the same evidence.
    return ShadowSpec(train=train, sizes=sizes, batch_sizes=[train_batch_size(config, s) for s in sizes],
                      eval=eval_refs)
