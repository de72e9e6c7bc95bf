"""Reconciliation poll: read the project's annotations from Label Studio, emit the same events.

Webhooks are fire-and-forget on Label Studio's side (one try, 1 s timeout), so whatever
camloop missed while it was down or slow is recovered here. The poll reads a full snapshot
of the project, because a deleted annotation is visible only as an absence: a cursor
("changed since") could never see it. Deletions are inferred only from a snapshot that was
read completely; a failed page raises and deletes nothing.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from service.labelstudio.apply import ApplyResult, LabelSink, apply_events
from service.labelstudio.client import LabelStudioBridge
from service.labelstudio.events import AnnotationDeleted, AnnotationError, AnnotationUpserted, Event, parse_annotation


@dataclass
class Snapshot:
    annotations: list[AnnotationUpserted] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)   # annotations camloop cannot read (kept in LS)
    tasks: int = 0
    open_tasks: int = 0        # tasks still waiting for annotators (fewer than the overlap)
    cursor: datetime | None = None  # newest updated_at seen

    @property
    def ids(self) -> set[int]:
        return {a.annotation_id for a in self.annotations}


def snapshot(bridge: LabelStudioBridge, project_id: int, classes: Sequence[str]) -> Snapshot:
    snap = Snapshot()
    for task in bridge.iter_tasks(project_id):
        snap.tasks += 1
        anns = task.get("annotations") or []
        if len(anns) < int(task.get("overlap") or 1):
            snap.open_tasks += 1
        for ann in anns:
            try:
                ev = parse_annotation(ann, task, classes)
            except AnnotationError as e:
                snap.errors.append(str(e))
                continue
            snap.annotations.append(ev)
            if ev.updated_at and (snap.cursor is None or ev.updated_at > snap.cursor):
                snap.cursor = ev.updated_at
    return snap


def events_from_snapshot(snap: Snapshot, known_ids: set[int], since: datetime | None = None) -> list[Event]:
    """Upserts (only those updated at/after `since`, if given) + deletes of known ids now absent."""
    ups: list[Event] = [a for a in snap.annotations
                        if since is None or a.updated_at is None or a.updated_at >= since]
    gone = sorted(known_ids - snap.ids)
    return ups + [AnnotationDeleted(i) for i in gone]


@dataclass
class PollResult:
    applied: ApplyResult
    snapshot: Snapshot


def reconcile(bridge: LabelStudioBridge, sink: LabelSink, project_id: int, classes: Sequence[str],
              since: datetime | None = None) -> PollResult:
    """One reconciliation pass for one Label Studio project. Safe to run any time, any number of times."""
    snap = snapshot(bridge, project_id, classes)
    events = events_from_snapshot(snap, sink.annotation_ids(project_id), since)
    return PollResult(apply_events(sink, events), snap)
