"""Labels from any client. Never lost, never double counted.

Idempotency: (source, external_id) is unique — the same delivery again returns the stored label.
The same external id with another item or class is a client bug → Conflict.
Relabels (a new external id for an item that already has a label): recorded, and the latest
becomes the item's label ("latest wins"); counts are over items, so nothing counts twice.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import Conflict, Unprocessable
from service.store import Item, Label, Project, QueueEntry, Round


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
    item = s.get(Item, item_id)
    if item is None or item.project_id != project.id:
        raise Unprocessable(f"item {item_id} is not in project {project.id}")
    if item.status == "quarantined":
        raise Conflict(f"item {item_id} is quarantined: {item.reason}")
    # The round whose queue asked for this item (else the latest round): the label answers it.
    rnd = s.scalar(select(Round).join(QueueEntry, QueueEntry.round_id == Round.id)
                   .where(QueueEntry.item_id == item_id).order_by(Round.number.desc()).limit(1))
    if rnd is None:
        rnd = s.scalar(select(Round).where(Round.project_id == project.id).order_by(Round.number.desc()).limit(1))
    lab = Label(project_id=project.id, item_id=item_id, class_name=class_name, who=who, source=source,
                external_id=external_id, round=rnd.number if rnd else 0,
                model_version_id=rnd.model_version_id if rnd else None)
    try:
        with s.begin_nested():
            s.add(lab)
            s.flush()
    except IntegrityError:
        # A concurrent delivery of the same id won the insert: answer as the repeat it is.
        prev = s.scalar(select(Label).where(Label.project_id == project.id, Label.source == source,
                                            Label.external_id == external_id))
        if prev is None or prev.item_id != item_id or prev.class_name != class_name:
            raise Conflict(f"label id {external_id!r} conflicts with a concurrent label") from None
        return prev, False
    item.label, item.status = class_name, "labeled"
    s.flush()
    return lab, True


def label_view(lab: Label, created: bool) -> dict:
    return {"id": lab.id, "item_id": lab.item_id, "class": lab.class_name, "who": lab.who, "source": lab.source,
            "client_id": lab.external_id, "round": lab.round, "model_version_id": lab.model_version_id,
            "created_at": lab.created_at.isoformat() if lab.created_at else None, "created": created}
