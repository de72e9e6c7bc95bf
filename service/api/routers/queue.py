"""What waits for experts, in priority order."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from service.api.deps import CallerDep, Pid, SettingsDep
from service.api.schemas import MAX_ID, QueueOut
from service.core import projects as projects_svc
from service.errors import NotFound
from service.rounds import nudge
from service.store import Item, ItemStatus, QueueEntry, Round, RoundState
from service.store.db import session_scope

router = APIRouter(tags=["queue"])


@router.get("/projects/{pid}/queue", response_model=QueueOut)
def queue(pid: Pid, settings: SettingsDep, c: CallerDep,
          round: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None, include_labeled: bool = False) -> dict:
    """The batch of the round being labeled (or of `round`), then its reserve; with
    `include_labeled` the answered images too."""
    nudge(settings, pid, force=False)
    with session_scope(settings) as s:
        projects_svc.get_project(s, pid)
        q = select(Round).where(Round.project_id == pid)
        q = q.where(Round.number == round) if round is not None else q.where(Round.state == RoundState.LABELING)
        rnd = s.scalar(q.order_by(Round.number.desc()).limit(1))
        if rnd is None and round is None:
            # Between rounds the latest closed round's reserve is what experts can label.
            rnd = s.scalar(select(Round).where(Round.project_id == pid, Round.state == RoundState.CLOSED)
                           .order_by(Round.number.desc()).limit(1))
        if rnd is None:
            if round is not None:
                raise NotFound(f"round {round} not found")
            return {"round": None, "items": []}
        rows = s.execute(select(QueueEntry, Item).join(Item, Item.id == QueueEntry.item_id)
                         .where(QueueEntry.round_id == rnd.id).order_by(QueueEntry.rank)).all()
        return {"round": rnd.number, "state": rnd.state, "items": [
            {"rank": e.rank, "item_id": it.id, "uri": it.uri, "status": it.status, "predicted": e.pred,
             "scores": e.scores or {}, "label": it.label, "reserve": bool(e.reserve)}
            for e, it in rows if include_labeled or it.status == ItemStatus.QUEUED]}
