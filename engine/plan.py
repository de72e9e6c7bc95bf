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
                                      TrainManifest, TrainSettings)
from engine.decisions import holdout_mask, new_label_mask, round_seed, train_batch_size


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
        relabel_folds=config.relabel.folds if config.relabel.enabled else 0)


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
        out_dir=str(files.dir), trunk_cache=trunk_dir)
