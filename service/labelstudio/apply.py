"""Apply label events to a store, idempotently, keyed by the Label Studio annotation id.

The webhook and the poll may deliver the same annotation any number of times, in any
order relative to each other; applying an event must therefore be a pure upsert/delete:
  * AnnotationUpserted with a new id        → created
  * same id, different content              → updated (replaces the old vote)
  * same id, same content                   → unchanged (counted once)
  * AnnotationDeleted                       → deleted (or nothing, if unknown)

`LabelSink` is the narrow interface to camloop's store; `MemorySink` implements it in
memory (tests, and the reference semantics the SQL store must match).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from service.labelstudio.events import AnnotationDeleted, AnnotationUpserted, Event

log = logging.getLogger("camloop.labelstudio")


class LabelSink(Protocol):
    def get(self, annotation_id: int) -> AnnotationUpserted | None: ...
    def put(self, event: AnnotationUpserted) -> None: ...
    def delete(self, annotation_id: int) -> bool: ...
    def annotation_ids(self, ls_project_id: int) -> set[int]: ...


def same_content(a: AnnotationUpserted, b: AnnotationUpserted) -> bool:
    # updated_at is left out: a replayed webhook and a later poll carry the same
    # annotation; only what the expert said decides whether it changed.
    strip = dict(updated_at=None)
    return replace(a, **strip) == replace(b, **strip)


@dataclass
class ApplyResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    problems: list[str] = field(default_factory=list)   # unusable annotations, kept for review
    # Rectangles drawn but not used (service.labelstudio.regions); the annotations count.
    region_notes: list[str] = field(default_factory=list)
    changed_items: set[int] = field(default_factory=set)  # items whose resolution may have changed

    def __iadd__(self, other: "ApplyResult") -> "ApplyResult":
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.deleted += other.deleted
        self.problems += other.problems
        self.region_notes += other.region_notes
        self.changed_items |= other.changed_items
        return self


def apply_events(sink: LabelSink, events: Iterable[Event]) -> ApplyResult:
    res = ApplyResult()
    for ev in events:
        if isinstance(ev, AnnotationDeleted):
            old = sink.get(ev.annotation_id)
            if sink.delete(ev.annotation_id):
                res.deleted += 1
                if old is not None:
                    res.changed_items.add(old.item_id)
            continue
        if ev.problem:
            res.problems.append(f"annotation {ev.annotation_id} (item {ev.item_id}): {ev.problem}")
        old = sink.get(ev.annotation_id)
        if old is None:
            sink.put(ev)
            res.created += 1
            res.changed_items.add(ev.item_id)
            _note_region(res, ev)
        elif same_content(old, ev):
            res.unchanged += 1
        elif old.updated_at and ev.updated_at and ev.updated_at < old.updated_at:
            # A stale copy (a late webhook after the poll already saw a newer edit): keep the newer.
            res.unchanged += 1
        else:
            sink.put(ev)
            res.updated += 1
            res.changed_items |= {old.item_id, ev.item_id}
            _note_region(res, ev)
    return res


def _note_region(res: ApplyResult, ev: AnnotationUpserted) -> None:
    """A drawn rectangle that is not used: said once, when the annotation is stored as it is now."""
    if ev.region_problem:
        note = f"annotation {ev.annotation_id} (item {ev.item_id}): {ev.region_problem}; its class and vote count"
        log.warning("Label Studio %s", note)
        res.region_notes.append(note)


class MemorySink:
    def __init__(self) -> None:
        self.rows: dict[int, AnnotationUpserted] = {}

    def get(self, annotation_id: int) -> AnnotationUpserted | None:
        return self.rows.get(annotation_id)

    def put(self, event: AnnotationUpserted) -> None:
        self.rows[event.annotation_id] = event

    def delete(self, annotation_id: int) -> bool:
        return self.rows.pop(annotation_id, None) is not None

    def annotation_ids(self, ls_project_id: int) -> set[int]:
        return {k for k, v in self.rows.items() if v.ls_project_id == ls_project_id}

    def votes_by_item(self) -> dict[int, list[AnnotationUpserted]]:
        out: dict[int, list[AnnotationUpserted]] = {}
        for ev in self.rows.values():
            out.setdefault(ev.item_id, []).append(ev)
        return out
