"""The labeled data set, exported: one row per labeled image, read from one snapshot of the store.

A snapshot: every statement of an export reads the store as it was when the export began
(PostgreSQL: a REPEATABLE READ, READ ONLY transaction; SQLite in WAL mode: one read transaction,
pinned by its first read). A label is written in one transaction (its row and the item's label
together), so a label made while an export streams is wholly in it or wholly out; the cut-off
(the last label id, the time) is in the export's own metadata.

Rows are read in pages of PAGE items (keyset on the item id), with their labels, the queue
entries that showed them to an expert and the experts' votes: memory stays one page whatever
the number of labeled images. Formats (service.core.export_formats, and Label Studio's JSON
from the bridge) turn the rows into bytes as they come.

What each row says: the image (uri, split: the pool's labels as `train`, the registered val/test
splits as themselves), its class and the class's status (an excluded class is marked, not left
out), whether the image is quarantined (marked, with the reason), the label (who, when, where
it came from: api, label-studio or registration, its round), the agreement behind it (the
experts' votes, when several answered in Label Studio), why it was picked (the round, its rank,
batch or reserve, and by what: the strategy, or a first batch's random or typical sample) and
the model's guess and probability when the expert was shown it, with the model version.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import plugins
from service.errors import Conflict, Unprocessable
from service.settings import Settings
from service.store import Item, Label, ModelVersion, Project, ProjectClass, QueueEntry, Round
from service.store.db import get_engine

log = logging.getLogger("camloop.export")

PAGE = 1000
SPLIT_NAMES = {"pool": "train", "val": "val", "test": "test"}
COLUMNS = ("item_id", "uri", "sha256", "split", "registered_split", "class", "class_index", "class_status",
           "quarantined", "quarantine_reason", "label_id", "who", "labeled_at", "source", "label_round",
           "annotators", "agreement", "votes", "picked_round", "picked_rank", "picked_by", "reserve",
           "model_guess", "model_probability", "guess_model_version")

@dataclass
class Format:
    """An export format: how rows become bytes. `write(snapshot) → Iterator[bytes]`."""
    name: str
    media_type: str
    filename: str                     # what the CLI names the file (or the folder, for imagefolder)
    write: Callable[["Snapshot"], Iterator[bytes]]
    description: str


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


def format_named(name: str) -> Format:
    if name not in FORMATS:
        raise Unprocessable(f"unknown export format {name!r}; formats: {', '.join(sorted(FORMATS))}")
    return FORMATS[name]


# ----------------------------------------------------------------------------- the snapshot

@contextmanager
def snapshot_session(settings: Settings) -> Iterator[Session]:
    """A read-only session whose every statement sees the store as of its first read."""
    conn = get_engine(settings).connect()
    try:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            conn.begin()
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        elif conn.dialect.name == "sqlite":
            # pysqlite sends BEGIN only before writes: without this, each SELECT would be its own
            # snapshot. A deferred BEGIN + the first read pins one (WAL: writers go on meanwhile).
            conn.exec_driver_sql("BEGIN")
        yield Session(bind=conn, autoflush=False)
    finally:
        try:
            conn.rollback()
        finally:
            conn.close()


class Snapshot:
    """One project's labeled images as of one moment, for the formats to read (rows(), facts)."""

    def __init__(self, s: Session, settings: Settings, project: Project):
        self.s, self.settings, self.project = s, settings, project
        self.pid = project.id
        self.names = list(project.class_names)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.classes = {cl.name: cl for cl in s.scalars(select(ProjectClass).where(ProjectClass.project_id == self.pid))}
        self.last_label_id = int(s.scalar(select(func.max(Label.id)).where(Label.project_id == self.pid)) or 0)
        self.at = datetime.now(timezone.utc)
        self.rows_total = int(s.scalar(select(func.count(Item.id)).where(Item.project_id == self.pid,
                                                                       Item.label.is_not(None))) or 0)
        self.rounds = {r.number: r for r in s.execute(select(Round.id, Round.number, Round.progress, Round.scored_by_id,
                                                             Round.model_version_id)
                                                      .where(Round.project_id == self.pid))}
        self.versions = dict(s.execute(select(ModelVersion.id, ModelVersion.version)
                                       .where(ModelVersion.project_id == self.pid)).all())
        from engine.config import ProjectConfig
        try:
            self.strategy = ProjectConfig.model_validate(project.config or {}).strategy
        except ValueError:
            self.strategy = (project.config or {}).get("strategy")

    def facts(self) -> dict:
        """What the export is, for its own metadata (imagefolder's export.json, the CLI's summary)."""
        return {"project": {"id": self.pid, "name": self.project.name}, "rows": self.rows_total,
                "snapshot": {"at": self.at.isoformat(), "last_label_id": self.last_label_id},
                "classes": [{"index": i, "name": n, "status": getattr(self.classes.get(n), "status", "active"),
                             "reason": getattr(self.classes.get(n), "reason", None)} for i, n in enumerate(self.names)],
                "splits": dict(SPLIT_NAMES)}

    def rows(self) -> Iterator[dict]:
        last = 0
        while True:
            items = self.s.execute(
                select(Item.id, Item.uri, Item.sha256, Item.split, Item.status, Item.reason, Item.label,
                       Item.created_at)
                .where(Item.project_id == self.pid, Item.label.is_not(None), Item.id > last)
                .order_by(Item.id).limit(PAGE)).all()
            if not items:
                return
            ids = [it.id for it in items]
            labels: dict[int, list] = {}
            for lab in self.s.execute(select(Label.id, Label.item_id, Label.class_name, Label.who, Label.source,
                                             Label.round, Label.created_at)
                                      .where(Label.item_id.in_(ids)).order_by(Label.id)):
                labels.setdefault(lab.item_id, []).append(lab)
            entries: dict[int, list] = {}
            for e in self.s.execute(select(QueueEntry.item_id, QueueEntry.rank, QueueEntry.pred, QueueEntry.scores,
                                           QueueEntry.reserve, Round.number)
                                    .join(Round, Round.id == QueueEntry.round_id)
                                    # by (round, item): the unique index, not a scan of every entry
                                    .where(QueueEntry.round_id.in_([r.id for r in self.rounds.values()]),
                                           QueueEntry.item_id.in_(ids))):
                entries.setdefault(e.item_id, []).append(e)
            # The experts' votes behind the labels (the Label Studio bridge's ledger, a plug-in).
            votes = plugins.export_votes(self.s, self.pid, ids)
            for it in items:
                yield self._row(it, labels.get(it.id, []), entries.get(it.id, []), votes.get(it.id))
            last = ids[-1]

    def _row(self, it, labels: list, entries: list, votes: dict[str, int] | None) -> dict:
        # The label row behind the item's current label: the latest one naming its class.
        lab = next((x for x in reversed(labels) if x.class_name == it.label), None)
        cl = self.classes.get(it.label)
        entry = _asking_entry(entries, lab.round if lab else None)
        rnd = self.rounds.get(entry.number) if entry is not None else None
        total = sum(votes.values()) if votes else 0
        guess_v = None
        if rnd is not None:
            guess_v = self.versions.get(rnd.scored_by_id or rnd.model_version_id) if entry.pred else None
        return {
            "item_id": it.id, "uri": it.uri, "sha256": it.sha256,
            "split": SPLIT_NAMES.get(it.split, it.split), "registered_split": it.split,
            "class": it.label, "class_index": self.index.get(it.label),
            "class_status": cl.status if cl is not None else "unknown",
            "quarantined": it.status == "quarantined", "quarantine_reason": it.reason if it.status == "quarantined" else None,
            # A held-out split's known labels come with the registration and have no label row.
            "label_id": lab.id if lab else None, "who": lab.who if lab else None,
            "labeled_at": _iso(lab.created_at if lab else it.created_at), "source": lab.source if lab else "registration",
            "label_round": lab.round if lab else 0,
            "annotators": total or None, "agreement": round(votes.get(it.label, 0) / total, 4) if total else None,
            "votes": votes or None,
            "picked_round": entry.number if entry is not None else None,
            "picked_rank": entry.rank if entry is not None else None,
            "picked_by": self._picked_by(entry, rnd, lab),
            "reserve": bool(entry.reserve) if entry is not None else None,
            "model_guess": entry.pred if entry is not None else None,
            "model_probability": _p(entry.scores) if entry is not None and entry.pred else None,
            "guess_model_version": guess_v,
        }

    def _picked_by(self, entry, rnd, lab) -> str:
        if entry is None:
            if lab is None or lab.source == "registration":
                return "registration: labeled when registered"
            return "not queued: labeled directly"
        progress = (rnd.progress or {}) if rnd is not None else {}
        if progress.get("cold_start"):
            return f"first batch: {progress.get('first_batch') or 'random'}"
        return f"strategy: {progress.get('strategy') or self.strategy}"


