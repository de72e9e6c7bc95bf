"""Second opinions in Label Studio: suspicious labels asked again, of another expert, blind.

When a round reaches labeling and its project has `relabel.enabled`, the round's label-issue
file (cleanlab's suspects among the labels it trained on, workers.label_issues) gives the
labels to ask again (engine.relabel.second_opinion_picks: most suspicious first, at most
`relabel.share` × budget, never more than `relabel.max_per_item` times an image). Only labels
that came from Label Studio are asked (their experts are known), and only when the project has
seen at least two experts, one of whom has not labeled the image: with one expert there is no
one to ask.

Each request is a task of its own: the image twice (no guess, no map, no prediction), a header
saying it is a second opinion, and `camloop_second_opinion` (the request id) in its data but no
`camloop_round`, so replacing a round's open tasks never removes it. Its answers join the
image's other votes in the ledger and are resolved as every item is (service.labelstudio.
resolve: the majority); `adjust` adds what second opinions change:

  * an answer by an expert who had already labeled the image is not independent: it counts as
    that expert's vote (their latest answer, as always) but not as a second opinion; the request
    stays open and the task is opened again for others (its overlap raised: Label Studio never
    gives a task to someone who answered it);
  * a tie between experts is broken by the out-of-fold probabilities kept with the request
    (`relabel.tie_break` "model", engine.relabel.decide), still listed for review; with "review",
    or when a tied class has no probability (excluded since), the tie stands: no label;
  * an image asked twice (relabeled twice) excludes every expert who voted on it before.

State changes are compare-and-set on the request row, so concurrent webhooks for the same task
record one answer.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import JSON, Column, DateTime, Float, Integer, String, Table, UniqueConstraint, func, insert, \
    select, update
from sqlalchemy.orm import Session

from engine.config import ProjectConfig
from engine.relabel import decide, max_second_opinions, read_issues, second_opinion_picks
from service.core import paths
from service.labelstudio import config as cfg
from service.labelstudio.ledger import annotations as ledger_annotations
from service.labelstudio.ledger import get_link, metadata
from service.labelstudio.resolve import one_per_annotator
from service.labelstudio.routes import file_url
from service.store import Item, Label, ModelVersion, Project

log = logging.getLogger("camloop.labelstudio.second_opinion")

SECOND = "camloop_second_opinion"  # task data key: the request id of a second-opinion task
HEADER = ("hidden: a second opinion. Choose the class you see, without the earlier answer "
          "(the right-hand picture repeats the image)")
OPEN, ANSWERED = "open", "answered"

second_opinions = Table(
    "second_opinions", metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, nullable=False, index=True),
    Column("item_id", Integer, nullable=False, index=True),
    Column("round", Integer, nullable=False),            # the round whose label issues asked
    Column("status", String(16), nullable=False),        # open | answered
    Column("label", String(200), nullable=False),        # the suspicious label
    Column("suggested", String(200), nullable=True),     # the out-of-fold guess (never shown)
    Column("quality", Float, nullable=True),             # the order of suspicion (relabel.ranking)
    Column("class_names", JSON, nullable=False),         # the order of pred_probs
    Column("pred_probs", JSON, nullable=False),          # out-of-fold probabilities (tie-break)
    Column("exclude", JSON, nullable=False),             # Label Studio users who voted before
    Column("ls_task_id", Integer, nullable=True),
    Column("overlap", Integer, nullable=False, default=1),  # the task's overlap in Label Studio
    Column("not_independent", Integer, nullable=False, default=0),  # answers by excluded experts seen
    Column("answered_by", Integer, nullable=True),
    Column("answer", String(200), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("answered_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("project_id", "item_id", "round", name="uq_second_opinions_item_round"),
)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _usable(a) -> bool:
    return a.label is not None and not a.skipped and a.problem is None


# ----------------------------------------------------------------------------- asking

def experts_seen(s: Session, project_id: int) -> set[int]:
    return {u for u in s.scalars(select(ledger_annotations.c.annotator).where(
        ledger_annotations.c.project_id == project_id, ledger_annotations.c.annotator.is_not(None)).distinct())}


def request(s: Session, settings, project, round_no: int) -> list[int]:
    """Create the round's second-opinion requests (idempotent) → their item ids."""

    conf = ProjectConfig.model_validate(project.config or {})
    if not conf.relabel.enabled:
        return []
    issues_file = paths.round_files(settings, project.id, round_no).label_issues
    if not issues_file.is_file():
        return []
    experts = experts_seen(s, project.id)
    if len(experts) < 2:
        return []
    names = list(project.class_names)
    asked = dict(s.execute(select(second_opinions.c.item_id, func.count()).where(
        second_opinions.c.project_id == project.id).group_by(second_opinions.c.item_id)).all())
    open_now = set(s.scalars(select(second_opinions.c.item_id).where(
        second_opinions.c.project_id == project.id, second_opinions.c.status == OPEN)))
    this_round = set(s.scalars(select(second_opinions.c.item_id).where(
        second_opinions.c.project_id == project.id, second_opinions.c.round == round_no)))
    voters: dict[int, set] = {}
    for item_id, who in s.execute(select(ledger_annotations.c.item_id, ledger_annotations.c.annotator).where(
            ledger_annotations.c.project_id == project.id)):
        voters.setdefault(item_id, set()).add(who)

    def may_ask(item_id: int) -> bool:
        if item_id in open_now or item_id in this_round or asked.get(item_id, 0) >= conf.relabel.max_per_item:
            return False
        item = s.get(Item, item_id)
        if item is None or item.project_id != project.id or item.status != "labeled" or item.split != "pool":
            return False
        latest = s.scalar(select(Label.source).where(Label.item_id == item_id).order_by(Label.id.desc()).limit(1))
        who = voters.get(item_id, set())
        # Only Label Studio's labels (whose experts are known), and someone must be left to ask.
        return latest == "label-studio" and bool(who) and bool(experts - who)

    limit = max_second_opinions(conf.relabel.share, conf.budget) - len(open_now)
    picks = second_opinion_picks(read_issues(issues_file), limit, may_ask)
    rows = [dict(project_id=project.id, item_id=p.item_id, round=round_no, status=OPEN, label=names[p.label],
                 suggested=names[p.suggested], quality=p.quality, class_names=names, pred_probs=p.pred_probs,
                 exclude=sorted(int(u) for u in voters.get(p.item_id, set()) if u is not None), overlap=1,
                 not_independent=0, created_at=_now()) for p in picks]
    if rows:
        s.execute(insert(second_opinions), rows)
    return [r["item_id"] for r in rows]


