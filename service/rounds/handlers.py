"""One handler per round state: look at the facts (store, files, RQ), take at most the
transitions they allow. What a round decides (training set, evidence, exclusion, selection) is
engine's — the same code `camloop simulate` runs; this module only feeds it the
store's facts and writes its answers back.

Every transition goes through state.cas, and its side effects are written only by the caller
that won it, in the same transaction.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.core import control, models, paths
from service.core import jobs
from service.rounds import feedback, hooks, inputs, swap
from service.core.item_lock import lock_items
from service.rounds.lifecycle import close, open_batch, waiting_reserves, withdraw_reserves
from service.rounds.state import RoundState, cas, fail
from service.settings import Settings
from service.store import Item, ItemStatus, Job, JobState, ModelVersion, Project, QueueEntry, Round, utcnow
from engine import contracts as c
from engine import plan, step
from engine.audit import round_audit
from engine.config import ProjectConfig
from engine.decisions import evidence_of
from engine.jobkinds import JobKind
from engine.records import RoundProgress
from engine.selection import Selection

S = RoundState
log = logging.getLogger("camloop.rounds")


@dataclass
class Ctx:
    s: Session
    settings: Settings
    project: Project
    rnd: Round
    conn: object                                  # the Redis connection
    config: ProjectConfig
    entered: list[str] = field(default_factory=list)  # states this call moved the round into

    @property
    def pid(self) -> int:
        return self.project.id

    @property
    def files(self) -> c.RoundFiles:
        return paths.round_files(self.settings, self.pid, self.rnd.number)

    @property
    def trunk_dir(self) -> str | None:
        return plan.trunk_cache(self.config, paths.layout(self.settings), self.pid)

    @property
    def progress(self) -> RoundProgress:
        return RoundProgress.of(self.rnd.progress)

    def record(self, progress: RoundProgress) -> None:
        self.rnd.progress = progress.dump()

    def move(self, old: S, new: S, progress: RoundProgress | None = None, **values) -> bool:
        if progress is not None:
            values["progress"] = progress.dump()
        won = cas(self.s, self.rnd, old.value, new.value, **values)
        if won:
            self.entered.append(new.value)
        return won


# ----------------------------------------------------------------------------- created

def ingest_state(s: Session, settings: Settings, pid: int, conn) -> tuple[int, int, list[str]]:
    """(ingest jobs done, ingest jobs, errors), applying the results of jobs that just finished."""
    from service.core.items import apply_ingest_result

    errors, done = [], 0
    rows = list(s.scalars(select(Job).where(Job.project_id == pid, Job.kind == JobKind.INGEST, Job.round_id.is_(None))))
    for j in rows:
        was = j.state
        st = jobs.poll(s, settings, j, conn)
        if st == JobState.FINISHED:
            if was != JobState.FINISHED:
                apply_ingest_result(s, j)
            done += 1
        elif st == JobState.FAILED:
            errors.append(f"ingest shard {j.shard}: {j.error}")
    return done, len(rows), errors


def _write(path: Path, manifest, stale: list[Path]) -> None:
    """Write a round's manifest; if it differs from the one there (a retry after the config or
    the labels changed), the outputs made from the old one are removed first."""
    data = manifest.model_dump_json().encode()
    if path.is_file() and path.read_bytes() == data:
        return
    for p in stale:
        if p.is_dir():
            for f in p.iterdir():
                f.unlink(missing_ok=True)
        else:
            p.unlink(missing_ok=True)
    c.write_manifest(path, manifest)


def on_created(x: Ctx) -> None:
    done, total, errors = ingest_state(x.s, x.settings, x.pid, x.conn)
    if errors:
        fail(x.s, x.rnd, S.CREATED, "; ".join(errors))
        return
    if done < total:
        x.record(x.progress.but(stage=S.CREATED.value, waiting_for=JobKind.INGEST.value, ingest_done=done,
                                ingest_total=total))
        return
    names = list(x.project.class_names)
    index = {n: i for i, n in enumerate(names)}
    labeled = inputs.pool_refs(x.s, x.settings, x.project, ItemStatus.LABELED, index)
    if not len(labeled):
        if x.rnd.train_only:
            fail(x.s, x.rnd, S.CREATED, "nothing is labeled yet: a train-only round has nothing to train on")
            return
        if x.config.typical_first_batch():
            _score_pretrained(x, names)
            return
        # Cold start: nothing to train on yet, so the first batch is a random sample.
        x.move(S.CREATED, S.SELECTING, RoundProgress(stage=S.SELECTING.value, cold_start=True,
                                                     **({"first_batch": "random: no pretrained weights for "
                                                                        f"{x.config.model}"}
                                                        if x.config.first_batch == "typical" else {})))
        return
    if (x.config.feedback.swap_suspects and x.config.feedback.swap_copies > 0
            and swap.apply_finished(x.s, x.settings, x.pid, x.conn)):
        # The classes the last background-swap test names decide what trains: wait for its report
        # (a worker takes it before this round's train job anyway; the batch is already queued).
        x.record(x.progress.but(stage=S.CREATED.value, waiting_for=JobKind.SWAP.value))
        return
    active = [cl.status == step.ACTIVE for cl in inputs.classes(x.s, x.pid)]
    files = x.files
    # Explanatory feedback: the flagged labeled images whose region is known (service.rounds.feedback).
    # With feedback.bare peak, the bare votes too: the box of their map's peak (engine.counterexamples).
    flagged, flag_counts, bare = feedback.flagged_boxes(x.s, x.settings, x.project, x.config)
    # … and with feedback.swap_suspects, the labeled images the background-swap test's feedback
    # covers (service.rounds.swap; swap_scope), an expert's flag winning where both give a box.
    covered = swap.suspect_boxes(x.s, x.settings, x.project, x.config)
    if covered:
        flag_counts = {**(flag_counts or {}), "swap_named": len(covered)}
    planned = step.training(x.config, x.pid, step.TrainingFacts(
        number=x.rnd.number, class_names=names, active=active, labeled=labeled,
        val=inputs.split_refs(x.s, x.settings, x.project, "val", index),
        test=inputs.split_refs(x.s, x.settings, x.project, "test", index),
        previous_train_ids=inputs.previous_train_ids(x.settings, x.s, x.pid, x.rnd.number), files=files,
        stop_set=inputs.stop_set_refs(x.settings, x.s, x.project, x.config, x.rnd.number), trunk_dir=x.trunk_dir,
        # The audit's shadow learner (workers.shadow): the random labels, what earlier rounds measured.
        random_ids=inputs.random_label_ids(x.s, x.pid) if x.config.audit.enabled else None,
        shadow_history=[(mv.metrics or {}).get("shadow") for mv in inputs.model_versions(x.s, x.pid, x.rnd.number)],
        flagged=flagged, swap_covered=covered, bare=bare,
        # Semi-supervised rounds (engine.semi): the unlabeled images pseudo-labels may be guessed for.
        unlabeled=(inputs.pool_refs(x.s, x.settings, x.project, ItemStatus.UNLABELED, index)
                   if x.config.semi.method != "none" else None),
        confirmed=(inputs.confirmed_label_ids(x.s, x.project)
                   if x.config.relabel.enabled else ())))
    split, manifest = planned.split, planned.manifest
    if flag_counts is not None:
        # What trains: the flagged images in this round's training set, each `copies` times (a
        # flagged image held out as evidence, or of an excluded class, makes none).
        ce = manifest.counterexamples
        flag_counts = {**flag_counts, "images": len(ce.sources) if ce else 0,
                       "copies": len(ce.sources) * ce.copies if ce else 0,
                       **({"penalty_images": len(manifest.penalty.item_ids)} if manifest.penalty else {})}
    if not x.move(S.CREATED, S.TRAINING, RoundProgress(stage=S.TRAINING.value, n_train=len(split.train),
                                                       n_new=int(sum(manifest.is_new)), evidence=split.source,
                                                       n_evidence=len(split.evidence),
                                                       **({"feedback": flag_counts} if flag_counts is not None else {}),
                                                       **({"train_only": True} if x.rnd.train_only else {}))):
        return
    _write(files.train_manifest, manifest,
           [files.checkpoint, files.metrics, files.resume_dir, files.score_manifest, *files.dir.glob("scores_*.npz")])
    job = jobs.ensure_job(x.s, x.pid, x.rnd.id, jobs.rq_id(x.settings, x.rnd, JobKind.TRAIN), JobKind.TRAIN, None,
                          files.train_manifest)
    jobs.poll(x.s, x.settings, job, x.conn)


def _score_pretrained(x: Ctx, names: list[str]) -> None:
    """A typical first batch: embed the unlabeled pool with the pretrained model (score jobs, no
    checkpoint), then select by TypiClust (select_batch)."""
    files = x.files
    active = [cl.status == step.ACTIVE for cl in inputs.classes(x.s, x.pid)]
    pool = inputs.pool_refs(x.s, x.settings, x.project, ItemStatus.UNLABELED, {})
    manifest = plan.score_manifest(x.config, x.pid, x.rnd.number, names, active, None, pool,
                                   x.settings.score_shard_size, [], files, x.trunk_dir)
    if not x.move(S.CREATED, S.SCORING, RoundProgress(stage=S.SCORING.value, cold_start=True,
                                                      first_batch=step.Ranking.TYPICAL.value,
                                                      shards=len(manifest.shards), shards_done=0)):
        return
    _write(files.score_manifest, manifest, list(files.dir.glob("scores_*.npz")))
    _poll_score_jobs(x, manifest.shards)


# ----------------------------------------------------------------------------- training

def on_training(x: Ctx) -> None:
    files = x.files
    job = jobs.ensure_job(x.s, x.pid, x.rnd.id, jobs.rq_id(x.settings, x.rnd, JobKind.TRAIN), JobKind.TRAIN, None,
                          files.train_manifest)
    st = jobs.poll(x.s, x.settings, job, x.conn)
    if st == JobState.FAILED:
        fail(x.s, x.rnd, S.TRAINING, f"train job {job.rq_id} failed: {job.error}")
        return
    if st != JobState.FINISHED:
        return
    result = jobs.train_result(job)
    metrics = json.loads(Path(result.metrics).read_text())
    names = list(x.project.class_names)
    if x.rnd.train_only:
        if not x.move(S.TRAINING, S.CLOSED, x.progress.but(stage=S.CLOSED.value), finished_at=utcnow()):
            return
        x.rnd.model_version_id = _model_version(x, result, metrics).id
        return
    prog = x.progress.but(stage=S.SCORING.value)
    if not x.move(S.TRAINING, S.SCORING, prog):
        return
    # Won: this transaction alone writes the round's model version, the exclusion decisions
    # and the score manifest (a second replica's CAS failed above and wrote nothing).
    mv = _model_version(x, result, metrics)
    classes = inputs.classes(x.s, x.pid)
    scorer = models.scorer(x.s, x.project, x.config, mv)  # the new model, or a pinned / kept-best one
    planned = step.after_training(x.config, x.pid, step.TrainedFacts(
        number=x.rnd.number, class_names=names, status={cl.name: cl.status for cl in classes},
        reincluded_at={cl.name: cl.reincluded_round for cl in classes if cl.reincluded_round},
        history=inputs.evidence_history(x.s, x.project, names),
        models=inputs.trained_models(x.s, x.project, len(names)), scorer=scorer.checkpoint,
        pool=inputs.pool_refs(x.s, x.settings, x.project, ItemStatus.UNLABELED, {}), files=files,
        shard_size=x.settings.score_shard_size, trunk_dir=x.trunk_dir,
        control=control.round_estimates(x.s, x.pid, names)))
    for cl in classes:
        if cl.name in planned.newly_excluded:
            d = planned.decisions[cl.name]
            cl.status, cl.reason, cl.changed_by, cl.changed_at = step.EXCLUDED, d.reason, "rule", utcnow()
    manifest, keepers = planned.manifest, planned.gatekeepers
    _write(files.score_manifest, manifest, list(files.dir.glob("scores_*.npz")))
    x.rnd.model_version_id, x.rnd.scored_by_id = mv.id, scorer.version.id
    x.record(prog.but(**scorer.progress, shards=len(manifest.shards), shards_done=0,
                      excluded_by_rule=planned.newly_excluded,
                      **({"not_judged": planned.not_judged} if planned.not_judged else {}),
                      **({"gatekeepers": [g.round for g in keepers]} if keepers else {})))
    _poll_score_jobs(x, manifest.shards)


def _model_version(x: Ctx, result: c.TrainResult, metrics: dict) -> ModelVersion:
    if metrics.get("shadow"):
        # The audit of the lift, once per trained round (GET /metrics only reads it): this round's
        # shadow measurements with every earlier round's (engine.audit).
        earlier = inputs.model_versions(x.s, x.pid, x.rnd.number)
        tr = metrics.get("train") or {}
        metrics = {**metrics, "audit": round_audit(
            x.config, [(mv.metrics or {}).get("shadow") for mv in earlier] + [metrics["shadow"]],
            rounds=len(earlier) + 1, labels_now=int(tr.get("n_train") or 0),
            random_labels=int(metrics["shadow"].get("random_labels") or 0),
            round_numbers=[mv.round for mv in earlier] + [x.rnd.number])}
    return models.register(x.s, x.pid, x.rnd.number, result.checkpoint, metrics)


# ----------------------------------------------------------------------------- scoring

def _poll_score_jobs(x: Ctx, shards) -> list[tuple[Job, str]]:
    """Each shard's score job of the round's score manifest, created if missing, then polled."""
    out = []
    for k in sorted(shards, key=int):
        job = jobs.ensure_job(x.s, x.pid, x.rnd.id, jobs.rq_id(x.settings, x.rnd, JobKind.SCORE, int(k)), JobKind.SCORE, int(k),
                              x.files.score_manifest)
        out.append((job, jobs.poll(x.s, x.settings, job, x.conn)))
    return out


def on_scoring(x: Ctx) -> None:
    polled = _poll_score_jobs(x, jobs.manifest(x.files.score_manifest, JobKind.SCORE).shards)
    states = [state for _, state in polled]
    errors = [f"score job {job.rq_id} failed: {job.error}" for job, _ in polled if job.state == JobState.FAILED]
    if errors:
        fail(x.s, x.rnd, S.SCORING, "; ".join(errors))
        return
    done = states.count(JobState.FINISHED)
    prog = x.progress.but(shards_done=done)
    x.record(prog)
    if done == len(states):
        x.move(S.SCORING, S.SELECTING, prog.but(stage=S.SELECTING.value))


# ----------------------------------------------------------------------------- selecting

def _score_files(x: Ctx) -> list[Path]:
    shards = jobs.manifest(x.files.score_manifest, JobKind.SCORE).shards
    return [x.files.score_file(int(k)) for k in sorted(shards, key=int)]


def _no_longer_candidates(x: Ctx) -> np.ndarray:
    """Items labeled (queued, quarantined, skipped) while scoring ran. The scored items were the
    unlabeled pool; ask for the pool items that are not unlabeled now — a few thousand rows, not
    the whole pool (items are never deleted, only their status changes)."""
    return np.fromiter(x.s.scalars(select(Item.id).where(Item.project_id == x.pid, Item.split == "pool",
                                                         Item.status != ItemStatus.UNLABELED)), np.int64)


def select_batch(x: Ctx) -> Selection:
    """The round's batch and reserve, in priority order (engine.step.select)."""
    progress = x.progress
    names = list(x.project.class_names)
    active = [cl.status == step.ACTIVE for cl in inputs.classes(x.s, x.pid)]
    if progress.cold_start and progress.first_batch == step.Ranking.TYPICAL:
        facts = step.SelectionFacts(x.rnd.number, names, active, step.Ranking.TYPICAL, _score_files(x),
                                    drop_ids=_no_longer_candidates(x))
    elif progress.cold_start or x.rnd.model_version_id is None:
        facts = step.SelectionFacts(x.rnd.number, names, active, step.Ranking.RANDOM,
                                    unlabeled_ids=inputs.unlabeled_ids(x.s, x.project))
    else:
        mv = x.s.get(ModelVersion, x.rnd.model_version_id)
        facts = step.SelectionFacts(
            x.rnd.number, names, active, step.Ranking.SCORES, _score_files(x),
            evidence=evidence_of(mv.round, mv.metrics or {}, names), drop_ids=_no_longer_candidates(x),
            # The experts' "looked at the wrong region" votes per guessed class (the Label Studio bridge's).
            wrong_region_votes=hooks.wrong_region_counts(x.s, x.project, names),
            # Earlier rounds' control labels: the evidence first when no validation split is registered.
            control=control.round_estimates(x.s, x.pid, names))
    return step.select(x.config, facts)


