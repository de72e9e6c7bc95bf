"""Labels from any client. Never lost, never double counted.

Idempotency: (source, external_id) is unique — the same delivery again returns the stored label.
The same external id with another item or class is a client bug → Conflict.
Relabels (a new external id for an item that already has a label): recorded, and the latest
becomes the item's label ("latest wins"); counts are over items, so nothing counts twice.

The item is locked (core.item_lock) before its label row is inserted and its status set: two
labels of one item commit in the order of their rows, so the newest row is the item's label.
"""
from __future__ import annotations

from typing import Sequence

from sqlalchemy import and_, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from service.core.item_lock import lock_items
from service.errors import Conflict, Unprocessable
from service.store import Item, ItemStatus, Label, Project, QueueEntry, Round

_IN_CHUNK = 2000  # ids per IN (...): well under SQLite's bound-parameter limit


def _set_label(item: Item, class_name: str) -> None:
    """The item labeled with this class: both columns written, always. The ORM writes only what
    differs from what it read, and on SQLite that read may predate a commit of another writer
    (a retraction that set the item `queued`): an UPDATE of the label alone would leave it
    `queued` with a label."""
    item.label, item.status = class_name, ItemStatus.LABELED
    flag_modified(item, "label")
    flag_modified(item, "status")


def who_of(caller: str, named: str | None) -> str:
    """A label's `who` from a client: the caller's key name, then the expert the client names
    ("key:… as alice"). A client names its experts but cannot pose as another key or as Label
    Studio's resolution ("label-studio agreed (cat×3)")."""
    if named is None or not named.strip():
        return caller
    return f"{caller} as {named.strip()}"[:200]


def record_label(s: Session, project: Project, item_id: int, class_name: str, who: str,
                 source: str, external_id: str) -> tuple[Label, bool]:
    """(label, created). The Label Studio bridge calls this with source='label-studio'."""
    if class_name not in project.class_names:
        raise Unprocessable(f"unknown class {class_name!r}; known classes: {', '.join(project.class_names)}")
    prev = s.scalar(select(Label).where(Label.project_id == project.id, Label.source == source,
                                        Label.external_id == external_id))
    if prev is not None:
        if prev.item_id != item_id or prev.class_name != class_name:
            raise Conflict(f"label id {external_id!r} was already used for item {prev.item_id} "
                           f"as {prev.class_name!r}")
        return prev, False
    item = lock_items(s, [item_id]).get(item_id)
    if item is None or item.project_id != project.id:
        raise Unprocessable(f"item {item_id} is not in project {project.id}")
    if item.status == ItemStatus.QUARANTINED:
        raise Conflict(f"item {item_id} is quarantined: {item.reason}")
    # The round whose queue asked for this item (else the latest round): the label answers it.
    # One query (rounds with a queue entry for the item first), two columns, no Round objects:
    # this runs once per label delivered.
    qe = QueueEntry.__table__
    rnd = s.execute(select(Round.number, Round.model_version_id)
                    .outerjoin(qe, and_(qe.c.round_id == Round.id, qe.c.item_id == item_id))
                    .where(Round.project_id == project.id)
                    .order_by(qe.c.item_id.is_(None), Round.number.desc()).limit(1)).first()
    lab = Label(project_id=project.id, item_id=item_id, class_name=class_name, who=who, source=source,
                external_id=external_id, round=rnd.number if rnd else 0,
                model_version_id=rnd.model_version_id if rnd else None)
    try:
        # One flush for the INSERT and the item's UPDATE; if the insert loses to a concurrent
        # delivery, the savepoint's rollback undoes the item change as well.
        with s.begin_nested():
            s.add(lab)
            _set_label(item, class_name)
            s.flush()
    except IntegrityError:
        # A concurrent delivery of the same id won the insert: answer as the repeat it is.
        prev = s.scalar(select(Label).where(Label.project_id == project.id, Label.source == source,
                                            Label.external_id == external_id))
        if prev is None or prev.item_id != item_id or prev.class_name != class_name:
            raise Conflict(f"label id {external_id!r} conflicts with a concurrent label") from None
        return prev, False
    return lab, True