def push(plugin, project_id: int) -> dict[int, int]:
    """Import the open requests that have no task yet → {request id: task id}; open again (raise
    the overlap of) tasks only experts who voted before have answered. Idempotent. `plugin`: the
    Label Studio plug-in (service.labelstudio.plugin), whose client, signer and push lock it uses."""
    out: dict[int, int] = {}
    with plugin._push_lock(project_id):
        with plugin._session() as s:
            link = get_link(s, project_id)
            if link is None:
                return out
            todo = s.execute(select(second_opinions.c.id, second_opinions.c.item_id, Item.uri)
                             .join(Item, Item.id == second_opinions.c.item_id)
                             .where(second_opinions.c.project_id == project_id, second_opinions.c.status == OPEN,
                                    second_opinions.c.ls_task_id.is_(None))
                             .order_by(second_opinions.c.id)).all()
            reopen = s.execute(select(second_opinions.c.id, second_opinions.c.ls_task_id,
                                      second_opinions.c.not_independent, second_opinions.c.overlap)
                               .where(second_opinions.c.project_id == project_id, second_opinions.c.status == OPEN,
                                      second_opinions.c.ls_task_id.is_not(None),
                                      second_opinions.c.not_independent >= second_opinions.c.overlap)).all()
        if not todo and not reopen:
            return out
        b = plugin.client
        if todo:
            signer, ttl = plugin.signer, plugin.ls.url_ttl_s
            existing = _existing_tasks(b, link.ls_project_id)
            new = [(rid, item, uri) for rid, item, uri in todo if rid not in existing]
            if new:
                payload = [task_payload(file_url(signer, uri, ttl), item, rid) for rid, item, uri in new]
                res = b.sdk.projects.import_tasks(id=link.ls_project_id, request=payload, return_task_ids=True)
                existing.update(zip([rid for rid, *_ in new], sorted(res.task_ids or [])))
            with plugin._session() as s:
                for rid, *_ in todo:
                    if rid in existing:
                        s.execute(update(second_opinions).where(second_opinions.c.id == rid,
                                                                second_opinions.c.ls_task_id.is_(None))
                                  .values(ls_task_id=existing[rid]))
                        out[rid] = existing[rid]
        for rid, task_id, answered_by_excluded, overlap in reopen:
            # Label Studio never serves a task to someone who answered it: one more slot goes to another expert.
            b.sdk.tasks.update(id=str(task_id), overlap=int(answered_by_excluded) + 1, is_labeled=False)
            with plugin._session() as s:
                s.execute(update(second_opinions).where(second_opinions.c.id == rid,
                                                        second_opinions.c.overlap == overlap)
                          .values(overlap=int(answered_by_excluded) + 1))
    return out


