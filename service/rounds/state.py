"""A round's states and the only transitions between them, in one table.

    created ──► training ──► scoring ──► selecting ──► labeling ──► closed
       │            │            │            │
       │            └─ (train-only round) ────┼────────────────────► closed
       └─ (nothing labeled yet: cold start) ──┘
    any working state ──► failed ──(retry)──► the stage that failed

Every change of state goes through `cas`: a compare-and-set UPDATE that only one process can
win (several API replicas reconcile the same rounds). The side effects of a transition (a model
version, exclusion decisions, queue entries) are written by the winner, in the transaction of
its UPDATE, after it won — a loser writes nothing. The states themselves (RoundState,
WORKING_STATES) are the words of the store's column, in service.states.
"""
from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.states import WORKING_STATES, RoundState
from service.store import Round, utcnow

S = RoundState
TRANSITIONS: dict[RoundState, frozenset[RoundState]] = {
    S.CREATED: frozenset({S.TRAINING, S.SCORING, S.SELECTING, S.FAILED}),  # scoring: a typical first batch
    S.TRAINING: frozenset({S.SCORING, S.CLOSED, S.FAILED}),
    S.SCORING: frozenset({S.SELECTING, S.FAILED}),
    S.SELECTING: frozenset({S.LABELING, S.FAILED}),
    S.LABELING: frozenset({S.CLOSED}),
    S.CLOSED: frozenset(),
    S.FAILED: frozenset({S.CREATED, S.TRAINING, S.SCORING, S.SELECTING}),  # retry, from the failed stage
}
# The reconciler looks at these: working rounds (service.store.WORKING_STATES), and labeling
# rounds waiting for their labels.
OPEN_STATES = WORKING_STATES + (S.LABELING,)


class IllegalTransition(RuntimeError):
    pass


def check(old: str, new: str) -> None:
    if RoundState(new) not in TRANSITIONS[RoundState(old)]:
        raise IllegalTransition(f"a round cannot go from {old} to {new}")


def cas(s: Session, rnd: Round, old: str, new: str, **values) -> bool:
    """Move `rnd` from `old` to `new` if it is still in `old`; True when this caller won."""
    check(old, new)
    res = s.execute(update(Round).where(Round.id == rnd.id, Round.state == old)
                    .values(state=new, updated_at=utcnow(), **values).execution_options(synchronize_session=False))
    if res.rowcount == 1:
        s.refresh(rnd)
        return True
    return False


def fail(s: Session, rnd: Round, stage: str, error: str) -> bool:
    """To `failed` with the reason, remembering the stage a retry starts again from."""
    return cas(s, rnd, rnd.state, S.FAILED, error=error[:4000], finished_at=utcnow(),
               progress={**(rnd.progress or {}), "stage": S.FAILED.value, "failed_stage": stage})