def record_labels(s: Session, project: Project, labels: Sequence[tuple[int, str, str, str]],
                  source: str) -> list[tuple[Label, bool]]:
    """Many labels at once: `labels` = [(item_id, class_name, who, external_id), ...] →
    [(label, created), ...] in the same order, with exactly the outcome of calling record_label
    for each in turn (repeats, conflicts, relabels "latest wins", the first error raised before
    anything is written) — in a handful of statements instead of ~7 per label.

    A concurrent delivery of one of the ids (the batch INSERT fails on the unique constraint)
    rolls the batch's savepoint back and the labels are recorded one by one instead."""
    labels = [(int(i), c, w, e) for i, c, w, e in labels]
    if not labels:
        return []
    names = set(project.class_names)
    ext_ids = sorted({e for *_, e in labels})
    item_ids = sorted({i for i, *_ in labels})
    prev: dict[str, Label] = {}
    asked: dict[int, int] = {}  # item → the latest round whose queue holds it
    for k in range(0, max(len(ext_ids), len(item_ids)), _IN_CHUNK):
        ext, ids = ext_ids[k:k + _IN_CHUNK], item_ids[k:k + _IN_CHUNK]
        if ext:
            prev.update((lab.external_id, lab) for lab in s.scalars(select(Label).where(
                Label.project_id == project.id, Label.source == source, Label.external_id.in_(ext))))
        if ids:
            asked.update(s.execute(select(QueueEntry.item_id, func.max(Round.number))
                                   .join(Round, Round.id == QueueEntry.round_id)
                                   .where(Round.project_id == project.id, QueueEntry.item_id.in_(ids))
                                   .group_by(QueueEntry.item_id)).all())
    items = lock_items(s, item_ids)  # in id order, at once: no deadlock with another batch
    rounds = dict(s.execute(select(Round.number, Round.model_version_id).where(Round.project_id == project.id)).all())
    latest = max(rounds, default=None)
    out: list[tuple[Label, bool]] = []
    new: list[Label] = []
    for item_id, class_name, who, external_id in labels:
        if class_name not in names:
            raise Unprocessable(f"unknown class {class_name!r}; known classes: {', '.join(project.class_names)}")
        p = prev.get(external_id)
        if p is not None:
            if p.item_id != item_id or p.class_name != class_name:
                raise Conflict(f"label id {external_id!r} was already used for item {p.item_id} "
                               f"as {p.class_name!r}")
            out.append((p, False))
            continue
        item = items.get(item_id)
        if item is None or item.project_id != project.id:
            raise Unprocessable(f"item {item_id} is not in project {project.id}")
        if item.status == ItemStatus.QUARANTINED:
            raise Conflict(f"item {item_id} is quarantined: {item.reason}")
        number = asked.get(item_id, latest)
        lab = Label(project_id=project.id, item_id=item_id, class_name=class_name, who=who, source=source,
                    external_id=external_id, round=number if number is not None else 0,
                    model_version_id=rounds.get(number) if number is not None else None)
        prev[external_id] = lab
        new.append(lab)
        out.append((lab, True))
    if not new:
        return out
    try:
        with s.begin_nested():
            s.add_all(new)
            for lab in new:  # in order: the last label of an item wins
                _set_label(items[lab.item_id], lab.class_name)
            s.flush()
    except IntegrityError:
        return [record_label(s, project, item_id, class_name, who, source, external_id)
                for item_id, class_name, who, external_id in labels]
    return out


def label_view(lab: Label, created: bool) -> dict:
    return {"id": lab.id, "item_id": lab.item_id, "class": lab.class_name, "who": lab.who, "source": lab.source,
            "client_id": lab.external_id, "round": lab.round, "model_version_id": lab.model_version_id,
            "created_at": lab.created_at.isoformat() if lab.created_at else None, "created": created}