def on_selecting(x: Ctx) -> None:
    t0 = time.perf_counter()
    sel = select_batch(x)
    more = {}
    if sel.reserve:
        more["reserve"] = len(sel.reserve)
    if sel.gated:
        more["kept_out_as_excluded"] = sel.gated
    if sel.quota is not None:
        more["class_quota"] = dict(zip(x.project.class_names, sel.quota))
    if sel.n_control:
        more["control"] = sel.n_control
    if sel.control_note:
        more["control_note"] = sel.control_note
    if sel.dropquery_candidates is not None:
        more["dropquery_candidates"] = sel.dropquery_candidates
    if sel.selection_note:
        more["selection_note"] = sel.selection_note
    if not sel.batch:
        more["note"] = "nothing to queue: no unlabeled pool images left" if not sel.gated else \
            "nothing to queue: every unlabeled image looks like an excluded class"
    prog = x.progress.but(stage=S.LABELING.value, queued=len(sel.batch), labeled=0,
                          selection_s=round(time.perf_counter() - t0, 4), **more)
    if not x.move(S.SELECTING, S.LABELING, prog):
        return
    rows = [{"round_id": x.rnd.id, "item_id": p.item_id, "rank": r, "pred": p.pred, "scores": p.scores,
             "reserve": r >= len(sel.batch), "control": p.control} for r, p in enumerate(sel.batch + sel.reserve)]
    # The selection read the unlabeled pool before this transaction writes; an expert may have
    # labeled a picked image since. Lock what this writes (the picks and the reserves it
    # withdraws, at once: one lock order) and queue only the picks still unlabeled — never
    # overwrite a label that came in meanwhile with `queued` (issue 19, item 11).
    reserves = waiting_reserves(x.s, x.rnd)
    locked = lock_items(x.s, reserves + [r["item_id"] for r in rows])
    still = [r for r in rows if (it := locked.get(r["item_id"])) is not None and it.status == ItemStatus.UNLABELED]
    if len(still) < len(rows):
        kept = {"queued": sum(not r["reserve"] for r in still)}
        if x.progress.reserve is not None:
            kept["reserve"] = sum(r["reserve"] for r in still)
        x.record(x.progress.but(**kept, labeled_while_selecting=len(rows) - len(still)))
        rows = still
    withdrawn = withdraw_reserves(x.s, x.rnd, reserves)
    if withdrawn:
        x.record(x.progress.but(reserve_withdrawn=withdrawn))
    if rows:
        x.s.execute(QueueEntry.__table__.insert(), rows)
        x.s.execute(update(Item).where(Item.id.in_([r["item_id"] for r in rows]), Item.status == ItemStatus.UNLABELED)
                    .values(status=ItemStatus.QUEUED).execution_options(synchronize_session=False))


