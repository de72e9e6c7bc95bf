"""What a round's timing says about the next one (for the experts' "next batch in about …")."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.jobkinds import JobKind
from service.store import Item, ItemStatus, Job, JobState, Round


def eta_and_labels(s: Session, pid: int, number: int) -> tuple[int, float | None]:
    """(labeled pool images now, seconds the previous round spent training and scoring, or None
    for the first round): a new round of the same size takes about as long."""
    labels = s.scalar(select(func.count()).select_from(Item).where(
        Item.project_id == pid, Item.split == "pool", Item.status == ItemStatus.LABELED)) or 0
    prev = s.scalar(select(Round.id).where(Round.project_id == pid, Round.number < number,
                                           Round.model_version_id.is_not(None)).order_by(Round.number.desc()).limit(1))
    if prev is None:
        return int(labels), None
    spent = s.scalar(select(func.sum(Job.duration_s)).where(Job.round_id == prev, Job.kind.in_((JobKind.TRAIN, JobKind.SCORE)),
                                                            Job.state == JobState.FINISHED))
    return int(labels), (float(spent) if spent else None)
