"""The round state machine and its reconciler.

    created → training → scoring → selecting → labeling → closed      (or failed, with the error)

`advance(settings, project_id, number)` is idempotent: it looks at the store, the output files
and RQ, and moves a round at most as far as the facts allow. A background thread in the API
process calls `reconcile_all` every ~0.5 s, and request handlers call it for their project.
Truth lives in the store and the artifacts dir, Redis only carries work: a job Redis lost is
enqueued again under the same deterministic id, and finished outputs are recognised by their
files, so nothing is done twice.

The API process never imports torch: selection here uses strategies' numpy modules only.
"""
from __future__ import annotations

import io
import json
import logging
import mmap
import os
import threading
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.runtime import jobqueue
from service.core import paths
from service.store.db import session_scope
from service.errors import Conflict, NotFound
from service.runtime.failure_log import FailureStreak
from service.settings import Settings
from service.store import (ACTIVE_ROUND_STATES, Item, Job, Label, ModelVersion, Project, ProjectClass, QueueEntry,
                           Round, utcnow)

log = logging.getLogger("camloop.rounds")

_lock = threading.RLock()  # one advance at a time per process; the CAS updates guard across processes

# ----------------------------------------------------------------- hooks for other parts

LabelingHook = Callable[[Settings, int, int], None]
_labeling_hooks: list[LabelingHook] = []


def on_labeling(fn: LabelingHook) -> LabelingHook:
    """Register fn(settings, project_id, round_number), called once when a round reaches
    `labeling` (its queue entries are committed). The Label Studio bridge pushes the batch here.
    Exceptions are logged, never fatal to the round."""
    _labeling_hooks.append(fn)
    return fn


def _run_hooks(settings: Settings, pid: int, number: int) -> None:
    for fn in list(_labeling_hooks):
        try:
            fn(settings, pid, number)
        except Exception:  # noqa: BLE001 — a bridge outage must not stop the loop
            log.exception("labeling hook %r failed for project %s round %s", fn, pid, number)


# ----------------------------------------------------------------- starting and retrying

def start_round(s: Session, settings: Settings, project: Project) -> Round:
    """A new round in `created`. Only one active round per project: a concurrent start loses
    on the unique (project, number) constraint and gets Conflict. A round still in `labeling`
    is closed: its unanswered queue entries go back to the pool."""
    # Check-then-insert is a race under READ COMMITTED: a no-op UPDATE of the project row first
    # takes its row lock (PostgreSQL) / the write lock (SQLite), so starts of one project queue up.
    s.execute(update(Project).where(Project.id == project.id).values(name=Project.name)
              .execution_options(synchronize_session=False))
    active = s.scalar(select(Round).where(Round.project_id == project.id, Round.state.in_(ACTIVE_ROUND_STATES)))
    if active is not None:
        raise Conflict(f"round {active.number} is still {active.state}; one active round per project")
    last = s.scalar(select(func.max(Round.number)).where(Round.project_id == project.id)) or 0
    rnd = Round(project_id=project.id, number=last + 1, state="created", progress={"stage": "created"},
                started_at=utcnow())
    try:
        with s.begin_nested():
            s.add(rnd)
            s.flush()
    except IntegrityError:
        raise Conflict("another round was started at the same time") from None
    for prev in s.scalars(select(Round).where(Round.project_id == project.id, Round.state == "labeling")):
        _close(s, prev)
    return rnd


def retry_round(s: Session, project: Project, number: int) -> Round:
    rnd = get_round(s, project.id, number)
    if rnd.state != "failed":
        raise Conflict(f"round {number} is {rnd.state}; only a failed round can be retried")
    busy = s.scalar(select(Round).where(Round.project_id == project.id, Round.state.in_(ACTIVE_ROUND_STATES)))
    if busy is not None:
        raise Conflict(f"round {busy.number} is active")
    stage = (rnd.progress or {}).get("failed_stage", "created")
    rnd.attempt += 1  # new job ids; finished outputs (files) are kept and reused
    rnd.state, rnd.error, rnd.finished_at = stage, None, None
    rnd.progress = {**(rnd.progress or {}), "stage": stage, "retried": rnd.attempt}
    s.flush()
    return rnd


