"""From the bridge's annotation ledger to camloop's store: resolved labels in, retracted labels out.

After events are applied to the ledger, every item they touched is resolved again (majority
of its annotators, service.labelstudio.resolve) and the store is brought in line:
  * complete and resolved (agreed / majority)  → labels.record_label(source='label-studio'),
    which sets the item's label; the external id is a digest of the votes, so the same
    resolution delivered twice is one label, and a changed resolution is a new label
    ("latest wins" in the store);
  * skipped by every annotator → status 'skipped': the round no longer waits for it and it is
    not queued again;
  * otherwise (tie, votes deleted, still waiting for annotators) → an item whose
    current label came from Label Studio gets it taken back, so it never trains on a label
    that no longer has a majority behind it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import ServiceError
from service.core.item_lock import lock_items
from service.core.labels import record_label
from service.labelstudio.apply import ApplyResult, apply_events
from service.labelstudio.events import AnnotationUpserted, Event
from service.labelstudio.ledger import SqlSink, annotations
from service.labelstudio.regions import to_file_pixels
from service.labelstudio.resolve import Resolution, one_per_annotator, resolve_item
from service.store import Item, ItemStatus, Label, Project, QueueEntry, Round, RoundState

SOURCE = "label-studio"


@dataclass
class SyncResult:
    labeled: list[int] = field(default_factory=list)      # items whose store label was (re)set
    retracted: list[int] = field(default_factory=list)    # items whose Label Studio label was taken back
    review: list[Resolution] = field(default_factory=list)  # ties and disagreements
    skipped: list[int] = field(default_factory=list)      # items every annotator skipped
    problems: list[str] = field(default_factory=list)


def _external_id(item_id: int, res: Resolution, voters: Sequence) -> str:
    votes = ",".join(f"{a.annotation_id}:{a.label}" for a in voters if a.counts)
    return f"ls-item-{item_id}-" + hashlib.sha256(f"{res.label}|{votes}".encode()).hexdigest()[:24]


def _who(res: Resolution) -> str:
    votes = ", ".join(f"{k}×{v}" for k, v in sorted(res.votes.items(), key=lambda kv: -kv[1]))
    return f"label-studio {res.status} ({votes})"[:200]


def _unlabeled_status(s: Session, item_id: int) -> str:
    queued = s.scalar(select(QueueEntry.id).join(Round, Round.id == QueueEntry.round_id)
                      .where(QueueEntry.item_id == item_id, Round.state == RoundState.LABELING).limit(1))
    return ItemStatus.QUEUED if queued is not None else ItemStatus.UNLABELED


def _latest(s: Session, item_id: int) -> Label | None:
    return s.scalar(select(Label).where(Label.item_id == item_id).order_by(Label.id.desc()).limit(1))


def sync_items(s: Session, project: Project, sink: SqlSink, item_ids: Iterable[int], required: int) -> SyncResult:
    out = SyncResult()
    from service.labelstudio.second_opinion import adjust

    for item_id, anns in sorted(sink.for_items(set(item_ids)).items()):
        # Second opinions: independence recorded, an experts' tie broken where allowed (second_opinion).
        res = adjust(s, project, item_id, anns, resolve_item(item_id, anns, required))
        if res.needs_review:
            out.review.append(res)
        # Locked, and read again, before deciding: an API label or the round's own write of
        # this item committed since would otherwise be overwritten from a stale read.
        item = lock_items(s, [item_id]).get(item_id)
        if item is None or item.project_id != project.id:
            out.problems.append(f"item {item_id} is not in project {project.id} (deleted?); its annotations are kept")
            continue
        if res.complete and res.label is not None:
            try:
                record_label(s, project, item_id, res.label, _who(res), SOURCE,
                             _external_id(item_id, res, one_per_annotator(anns)))
            except ServiceError as e:  # quarantined item (image gone), class removed since: reported, kept
                out.problems.append(f"item {item_id}: {e}")
                continue
            if item.label != res.label or item.status != ItemStatus.LABELED:
                # Same resolution as once before (after a retraction): the label row exists;
                # restore it — unless a newer label from another client is the item's now
                # ("latest wins": the experts' unchanged answer does not undo it).
                latest = _latest(s, item_id)
                if item.status != ItemStatus.LABELED or latest is None or latest.source == SOURCE:
                    item.label, item.status = res.label, ItemStatus.LABELED
            out.labeled.append(item_id)
        elif res.complete and res.status == "skipped":
            # Every annotator skipped it: the round stops waiting for it, and it is not queued
            # again (experts said they cannot tell); an earlier Label Studio label is taken back.
            latest = _latest(s, item_id)
            if item.status == ItemStatus.QUEUED or (item.status == ItemStatus.LABELED and latest is not None and latest.source == SOURCE):
                item.label, item.status = None, ItemStatus.SKIPPED
                out.skipped.append(item_id)
        elif item.status in (ItemStatus.LABELED, ItemStatus.SKIPPED):
            latest = _latest(s, item_id)
            if item.status == ItemStatus.SKIPPED or (latest is not None and latest.source == SOURCE):
                item.label, item.status = None, _unlabeled_status(s, item_id)
                out.retracted.append(item_id)
    s.flush()
    return out


def owned_events(s: Session, project: Project, events: Iterable[Event],
                 ls_project_id: int | None = None) -> tuple[list[Event], list[str]]:
    """The events this project may apply, and why the others are refused — checked BEFORE anything
    is written: an annotation of another Label Studio project, on an item that is not this
    project's, or whose id the ledger holds for another project, stores nothing and changes
    nothing (a webhook of project A naming an item of B must not vote on B's item). A deletion
    needs no check here: the sink deletes only this project's rows."""
    kept: list[Event] = []
    refused: list[str] = []
    events = list(events)
    ups = [e for e in events if isinstance(e, AnnotationUpserted)]
    items: dict[int, int] = {}
    owners: dict[int, int] = {}
    for k in range(0, len(ups), 5000):  # a first poll may carry many: IN lists of bounded size
        chunk = ups[k:k + 5000]
        items.update(s.execute(select(Item.id, Item.project_id).where(Item.id.in_({e.item_id for e in chunk}))).all())
        owners.update(s.execute(select(annotations.c.annotation_id, annotations.c.project_id)
                                .where(annotations.c.annotation_id.in_({e.annotation_id for e in chunk}))).all())
    for ev in events:
        if isinstance(ev, AnnotationUpserted):
            why = None
            if ls_project_id is not None and ev.ls_project_id is not None and ev.ls_project_id != ls_project_id:
                why = f"it belongs to Label Studio project {ev.ls_project_id}, not {ls_project_id}"
            elif items.get(ev.item_id) != project.id:
                why = f"item {ev.item_id} is not in camloop project {project.id}"
            elif owners.get(ev.annotation_id, project.id) != project.id:
                why = "its id is another project's annotation"
            elif ev.ls_project_id is None:
                if ls_project_id is None:
                    why = "it does not say its Label Studio project"
                else:  # the payload named the project (the link found by it), the annotation did not
                    ev = replace(ev, ls_project_id=ls_project_id)
            if why:
                refused.append(f"annotation {ev.annotation_id} refused, nothing stored: {why}")
                continue
        kept.append(ev)
    return kept, refused


ImageSize = Callable[[str], tuple[int, int]]  # a registered file's (width, height), by its uri


def place_regions(s: Session, events: Sequence[Event], image_size: ImageSize | None) -> list[Event]:
    """Each drawn rectangle (percent of the picture) placed in pixels of its item's file
    (service.labelstudio.regions): `region`, or `region_problem` when it covers no pixel or the
    file cannot be read. The webhook and the poll both come through here, so the same annotation
    is the same event whichever delivers it."""
    drawn = {e.item_id for e in events if isinstance(e, AnnotationUpserted) and e.drawn is not None}
    if not drawn:
        return list(events)
    uris = dict(s.execute(select(Item.id, Item.uri).where(Item.id.in_(drawn))).all())
    sizes: dict[int, tuple[int, int] | str] = {}
    for item_id in drawn:
        try:
            if image_size is None:
                raise OSError("no data folder to read it from")
            sizes[item_id] = image_size(uris[item_id])
        except (OSError, ValueError, KeyError) as e:
            sizes[item_id] = f"the image file could not be read to place the rectangle ({e or type(e).__name__})"
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, AnnotationUpserted) and ev.drawn is not None:
            size = sizes[ev.item_id]
            box, why = (None, size) if isinstance(size, str) else to_file_pixels(ev.drawn, *size)
            ev = replace(ev, drawn=None, region=box, region_problem=why)
        out.append(ev)
    return out


def apply_to_store(s: Session, project: Project, events: Iterable[Event], required: int,
                   ls_project_id: int | None = None, *,
                   image_size: ImageSize | None = None) -> tuple[ApplyResult, SyncResult]:
    """Apply this project's events to the ledger (owned_events: the others are refused and
    reported; drawn rectangles placed in pixels of the file with `image_size`), then resolve and
    write the items they touched. One transaction (the caller's)."""
    kept, refused = owned_events(s, project, events, ls_project_id)
    kept = place_regions(s, kept, image_size)
    sink = SqlSink(s, project.id)
    applied = apply_events(sink, kept)
    applied.problems = refused + applied.problems
    return applied, sync_items(s, project, sink, applied.changed_items, required)