def task_payload(image_url: str, item_id: int, request_id: int) -> dict:
    """A second-opinion task: the image twice, no guess, no prediction, no round (see module doc)."""
    return {"data": {cfg.IMAGE: image_url, cfg.HEATMAP: image_url, cfg.GUESS: HEADER, cfg.ITEM_ID: int(item_id),
                     SECOND: int(request_id)}}


def _existing_tasks(bridge, ls_project_id: int) -> dict[int, int]:
    """request id → task id of second-opinion tasks already imported (a retried push imports none twice)."""
    out = {}
    for t in bridge.iter_tasks(ls_project_id, with_annotations=False):
        rid = (t.get("data") or {}).get(SECOND)
        if rid is not None:
            out[int(rid)] = int(t["id"])
    return out


def on_labeling(plugin, project_id: int, round_no: int) -> None:
    """After a round's batch is pushed (the plug-in's batch_ready): ask the round's second
    opinions, push them."""
    if not plugin.configured:
        return
    with plugin._session() as s:
        project = s.get(Project, project_id)
        if project is None:
            return
        asked = request(s, plugin.settings, project, round_no)
    if asked:
        log.info("project %s round %s: second opinions asked for items %s", project_id, round_no, asked)
    push(plugin, project_id)


# ----------------------------------------------------------------------------- answers

def adjust(s: Session, project, item_id: int, anns, res):
    """What second opinions change in an item's resolution (module doc). Called for every item
    the ledger changed; items never asked again pass through untouched."""

    reqs = s.execute(select(second_opinions).where(second_opinions.c.project_id == project.id,
                                                   second_opinions.c.item_id == item_id)
                     .order_by(second_opinions.c.id)).all()
    if not reqs:
        return res
    for r in reqs:
        if r.status != OPEN or r.ls_task_id is None:
            continue
        on_task = [a for a in one_per_annotator(anns) if a.ls_task_id == r.ls_task_id and _usable(a)]
        excluded = set(r.exclude or [])
        fresh = [a for a in on_task if a.annotator not in excluded]
        repeats = sum(1 for a in on_task if a.annotator in excluded)
        if fresh:
            a = fresh[0]
            # Compare-and-set: of two concurrent deliveries, one records the answer.
            s.execute(update(second_opinions).where(second_opinions.c.id == r.id, second_opinions.c.status == OPEN)
                      .values(status=ANSWERED, answered_by=a.annotator, answer=a.label, answered_at=_now(),
                              not_independent=repeats))
        elif repeats > r.not_independent:
            s.execute(update(second_opinions).where(second_opinions.c.id == r.id,
                                                    second_opinions.c.not_independent == r.not_independent)
                      .values(not_independent=repeats))
    if res.status != "tie":
        return res
    last = reqs[-1]
    conf = (project.config or {}).get("relabel") or {}
    index = {n: i for i, n in enumerate(last.class_names)}
    d = decide([a.label for a in one_per_annotator(anns) if _usable(a)], last.pred_probs, index,
               conf.get("tie_break", "model"))
    if d.label is None:
        return res
    return replace(res, label=d.label, status="tie-broken")


# ----------------------------------------------------------------------------- figures