def get_round(s: Session, pid: int, number: int) -> Round:
    rnd = s.scalar(select(Round).where(Round.project_id == pid, Round.number == number))
    if rnd is None:
        raise NotFound(f"round {number} not found")
    return rnd


# ----------------------------------------------------------------- jobs

def _rq_id(settings: Settings, rnd: Round, kind: str, shard: int | None = None) -> str:
    sh = "" if shard is None else f"-{shard}"
    return f"{settings.queue_prefix}-p{rnd.project_id}-r{rnd.number}-{kind}{sh}-a{rnd.attempt}"


def _ensure_job(s: Session, settings: Settings, pid: int, round_id: int | None, rq_id: str, kind: str,
                shard: int | None, manifest: Path) -> Job:
    job = s.scalar(select(Job).where(Job.rq_id == rq_id))
    if job is None:
        job = Job(project_id=pid, round_id=round_id, rq_id=rq_id, kind=kind, shard=shard,
                  manifest_path=str(manifest), state="queued")
        s.add(job)
        s.flush()
    return job


_manifests: dict[str, tuple[tuple[int, int], dict]] = {}
_MANIFESTS_KEPT = 64


def _manifest(path) -> dict:
    """A job manifest, parsed once while the file is unchanged. The reconciler polls every job of
    an open round every ~0.5 s; a round's score.json lists every pool image (10k → ~1 MB), and
    parsing it once per score job per tick cost ~0.4 s a tick. Manifests are written once,
    atomically (os.replace), so (mtime, size) tells a new file from the parsed one."""
    key = str(path)
    st = os.stat(key)
    sig = (st.st_mtime_ns, st.st_size)
    hit = _manifests.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]
    m = json.loads(Path(key).read_text())
    with _lock:
        if len(_manifests) >= _MANIFESTS_KEPT:
            _manifests.pop(next(iter(_manifests)))
        _manifests[key] = (sig, m)
    return m


def _done_file(job: Job) -> Path | None:
    m = _manifest(job.manifest_path)
    if job.kind == "ingest":
        return Path(m["result"]) if Path(m["out"]).is_file() else None
    if job.kind == "train":
        return Path(m["out_metrics"]) if Path(m["out_checkpoint"]).is_file() else None
    return Path(m["out_dir"]) / f"scores_{job.shard:05d}.npz"


def _job_result(job: Job) -> dict:
    m = _manifest(job.manifest_path)
    if job.kind == "ingest":
        return {"shard": job.shard, "result": m["result"]}
    if job.kind == "train":
        return {"checkpoint": m["out_checkpoint"], "metrics": m["out_metrics"]}
    return {"shard": job.shard, "scores": str(Path(m["out_dir"]) / f"scores_{job.shard:05d}.npz")}


def poll_job(s: Session, settings: Settings, job: Job, conn) -> str:
    """Bring job.state up to date; (re-)enqueue when Redis does not have it. Returns the state."""
    if job.state in ("finished", "failed"):
        return job.state
    done = _done_file(job)
    if done is not None and done.is_file():
        job.state, job.result = "finished", _job_result(job)
        st = jobqueue.status(job.rq_id, settings, conn)
        if st.result and "seconds" in st.result:
            job.result = {**job.result, **{k: st.result[k] for k in ("seconds", "n") if k in st.result}}
        job.duration_s = float(job.result.get("seconds") or (utcnow() - _aware(job.created_at)).total_seconds())
        from service.runtime import observability
        observability.job_finished(job)
        return job.state
    st = jobqueue.status(job.rq_id, settings, conn)
    if st.state == "failed":
        job.state, job.error = "failed", st.error
    elif st.state in ("missing",) or (st.state == "finished"):
        # Never enqueued, lost with Redis, or "finished" without its output file (the artifacts
        # were removed): run it again. Deterministic id, so concurrent reconcilers agree.
        args = (job.shard,) if job.kind == "score" else ()
        jobqueue.enqueue(job.kind, job.rq_id, job.manifest_path, *args, settings=settings, conn=conn)
        job.attempts += 1
        job.state = "queued"
    else:
        job.state = st.state
    return job.state


