"""Persistent state of the bridge: Label Studio annotations as camloop saw them, and the
camloop project ↔ Label Studio project link.

Why a table of our own rather than rows of `labels`: `labels` is append-only and one row is
one label; a Label Studio annotation can be edited (the vote changes), deleted (the vote
disappears), skipped (no vote) or carry a class the project does not have (kept for
review). This ledger holds each annotation's current state keyed by its Label Studio id,
which is what makes webhook + poll idempotent; the *resolved* label of an item (majority of
its annotators) is what goes into the store's `labels`/`items` (service.labelstudio.store_apply).

The tables live on their own MetaData; Alembic revision 0002 creates them with the store's
schema, and ensure_tables (checkfirst) remains for a database that was not migrated.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, Boolean, Column, DateTime, Engine, ForeignKey, Integer, MetaData, String, Table, Text,
                        delete, insert, select, update)
from sqlalchemy.orm import Session

from service.labelstudio.events import AnnotationUpserted

metadata = MetaData()

annotations = Table(
    "labelstudio_annotations", metadata,
    Column("annotation_id", Integer, primary_key=True, autoincrement=False),  # Label Studio's id
    Column("ls_project_id", Integer, nullable=False, index=True),
    Column("ls_task_id", Integer, nullable=False),
    Column("project_id", Integer, nullable=False, index=True),  # camloop project
    Column("item_id", Integer, nullable=False, index=True),
    Column("annotator", Integer, nullable=True),
    Column("label", String(200), nullable=True),
    Column("wrong_region", Boolean, nullable=False, default=False),
    Column("skipped", Boolean, nullable=False, default=False),
    Column("problem", Text, nullable=True),
    Column("round", Integer, nullable=True),
    # The rectangle drawn on the image, [x0, y0, x1, y1] in pixels of the file, and why a drawn
    # one was not used (migration 0010; service.labelstudio.regions).
    Column("region", JSON(none_as_null=True), nullable=True),
    Column("region_problem", Text, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=True),
    Column("seen_at", DateTime(timezone=True), nullable=False),
)

links = Table(
    "labelstudio_projects", metadata,
    Column("project_id", Integer, primary_key=True, autoincrement=False),  # camloop project
    Column("ls_project_id", Integer, nullable=False, unique=True),
    Column("webhook_id", Integer, nullable=True),
    Column("maximum_annotations", Integer, nullable=False, default=1),
)

_created: set[str] = set()


def ensure_tables(engine: Engine) -> None:
    key = str(engine.url)
    if key not in _created:
        metadata.create_all(engine, checkfirst=True)
        _created.add(key)


def _aware(dt: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; events compare aware ones.
    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


def _row_to_event(r) -> AnnotationUpserted:
    return AnnotationUpserted(
        annotation_id=r.annotation_id, ls_task_id=r.ls_task_id, ls_project_id=r.ls_project_id, item_id=r.item_id,
        annotator=r.annotator, label=r.label, wrong_region=bool(r.wrong_region), skipped=bool(r.skipped),
        problem=r.problem, updated_at=_aware(r.updated_at), round=r.round,
        region=tuple(r.region) if r.region is not None else None, region_problem=r.region_problem)


class SqlSink:
    """LabelSink over labelstudio_annotations, for one camloop project, in the caller's session."""

    def __init__(self, session: Session, project_id: int):
        self.s = session
        self.project_id = project_id

    # Every read and write is scoped to the project: an annotation id of another project is not
    # this sink's to read, change or delete (store_apply.owned_events refuses such events first).
    def _mine(self, annotation_id: int):
        return (annotations.c.annotation_id == annotation_id) & (annotations.c.project_id == self.project_id)

    def get(self, annotation_id: int) -> AnnotationUpserted | None:
        r = self.s.execute(select(annotations).where(self._mine(annotation_id))).first()
        return _row_to_event(r) if r is not None else None

    def put(self, ev: AnnotationUpserted) -> None:
        values = dict(ls_project_id=ev.ls_project_id, ls_task_id=ev.ls_task_id, project_id=self.project_id,
                      item_id=ev.item_id, annotator=ev.annotator, label=ev.label, wrong_region=ev.wrong_region,
                      skipped=ev.skipped, problem=ev.problem, round=ev.round, updated_at=ev.updated_at,
                      region=list(ev.region) if ev.region is not None else None, region_problem=ev.region_problem,
                      seen_at=datetime.now(timezone.utc))
        done = self.s.execute(update(annotations).where(self._mine(ev.annotation_id))
                              .values(**values)).rowcount
        if not done:
            self.s.execute(insert(annotations).values(annotation_id=ev.annotation_id, **values))

    def delete(self, annotation_id: int) -> bool:
        return bool(self.s.execute(delete(annotations).where(self._mine(annotation_id))).rowcount)

    def annotation_ids(self, ls_project_id: int) -> set[int]:
        return set(self.s.scalars(select(annotations.c.annotation_id)
                                  .where(annotations.c.ls_project_id == ls_project_id,
                                         annotations.c.project_id == self.project_id)))

    def for_items(self, item_ids) -> dict[int, list[AnnotationUpserted]]:
        out: dict[int, list[AnnotationUpserted]] = {i: [] for i in item_ids}
        if not out:
            return out
        for r in self.s.execute(select(annotations).where(annotations.c.item_id.in_(list(out)),
                                                          annotations.c.project_id == self.project_id)):
            out[r.item_id].append(_row_to_event(r))
        return out

    def all_items(self) -> dict[int, list[AnnotationUpserted]]:
        out: dict[int, list[AnnotationUpserted]] = {}
        for r in self.s.execute(select(annotations).where(annotations.c.project_id == self.project_id)):
            out.setdefault(r.item_id, []).append(_row_to_event(r))
        return out


def get_link(s: Session, project_id: int):
    return s.execute(select(links).where(links.c.project_id == project_id)).first()


def project_for_ls(s: Session, ls_project_id: int):
    return s.execute(select(links).where(links.c.ls_project_id == ls_project_id)).first()


def set_link(s: Session, project_id: int, ls_project_id: int, webhook_id: int | None, maximum_annotations: int) -> None:
    values = dict(ls_project_id=ls_project_id, webhook_id=webhook_id, maximum_annotations=maximum_annotations)
    if not s.execute(update(links).where(links.c.project_id == project_id).values(**values)).rowcount:
        s.execute(insert(links).values(project_id=project_id, **values))
