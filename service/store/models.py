"""The durable state: SQLAlchemy 2 models. Schema changes go through service/store/migrations.

Every process (API, reconciler, CLI) reads the truth from here; Redis only carries work.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint, false, text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from service.states import JOB_WAITING, WORKING_STATES, ItemStatus, JobState, RoundState  # noqa: F401  (the columns' words)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


MAX_ID = 2**31 - 1  # ids are INTEGER columns (32-bit on PostgreSQL): the API's bound on an id
ITEM_SPLITS = ("pool", "val", "test")


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    class_names: Mapped[list] = mapped_column(JSON)  # order = the model head's order
    # model, image_size, channels, strategy, budget, duplicate_new, epochs, exclusion{...},
    # ls_project_id, auto_next_round, mc_samples, seed
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    # {"auto": [model keys the config left to camloop], "chosen": {...} | absent, "why": str}:
    # filled when the first images are registered (service.core.model_choice); NULL for projects
    # made before camloop chose from the images (migration 0005).
    model_choice: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    classes: Mapped[list["ProjectClass"]] = relationship(back_populates="project", order_by="ProjectClass.index")


class ProjectClass(Base):
    __tablename__ = "classes"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | excluded
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    changed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)  # 'rule' or a key name
    changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reincluded_round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    project: Mapped[Project] = relationship(back_populates="classes")


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("project_id", "sha256"),
        Index("ix_items_project_split_status", "project_id", "split", "status"),
        Index("ix_items_uri", "uri"),  # the signed-file route asks by path (migration 0004)
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    uri: Mapped[str] = mapped_column(Text)  # relative to the data root
    sha256: Mapped[str] = mapped_column(String(64))
    split: Mapped[str] = mapped_column(String(8), default="pool")
    status: Mapped[str] = mapped_column(String(16), default=ItemStatus.UNLABELED)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why quarantined
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)  # current label (name)
    cache_shard: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cache_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The object's box [x0, y0, x1, y1] in pixels of the file, from the folder's regions.json
    # (engine.regions); NULL: not known (migration 0009). A rectangle an expert draws in Label
    # Studio is kept per annotation in the bridge's ledger (migration 0010) and wins over this one
    # for the counterexamples (service.rounds.feedback).
    region: Mapped[list | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    # Its registered pool label was part of a uniform random sample of the pool (the request's
    # `labels_random`): the audit's shadow learner may train on it (migration 0011).
    sampled_at_random: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Label(Base):
    """Every label ever given, append-only. The item's current label is Item.label; counts use
    items, so a relabel never counts twice. (source, external_id) makes delivery idempotent."""
    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("project_id", "source", "external_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    class_name: Mapped[str] = mapped_column(String(200))
    who: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(16))  # api | label-studio | registration
    external_id: Mapped[str] = mapped_column(String(200))
    round: Mapped[int] = mapped_column(Integer, default=0)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("project_id", "number"),
                      UniqueConstraint("project_id", "idempotency_key", name="uq_rounds_project_idempotency_key"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=RoundState.CREATED)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    progress: Mapped[dict] = mapped_column(JSON, default=dict)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # bumped by retry → new job ids
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    # The model that scored this round's pool, so made its guesses (pre-labels) and heatmaps: the
    # round's own model, or a pinned one, or with keep_best_model a better earlier one (0006).
    scored_by_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # A client's Idempotency-Key: the same key again answers with this round, never a new one.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Trains and evaluates on every label, queues nothing (the last round of a labeling campaign).
    train_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


def _next_version(ctx) -> int:
    """A model version's number when the inserter gave none: the project's next (1, 2, …)."""
    from sqlalchemy import func, select

    pid = ctx.get_current_parameters()["project_id"]
    table = ModelVersion.__table__
    last = ctx.connection.scalar(select(func.max(table.c.version)).where(table.c.project_id == pid))
    return int(last or 0) + 1


class ModelVersion(Base):
    __tablename__ = "model_versions"
    # One per round: only the transition that wins the round's compare-and-set inserts it.
    # At most one pinned version per project (a partial unique index, SQLite and PostgreSQL alike).
    __table_args__ = (UniqueConstraint("project_id", "round", name="uq_model_versions_project_round"),
                      UniqueConstraint("project_id", "version", name="uq_model_versions_project_version"),
                      Index("uq_model_versions_one_pinned", "project_id", unique=True,
                            sqlite_where=text("pinned"), postgresql_where=text("pinned")))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    # 1, 2, 3, … per project in the order the models were trained: what users name (GET …/models/{v}).
    version: Mapped[int] = mapped_column(Integer, default=_next_version)
    checkpoint_path: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    # Pinned: this version scores, pre-labels and predicts until unpinned (service.core.models).
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    pinned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    pinned_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("rq_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), nullable=True, index=True)
    rq_id: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # engine.jobkinds.JobKind
    shard: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # enqueued again by the reconciler (Redis lost it)
    # Worker deaths re-run the job without using a retry; retries_left counts those meant for
    # errors in the job itself (both as RQ last reported them).
    worker_deaths: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    retries_left: Mapped[int | None] = mapped_column(Integer, nullable=True)
    manifest_path: Mapped[str] = mapped_column(Text)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class QueueEntry(Base):
    __tablename__ = "queue_entries"
    __table_args__ = (UniqueConstraint("round_id", "item_id"), Index("ix_queue_round_rank", "round_id", "rank"))
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    rank: Mapped[int] = mapped_column(Integer)
    pred: Mapped[str | None] = mapped_column(String(200), nullable=True)
    scores: Mapped[dict] = mapped_column(JSON, default=dict)
    # After the batch: the next-ranked images, labeled while the next model trains; replaced by
    # the next round's batch. A round closes when its batch (not its reserve) is labeled.
    reserve: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Drawn uniformly from the candidates, not ranked (the control slice, migration 0008): with
    # the item's label and `pred`, the unbiased estimate of the model that chose the batch.
    control: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class SwapReport(Base):
    """A round's background-swap test (engine.swap_test, run by a worker job: service.rounds.swap),
    per project and round: the report as the job wrote it, and the classes named suspect so far
    (class → the first round that named them, engine.swap_test.named) after this round
    (migration 0012). GET /metrics reads the latest row; the next training reads `named_in_round`
    (feedback.swap_suspects)."""
    __tablename__ = "swap_reports"
    __table_args__ = (UniqueConstraint("project_id", "round", name="uq_swap_reports_project_round"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer)
    report: Mapped[dict] = mapped_column(JSON)
    named_in_round: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
