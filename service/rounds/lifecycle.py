"""Starting, retrying and closing rounds: what an engineer (or auto_next_round) asks for."""
from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core.item_lock import lock_items
from service.errors import Conflict, NotFound, Unprocessable
from service.rounds.state import OPEN_STATES, WORKING_STATES, RoundState, cas
from service.settings import Settings
from service.store import Item, ItemStatus, Project, QueueEntry, Round, utcnow
from engine.config import ProjectConfig


def get_round(s: Session, pid: int, number: int) -> Round:
    rnd = s.scalar(select(Round).where(Round.project_id == pid, Round.number == number))
    if rnd is None:
        raise NotFound(f"round {number} not found")
    return rnd


def open_batch(s: Session, rnd: Round) -> tuple[int, int]:
    """(batch images still waiting for experts, batch size) of a round; the reserve not counted."""
    total = s.scalar(select(func.count()).select_from(QueueEntry).where(
        QueueEntry.round_id == rnd.id, QueueEntry.reserve.is_(False))) or 0
    waiting = s.scalar(select(func.count()).select_from(QueueEntry).join(Item, Item.id == QueueEntry.item_id).where(
        QueueEntry.round_id == rnd.id, QueueEntry.reserve.is_(False), Item.status == ItemStatus.QUEUED)) or 0
    return int(waiting), int(total)


def close(s: Session, rnd: Round) -> int | None:
    """labeling → closed. Batch images nobody labeled go back to the pool (their number is
    returned; None when another process closed it first). The reserve stays queued: experts
    label it while the next model trains, until the next round's batch replaces it."""
    waiting, _ = open_batch(s, rnd)
    if not cas(s, rnd, RoundState.LABELING, RoundState.CLOSED, finished_at=utcnow(),
               progress={**(rnd.progress or {}), "stage": RoundState.CLOSED.value,
                         **({"abandoned": waiting} if waiting else {})}):
        return None
    batch = select(QueueEntry.item_id).where(QueueEntry.round_id == rnd.id, QueueEntry.reserve.is_(False))
    lock_items(s, s.scalars(batch))  # a label arriving now waits, then finds its item unlabeled and labels it
    s.execute(update(Item).where(Item.id.in_(batch), Item.status == ItemStatus.QUEUED).values(status=ItemStatus.UNLABELED)
              .execution_options(synchronize_session=False))
    return waiting


def start_round(s: Session, settings: Settings, project: Project, *, idempotency_key: str | None = None,
                force: bool = False, train_only: bool = False) -> tuple[Round, bool]:
    """A new round in `created` → (round, created). One working round per project.

    The same Idempotency-Key again returns the round it started (created False): a client that
    retries after a lost answer gets its round, not a second one. A round whose batch experts
    are still labeling is never closed silently: without `force` this is a Conflict that says
    how many images wait; with it, they go back to the pool (the round's progress says how many).
    """
    # Check-then-insert is a race under READ COMMITTED: a no-op UPDATE of the project row first
    # takes its row lock (PostgreSQL) / the write lock (SQLite), so starts of one project queue up.
    s.execute(update(Project).where(Project.id == project.id).values(name=Project.name)
              .execution_options(synchronize_session=False))
    if idempotency_key is not None:
        same = s.scalar(select(Round).where(Round.project_id == project.id, Round.idempotency_key == idempotency_key))
        if same is not None:
            return same, False
    try:
        ProjectConfig.model_validate(project.config or {})
    except ValidationError as e:
        raise Unprocessable(f"the project's config is invalid; fix it with PATCH .../projects/{project.id}: "
                            f"{_first_error(e)}") from None
    busy = s.scalar(select(Round).where(Round.project_id == project.id, Round.state.in_(WORKING_STATES)))
    if busy is not None:
        raise Conflict(f"round {busy.number} is still {busy.state}; one working round per project")
    if s.scalar(select(Item.id).where(Item.project_id == project.id, Item.split == "pool").limit(1)) is None:
        # An empty folder registered, or none yet: a round would close at once, queueing nothing.
        raise Unprocessable(f"project {project.id} has no pool images: register a folder of images (POST "
                            f"/api/v1/projects/{project.id}/items with {{\"folder\": ...}}) before starting a round")
    labeling = list(s.scalars(select(Round).where(Round.project_id == project.id,
                                                  Round.state == RoundState.LABELING)))
    for prev in labeling:
        waiting, total = open_batch(s, prev)
        if waiting and not force:
            raise Conflict(f"round {prev.number} is being labeled: {waiting} of its {total} images still wait for "
                           "experts; start with force=true to close it and return them to the pool")
    last = s.scalar(select(func.max(Round.number)).where(Round.project_id == project.id)) or 0
    rnd = Round(project_id=project.id, number=last + 1, state=RoundState.CREATED,
                progress={"stage": RoundState.CREATED.value, **({"train_only": True} if train_only else {})},
                started_at=utcnow(),
                idempotency_key=idempotency_key, train_only=train_only)
    try:
        with s.begin_nested():
            s.add(rnd)
            s.flush()
    except IntegrityError:
        raise Conflict("another round was started at the same time") from None
    for prev in labeling:
        close(s, prev)
    return rnd, True


