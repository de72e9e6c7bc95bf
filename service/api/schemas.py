"""Request and response bodies (pydantic): the OpenAPI document describes every answer.

Every field is bounded by what the store can hold (INTEGER ids, VARCHAR(200) names), so a value
out of range is a 422 from validation — on SQLite and PostgreSQL alike — never a driver error."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints, field_validator, model_validator

from engine.config import ProjectConfig
from service.store import MAX_ID  # noqa: F401  (routers read it from here too)

Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]


# ----------------------------------------------------------------------------- requests

class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # as PATCH: a misspelt key is a 422, not dropped
    name: str = Field(min_length=1, max_length=200)
    classes: list[Name] = Field(max_length=10000)
    config: ProjectConfig = Field(default_factory=ProjectConfig, description="every key optional; defaults shown")


class ProjectPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any] = Field(description="keys of the project config to change (nested sections merged)")


NAME_MAX = 255  # bytes of one path component (file or folder name) on every common file system


def check_path(v: str | None) -> str | None:
    """A path of the request: no component longer than the file system allows (a 422 naming it,
    rather than ENAMETOOLONG deep in registration with the whole path in a traceback)."""
    if v is None:
        return v
    for part in v.replace("\\", "/").split("/"):
        if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX:
            raise ValueError(f"a path component is {len(part.encode('utf-8', 'surrogatepass'))} bytes long, over "
                             f"the {NAME_MAX} a file or folder name can have: {part[:40]!r}…")
    return v


class ItemIn(BaseModel):
    uri: str = Field(max_length=4096, description="path relative to the data root")
    split: str | None = None
    label: Name | None = Field(default=None, description="known label (val/test, or an initial pool seed)")

    _path = field_validator("uri")(check_path)


class ItemsIn(BaseModel):
    folder: str | None = Field(default=None, max_length=4096, description="folder relative to the data root")
    items: list[ItemIn] | None = Field(default=None, max_length=1_000_000)
    split: str = Field(default="pool", max_length=16)
    recursive: bool = True
    labels_random: StrictBool = Field(False, description="the labeled pool images of this request are a uniform "
                                      "random sample of the pool (a first batch drawn at random): the audit of the "
                                      "lift may train its random-label models on them, as on the control slice")

    _path = field_validator("folder")(check_path)

    @model_validator(mode="after")
    def _not_empty(self) -> "ItemsIn":
        if self.folder is None and not self.items:
            raise ValueError("nothing to register: give a folder, or items (a non-empty list)")
        return self


class RoundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Strict: a destructive flag is true or false, never "yes", 1 or "on".
    force: StrictBool = Field(False, description="close a round whose batch is still being labeled (its open images "
                                           "go back to the pool)")
    train_only: StrictBool = Field(False, description="train and evaluate on every label, queue nothing (the last round)")


class LabelIn(BaseModel):
    item_id: int = Field(ge=1, le=MAX_ID)
    class_name: Name = Field(alias="class")
    client_id: str = Field(min_length=1, max_length=200, description="idempotency key chosen by the client")
    who: str | None = Field(default=None, max_length=200, description="the expert, as the client names them; stored after the "
                     "API key's name (`key:… as <who>`), never alone")

    model_config = {"populate_by_name": True}


class LabelsIn(BaseModel):
    labels: list[LabelIn] = Field(max_length=100_000)


class ClassChangeIn(BaseModel):
    reason: str = Field(default="", max_length=2000)


# ----------------------------------------------------------------------------- responses

class ClassOut(BaseModel):
    name: str
    status: str = Field(description="active | excluded")
    reason: str | None = None
    changed_by: str | None = Field(None, description="'rule' or the key fingerprint of the engineer")
    changed_at: datetime | None = None


class ImagesSeenOut(BaseModel):
    count: int = Field(description="images the first registration looked at (its pool, else all it registered)")
    sampled: int = Field(description="readable files in the random sample read")
    median_width: int
    median_height: int
    colour_fraction: float = Field(description="share of the sample that is colour (not grey stored as RGB)")


class ModelChoiceOut(BaseModel):
    model: str | None = None
    image_size: int | None = None
    channels: int | None = None
    pretrained: bool | None = None
    frozen_blocks: int | None = None
    chosen_from: dict[Literal["model", "image_size", "channels", "pretrained", "frozen_blocks"],
                      Literal["images", "config", "pending"]] = Field(
        description="per key: images (chosen from the first registered images), config (set in the project's "
                    "config, at creation or by a PATCH since), pending (to be chosen when the first images "
                    "are registered)")
    why: str = Field(description="what was seen in the images and why these settings follow from it")
    images: ImagesSeenOut | None = Field(None, description="what the choice looked at; null before it was made")


class ProjectOut(BaseModel):
    id: int
    name: str
    classes: list[ClassOut]
    # A config stored by an older version may not validate: shown as stored (warnings say what
    # to fix) rather than failing the answer.
    config: ProjectConfig | dict[str, Any]
    model_choice: ModelChoiceOut | None = Field(
        None, description="the model settings in force (as in config) with where each came from and why: keys the "
                          "config leaves unset are chosen from the images (size, colour) when the first ones are "
                          "registered; any can be set in the config (at creation, or PATCH before images are "
                          "registered for image_size and channels). Null for projects made before camloop chose "
                          "from the images")
    created_at: datetime | None = None
    warnings: list[str] = Field(default_factory=list, description="what went wrong beside (e.g. Label Studio away)")


class RegisteredOut(BaseModel):
    registered: int
    duplicates: int = Field(description="images whose content is already registered (skipped)")
    ingest_jobs: list[str]


class ItemOut(BaseModel):
    id: int
    uri: str
    split: str
    status: str = Field(description="unlabeled | queued | labeled | skipped | quarantined")
    label: str | None = None
    reason: str | None = Field(None, description="why it is quarantined")
    region: list[int] | None = Field(None, description="the object's box [x0, y0, x1, y1] in pixels of the file, "
                                     "from the registered folder's regions.json; null: not known")


class ItemsOut(BaseModel):
    items: list[ItemOut]


class JobOut(BaseModel):
    id: str
    kind: str
    shard: int | None = None
    state: str
    attempts: int
    error: str | None = None
    duration_s: float | None = None
    worker_deaths: int = Field(0, description="times the worker running it died (killed, out of memory, machine "
                                              "lost): re-run without using a retry, up to job_limits.worker_deaths")
    retries_left: int | None = Field(None, description="re-runs left after errors in the job itself "
                                                       "(of job_limits.retries); null before RQ reported it")


class RoundOut(BaseModel):
    project_id: int
    number: int
    state: str = Field(description="created | training | scoring | selecting | labeling | closed | failed")
    stage: str
    error: str | None = None
    progress: dict[str, Any] = Field(description="what the round is doing: counts, the evidence, exclusions")
    attempt: int
    train_only: bool = False
    model_version_id: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    jobs: list[JobOut]
    job_limits: dict[str, int] | None = Field(None, description="retries: re-runs of a job after errors in it "
                                              "(CAMLOOP_JOB_RETRIES); worker_deaths: re-runs after its worker died "
                                              "(CAMLOOP_JOB_MAX_WORKER_DEATHS), which never use a retry")
    created: bool | None = Field(None, description="POST only: false when an Idempotency-Key named an earlier round")


class RoundsOut(BaseModel):
    rounds: list[RoundOut]


class QueueItemOut(BaseModel):
    rank: int
    item_id: int
    uri: str
    status: str
    predicted: str | None = Field(None, description="the model's guess")
    scores: dict[str, float] = Field(description="the strategy's scores; p_pred = probability of the guess")
    label: str | None = None
    reserve: bool = Field(False, description="after the batch: labeled while the next model trains")


class QueueOut(BaseModel):
    round: int | None
    state: str | None = None
    items: list[QueueItemOut]


class ClassMetricsOut(BaseModel):
    model_config = ConfigDict(extra="allow")  # figures other parts add (the experts' votes)
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    support: int | None = None
    labeled: int
    status: str
    reason: str | None = None
    evidence: dict[str, Any] | None = Field(None, description="held-out counts the exclusion rule and budget read")
    judged: bool | None = Field(None, description="false: the exclusion rule had no evidence for it this round")
    why_not_judged: str | None = None


class HistoryOut(BaseModel):
    round: int
    model_version_id: int
    labeled: int | None = None
    trained_on: int | None = None
    evaluated_on: str | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    weighted_f1: float | None = None
    evidence_accuracy: float | None = None
    active: list[bool] | None = None
    per_class: dict[str, float | None]
    control_accuracy: float | None = Field(None, description="the control slice's estimate of the model that chose "
                                           "this round's batch (its random images' labels against its guesses)")
    control_low: float | None = Field(None, description="95 % Wilson interval of control_accuracy")
    control_high: float | None = None
    control_n: int | None = Field(None, description="control labels of the round")


class StoppingOut(BaseModel):
    """When to stop labeling (project config `stopping`; `stop_when_stable` acts on it)."""
    kappa: float | None = Field(None, description="Cohen's kappa between the last two models' predictions on the stop set")
    kappas: list[dict[str, Any]] = Field(default_factory=list, description="kappa of each pair of successive models")
    kappa_threshold: float
    window: int
    stop_set_size: int = Field(description="fixed sample of pool images every model predicts on")
    predictions_stable: bool = Field(description="kappa ≥ threshold for the last `window` comparisons")
    accuracy_plateaued: bool = Field(description="the evidence accuracy stopped rising")
    labels: int = Field(description="labels spent (labeled pool images)")
    max_labels: int | None = None
    budget_spent: bool
    suggest_stop: bool
    reason: str
    stop_when_stable: bool = Field(False, description="the project stops starting rounds on this signal")
    stopped_after_round: int | None = Field(None, description="the round after which auto_next_round stopped on it")


class FreezeReportOut(BaseModel):
    """The freezing-depth report (workers.freeze_report) and its job."""
    state: str = Field(description="queued | started | finished | failed")
    job: str
    model: str
    images: int = Field(description="labeled images the report reads (at most 32 of them get maps)")
    current_frozen_blocks: int
    error: str | None = None
    recommended_frozen_blocks: int | None = Field(None, description="adopt with PATCH /projects/{pid} "
                                                                     '{"config": {"frozen_blocks": k}}')
    num_blocks: int | None = None
    criterion: str | None = None
    measure: str | None = None
    chance: float | None = None
    blocks: list[dict[str, Any]] | None = Field(None, description="per block: localisation rate, flip IoU, passes")
    figure: str | None = Field(None, description="the picture under the artifacts folder")
    figure_url: str | None = None
    adopt: dict[str, Any] | None = None


class MetricsOut(BaseModel):
    project_id: int
    round: int | None
    round_state: str | None
    evaluated_on: str | None = Field(None, description="test | val | control | holdout: where accuracy was measured "
                                     "(control: the random control slice's labels, without a validation split)")
    evidence: dict[str, Any] | None = None
    confusion_on: str | None = Field(None, description="test | val | holdout: where the confusion matrix, F1 and ECE "
                                     "were measured")
    model_version_id: int | None
    accuracy: float | None
    macro_f1: float | None
    weighted_f1: float | None
    confusion: list[list[int]] | None
    ece: float | None
    labeled: int
    skipped: int
    per_class: dict[str, ClassMetricsOut]
    history: list[HistoryOut]
    stopping: StoppingOut | None = None
    calibration: dict[str, Any] | None = Field(None, description="the latest model's temperature (fitted on the "
                                               "evidence) and the expected calibration error before and after, on "
                                               "the evidence and the test split")
    label_issues: dict[str, Any] | None = Field(None, description="relabel on: labels checked (out-of-fold) and "
                                                "cleanlab's issues among them; with relabel.prune, `pruned` and "
                                                "`pruned_item_ids`: the labels the latest model trained without")
    experts: dict[str, Any] | None = Field(None, description="with Label Studio: anchoring (per expert, agreement "
                                           "with the guess shown vs hidden, `flagged`), second opinions (asked, open, "
                                           "answered, not independent) and each expert's estimated quality")
    control: dict[str, Any] | None = Field(None, description="the random control slice (config control): `share`, "
                                           "each round's estimate (`rounds`: n, correct, accuracy, Wilson low/high, "
                                           "per_class, missing, waiting) and `pooled` (the rounds the latest "
                                           "evidence reads); none before the first control entry")
    audit: dict[str, Any] | None = Field(None, description="does active learning pay off here (config audit): "
                                         "`labels_now`, `random_labels`, `accuracy_now` {value, low, high, on}, "
                                         "`random_curve` (the model trained on random labels only), "
                                         "`random_would_need` and `labels_saved` {labels, low, high} (95 % "
                                         "bootstrap interval; none: unbounded), `verdict` (paying_off | "
                                         "not_paying_off | too_early), `advice`, `reset_at_round`; none before a "
                                         "model trained with random labels to compare")
    shortcut: dict[str, Any] | None = Field(None, description="where the model looks (issue 25), per guessed "
                                            "class: the experts' wrong-region votes (`votes`, `wrong_region`, "
                                            "`flagged_share` with Wilson `flagged_low`/`flagged_high`) and, where "
                                            "items have a known region, the queued images' Grad-CAM maps (`maps`, "
                                            "`maps_outside`: under half the mass inside, `outside_share` with its "
                                            "interval, `mean_inside`), `suspect` and up to 3 `examples` (item ids); "
                                            "`suspect` lists the classes, `map_rounds` the rounds whose maps were "
                                            "read; none before a vote or a judged map")


class LabelOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    id: int
    item_id: int
    class_name: str = Field(alias="class")
    who: str
    source: str
    client_id: str
    round: int
    model_version_id: int | None = None
    created_at: datetime | None = None
    created: bool = Field(description="false: this client_id was delivered before (nothing counted twice)")


class LabelsOut(BaseModel):
    labels: list[LabelOut]


# ----------------------------------------------------------------------------- model versions (issue 21)

class ModelPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pinned: StrictBool = Field(description="true: this version scores the next rounds, pre-labels and predicts until "
                                     "unpinned (a project pins one version at a time); false: back to the newest "
                                     "model (or with keep_best_model the best)")


class ModelVersionOut(BaseModel):
    version: int = Field(description="1, 2, 3, … per project, in the order the models were trained")
    round: int = Field(description="the round that trained it")
    created_at: datetime | None = None
    pinned: bool
    pinned_at: datetime | None = None
    pinned_by: str | None = None
    in_use: bool = Field(description="this version scores the next round, pre-labels and predicts")
    in_use_why: str | None = None
    scored_rounds: list[int] = Field(description="rounds whose pool it scored (their guesses and heatmaps)")
    labels_per_class: dict[str, dict[str, int]] = Field(description="train: labels it was trained on per class; "
                                                                    "held_out: labeled images held out as evidence")
    metrics: dict[str, Any] = Field(description="evidence (and test): accuracy, F1, per class, with measured_on "
                                                "(val | holdout | test) and how many images")
    formats: dict[str, str] = Field(description="per download format: ready, queued, started, failed, or not "
                                                "converted yet")
    download: dict[str, str]
    card: dict[str, Any] | None = Field(None, description="the model card (GET …/card.md for Markdown)")


class ModelVersionsOut(BaseModel):
    project_id: int
    in_use: dict[str, Any] = Field(description="the version in use and why: pinned, latest, kept_best (keep_best_model)")
    versions: list[ModelVersionOut]


class ConversionOut(BaseModel):
    """A download whose file is still being written (the conversion runs in a worker)."""
    version: int
    format: str
    state: str = Field(description="queued | started | failed")
    job: str | None = None
    error: str | None = None
    retry_after_s: int = 2


class PredictionOut(BaseModel):
    name: str
    predicted: str
    p: float
    top: list[dict[str, Any]] = Field(description="[{class, p}] the top-k classes")
    probabilities: dict[str, float]
    overlay_png: str | None = Field(None, description="with cam=true: the Grad-CAM overlay of the top class, base64 PNG")


class PredictOut(BaseModel):
    state: str = Field(description="done | queued | started | failed")
    job: str | None = Field(None, description="the worker job's id when the request became one")
    poll: str | None = None
    model: dict[str, Any] | None = Field(None, description="the model version that answers, and why it is in use")
    top_k: int | None = None
    n: int | None = None
    error: str | None = None
    predictions: list[PredictionOut] = Field(default_factory=list)