def _aware(dt):
    from datetime import timezone
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


# ----------------------------------------------------------------- transitions

def _cas(s: Session, rnd: Round, old: str, new: str, **values) -> bool:
    """Compare-and-set the state, so two reconcilers never both take a transition."""
    res = s.execute(update(Round).where(Round.id == rnd.id, Round.state == old)
                    .values(state=new, updated_at=utcnow(), **values).execution_options(synchronize_session=False))
    if res.rowcount == 1:
        s.refresh(rnd)
        return True
    return False


def _fail(s: Session, rnd: Round, stage: str, error: str) -> None:
    _cas(s, rnd, rnd.state, "failed", error=error[:4000], finished_at=utcnow(),
         progress={**(rnd.progress or {}), "stage": "failed", "failed_stage": stage})


def _close(s: Session, rnd: Round) -> None:
    if _cas(s, rnd, "labeling", "closed", finished_at=utcnow(), progress={**(rnd.progress or {}), "stage": "closed"}):
        # Items of this queue nobody labeled go back to the pool for the next round's scoring.
        ids = select(QueueEntry.item_id).where(QueueEntry.round_id == rnd.id)
        s.execute(update(Item).where(Item.id.in_(ids), Item.status == "queued").values(status="unlabeled")
                  .execution_options(synchronize_session=False))


def _classes(s: Session, pid: int) -> list[ProjectClass]:
    return list(s.scalars(select(ProjectClass).where(ProjectClass.project_id == pid).order_by(ProjectClass.index)))


def _refs(settings: Settings, pid: int, rows) -> list:
    """[[cache file, index], ...] for rows of _REF_COLS; the paths are resolved once per shard,
    not per item, and rows are unpacked as tuples (a Row attribute costs ~2 µs: 10k rows add up)."""
    files = paths.cache_files(settings, pid, {shard for _, shard, _, _ in rows})
    return [[files[shard], index] for _, shard, index, _ in rows]


def _split(settings, pid, rows, index):
    return {"cache": _refs(settings, pid, rows), "labels": [index[label] for *_, label in rows],
            "item_ids": [iid for iid, *_ in rows]}


def _ingest_state(s: Session, settings: Settings, pid: int, conn) -> tuple[int, int, list[str]]:
    jobs = list(s.scalars(select(Job).where(Job.project_id == pid, Job.kind == "ingest", Job.round_id.is_(None))))
    errors = []
    done = 0
    from service.core.items import apply_ingest_result
    for j in jobs:
        was = j.state
        st = poll_job(s, settings, j, conn)
        if st == "finished":
            if was != "finished":
                apply_ingest_result(s, j)
            done += 1
        elif st == "failed":
            errors.append(f"ingest shard {j.shard}: {j.error}")
    return done, len(jobs), errors


# The columns manifests need: plain rows, not ORM objects (10k Item objects cost ~0.3 s to load).
_REF_COLS = (Item.id, Item.cache_shard, Item.cache_index, Item.label)


def _cached(q):
    return q.where(Item.cache_index.is_not(None), Item.status != "quarantined")


