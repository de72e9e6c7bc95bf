"""Several annotators per task → one label per item, or a flag for review.

Label Studio Community stores every annotator's answer and resolves nothing; camloop
takes the majority. Anything short of unanimity is flagged for review (a tie yields no
label at all, so it never reaches training until someone decides).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from service.labelstudio.events import AnnotationUpserted

_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Resolution:
    item_id: int
    label: str | None          # the majority class, None when tied / nothing usable yet
    status: str                # pending | agreed | majority | tie | skipped | unusable
    needs_review: bool
    complete: bool             # every requested annotator answered (vote, skip or unusable)
    votes: dict[str, int]      # class → number of annotators
    skips: int
    unusable: int
    wrong_region: bool         # most voters said the model looked at the wrong region
    wrong_region_votes: int


def one_per_annotator(annotations: Iterable[AnnotationUpserted]) -> list[AnnotationUpserted]:
    """The latest annotation of each annotator (an expert who answers twice votes once)."""
    latest: dict[object, AnnotationUpserted] = {}
    for a in annotations:
        key = a.annotator if a.annotator is not None else ("anon", a.annotation_id)
        cur = latest.get(key)
        if cur is None or ((a.updated_at or _EPOCH), a.annotation_id) > ((cur.updated_at or _EPOCH), cur.annotation_id):
            latest[key] = a
    return sorted(latest.values(), key=lambda a: a.annotation_id)


def resolve_item(item_id: int, annotations: Sequence[AnnotationUpserted], required: int = 1) -> Resolution:
    anns = one_per_annotator(annotations)
    voting = [a for a in anns if a.counts]
    skips = sum(a.skipped for a in anns)
    unusable = sum(1 for a in anns if not a.skipped and not a.counts)
    votes = Counter(a.label for a in voting)
    wrong = sum(a.wrong_region for a in voting)
    complete = len(anns) >= max(1, required)
    top = votes.most_common()
    label: str | None = None
    if not voting:
        status = "pending" if not anns else ("skipped" if skips and not unusable else "unusable")
    elif len(top) == 1:
        status, label = "agreed", top[0][0]
    elif top[0][1] == top[1][1]:
        status = "tie"
    else:
        status, label = "majority", top[0][0]
    needs_review = status in ("tie", "majority", "unusable") or (status == "agreed" and unusable > 0)
    return Resolution(
        item_id=item_id, label=label, status=status, needs_review=needs_review, complete=complete,
        votes=dict(votes), skips=skips, unusable=unusable,
        wrong_region=bool(voting) and wrong * 2 > len(voting), wrong_region_votes=wrong,
    )


def resolve_all(by_item: dict[int, Sequence[AnnotationUpserted]], required: int = 1) -> dict[int, Resolution]:
    return {item: resolve_item(item, anns, required) for item, anns in by_item.items()}


def confirmed_items(s, project_id: int) -> dict[int, str]:
    """{item id: class} of the items whose resolution two or more annotators' votes carry (one vote
    each: their latest answer). Only items with answers from two annotators or more are read."""
    from sqlalchemy import func, select

    from service.labelstudio.ledger import SqlSink, annotations as a

    many = list(s.scalars(select(a.c.item_id).where(a.c.project_id == project_id, a.c.label.is_not(None))
                          .group_by(a.c.item_id).having(func.count(func.distinct(a.c.annotator)) >= 2)))
    out: dict[int, str] = {}
    for item_id, anns in SqlSink(s, project_id).for_items(many).items():
        res = resolve_item(item_id, anns)
        if res.label is not None and res.votes.get(res.label, 0) >= 2:
            out[item_id] = res.label
    return out