def _asking_entry(entries: list, label_round: int | None):
    """The queue entry that showed the image to the expert who labeled it: the label's round's, else
    the latest before it, else the latest."""
    if not entries:
        return None
    entries = sorted(entries, key=lambda e: e.number)
    if label_round is not None:
        same = [e for e in entries if e.number == label_round]
        if same:
            return same[0]
        before = [e for e in entries if e.number < label_round]
        if before:
            return before[-1]
    return entries[-1]


def _p(scores) -> float | None:
    v = (scores or {}).get("p_pred")
    return None if v is None else round(float(v), 6)


def _iso(dt) -> str | None:
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).isoformat()


# ----------------------------------------------------------------------------- the stream

@dataclass
class Export:
    fmt: Format
    rows: int
    facts: dict
    body: Iterator[bytes]


def start(settings: Settings, pid: int, fmt_name: str) -> Export:
    """Open the snapshot and check the request (422 unknown format, 404 project, 409 nothing
    labeled) before anything is sent; `body` then streams from that snapshot and closes it."""
    from service.core.projects import get_project

    fmt = format_named(fmt_name)
    cm = snapshot_session(settings)
    s = cm.__enter__()
    try:
        project = get_project(s, pid)
        snap = Snapshot(s, settings, project)
        if snap.rows_total == 0:
            raise Conflict(f"project {pid} has no labeled images yet: nothing to export")
    except BaseException as e:
        cm.__exit__(type(e), e, e.__traceback__)
        raise

    def body() -> Iterator[bytes]:
        try:
            yield from fmt.write(snap)
        finally:
            cm.__exit__(None, None, None)

    return Export(fmt, snap.rows_total, snap.facts(), body())


def file_name(uri: str, item_id: int) -> str:
    """An exported image's file name: unique (the item id) and the original extension kept."""
    return f"{int(item_id)}-{PurePosixPath(uri).name}"
