"""The experts' "the model looked at the wrong region" votes, counted per class.

What an expert judges with that checkbox is the Grad-CAM map beside the image, and that map
is the map of the class the *model guessed* (the round's queue entry), not of the class the
expert answers. So the votes are filed under the guessed class: "when the model says Shirt,
how often does it look at the wrong place". The expert's class is kept beside it, because a
wrong region on a wrong guess (the model said Shirt, it is a Coat) and on a right one mean
different things.

Votes counted: every annotation in the ledger with a usable class, not skipped (the same
votes as the per-class `expert_votes`). A task shown without a map (a round before any model:
no guess, the right-hand picture repeats the image) has nothing to judge and is not counted.
"""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Integer, and_, cast, func, select, tuple_
from sqlalchemy.orm import Session

from service.labelstudio.guess import hidden_tasks
from service.labelstudio.ledger import SqlSink
from service.labelstudio.ledger import annotations as a
from service.labelstudio.resolve import _EPOCH, one_per_annotator, resolve_item
from service.store import QueueEntry, Round


def _usable(project_id: int):
    return and_(a.c.project_id == project_id, a.c.label.is_not(None), a.c.problem.is_(None), a.c.skipped.is_(False))


def _on_shown_maps(query, project_id: int):
    """`query` over the usable votes on tasks that showed a map, each joined to its task's queue
    entry (QueueEntry.pred: the guessed class whose map the expert judged)."""
    return (query.select_from(a)
            .join(Round, and_(Round.project_id == a.c.project_id, Round.number == a.c.round))
            .join(QueueEntry, and_(QueueEntry.round_id == Round.id, QueueEntry.item_id == a.c.item_id))
            .where(_usable(project_id), QueueEntry.pred.is_not(None),
                   # A task shown without the guess showed no map either: nothing was judged there.
                   tuple_(a.c.round, a.c.item_id).not_in(hidden_tasks(project_id))))


def wrong_region_votes(s: Session, project_id: int) -> dict[str, dict]:
    """guessed class → {"votes", "wrong_region", "wrong_region_by_expert_class": {expert class: n}}.

    `votes`: expert votes on tasks where the model guessed that class (each saw its map);
    `wrong_region`: how many of them ticked "the model looked at the wrong region"."""
    guess = QueueEntry.pred
    rows = s.execute(_on_shown_maps(select(guess, a.c.label, func.count(), func.sum(cast(a.c.wrong_region, Integer))),
                                    project_id).group_by(guess, a.c.label)).all()
    out: dict[str, dict] = {}
    for guessed, label, n, wrong in rows:
        entry = out.setdefault(guessed, {"votes": 0, "wrong_region": 0, "wrong_region_by_expert_class": {}})
        entry["votes"] += int(n)
        entry["wrong_region"] += int(wrong or 0)
        if wrong:
            entry["wrong_region_by_expert_class"][label] = int(wrong)
    return out


def wrong_region_examples(s: Session, project_id: int, limit: int) -> dict[str, list[int]]:
    """guessed class → up to `limit` item ids whose map an expert flagged "wrong region", newest
    first (the votes `wrong_region_votes` counts: usable, on tasks that showed the map)."""
    rows = s.execute(_on_shown_maps(select(QueueEntry.pred, a.c.item_id), project_id)
                     .where(a.c.wrong_region.is_(True))
                     .order_by(a.c.seen_at.desc(), a.c.annotation_id.desc())).all()
    out: dict[str, list[int]] = {}
    for guessed, item_id in rows:
        here = out.setdefault(guessed, [])
        if len(here) < limit and int(item_id) not in here:
            here.append(int(item_id))
    return out


def expert_votes(s: Session, project_id: int) -> dict[str, int]:
    """expert's class → number of usable votes for it."""
    rows = s.execute(select(a.c.label, func.count()).where(_usable(project_id)).group_by(a.c.label)).all()
    return {label: int(n) for label, n in rows}


def per_class_fields(s: Session, project_id: int, classes: Sequence[str]) -> dict[str, dict]:
    """The expert-vote fields of GET /metrics' per_class, for every class:

      expert_votes          votes whose answer (the expert's class) is this class
      guessed_votes         votes on tasks where the model guessed this class
      wrong_region_votes    of those, votes saying the model looked at the wrong region
      wrong_region_rate     wrong_region_votes / guessed_votes (None without votes)
      wrong_region_by_expert_class   those wrong-region votes split by the expert's answer
    """
    by_guess = wrong_region_votes(s, project_id)
    by_label = expert_votes(s, project_id)
    out = {}
    for c in classes:
        g = by_guess.get(c, {"votes": 0, "wrong_region": 0, "wrong_region_by_expert_class": {}})
        out[c] = {"expert_votes": by_label.get(c, 0), "guessed_votes": g["votes"],
                  "wrong_region_votes": g["wrong_region"],
                  "wrong_region_rate": g["wrong_region"] / g["votes"] if g["votes"] else None,
                  "wrong_region_by_expert_class": dict(sorted(g["wrong_region_by_expert_class"].items()))}
    return out


def flagged_items(s: Session, project_id: int) -> dict[int, list[int] | None]:
    """{item id: the region drawn, or None} of the items the experts flagged "the model looked at
    the wrong region": most of the item's usable votes on tasks that showed the map (one per
    annotator, as its label is resolved, service.labelstudio.resolve) ticked it. The region: the rectangle of the newest
    flagging vote that drew a usable one (service.labelstudio.regions), in pixels of the file;
    None where no flagging vote drew one (a bare vote). Which items then train counterexamples,
    and with which region when the folder knows one too, is the round's decision
    (service.rounds.handlers)."""
    ids = set(s.scalars(select(a.c.item_id).where(_usable(project_id), a.c.wrong_region.is_(True)).distinct()))
    # Only votes on tasks that showed the map judged it (as wrong_region_votes counts them): not a
    # blind task of the anchoring control, nor a second opinion (no round, no map).
    hidden = {tuple(r) for r in s.execute(hidden_tasks(project_id))} if ids else set()
    out: dict[int, list[int] | None] = {}
    for item_id, anns in SqlSink(s, project_id).for_items(ids).items():
        judged = [x for x in anns if x.round is not None and (x.round, x.item_id) not in hidden]
        if not judged or not resolve_item(item_id, judged).wrong_region:
            continue
        drew = [x for x in one_per_annotator(judged) if x.counts and x.wrong_region and x.region is not None]
        newest = max(drew, key=lambda x: (x.updated_at or _EPOCH, x.annotation_id), default=None)
        out[item_id] = list(newest.region) if newest is not None else None
    return out
