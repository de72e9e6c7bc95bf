"""service/rounds/state.py: the round's transition table and its compare-and-set, on their own
(the handlers and the reconciler that use them: tests/test_round_rules.py, test_replicas.py).

The store is real (SQLite and PostgreSQL); two sessions stand for two API replicas racing."""
from __future__ import annotations

import pytest

from service.rounds.state import OPEN_STATES, TRANSITIONS, IllegalTransition, check, cas, fail
from service.store import WORKING_STATES, Project, Round, RoundState
from service.store.db import session_scope
from service.store.migrate import upgrade_head

S = RoundState

# The diagram of the module's docstring, edge by edge.
EXPECTED = {
    S.CREATED: {S.TRAINING, S.SCORING, S.SELECTING, S.FAILED},
    S.TRAINING: {S.SCORING, S.CLOSED, S.FAILED},
    S.SCORING: {S.SELECTING, S.FAILED},
    S.SELECTING: {S.LABELING, S.FAILED},
    S.LABELING: {S.CLOSED},
    S.CLOSED: set(),
    S.FAILED: {S.CREATED, S.TRAINING, S.SCORING, S.SELECTING},
}


def test_the_table_is_the_diagram_and_names_every_state():
    assert set(TRANSITIONS) == set(RoundState)
    assert {k: set(v) for k, v in TRANSITIONS.items()} == EXPECTED
    assert set(WORKING_STATES) == {S.CREATED, S.TRAINING, S.SCORING, S.SELECTING}
    assert set(OPEN_STATES) == set(WORKING_STATES) | {S.LABELING}
    # Every working state can fail; a failed round retries only into a working state.
    assert all(S.FAILED in TRANSITIONS[w] for w in WORKING_STATES)
    assert set(TRANSITIONS[S.FAILED]) == set(WORKING_STATES)


@pytest.mark.parametrize("old", list(RoundState))
def test_check_allows_exactly_the_table(old):
    for new in RoundState:
        if new in EXPECTED[old]:
            check(old, new)
            check(old.value, new.value)  # the column's plain words work the same
        else:
            with pytest.raises(IllegalTransition, match=f"from {old.value} to {new.value}"):
                check(old, new)


def test_check_refuses_a_state_that_does_not_exist():
    with pytest.raises(ValueError):
        check("training", "paused")
    with pytest.raises(ValueError):
        check("sleeping", "training")


@pytest.fixture
def store(tmp_path, db_url, queue_prefix):
    from tests.conftest import make_settings

    settings = make_settings(tmp_path / "data", db_url, queue_prefix)
    upgrade_head(settings)
    with session_scope(settings) as s:
        project = Project(name=f"state-{tmp_path.name}", class_names=["a", "b"], config={})
        s.add(project)
        s.flush()
        rnd = Round(project_id=project.id, number=1, state=S.TRAINING, progress={"stage": "training"})
        s.add(rnd)
        s.flush()
        ids = project.id, rnd.id
    return settings, ids


def test_cas_moves_a_round_once_and_the_loser_writes_nothing(store):
    settings, (pid, rid) = store
    with session_scope(settings) as a, session_scope(settings) as b:
        ra, rb = a.get(Round, rid), b.get(Round, rid)  # both replicas saw it in training
        assert ra.state == rb.state == S.TRAINING
        assert cas(a, ra, S.TRAINING, S.SCORING, progress={"stage": "scoring", "by": "a"})
        assert ra.state == S.SCORING and ra.progress == {"stage": "scoring", "by": "a"}  # refreshed
        a.commit()
        assert not cas(b, rb, S.TRAINING, S.SCORING, progress={"stage": "scoring", "by": "b"})
        assert rb.state == S.TRAINING  # the loser's object is left as it saw it
    with session_scope(settings) as s:
        rnd = s.get(Round, rid)
        assert rnd.state == S.SCORING and rnd.progress["by"] == "a"


def test_cas_refuses_an_illegal_move_before_touching_the_store(store):
    settings, (pid, rid) = store
    with session_scope(settings) as s:
        rnd = s.get(Round, rid)
        with pytest.raises(IllegalTransition):
            cas(s, rnd, S.TRAINING, S.LABELING)
    with session_scope(settings) as s:
        assert s.get(Round, rid).state == S.TRAINING


def test_cas_from_a_state_the_round_is_not_in_loses(store):
    settings, (pid, rid) = store
    with session_scope(settings) as s:
        rnd = s.get(Round, rid)
        assert not cas(s, rnd, S.SCORING, S.SELECTING)  # legal move, wrong starting state
        assert rnd.state == S.TRAINING


def test_fail_records_the_reason_and_the_stage_a_retry_starts_from(store):
    settings, (pid, rid) = store
    with session_scope(settings) as s:
        rnd = s.get(Round, rid)
        assert fail(s, rnd, "training", "x" * 5000)
        assert rnd.state == S.FAILED and len(rnd.error) == 4000 and rnd.finished_at is not None
        assert rnd.progress == {"stage": "failed", "failed_stage": "training"}
        with pytest.raises(IllegalTransition):  # failed → failed is not in the table: no second record
            fail(s, rnd, "failed", "again")
    with session_scope(settings) as s:
        rnd = s.get(Round, rid)
        assert cas(s, rnd, S.FAILED, S.CREATED, error=None)  # the retry's move
        assert rnd.state == S.CREATED and rnd.error is None