def retry_round(s: Session, project: Project, number: int) -> Round:
    """A failed round again, from `created`: manifests are rebuilt from the current config and
    labels; outputs of the failed attempt that still match them are reused, not recomputed."""
    rnd = get_round(s, project.id, number)
    if rnd.state != RoundState.FAILED:
        raise Conflict(f"round {number} is {rnd.state}; only a failed round can be retried")
    busy = s.scalar(select(Round).where(Round.project_id == project.id, Round.state.in_(WORKING_STATES)))
    if busy is not None:
        raise Conflict(f"round {busy.number} is {busy.state}")
    try:
        ProjectConfig.model_validate(project.config or {})
    except ValidationError as e:
        raise Unprocessable(f"the project's config is invalid; fix it with PATCH .../projects/{project.id} "
                            f"first: {_first_error(e)}") from None
    attempt = rnd.attempt + 1  # new job ids
    if not cas(s, rnd, RoundState.FAILED, RoundState.CREATED, attempt=attempt, error=None,
               finished_at=None, progress={"stage": RoundState.CREATED.value, "retried": attempt,
                                           **({"train_only": True} if rnd.train_only else {})}):
        raise Conflict(f"round {number} changed meanwhile")
    return rnd


def active_round_numbers(s: Session, pid: int) -> list[int]:
    return list(s.scalars(select(Round.number).where(Round.project_id == pid, Round.state.in_(OPEN_STATES))))


def _earlier_reserves(rnd: Round):
    earlier = select(Round.id).where(Round.project_id == rnd.project_id, Round.number < rnd.number)
    return select(QueueEntry.item_id).where(and_(QueueEntry.round_id.in_(earlier), QueueEntry.reserve.is_(True)))


def waiting_reserves(s: Session, rnd: Round) -> list[int]:
    """Earlier rounds' reserve images still queued."""
    return list(s.scalars(select(Item.id).where(Item.id.in_(_earlier_reserves(rnd)), Item.status == ItemStatus.QUEUED)))


def withdraw_reserves(s: Session, rnd: Round, ids: list[int] | None = None) -> int:
    """Earlier rounds' reserve images still waiting go back to the pool (the new batch replaces
    them); the number withdrawn. `ids`: waiting_reserves, read by a caller that locked them
    (lock_items) with the rest of what it writes; without them they are read and locked here."""
    if ids is None:
        ids = waiting_reserves(s, rnd)
        lock_items(s, ids)
    if not ids:
        return 0
    res = s.execute(update(Item).where(Item.id.in_(_earlier_reserves(rnd)), Item.status == ItemStatus.QUEUED).values(status=ItemStatus.UNLABELED)
                    .execution_options(synchronize_session=False))
    return int(res.rowcount or 0)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
