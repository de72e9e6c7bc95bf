"""Label Studio annotations → camloop's typed label events.

The webhook and the reconciliation poll both end here, so both produce exactly the same
events for the same annotation; that is what makes applying them idempotent (keyed by the
Label Studio annotation id: an upsert replaces, a delete removes).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.labelstudio import config as cfg
from service.labelstudio.regions import drawn_rectangle


class AnnotationError(ValueError):
    """An annotation camloop cannot read (no item id, malformed result)."""


@dataclass(frozen=True)
class AnnotationUpserted:
    """An annotation as it is now in Label Studio (created or updated).

    Exactly one of these describes what the expert did:
      * label is a project class           → a vote for that class;
      * skipped                            → the expert skipped / cancelled the task;
      * problem is set (label None)        → unusable (e.g. a class not in the project),
        kept so nothing is lost and shown for review, never counted as a vote.
    """
    annotation_id: int
    ls_task_id: int
    ls_project_id: int | None
    item_id: int                   # camloop item id (task data camloop_item_id)
    annotator: int | None          # Label Studio user id (completed_by)
    label: str | None
    wrong_region: bool
    skipped: bool
    problem: str | None
    updated_at: datetime | None
    round: int | None = None       # the round that queued the task (from task data)
    # The rectangle drawn on the image (service.labelstudio.regions): `drawn` in percent as Label
    # Studio sent it, until the store places it in pixels of the file as `region`;
    # `region_problem` says why a drawn one is not used (the rest of the annotation counts).
    drawn: tuple[float, float, float, float] | None = None
    region: tuple[int, int, int, int] | None = None
    region_problem: str | None = None

    @property
    def counts(self) -> bool:
        return self.label is not None and not self.skipped and self.problem is None


@dataclass(frozen=True)
class AnnotationDeleted:
    annotation_id: int


Event = AnnotationUpserted | AnnotationDeleted


def _parse_time(v: Any) -> datetime | None:
    if not v:
        return None
    try:
        return datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    except ValueError:
        return None


def _choices(result: Iterable[Mapping], from_name: str) -> list[str]:
    out: list[str] = []
    for r in result:
        if not isinstance(r, Mapping) or r.get("from_name") != from_name:
            continue
        value = r.get("value") or {}
        ch = value.get("choices") if isinstance(value, Mapping) else None
        if not isinstance(ch, list):
            raise AnnotationError(f"result for {from_name!r} has no choices list: {r!r:.200}")
        out.extend(str(c) for c in ch)
    return out


MAX_ID = 2**31 - 1  # Label Studio's ids and camloop's are 32-bit INTEGER columns


def _int(v: Any, what: str, annotation_id: int | str, *, optional: bool = False) -> int | None:
    """An id of the payload as an int (a JSON number or a string of digits), or AnnotationError
    (a 422) naming the field: a wrong type is the sender's mistake, never a 500."""
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise AnnotationError(f"annotation {annotation_id}: {what} must be an integer, got {type(v).__name__}")
    try:
        n = int(v)
    except ValueError:
        raise AnnotationError(f"annotation {annotation_id}: {what}={v!r:.40} is not an integer") from None
    if not 0 <= n <= MAX_ID:
        raise AnnotationError(f"annotation {annotation_id}: {what}={n} is out of range (0 to {MAX_ID})")
    return n


def parse_annotation(ann: Mapping, task: Mapping | None, classes: Iterable[str]) -> AnnotationUpserted:
    """One Label Studio annotation (and its task, for the item id) → AnnotationUpserted.

    `task` may be None when the annotation dict carries the task data itself (it never
    does in 1.23.2 payloads, but the export format nests it).
    """
    if "id" not in ann:
        raise AnnotationError(f"annotation without an id (keys: {', '.join(map(str, list(ann)[:20]))})")
    annotation_id = _int(ann["id"], "id", "?")
    task = task if task is not None else (ann.get("task") if isinstance(ann.get("task"), Mapping) else {})
    data = task.get("data") or {}
    if not isinstance(data, Mapping):
        raise AnnotationError(f"annotation {annotation_id}: task.data must be an object, got {type(data).__name__}")
    item_id = data.get(cfg.ITEM_ID)
    if item_id is None or item_id == "":
        raise AnnotationError(f"annotation {annotation_id}: its task has no {cfg.ITEM_ID} (not imported by camloop?)")
    item_id = _int(item_id, cfg.ITEM_ID, annotation_id)
    ls_task = ann.get("task")
    ls_task_id = _int(ls_task.get("id") if isinstance(ls_task, Mapping) else
                      (ls_task if ls_task is not None else task.get("id")), "annotation.task", annotation_id)
    result = ann.get("result") or []
    if not isinstance(result, list):
        raise AnnotationError(f"annotation {annotation_id}: result is not a list")
    skipped = bool(ann.get("was_cancelled"))
    labels = _choices(result, cfg.CLASS_FROM)
    wrong = bool(_choices(result, cfg.WRONG_FROM))
    known = set(classes)
    label: str | None = None
    problem: str | None = None
    if skipped:
        pass  # a skip carries no vote even if a choice was ticked before skipping
    elif not labels:
        problem = "no class chosen"
    elif len(labels) > 1:
        problem = f"several classes chosen: {labels}"
    elif labels[0] not in known:
        problem = f"class {labels[0]!r} is not in the project (classes: {sorted(known)})"
    else:
        label = labels[0]
    # A skip carries no region either; a rectangle that cannot be used costs nothing else.
    drawn, region_problem = (None, None) if skipped else drawn_rectangle(result)
    rnd = _int(data.get(cfg.ROUND), cfg.ROUND, annotation_id, optional=True)
    completed_by = ann.get("completed_by")
    if isinstance(completed_by, Mapping):  # some serializers nest the user
        completed_by = completed_by.get("id")
    project = ann.get("project", task.get("project"))
    return AnnotationUpserted(
        annotation_id=annotation_id,
        ls_task_id=ls_task_id,
        ls_project_id=_int(project, "annotation.project", annotation_id, optional=True),
        item_id=item_id,
        annotator=_int(completed_by, "completed_by", annotation_id, optional=True),
        label=label,
        wrong_region=wrong and not skipped,
        skipped=skipped,
        problem=problem,
        updated_at=_parse_time(ann.get("updated_at") or ann.get("created_at")),
        round=rnd,
        drawn=drawn,
        region_problem=region_problem,
    )