# ----------------------------------------------------------------------------- labeling

def on_labeling(x: Ctx) -> None:
    waiting, total = open_batch(x.s, x.rnd)
    done = total - waiting
    # Skipped and quarantined items leave the queue too; "labeled" here is "answered".
    if x.progress.labeled != done:
        x.record(x.progress.but(labeled=done, queued=total))
    # The round's background-swap test, once its batch is with the experts (service.rounds.swap).
    # Its files unreadable (a manifest gone): the round labels and closes without it, never stuck
    # on it; an outage (Redis, the database) passes as for any handler.
    try:
        with x.s.begin_nested():
            said = swap.enqueue(x.s, x.settings, x.project, x.config, x.rnd, x.conn, x.entered)
    except (OSError, ValueError) as e:
        log.warning("project %s round %s: no background-swap test: %s", x.pid, x.rnd.number, e)
        said = f"not run: {type(e).__name__}: {e}"[:300]
    if said is not None:
        x.record(x.progress.but(swap_test=said))
    if waiting == 0 and close(x.s, x.rnd) is not None:
        x.entered.append(S.CLOSED.value)


HANDLERS = {
    S.CREATED: on_created,
    S.TRAINING: on_training,
    S.SCORING: on_scoring,
    S.SELECTING: on_selecting,
    S.LABELING: on_labeling,
}

