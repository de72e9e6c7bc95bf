"""What the round engine needs from the store, as the engine's own types.

Plain rows, not ORM objects, for the item lists (10k Item objects cost ~0.3 s to load); cache
paths resolved once per shard, not per item.
"""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core import paths
from service.rounds import hooks
from service.settings import Settings
from service.store import Item, ItemStatus, Label, ModelVersion, Project, ProjectClass, QueueEntry, Round
from engine.config import ProjectConfig
from engine.contracts import ImageRefs, TrainManifest, read_manifest
from engine.decisions import Evidence, evidence_of, stop_set_positions
from engine.plan import TrainedModel

_REF_COLS = (Item.id, Item.cache_shard, Item.cache_index, Item.label)


def config(project: Project) -> ProjectConfig:
    return ProjectConfig.model_validate(project.config or {})


def classes(s: Session, pid: int) -> list[ProjectClass]:
    return list(s.scalars(select(ProjectClass).where(ProjectClass.project_id == pid).order_by(ProjectClass.index)))


def decoded(q):
    """Items whose pixels are in the cache (ingest done, not quarantined)."""
    return q.where(Item.cache_index.is_not(None), Item.status != ItemStatus.QUARANTINED)


def _refs(settings: Settings, pid: int, rows, index: dict[str, int] | None) -> ImageRefs:
    files = paths.cache_files(settings, pid, {shard for _, shard, _, _ in rows})
    labels = None if index is None else [index.get(label, -1) for *_, label in rows]
    return ImageRefs.build([iid for iid, *_ in rows], [files[shard] for _, shard, _, _ in rows],
                           [row for _, _, row, _ in rows], labels)


def pool_refs(s: Session, settings: Settings, project: Project, status: str, index: dict[str, int]) -> ImageRefs:
    """The decoded pool images with this status, by item id (the order everything else keeps)."""
    rows = s.execute(decoded(select(*_REF_COLS).where(Item.project_id == project.id, Item.split == "pool",
                                                      Item.status == status)).order_by(Item.id)).all()
    return _refs(settings, project.id, rows, index if status == ItemStatus.LABELED else None)


def split_refs(s: Session, settings: Settings, project: Project, split: str, index: dict[str, int]) -> ImageRefs:
    """A held-out split's images that carry a label (val or test)."""
    rows = s.execute(decoded(select(*_REF_COLS).where(Item.project_id == project.id, Item.split == split,
                                                      Item.label.is_not(None))).order_by(Item.id)).all()
    return _refs(settings, project.id, rows, index)


def unlabeled_ids(s: Session, project: Project) -> list[int]:
    return list(s.scalars(decoded(select(Item.id).where(Item.project_id == project.id, Item.split == "pool",
                                                        Item.status == ItemStatus.UNLABELED)).order_by(Item.id)))


def model_versions(s: Session, pid: int, before: int | None = None) -> list[ModelVersion]:
    q = select(ModelVersion).where(ModelVersion.project_id == pid)
    if before is not None:
        q = q.where(ModelVersion.round < before)
    return list(s.scalars(q.order_by(ModelVersion.round)))


def previous_train_ids(settings: Settings, s: Session, pid: int, number: int) -> list[int] | None:
    """The labeled images the previous model saw (trained on, or held out): "new" is the rest."""
    prev = model_versions(s, pid, before=number)
    if not prev:
        return None
    m = read_manifest(paths.round_files(settings, pid, prev[-1].round).train_manifest, TrainManifest)
    return m.train.item_ids + (m.evidence.item_ids if m.evidence_source == "holdout" else [])


def stop_set_refs(settings: Settings, s: Session, project: Project, config: ProjectConfig, number: int) -> ImageRefs:
    """The pool images round `number`'s model predicts on for the stopping signal: the previous
    model's stop set (fixed once chosen), else a seeded sample of the decoded pool."""
    size = config.stopping.stop_set_size
    if size <= 0:
        return ImageRefs()
    previous = None
    prev = model_versions(s, project.id, before=number)
    if prev:
        path = paths.round_files(settings, project.id, prev[-1].round).train_manifest
        if path.is_file():
            previous = read_manifest(path, TrainManifest).stop_set.item_ids or None
    rows = s.execute(decoded(select(*_REF_COLS).where(Item.project_id == project.id, Item.split == "pool"))
                     .order_by(Item.id)).all()
    pos = stop_set_positions([r[0] for r in rows], previous, size, config.seed)
    return _refs(settings, project.id, [rows[int(i)] for i in pos], None)


def evidence_history(s: Session, project: Project, names: list[str]) -> list[Evidence]:
    return [evidence_of(mv.round, mv.metrics or {}, names) for mv in model_versions(s, project.id)]


def trained_models(s: Session, project: Project, n_classes: int) -> list[TrainedModel]:
    return [TrainedModel(mv.round, mv.checkpoint_path, list((mv.metrics or {}).get("active") or [True] * n_classes))
            for mv in model_versions(s, project.id)]


def confirmed_label_ids(s: Session, project: Project) -> list[int]:
    """Labeled pool images whose current label two or more experts gave (config relabel.prune
    never leaves them out of training: no out-of-fold guess overrules two people): through the
    API, two clients' `who`; in a plug-in (Label Studio), two annotators' votes."""
    api = set(s.scalars(select(Label.item_id).join(Item, Item.id == Label.item_id)
                        .where(Label.project_id == project.id, Item.status == ItemStatus.LABELED,
                               Item.split == "pool", Label.class_name == Item.label,
                               # a plug-in's rows are its resolutions (one per change of its votes,
                               # each its own `who`): the plug-in counts its experts itself
                               Label.source.in_(("api", "registration")))
                        .group_by(Label.item_id).having(func.count(func.distinct(Label.who)) >= 2)))
    voted = hooks.confirmed_labels(s, project)
    if voted:
        now = dict(s.execute(select(Item.id, Item.label).where(Item.id.in_(list(voted)),
                                                               Item.status == ItemStatus.LABELED,
                                                               Item.split == "pool")).all())
        api |= {i for i, cls in voted.items() if now.get(i) == cls}
    return sorted(api)


def random_label_ids(s: Session, pid: int) -> list[int]:
    """The project's random labels (the audit's shadow learner trains on them only): labeled pool
    images queued in a batch as control (a random cold start's batch, every control slice), and
    those registered with their label as a random sample of the pool (`labels_random`)."""
    queued = set(s.scalars(select(QueueEntry.item_id).join(Round, Round.id == QueueEntry.round_id)
                           .join(Item, Item.id == QueueEntry.item_id)
                           .where(Round.project_id == pid, QueueEntry.control.is_(True), QueueEntry.reserve.is_(False),
                                  Item.status == ItemStatus.LABELED)))
    registered = set(s.scalars(select(Item.id).where(Item.project_id == pid, Item.split == "pool",
                                                     Item.sampled_at_random.is_(True),
                                                     Item.status == ItemStatus.LABELED)))
    return sorted(queued | registered)
