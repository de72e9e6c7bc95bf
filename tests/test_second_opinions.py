"""Second opinions in the store (issue 23): which labels are asked again, and how the answers
decide — through the bridge's own path (events → ledger → resolution → store), on a real SQLite
database, with the edge cases the issue names: the same expert answering, a class excluded
since, concurrent deliveries, an image relabeled twice. The Label Studio side (tasks, overlap)
is tests/test_labelstudio_trust.py."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import select

from service.core import paths
from service.core.projects import create_project
from service.labelstudio import guess, second_opinion  # noqa: F401 — their tables
from service.labelstudio.events import AnnotationUpserted
from service.labelstudio.ledger import SqlSink, ensure_tables
from service.labelstudio.second_opinion import adjust, request, second_opinions
from service.labelstudio.store_apply import apply_to_store
from service.store import Item, Project, ProjectClass, Round
from service.store.db import get_engine, session_scope
from service.store.migrate import upgrade_head
from tests.conftest import make_settings

CLASSES = ["cat", "dog", "fox"]
U0, U1, U2 = 101, 102, 103
T0 = datetime(2026, 12, 6, 12, tzinfo=timezone.utc)


@pytest.fixture
def st(tmp_path):
    s = make_settings(tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite'}", "so")
    (tmp_path / "data").mkdir()
    upgrade_head(s)
    ensure_tables(get_engine(s))
    return s


class Ids:
    n = 1000

    @classmethod
    def next(cls) -> int:
        cls.n += 1
        return cls.n


def vote(item: int, label: str, who: int, task: int, minutes: int = 0) -> AnnotationUpserted:
    return AnnotationUpserted(annotation_id=Ids.next(), ls_task_id=task, ls_project_id=9, item_id=item, annotator=who,
                              label=label, wrong_region=False, skipped=False, problem=None,
                              updated_at=T0 + timedelta(minutes=minutes), round=1)


def _project(st, relabel: dict | None = None) -> tuple[int, list[int]]:
    """A project with 4 labeled pool items (each answered by expert U0 in Label Studio, item 0
    also by U1 and item 3 by U2: three experts known) and round 2 in labeling."""
    with session_scope(st) as s:
        p = create_project(s, f"so-{Ids.next()}", CLASSES, {"budget": 20, "relabel": {"enabled": True,
                                                                                     **(relabel or {})}})
        items = [Item(project_id=p.id, uri=f"x/{k}.png", sha256=f"{p.id:08d}{k:056d}", split="pool", status="queued")
                 for k in range(4)]
        s.add_all(items)
        s.add_all([Round(project_id=p.id, number=1, state="closed"), Round(project_id=p.id, number=2,
                                                                             state="labeling")])
        s.flush()
        ids = [it.id for it in items]
        events = [vote(i, "cat", U0, task=10 + k) for k, i in enumerate(ids)] + [vote(ids[0], "cat", U1, task=10),
                                                                                  vote(ids[3], "cat", U2, task=13)]
        apply_to_store(s, p, events, 1)
        return p.id, ids


def _issues(st, pid: int, ids: list[int], flagged: list[int], probs: list[list[float]] | None = None) -> None:
    """The round-2 label-issue file a train job would have written."""
    f = paths.round_files(st, pid, 2).label_issues
    f.parent.mkdir(parents=True, exist_ok=True)
    n = len(ids)
    pp = np.asarray(probs if probs is not None else [[0.1, 0.8, 0.1]] * n, np.float32)
    np.savez(f, item_ids=np.asarray(ids), labels=np.zeros(n, np.int64), pred_probs=pp,
             quality=np.linspace(0.01, 0.4, n), issue=np.isin(ids, flagged), source=np.zeros(n, np.int8))


def _ask(st, pid: int, round_no: int = 2) -> list[int]:
    with session_scope(st) as s:
        asked = request(s, st, s.get(Project, pid), round_no)
        # What push does once Label Studio imported the task: the request knows its task.
        for rid, item in s.execute(select(second_opinions.c.id, second_opinions.c.item_id)
                                   .where(second_opinions.c.project_id == pid, second_opinions.c.ls_task_id.is_(None))):
            s.execute(second_opinions.update().where(second_opinions.c.id == rid).values(ls_task_id=5000 + item))
        return asked


def _deliver(st, pid: int, *events) -> None:
    with session_scope(st) as s:
        apply_to_store(s, s.get(Project, pid), list(events), 1)


def _state(st, pid: int, item: int) -> tuple[str | None, str, list]:
    with session_scope(st) as s:
        it = s.get(Item, item)
        reqs = s.execute(select(second_opinions).where(second_opinions.c.item_id == item)
                         .order_by(second_opinions.c.id)).all()
        return it.label, it.status, reqs


def test_the_most_suspicious_labels_are_asked_at_most_the_share_of_the_budget(st):
    pid, ids = _project(st, {"share": 0.1})  # 0.1 × 20 = 2 a round
    _issues(st, pid, ids, flagged=ids[:3])
    asked = _ask(st, pid)
    assert asked == ids[:2]  # lowest quality first
    (_, _, (r,)) = _state(st, pid, ids[0])
    assert (r.status, r.label, r.suggested, r.exclude) == ("open", "cat", "dog", [U0, U1])
    assert _ask(st, pid) == []  # the same round again asks nothing twice
    with session_scope(st) as s:  # turned off: nothing asked
        p = s.get(Project, pid)
        p.config = {**p.config, "relabel": {"enabled": False}}
    _issues(st, pid, ids, flagged=ids)
    assert _ask(st, pid, 2) == []


def test_with_one_expert_nobody_is_asked(st):
    with session_scope(st) as s:
        p = create_project(s, f"so-one-{Ids.next()}", CLASSES, {"relabel": {"enabled": True}})
        it = Item(project_id=p.id, uri="y.png", sha256="e" * 64, split="pool", status="queued")
        s.add(it)
        s.add(Round(project_id=p.id, number=2, state="labeling"))
        s.flush()
        apply_to_store(s, p, [vote(it.id, "cat", U0, task=1)], 1)
        pid, iid = p.id, it.id
    _issues(st, pid, [iid], flagged=[iid])
    assert _ask(st, pid) == []


def test_an_independent_second_opinion_that_disagrees_is_decided_by_the_out_of_fold_probabilities(st):
    pid, ids = _project(st)
    _issues(st, pid, ids, flagged=[ids[1]])  # the model says dog (0.8)
    assert _ask(st, pid) == [ids[1]]
    _deliver(st, pid, vote(ids[1], "dog", U1, task=5000 + ids[1], minutes=5))
    label, status, (r,) = _state(st, pid, ids[1])
    assert (label, status) == ("dog", "labeled")  # cat vs dog, a tie the model breaks toward dog
    assert (r.status, r.answered_by, r.answer, r.not_independent) == ("answered", U1, "dog", 0)


def test_with_tie_break_review_a_disagreement_takes_the_label_back_until_someone_decides(st):
    pid, ids = _project(st, {"tie_break": "review"})
    _issues(st, pid, ids, flagged=[ids[1]])
    _ask(st, pid)
    _deliver(st, pid, vote(ids[1], "dog", U1, task=5000 + ids[1], minutes=5))
    label, status, (r,) = _state(st, pid, ids[1])
    assert label is None and status != "labeled" and r.status == "answered"


def test_a_second_opinion_answered_by_the_same_expert_is_not_counted_as_one(st):
    pid, ids = _project(st)
    _issues(st, pid, ids, flagged=[ids[2]])
    _ask(st, pid)
    # U0 labeled it first; U0 gets the second-opinion task too and now says dog.
    _deliver(st, pid, vote(ids[2], "dog", U0, task=5000 + ids[2], minutes=5))
    label, status, (r,) = _state(st, pid, ids[2])
    assert (r.status, r.not_independent, r.answered_by) == ("open", 1, None)  # still owed by someone else
    assert (label, status) == ("dog", "labeled")  # one expert, one vote: their latest answer, as always
    # Another expert then answers: that is the second opinion (agreeing: dog).
    _deliver(st, pid, vote(ids[2], "dog", U1, task=5000 + ids[2], minutes=9))
    label, _, (r,) = _state(st, pid, ids[2])
    assert (r.status, r.answered_by, label) == ("answered", U1, "dog")


def test_a_second_opinion_naming_a_class_excluded_since_is_a_vote_but_the_model_cannot_break_the_tie(st):
    pid, ids = _project(st)
    # fox was excluded when the round trained: no probability for it.
    _issues(st, pid, ids, flagged=[ids[2]], probs=[[0.3, 0.7, 0.0]] * 4)
    with session_scope(st) as s:
        fox = s.scalar(select(ProjectClass).where(ProjectClass.project_id == pid, ProjectClass.name == "fox"))
        fox.status = "excluded"
    _ask(st, pid)
    _deliver(st, pid, vote(ids[2], "fox", U1, task=5000 + ids[2], minutes=5))
    label, status, (r,) = _state(st, pid, ids[2])
    assert (r.status, r.answer) == ("answered", "fox")
    assert label is None and status != "labeled"  # cat vs fox: a person decides (GET /review lists it)
    from service.labelstudio.resolve import resolve_item
    with session_scope(st) as s:
        res = resolve_item(ids[2], SqlSink(s, pid).for_items([ids[2]])[ids[2]])
    assert res.status == "tie" and res.needs_review


def test_concurrent_deliveries_of_second_opinions_record_each_answer_once(st):
    pid, ids = _project(st, {"share": 1.0})
    _issues(st, pid, ids, flagged=ids)
    assert sorted(_ask(st, pid)) == sorted(ids)
    answers = [vote(i, "dog", 105, task=5000 + i, minutes=5) for i in ids]
    barrier = threading.Barrier(8)
    errors = []

    def deliver(k: int):
        barrier.wait()
        try:
            # Every annotation delivered by several webhooks at once (and twice over), as Label
            # Studio's webhook and the poll can.
            _deliver(st, pid, answers[k % 4], answers[(k + 1) % 4])
        except Exception as e:  # noqa: BLE001 — SQLite's lock errors would show here
            errors.append(e)

    threads = [threading.Thread(target=deliver, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in ids:
        label, status, reqs = _state(st, pid, i)
        assert [(r.status, r.answered_by, r.answer) for r in reqs] == [("answered", 105, "dog")]
        # cat vs dog broken toward dog by the model; item 0 (cat ×2 vs dog) and 3 keep their majority.
        assert (label, status) == ("cat" if i in (ids[0], ids[3]) else "dog", "labeled")


def test_an_image_relabeled_twice_asks_a_third_expert_and_the_majority_of_three_decides(st):
    pid, ids = _project(st, {"max_per_item": 2})
    item = ids[0]  # voted cat by U0 and U1
    # The label-issue file is written by hand: it tests the asking, whatever flagged the image. A
    # real train job no longer flags a label two experts agreed on (tests/test_label_pruning.py).
    _issues(st, pid, ids, flagged=[item])
    # Round 2: asked of U2 (U0 and U1 voted), who says dog: cat ×2 vs dog, the majority keeps cat.
    _ask(st, pid)
    _deliver(st, pid, vote(item, "dog", U2, task=5000 + item, minutes=5))
    label, _, (r,) = _state(st, pid, item)
    assert r.exclude == [U0, U1] and (r.answer, label) == ("dog", "cat")
    # Round 3 flags it again: every expert has voted on it, nobody is left to ask.
    with session_scope(st) as s:
        s.add(Round(project_id=pid, number=3, state="labeling"))
    f2 = paths.round_files(st, pid, 3).label_issues
    f2.parent.mkdir(parents=True, exist_ok=True)
    f2.write_bytes(paths.round_files(st, pid, 2).label_issues.read_bytes())
    assert _ask(st, pid, 3) == []
    # An image asked once, flagged again later, is asked a second time of someone new (a fourth expert).
    with session_scope(st) as s:
        p = s.get(Project, pid)
        apply_to_store(s, p, [vote(ids[1], "cat", 104, task=77)], 1)  # a fourth expert appears elsewhere
    _issues(st, pid, ids, flagged=[item])
    with session_scope(st) as s:  # the round-3 file flags it: asked of 104, excluding U0, U1, U2
        f2.write_bytes(paths.round_files(st, pid, 2).label_issues.read_bytes())
    assert _ask(st, pid, 3) == [item]
    _, _, reqs = _state(st, pid, item)
    assert [r.exclude for r in reqs] == [[U0, U1], [U0, U1, U2]]
    # max_per_item = 2: a third request is never made.
    with session_scope(st) as s:
        s.add(Round(project_id=pid, number=4, state="labeling"))
    f4 = paths.round_files(st, pid, 4).label_issues
    f4.parent.mkdir(parents=True, exist_ok=True)
    f4.write_bytes(f2.read_bytes())
    assert _ask(st, pid, 4) == []


def test_items_never_asked_pass_through_adjust_untouched(st):
    pid, ids = _project(st)
    from service.labelstudio.resolve import resolve_item
    with session_scope(st) as s:
        anns = SqlSink(s, pid).for_items([ids[1]])[ids[1]]
        res = resolve_item(ids[1], anns)
        assert adjust(s, s.get(Project, pid), ids[1], anns, res) is res


def test_each_experts_estimated_quality_comes_from_cleanlabs_multi_annotator_method(st):
    """Three experts on 60 images (every image twice): U2 answers at random, U0 and U1 are right;
    cleanlab's CROWDLAB, fed the votes and the latest out-of-fold probabilities, ranks U2 last."""
    from service.labelstudio.second_opinion import expert_quality
    from service.store import ModelVersion

    rng = np.random.default_rng(0)
    with session_scope(st) as s:
        p = create_project(s, f"quality-{Ids.next()}", CLASSES, {"relabel": {"enabled": True}})
        items = [Item(project_id=p.id, uri=f"q/{k}.png", sha256=f"{p.id:08d}{k:056d}", split="pool", status="queued")
                 for k in range(60)]
        s.add_all(items)
        s.flush()
        ids = [it.id for it in items]
        truth = rng.integers(3, size=60)
        events = []
        for k, i in enumerate(ids):
            pair = [(U0, U1), (U1, U2), (U0, U2)][k % 3]
            for who in pair:
                c = int(truth[k]) if who != U2 else int(rng.integers(3))
                events.append(vote(i, CLASSES[c], who, task=k))
        apply_to_store(s, p, events, 1)
        probs = np.full((60, 3), 0.15)
        probs[np.arange(60), truth] = 0.7
        f = paths.round_files(st, p.id, 1).label_issues
        f.parent.mkdir(parents=True, exist_ok=True)
        np.savez(f, item_ids=np.asarray(ids), labels=truth, pred_probs=probs.astype(np.float32),
                 quality=np.ones(60), issue=np.zeros(60, bool), source=np.zeros(60, np.int8))
        s.add(ModelVersion(project_id=p.id, round=1, checkpoint_path="unused",
                           metrics={"label_issues": {"file": str(f)}}))
        s.flush()
        q = expert_quality(s, p)
    per = q["per_expert"]
    assert set(per) == {str(U0), str(U1), str(U2)} and q["items"] == 60
    assert per[str(U2)]["quality"] < min(per[str(U0)]["quality"], per[str(U1)]["quality"])
    assert per[str(U0)]["labels"] == 40


def test_expert_quality_says_why_when_it_cannot_be_estimated(st):
    from service.labelstudio.second_opinion import expert_quality

    pid, _ = _project(st)
    with session_scope(st) as s:
        assert "no out-of-fold probabilities" in expert_quality(s, s.get(Project, pid))["note"]


def test_labels_two_annotators_gave_are_confirmed_and_kept_from_pruning(st):
    """relabel.prune never leaves out of training a label two or more Label Studio annotators gave
    (one vote each): items 0 and 3 have two "cat" votes; item 1's second answer disagrees (a tie);
    an expert who answers twice still votes once."""
    from service.labelstudio.resolve import confirmed_items
    from service.rounds import inputs

    pid, ids = _project(st)
    _deliver(st, pid, vote(ids[1], "dog", U1, task=11), vote(ids[2], "cat", U0, task=12, minutes=5),
             vote(ids[0], "dog", U2, task=10, minutes=1))
    with session_scope(st) as s:
        assert confirmed_items(s, pid) == {ids[0]: "cat", ids[3]: "cat"}
        assert inputs.confirmed_label_ids(s, s.get(Project, pid)) == []  # no plug-in installed here