def figures(s: Session, project) -> dict:
    """The metrics' `second_opinions`: requests by state, and the experts' estimated quality."""
    rows = s.execute(select(second_opinions).where(second_opinions.c.project_id == project.id)
                     .order_by(second_opinions.c.id)).all()
    changed = sum(1 for r in rows if r.status == ANSWERED and r.answer != r.label)
    return {"asked": len(rows), "open": sum(r.status == OPEN for r in rows),
            "answered": sum(r.status == ANSWERED for r in rows), "answer_differed": changed,
            "not_independent": sum(int(r.not_independent or 0) for r in rows),
            "expert_quality": expert_quality(s, project)}


_quality_cache: dict[tuple, dict] = {}  # (project, model version, votes seen) → figures: dashboards poll metrics


def expert_quality(s: Session, project) -> dict:
    """Each expert's estimated quality (cleanlab.multiannotator, CROWDLAB) from their votes and the
    latest out-of-fold probabilities; needs relabel on (those probabilities) and two experts.
    Computed again only when a new model or a new vote arrived."""

    mv = s.scalar(select(ModelVersion).where(ModelVersion.project_id == project.id)
                  .order_by(ModelVersion.round.desc()).limit(1))
    seen = s.execute(select(func.count(), func.max(ledger_annotations.c.seen_at)).where(
        ledger_annotations.c.project_id == project.id)).one()
    key = (str(s.get_bind().url), project.id, mv.id if mv else None, int(seen[0]), str(seen[1]))
    if key not in _quality_cache:
        if len(_quality_cache) > 64:
            _quality_cache.clear()
        _quality_cache[key] = _expert_quality(s, project, mv)
    return _quality_cache[key]


def _expert_quality(s: Session, project, mv) -> dict:
    import numpy as np


    path = ((mv.metrics or {}).get("label_issues") or {}).get("file") if mv else None

    if not path or not Path(path).is_file():
        return {"note": "no out-of-fold probabilities yet (relabel off, or no round since it was turned on)"}
    issues = read_issues(path)
    row_of = {int(i): k for k, i in enumerate(issues["item_ids"])}
    names = list(project.class_names)
    index = {n: i for i, n in enumerate(names)}
    votes: dict[int, dict] = {}
    for item_id, who, label in s.execute(select(ledger_annotations.c.item_id, ledger_annotations.c.annotator,
                                                ledger_annotations.c.label).where(
            ledger_annotations.c.project_id == project.id, ledger_annotations.c.label.is_not(None),
            ledger_annotations.c.problem.is_(None), ledger_annotations.c.skipped.is_(False))):
        if item_id in row_of and who is not None and label in index:
            votes.setdefault(item_id, {})[who] = index[label]
    experts = sorted({w for v in votes.values() for w in v})
    if len(experts) < 2 or not any(len(v) > 1 for v in votes.values()):
        return {"note": "needs two experts and an image both labeled"}
    items = sorted(votes)
    import pandas as pd

    probs = np.asarray(issues["pred_probs"], np.float64)[[row_of[i] for i in items]]
    labels = pd.DataFrame([[votes[i].get(e, np.nan) for e in experts] for i in items],
                          columns=[str(e) for e in experts])
    present = sorted({int(v) for row in votes.values() for v in row.values()})
    remap = {c: k for k, c in enumerate(present)}
    labels = labels.apply(lambda col: col.map(lambda v: remap.get(int(v)) if v == v else np.nan))
    sub = np.maximum(probs[:, present], 1e-12)
    sub /= sub.sum(axis=1, keepdims=True)
    try:
        from cleanlab.multiannotator import get_label_quality_multiannotator

        out = get_label_quality_multiannotator(labels, sub, verbose=False)
    except (ValueError, AssertionError) as e:  # cleanlab says what it lacks: reported, not raised
        return {"note": f"cleanlab could not estimate quality: {e}"}
    stats = out["annotator_stats"]
    return {"per_expert": {str(k): {"quality": float(r["annotator_quality"]),
                                    "agreement_with_consensus": float(r["agreement_with_consensus"]),
                                    "labels": int(r["num_examples_labeled"])} for k, r in stats.iterrows()},
            "items": len(items)}