def _enter_training(s: Session, settings: Settings, project: Project, rnd: Round, conn) -> None:
    cfg = project.config
    classes = _classes(s, project.id)
    names = [c.name for c in classes]
    index = {c: i for i, c in enumerate(names)}
    labeled = s.execute(_cached(select(*_REF_COLS).where(Item.project_id == project.id, Item.split == "pool",
                                                         Item.status == "labeled")).order_by(Item.id)).all()
    if not labeled:
        # Cold start: nothing to train on yet, so the first batch is a random sample.
        _cas(s, rnd, "created", "selecting", progress={"stage": "selecting", "cold_start": True})
        return
    newest = dict(s.execute(select(Label.item_id, func.max(Label.round)).where(Label.project_id == project.id)
                            .group_by(Label.item_id)).all())
    held = {sp: s.execute(_cached(select(*_REF_COLS).where(Item.project_id == project.id, Item.split == sp,
                                                           Item.label.is_not(None))).order_by(Item.id)).all()
            for sp in ("val", "test")}
    rdir = paths.round_dir(settings, project.id, rnd.number)
    rdir.mkdir(parents=True, exist_ok=True)
    manifest = rdir / "train.json"
    tc = {"epochs": int(cfg["epochs"]), "duplicate_new": int(cfg["duplicate_new"]), "hflip": bool(cfg["hflip"]),
          # ≥ ~10 steps an epoch on small early label sets (as workers.loop does), 16..128 a batch.
          "batch_size": int(cfg.get("batch_size") or min(128, max(16, len(labeled) // 10))),
          "seed": int(cfg["seed"]) * 1000 + rnd.number}
    if not manifest.is_file():
        from workers.jobs import write_json_atomic  # numpy/json only: no torch at import
        write_json_atomic(manifest, {
            "project_id": project.id, "round": rnd.number, "model": cfg["model"], "class_names": names,
            "active": [c.status == "active" for c in classes], "image_size": cfg["image_size"],
            "channels": cfg["channels"], "pretrained": cfg["pretrained"], "frozen_blocks": cfg["frozen_blocks"],
            "seed": tc["seed"],
            "train": {**_split(settings, project.id, labeled, index),
                      "is_new": [newest.get(iid, 0) >= rnd.number - 1 for iid, *_ in labeled]},
            "val": _split(settings, project.id, held["val"], index),
            "test": _split(settings, project.id, held["test"], index),
            "train_config": tc, "checkpoint_dir": str(rdir / "ckpt"),
            "out_checkpoint": str(rdir / "model.pt"), "out_metrics": str(rdir / "metrics.json")})
    if _cas(s, rnd, "created", "training", progress={"stage": "training", "n_train": len(labeled)}):
        job = _ensure_job(s, settings, project.id, rnd.id, _rq_id(settings, rnd, "train"), "train", None, manifest)
        poll_job(s, settings, job, conn)


def _apply_exclusion_rule(s: Session, project: Project, rnd: Round) -> list[str]:
    from strategies.exclusion import ExclusionRule

    ex = dict(project.config.get("exclusion") or {})
    if not ex.pop("enabled", True):
        return []
    rule = ExclusionRule(**ex)
    history: dict[str, list[float]] = {n: [] for n in project.class_names}
    for mv in s.scalars(select(ModelVersion).where(ModelVersion.project_id == project.id).order_by(ModelVersion.round)):
        pc = ((mv.metrics or {}).get("val") or {}).get("per_class") or {}
        for n in project.class_names:
            acc = (pc.get(n) or {}).get("accuracy")
            history[n].append(float(acc) if acc is not None else 0.0)
    classes = _classes(s, project.id)
    status = {c.name: c.status for c in classes}
    reinc = {c.name: c.reincluded_round for c in classes if c.reincluded_round}
    decisions = rule.decide(history, rnd.number, status, reinc)
    newly = []
    for c in classes:
        excluded, reason = decisions.get(c.name, (False, ""))
        if excluded and c.status == "active":
            c.status, c.reason, c.changed_by, c.changed_at = "excluded", reason, "rule", utcnow()
            newly.append(c.name)
    return newly


def _enter_scoring(s: Session, settings: Settings, project: Project, rnd: Round, train_job: Job, conn) -> None:
    metrics = json.loads(Path(train_job.result["metrics"]).read_text())
    mv = ModelVersion(project_id=project.id, round=rnd.number, checkpoint_path=train_job.result["checkpoint"],
                      metrics=metrics)
    s.add(mv)
    s.flush()
    excluded_now = _apply_exclusion_rule(s, project, rnd)
    classes = _classes(s, project.id)
    pool = s.execute(_cached(select(*_REF_COLS).where(Item.project_id == project.id, Item.split == "pool",
                                                      Item.status == "unlabeled")).order_by(Item.id)).all()
    size = max(1, int(settings.score_shard_size))
    shards = {str(k // size): {"item_ids": [iid for iid, *_ in pool[k:k + size]],
                               "cache": _refs(settings, project.id, pool[k:k + size])}
              for k in range(0, len(pool), size)}
    rdir = paths.round_dir(settings, project.id, rnd.number)
    manifest = rdir / "score.json"
    if not manifest.is_file():
        from workers.jobs import write_json_atomic
        cfg = project.config
        write_json_atomic(manifest, {
            "project_id": project.id, "round": rnd.number, "checkpoint": train_job.result["checkpoint"],
            "model": cfg["model"], "class_names": project.class_names, "channels": cfg["channels"],
            "image_size": cfg["image_size"], "active": [c.status == "active" for c in classes],
            "mc_samples": int(cfg["mc_samples"]), "seed": int(cfg["seed"]) * 1000 + rnd.number,
            "shards": shards, "out_dir": str(rdir)})
    else:
        shards = json.loads(manifest.read_text())["shards"]
    prog = {"stage": "scoring", "shards": len(shards), "shards_done": 0, "excluded_by_rule": excluded_now}
    if _cas(s, rnd, "training", "scoring", model_version_id=mv.id, progress=prog):
        for k in shards:
            job = _ensure_job(s, settings, project.id, rnd.id, _rq_id(settings, rnd, "score", int(k)), "score",
                              int(k), manifest)
            poll_job(s, settings, job, conn)


_NPY_HEADERS: dict[bytes, tuple] = {}  # raw .npy header → (shape, fortran, dtype): shards repeat them


class _Npz:
    """A score shard (.npz) read in place: one mmap of the file, a member parsed only when asked
    for, its array a view of the mapping — the columns a strategy uses and the few embedding rows
    diversity needs are all that is read of a 1M pool's ~250 shards (np.load unzips every member
    it is asked for, whole, each time). A compressed member falls back to np.load."""

    def __init__(self, path: Path):
        self.path = path
        with zipfile.ZipFile(path) as z:
            self.members = {i.filename[:-4]: i for i in z.infolist() if i.filename.endswith(".npy")}
        self._stored = all(i.compress_type == zipfile.ZIP_STORED for i in self.members.values())
        self._mm = None
        self._npz = None

    def __getitem__(self, name: str) -> np.ndarray:
        if not self._stored:
            if self._npz is None:
                self._npz = np.load(self.path)
            return self._npz[name]
        if self._mm is None:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mm, info = self._mm, self.members[name]
        off = info.header_offset  # the member's local header; name and extra lengths at 26..30
        off += 30 + int.from_bytes(mm[off + 26:off + 28], "little") + int.from_bytes(mm[off + 28:off + 30], "little")
        size_len = 2 if mm[off + 6] == 1 else 4  # .npy format version 1.0: 2-byte header length
        raw = bytes(mm[off:off + 8 + size_len + int.from_bytes(mm[off + 8:off + 8 + size_len], "little")])
        parsed = _NPY_HEADERS.get(raw)
        if parsed is None:
            f = io.BytesIO(raw)
            major, _ = np.lib.format.read_magic(f)
            parsed = (np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0)(f)
            if len(_NPY_HEADERS) < 256:
                _NPY_HEADERS[raw] = parsed
        shape, fortran, dtype = parsed
        if dtype.hasobject:
            return np.load(self.path, allow_pickle=False)[name]  # refuses, as np.load would
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.empty(shape, dtype)
        a = np.frombuffer(mm, dtype=dtype, count=count, offset=off + len(raw))
        return a.reshape(shape, order="F" if fortran else "C")


def _score_parts(settings: Settings, rnd: Round) -> list[_Npz]:
    manifest = _manifest(paths.round_dir(settings, rnd.project_id, rnd.number) / "score.json")
    return [_Npz(paths.score_file(settings, rnd.project_id, rnd.number, int(k)))
            for k in sorted(manifest["shards"], key=int)]


def _candidate_rows(fused: np.ndarray, pred: np.ndarray, quota, excluded: np.ndarray, budget: int,
                    factor: int) -> np.ndarray:
    """Rows (ascending) that strategies.selection.select can look at with these quotas: each
    class's top quota·factor eligible rows by fused score, and the top budget·(factor+1) eligible
    rows overall (what fills the quotas a class could not). Everything else it never reaches."""
    from strategies.diversity import top_k

    eligible = ~np.asarray(excluded, bool)[pred]
    el = np.flatnonzero(eligible)
    parts = [el[top_k(fused[el], budget * (factor + 1))]]
    if quota is not None:
        order = np.argsort(pred, kind="stable")
        bounds = np.searchsorted(pred[order], np.arange(len(quota) + 1))
        for c, q in enumerate(np.asarray(quota, np.int64)):
            if q > 0:
                idx = order[bounds[c]:bounds[c + 1]]
                idx = idx[eligible[idx]]
                parts.append(idx[top_k(fused[idx], int(q) * factor)])
    return np.unique(np.concatenate(parts))


def _select(columns: dict, weights: dict, pred: np.ndarray, budget: int, quota, excluded: np.ndarray, rng,
            load_embeddings: Callable[[np.ndarray], np.ndarray] | None, factor: int = 10) -> np.ndarray:
    """strategies.selection.select, reading embeddings only for the rows it can reach.

    Diversity needs the embeddings of each class's candidates only (~20k rows of a 1M pool, not
    ~250 MB). The fused score is computed once here; select then runs on the candidate rows with
    that one column — its rank transform is monotone, so every top-k, every candidate set, the
    k-center picks and the final order are the ones select makes on the whole pool (equal by test;
    only exactly tied fused scores at a cut may be broken another way)."""
    from strategies.fusion import fuse_ranks
    from strategies.selection import select as select_idx

    if load_embeddings is None:
        return select_idx(columns, weights, pred, None, budget, quota, excluded, rng, factor)
    if not weights or not any(w != 0 for w in weights.values()):
        return select_idx(columns, weights, pred, load_embeddings(np.arange(pred.size)), budget, quota, excluded,
                          rng, factor)
    fused = fuse_ranks(columns, weights)
    rows = _candidate_rows(fused, pred, quota, excluded, budget, factor)
    sub = select_idx({"fused": fused[rows]}, {"fused": 1.0}, pred[rows], load_embeddings(rows), budget, quota,
                     excluded, rng, factor)
    return rows[sub]


def select_batch(s: Session, settings: Settings, project: Project, rnd: Round) -> list[dict]:
    """The round's batch, priority order: [{item_id, pred, scores}] (strategies, numpy only)."""
    from strategies.budget import allocate_budget, class_need, per_class_mean
    from strategies.registry import get_strategy

    cfg = project.config
    budget = int(cfg["budget"])
    classes = _classes(s, project.id)
    names = [c.name for c in classes]
    active = np.array([c.status == "active" for c in classes])
    rng = np.random.default_rng(int(cfg["seed"]) * 1000 + rnd.number)
    if (rnd.progress or {}).get("cold_start") or rnd.model_version_id is None:
        ids = np.array(list(s.scalars(_cached(select(Item.id).where(
            Item.project_id == project.id, Item.split == "pool", Item.status == "unlabeled")).order_by(Item.id))), np.int64)
        pick = rng.permutation(ids.size)[:budget]
        return [{"item_id": int(ids[i]), "pred": None, "scores": {}} for i in pick]
    spec = get_strategy(cfg["strategy"])
    show = list(spec.weights) or ["margin", "entropy"]
    parts = _score_parts(settings, rnd)
    if not parts:
        return []
    # least_confidence is always read: 1 − it is the probability of the guess (p_pred), which the
    # experts see ("Shirt, 62 %") and Label Studio sorts predictions by, whatever the strategy.
    keys = [k for k in dict.fromkeys([*spec.weights, *show, "cam_score", "least_confidence"])
            if f"col_{k}" in parts[0].members]
    ids = np.concatenate([p["item_ids"] for p in parts]).astype(np.int64, copy=False)
    pred = np.concatenate([p["pred"] for p in parts]).astype(np.int64, copy=False)
    columns = {k: np.concatenate([p[f"col_{k}"] for p in parts]).astype(np.float64) for k in keys}
    offsets = np.cumsum([0] + [len(p["item_ids"]) for p in parts])
    # Items labeled (queued, quarantined, skipped) while scoring ran are no longer candidates. The
    # scored items were the unlabeled pool; ask for the pool items that are not unlabeled now — a
    # few thousand rows, not the whole pool (items are never deleted, only their status changes).
    gone = np.fromiter(s.scalars(select(Item.id).where(Item.project_id == project.id, Item.split == "pool",
                                                       Item.status != "unlabeled")), np.int64)
    keep = ~np.isin(ids, gone)
    where = None  # kept row → row in the shards
    if not keep.all():
        where = np.flatnonzero(keep)
        ids, pred = ids[keep], pred[keep]
        columns = {k: v[keep] for k, v in columns.items()}
    if ids.size == 0:
        return []

    def load_embeddings(rows: np.ndarray) -> np.ndarray:
        g = rows if where is None else where[rows]
        shard = np.searchsorted(offsets, g, side="right") - 1
        out = None
        for k in np.unique(shard):
            sel = shard == k
            e = parts[int(k)]["embedding"]
            if out is None:
                out = np.empty((g.size, e.shape[1]), e.dtype)
            out[sel] = e[g[sel] - offsets[k]]
        return out if out is not None else np.zeros((0, 0), np.float32)

    quota = None
    if spec.class_budget:
        mv = s.get(ModelVersion, rnd.model_version_id)
        pc = ((mv.metrics or {}).get("val") or {}).get("per_class") or {}
        val_acc = np.array([float((pc.get(n) or {}).get("accuracy") or 0.0) for n in names])
        cam = None
        if spec.needs_cam and "cam_score" in columns:
            cam = per_class_mean(pred, columns["cam_score"], len(names))
        quota = allocate_budget(budget, class_need(cam, val_acc, active), active,
                                available=np.bincount(pred, minlength=len(names)))
    weighted = {k: columns[k] for k in spec.weights if k in columns}
    chosen = _select(weighted, spec.weights, pred, budget, quota, ~active, rng,
                     load_embeddings if spec.diversity else None)
    def scores(i) -> dict:
        out = {k: round(float(columns[k][i]), 6) for k in show if k in columns}
        if "least_confidence" in columns:
            out["p_pred"] = round(1.0 - float(columns["least_confidence"][i]), 6)
        return out

    return [{"item_id": int(ids[i]), "pred": names[int(pred[i])], "scores": scores(i)} for i in chosen]


def _enter_labeling(s: Session, settings: Settings, project: Project, rnd: Round) -> bool:
    t0 = time.perf_counter()
    batch = select_batch(s, settings, project, rnd)
    if not _cas(s, rnd, "selecting", "labeling",
                progress={**(rnd.progress or {}), "stage": "labeling", "queued": len(batch), "labeled": 0,
                          "selection_s": round(time.perf_counter() - t0, 4)}):
        return False
    if batch:
        s.execute(QueueEntry.__table__.insert(), [
            {"round_id": rnd.id, "item_id": b["item_id"], "rank": r, "pred": b["pred"], "scores": b["scores"]}
            for r, b in enumerate(batch)])
        s.execute(update(Item).where(Item.id.in_([b["item_id"] for b in batch])).values(status="queued")
                  .execution_options(synchronize_session=False))
    return True


def _labeling_progress(s: Session, rnd: Round) -> tuple[int, int]:
    total = s.scalar(select(func.count()).select_from(QueueEntry).where(QueueEntry.round_id == rnd.id)) or 0
    done = s.scalar(select(func.count()).select_from(QueueEntry).join(Item, Item.id == QueueEntry.item_id)
                    .where(QueueEntry.round_id == rnd.id, Item.status.in_(("labeled", "quarantined", "skipped")))) or 0
    return done, total


# ----------------------------------------------------------------- the reconciler

def advance(settings: Settings, project_id: int, number: int) -> str:
    """Move one round as far as the facts allow; returns its state. Safe to call any time."""
    hook = False
    auto_next = False
    with _lock, session_scope(settings) as s:
        project = s.get(Project, project_id)
        rnd = get_round(s, project_id, number)
        conn = jobqueue.connection(settings)
        if rnd.state == "created":
            done, total, errors = _ingest_state(s, settings, project_id, conn)
            if errors:
                _fail(s, rnd, "created", "; ".join(errors))
            elif done < total:
                rnd.progress = {"stage": "created", "waiting_for": "ingest", "ingest_done": done, "ingest_total": total}
            else:
                _enter_training(s, settings, project, rnd, conn)
        if rnd.state == "training":
            job = _ensure_job(s, settings, project_id, rnd.id, _rq_id(settings, rnd, "train"), "train", None,
                              paths.round_dir(settings, project_id, rnd.number) / "train.json")
            st = poll_job(s, settings, job, conn)
            if st == "failed":
                _fail(s, rnd, "training", f"train job {job.rq_id} failed: {job.error}")
            elif st == "finished":
                _enter_scoring(s, settings, project, rnd, job, conn)
        if rnd.state == "scoring":
            manifest = paths.round_dir(settings, project_id, rnd.number) / "score.json"
            shards = _manifest(manifest)["shards"]
            states, errors = [], []
            for k in sorted(shards, key=int):
                job = _ensure_job(s, settings, project_id, rnd.id, _rq_id(settings, rnd, "score", int(k)), "score",
                                  int(k), manifest)
                states.append(poll_job(s, settings, job, conn))
                if job.state == "failed":
                    errors.append(f"score job {job.rq_id} failed: {job.error}")
            if errors:
                _fail(s, rnd, "scoring", "; ".join(errors))
            else:
                done = states.count("finished")
                rnd.progress = {**(rnd.progress or {}), "shards_done": done}
                if done == len(states):
                    _cas(s, rnd, "scoring", "selecting", progress={**rnd.progress, "stage": "selecting"})
        if rnd.state == "selecting":
            hook = _enter_labeling(s, settings, project, rnd)
        if rnd.state == "labeling":
            done, total = _labeling_progress(s, rnd)
            if rnd.progress.get("labeled") != done:
                rnd.progress = {**rnd.progress, "labeled": done, "queued": total}
            if done >= total:
                _close(s, rnd)
                auto_next = bool(project.config.get("auto_next_round")) and total > 0
        state = rnd.state
    if hook:
        _run_hooks(settings, project_id, number)
    if auto_next and state == "closed":
        try:
            with session_scope(settings) as s:
                start_round(s, settings, s.get(Project, project_id))
        except Conflict:
            pass
    return state


def advance_project(settings: Settings, project_id: int) -> None:
    """Advance the project's open rounds and its pending ingest jobs."""
    with session_scope(settings) as s:
        open_rounds = list(s.scalars(select(Round.number).where(
            Round.project_id == project_id, Round.state.in_(ACTIVE_ROUND_STATES + ("labeling",)))))
        pending_ingest = s.scalar(select(func.count()).select_from(Job).where(
            Job.project_id == project_id, Job.kind == "ingest", Job.state.in_(("queued", "started"))))
    for n in open_rounds:
        try:
            advance(settings, project_id, n)
        except Exception:  # noqa: BLE001 — one bad round must not stop the others
            log.exception("advance failed for project %s round %s", project_id, n)
    if pending_ingest and not open_rounds:
        with _lock, session_scope(settings) as s:
            _ingest_state(s, settings, project_id, jobqueue.connection(settings))


def reconcile_all(settings: Settings) -> None:
    with session_scope(settings) as s:
        pids = set(s.scalars(select(Round.project_id).where(Round.state.in_(ACTIVE_ROUND_STATES + ("labeling",)))))
        pids |= set(s.scalars(select(Job.project_id).where(Job.kind == "ingest", Job.state.in_(("queued", "started")))))
    for pid in sorted(pids):
        advance_project(settings, pid)


class Reconciler(threading.Thread):
    """Background loop in the API process: reconcile_all every `interval` seconds."""

    def __init__(self, settings: Settings, interval: float = 0.5):
        super().__init__(name="camloop-reconciler", daemon=True)
        self.settings, self.interval = settings, interval
        self._stop_evt = threading.Event()

    def run(self) -> None:
        streak = FailureStreak(log, "reconcile")
        while not self._stop_evt.is_set():
            try:
                reconcile_all(self.settings)
                streak.succeeded()
            except Exception as exc:  # noqa: BLE001 — keep reconciling after a transient DB/Redis error
                streak.failed(exc)
            self._stop_evt.wait(self.interval)

    def stop(self) -> None:
        self._stop_evt.set()
